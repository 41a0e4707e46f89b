"""Snapshot influence of prompt–completion pairs on a sequence target (docs/science.md §2, §6).

score_i = -⟨∇f(θ_k), ∇ℓ_i(θ_k)⟩: positive when training on pair i raises the target.
ℓ_i is the trainer's per-pair GRPO loss (``rlattr.llm.loss``); the target is the paper's
sequence target f(θ) = mean_j A_j · log π_θ(y_j | x_j) over completions y_j sampled for
validation prompts x_j (A_j their group-normalised advantage), or the same surrogate on
the round's own batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from rlattr.llm.batch import SequenceBatch, completion_logps
from rlattr.llm.ghost import SequenceFn, sequence_dots
from rlattr.llm.loss import LossSpec, sequence_losses


def sequence_target(
    model: torch.nn.Module, batch: SequenceBatch, temperature: float
) -> torch.Tensor:
    """f(θ) = mean_j A_j · Σ_t log π_θ(y_{j,t} | x_j, y_{j,<t}) (the paper's sequence target)."""
    logps = completion_logps(model, batch, temperature)
    mask = batch.loss_mask.to(logps.dtype)
    return (batch.advantages.to(logps.dtype) * (logps * mask).sum(-1)).mean()


def target_gradient(
    model: torch.nn.Module,
    params: Mapping[str, torch.nn.Parameter],
    batch: SequenceBatch,
    temperature: float,
) -> dict[str, torch.Tensor]:
    """∇f over ``params`` (``.grad`` of the parameters is left untouched)."""
    value = sequence_target(model, batch, temperature)
    names = list(params)
    grads = torch.autograd.grad(value, [params[n] for n in names], allow_unused=True)
    return {
        name: torch.zeros_like(params[name]) if grad is None else grad.detach()
        for name, grad in zip(names, grads, strict=True)
    }


def loss_function(
    model: torch.nn.Module, batch: SequenceBatch, weights: torch.Tensor, spec: LossSpec
) -> SequenceFn:
    """``fn(rows) -> ℓ_rows``: the per-pair GRPO losses of ``batch`` at the model's θ."""

    def fn(rows: torch.Tensor | None) -> torch.Tensor:
        part = batch if rows is None else batch.rows(rows.to(batch.prompt_ids.device))
        w = weights if rows is None else weights[rows.to(weights.device)]
        logps = completion_logps(model, part, spec.temperature)
        return sequence_losses(
            logps,
            part.advantages,
            part.loss_mask,
            w,
            spec,
            part.old_per_token_logps,
            part.ref_per_token_logps,
        )

    return fn


def snapshot_scores(
    model: torch.nn.Module,
    params: Mapping[str, torch.nn.Parameter],
    batch: SequenceBatch,
    weights: torch.Tensor,
    spec: LossSpec,
    target: SequenceBatch | None = None,
    backend: str = "ghost",
) -> torch.Tensor:
    """``[B]`` scores of the pairs of ``batch`` at the model's current parameters.

    Args:
        model: the causal LM (its parameters and gradients are left as they are).
        params: parameters the scores use (``rlattr.llm.ghost.score_parameters``).
        batch: the round's pairs.
        weights: per-pair loss weights (``rlattr.llm.loss.sequence_weights``).
        spec: the trainer's loss settings.
        target: pairs defining the target (validation completions); None: ``batch``.
        backend: ``"ghost"`` or ``"naive"``.
    """
    gradient = target_gradient(model, params, batch if target is None else target, spec.temperature)
    fn = loss_function(model, batch, weights, spec)
    dots = sequence_dots(model, params, gradient, fn, len(batch), backend)  # type: ignore[arg-type]
    return -dots.detach()
