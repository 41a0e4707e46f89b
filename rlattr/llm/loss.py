"""GRPO's loss split per prompt–completion pair, as TRL's ``GRPOTrainer`` computes it.

TRL's per-token loss (token- or sequence-level importance ratio, two-sided clipping, KL to
a reference model) is summed over a pair's completion tokens and weighted by the
normaliser of the configured ``loss_type``, so that the trainer's micro-batch loss is the
sum of the pairs' losses: ``L = Σ_i ℓ_i``. ``tests/llm/test_loss.py`` checks that sum
against the trainer's own ``_compute_loss`` (value and gradient, fp64). Configurations
whose loss is not such a sum (an entropy bonus or high-entropy token mask over the
micro-batch, off-policy masks, vLLM importance weights, MoE auxiliary losses) and the
other loss types are refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlattr.errors import UnsupportedError

SUPPORTED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


@dataclass(frozen=True)
class LossSpec:
    """What of a GRPO trainer's configuration the per-pair loss depends on."""

    loss_type: str = "dapo"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    importance_sampling_level: str = "token"
    delta: float | None = None
    bias_correction_kl: bool = False
    max_completion_length: int = 256
    per_device_batch_size: int = 8
    steps_per_generation: int = 1
    gradient_accumulation_steps: int = 1
    num_processes: int = 1
    temperature: float = 1.0

    @classmethod
    def from_trainer(cls, trainer: Any) -> LossSpec:
        """Read a ``GRPOTrainer``'s settings; refuse what the per-pair split cannot hold."""
        args = trainer.args
        if trainer.loss_type not in SUPPORTED_LOSS_TYPES:
            raise UnsupportedError(
                f"IIF supports loss_type in {SUPPORTED_LOSS_TYPES}, got {trainer.loss_type!r}"
            )
        refused = {
            "top_entropy_quantile < 1": trainer.top_entropy_quantile < 1.0,
            "an entropy bonus": bool(getattr(trainer, "_entropy_bonus_enabled", False)),
            "off_policy_mask_threshold": trainer.off_policy_mask_threshold is not None,
            "vLLM importance-sampling correction": bool(
                trainer.use_vllm and trainer.vllm_importance_sampling_correction
            ),
            "a MoE auxiliary loss": bool(trainer.aux_loss_enabled),
        }
        bad = [name for name, on in refused.items() if on]
        if bad:
            raise UnsupportedError(
                f"IIF cannot split the GRPO loss per sequence with {', '.join(bad)}: these "
                "couple the sequences of a micro-batch; turn them off"
            )
        if trainer.importance_sampling_level not in ("token", "sequence"):
            raise UnsupportedError(
                f"unknown importance_sampling_level {trainer.importance_sampling_level!r}"
            )
        return cls(
            loss_type=trainer.loss_type,
            epsilon_low=float(trainer.epsilon_low),
            epsilon_high=float(trainer.epsilon_high),
            beta=float(trainer.beta),
            importance_sampling_level=trainer.importance_sampling_level,
            delta=args.delta,
            bias_correction_kl=bool(args.use_bias_correction_kl),
            max_completion_length=int(trainer.max_completion_length),
            per_device_batch_size=int(args.per_device_train_batch_size),
            steps_per_generation=int(args.steps_per_generation),
            gradient_accumulation_steps=int(args.gradient_accumulation_steps),
            num_processes=int(trainer.accelerator.num_processes),
            temperature=float(trainer.temperature),
        )


def sequence_weights(
    loss_mask: torch.Tensor,
    spec: LossSpec,
    num_items_in_batch: torch.Tensor | float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Weight of each pair's summed token loss in the micro-batch loss that will hold it.

    ``grpo``: 1 / (its tokens · pairs per micro-batch · accumulation); ``dr_grpo``:
    1 / (pairs per micro-batch · max_completion_length · accumulation); ``dapo``: the
    trainer's normaliser, num_items_in_batch spread over the generation batch's steps;
    ``bnpo`` normalises by the tokens of the micro-batch, which the shuffle decides later:
    its expected share of the batch's tokens stands in for it.

    Args:
        loss_mask: ``[B, T]`` completion (times tool) mask of the generation batch.
        spec: the trainer's loss settings.
        num_items_in_batch: the tokens the trainer normalises ``dapo`` by.
        dtype: dtype of the weights (the model's).
    """
    mask = loss_mask.to(dtype)
    n, accumulation = loss_mask.shape[0], spec.gradient_accumulation_steps
    ones = torch.ones(n, dtype=mask.dtype, device=mask.device)
    if spec.loss_type == "grpo":
        rows = spec.per_device_batch_size
        return 1.0 / (mask.sum(-1).clamp(min=1.0) * rows * accumulation)
    if spec.loss_type == "dr_grpo":
        return ones / (spec.per_device_batch_size * spec.max_completion_length * accumulation)
    if spec.loss_type == "bnpo":
        step_tokens = mask.sum().clamp(min=1.0) / spec.steps_per_generation
        return ones / (step_tokens * accumulation)
    if spec.loss_type == "dapo":
        items = torch.as_tensor(num_items_in_batch, dtype=mask.dtype, device=mask.device)
        normaliser = items.clamp(min=1.0) / spec.num_processes
        normaliser = normaliser * accumulation / spec.steps_per_generation
        return ones / normaliser
    raise UnsupportedError(f"no per-sequence weights for loss_type {spec.loss_type!r}")


def sequence_losses(
    per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    weights: torch.Tensor,
    spec: LossSpec,
    old_per_token_logps: torch.Tensor | None = None,
    ref_per_token_logps: torch.Tensor | None = None,
) -> torch.Tensor:
    """ℓ_i: TRL's per-token GRPO loss of pair i, summed over its tokens and weighted.

    Args:
        per_token_logps: ``[B, T]`` log-probabilities of the completion tokens at θ.
        advantages: ``[B]`` (or ``[B, T]``) advantages.
        loss_mask: ``[B, T]`` tokens that count.
        weights: ``[B]`` from ``sequence_weights``.
        spec: the trainer's loss settings.
        old_per_token_logps: the sampling policy's log-probabilities; None means θ itself
            (detached), as TRL does when generation and optimisation are aligned.
        ref_per_token_logps: the reference model's, needed when ``spec.beta != 0``.

    Returns:
        ``[B]`` per-pair losses whose sum is the trainer's micro-batch loss.
    """
    mask = loss_mask.to(per_token_logps.dtype)
    old = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    log_ratio = per_token_logps - old
    if spec.importance_sampling_level == "token":
        log_weights = log_ratio
    else:
        log_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(log_weights)
    coef_2 = torch.clamp(coef_1, 1 - spec.epsilon_low, 1 + spec.epsilon_high)
    if spec.delta is not None:
        coef_1 = torch.clamp(coef_1, max=spec.delta)
    per_token = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if spec.beta != 0.0:
        if ref_per_token_logps is None:
            raise ValueError("beta != 0 needs the reference model's log-probabilities")
        diff = ref_per_token_logps - per_token_logps
        kl = torch.exp(diff) - diff - 1
        if spec.bias_correction_kl:
            kl = kl * torch.exp(log_weights)
        per_token = per_token + spec.beta * kl
    per_token = per_token.expand_as(mask)
    return weights.to(per_token.dtype) * (per_token * mask).sum(-1)
