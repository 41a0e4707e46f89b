"""Metagradient scores: the exact derivative of the target after the update w.r.t. record weights.

SCIENCE.md §2. Every record gets a weight w_i in the replayed update of iteration k (the
minibatch loss Σ w_i ℓ_i / Σ w_i with w-weighted advantage normalisation, so w_i = 0 is
removal). With the plan fixed, w ↦ θ_{k+1}(w) is a deterministic, piecewise-smooth map,
and the score is +∂f(θ_{k+1}(w))/∂w_i at w = 1, obtained here by reverse-mode
differentiation through the replayed optimiser steps: gradient-norm clipping, Adam's
moments, bias correction and ε (or SGD momentum), ratio clipping and value loss included.

The replay is functional (parameters are graph tensors, the optimiser is re-implemented
with torch's formulas), so it reproduces the logged θ_{k+1} to float rounding, not bit
for bit; ``metagradient_scores`` reports that difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.checkpoint import restore_checkpoint
from rlattr.errors import UnsupportedError
from rlattr.grads import _substituted
from rlattr.loss import weighted_minibatch_loss
from rlattr.replay import IterationData
from rlattr.targets import Target, TargetContext


@dataclass
class MetagradResult:
    """Scores and diagnostics of one metagradient computation.

    Attributes:
        scores: ``[N]`` ∂f/∂w_i at w = 1 (positive = the record's presence raises f).
        target_value: f(θ_{k+1}) of the functional replay.
        max_abs_param_error: largest |θ_{k+1} (functional) − θ_{k+1} (logged replay)|
            over all parameters, if the logged end state was given.
    """

    scores: torch.Tensor
    target_value: float
    max_abs_param_error: float | None = None


class _FunctionalOptimizer:
    """torch's Adam/AdamW/SGD update as differentiable tensor arithmetic."""

    def __init__(self, policy: ActorCriticPolicy, names: list[str]):
        optimizer = policy.optimizer
        if len(optimizer.param_groups) != 1:
            raise UnsupportedError("metagradients support one optimiser parameter group")
        self.group = optimizer.param_groups[0]
        self.kind = (
            "adamw"
            if isinstance(optimizer, torch.optim.AdamW)
            else "adam"
            if isinstance(optimizer, torch.optim.Adam)
            else "sgd"
            if isinstance(optimizer, torch.optim.SGD)
            else None
        )
        if self.kind is None:
            raise UnsupportedError(
                f"metagradients know SGD, Adam and AdamW, not {type(optimizer).__name__}"
            )
        if self.group.get("amsgrad") or self.group.get("maximize"):
            raise UnsupportedError("metagradients do not support amsgrad or maximize")
        if self.kind == "sgd" and self.group["momentum"] and self.group["dampening"]:
            raise UnsupportedError("metagradients support SGD momentum without dampening only")
        named = dict(policy.named_parameters())
        self.state: dict[str, dict[str, torch.Tensor | float | None]] = {}
        for name in names:
            stored = optimizer.state.get(named[name], {})
            if self.kind in ("adam", "adamw"):
                self.state[name] = {
                    "step": float(stored["step"]) if "step" in stored else 0.0,
                    "exp_avg": stored["exp_avg"].detach().clone()
                    if "exp_avg" in stored
                    else torch.zeros_like(named[name]),
                    "exp_avg_sq": stored["exp_avg_sq"].detach().clone()
                    if "exp_avg_sq" in stored
                    else torch.zeros_like(named[name]),
                }
            else:
                buffer = stored.get("momentum_buffer")
                self.state[name] = {
                    "momentum_buffer": None if buffer is None else buffer.detach().clone()
                }

    def step(
        self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], lr: float
    ) -> dict[str, torch.Tensor]:
        group = self.group
        weight_decay = group.get("weight_decay", 0.0)
        updated = {}
        for name, param in params.items():
            grad = grads[name]
            state = self.state[name]
            if self.kind == "sgd":
                if weight_decay:
                    grad = grad + weight_decay * param
                momentum = group["momentum"]
                if momentum:
                    buffer = state["momentum_buffer"]
                    buffer = grad if buffer is None else momentum * buffer + grad
                    state["momentum_buffer"] = buffer
                    grad = grad + momentum * buffer if group["nesterov"] else buffer
                updated[name] = param - lr * grad
                continue
            beta1, beta2 = group["betas"]
            if self.kind == "adamw":
                param = param * (1 - lr * weight_decay)
            elif weight_decay:
                grad = grad + weight_decay * param
            state["step"] = step = float(state["step"]) + 1
            exp_avg = beta1 * state["exp_avg"] + (1 - beta1) * grad
            exp_avg_sq = beta2 * state["exp_avg_sq"] + (1 - beta2) * grad * grad
            state["exp_avg"], state["exp_avg_sq"] = exp_avg, exp_avg_sq
            bias1 = 1 - beta1**step
            bias2 = 1 - beta2**step
            # sqrt has an infinite derivative at 0: a parameter that never had a gradient
            # (a dead ReLU unit, an unused head) has v = 0 exactly, and 0 × inf is NaN in
            # the backward pass. The smallest normal number of the dtype keeps the chain
            # rule finite and changes no value that is not already 0.
            tiny = torch.finfo(exp_avg_sq.dtype).tiny
            denom = torch.sqrt(exp_avg_sq + tiny * (exp_avg_sq == 0)) / math.sqrt(bias2)
            denom = denom + group["eps"]
            updated[name] = param - (lr / bias1) * exp_avg / denom
        return updated


def metagradient_scores(
    data: IterationData,
    policy: ActorCriticPolicy,
    target: Target,
    context: TargetContext,
    normalization: str = "weights",
    end_state: dict[str, torch.Tensor] | None = None,
    at: torch.Tensor | None = None,
) -> MetagradResult:
    """+∂f(θ_{k+1}(w))/∂w_i at w = 1 for every record of a logged iteration.

    Args:
        data: the logged iteration (records, plan, start checkpoint).
        policy: a policy built by ``rlattr.build_policy`` (its state is overwritten with
            the start checkpoint; its parameters are not updated).
        target, context: the behaviour f and what it needs.
        normalization: ``"weights"`` (minibatch loss Σwℓ/Σw: w_i = 0 is removal) or
            ``"count"`` (Σwℓ/|b|: the counterfactual first-order scores describe).
        end_state: the logged θ_{k+1} (a checkpoint's tensors), to report the replay error.
        at: the weights to differentiate at (default: all ones, the logged update).
    """
    restore_checkpoint(policy, data.start_tensors, data.start_meta)
    policy.set_training_mode(True)
    device = next(policy.parameters()).device
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    named = dict(policy.named_parameters())
    optimizer = _FunctionalOptimizer(policy, names)
    records = data.records.to(device)
    dtype = named[names[0]].dtype
    if at is None:
        weights = torch.ones(len(records), dtype=dtype, device=device, requires_grad=True)
    else:
        weights = at.to(device=device, dtype=dtype).detach().clone().requires_grad_(True)
    params = {n: named[n].detach().clone().requires_grad_(True) for n in names}
    config = data.plan.loss_config
    learning_rates = data.plan.learning_rates.tolist()
    for step, indices in enumerate(data.plan.minibatches()):
        indices = indices.to(device)
        batch = records.minibatch(indices)
        with _substituted(policy, params):
            terms = weighted_minibatch_loss(policy, batch, config, weights[indices], normalization)
        grads = torch.autograd.grad(
            terms.loss, list(params.values()), create_graph=True, allow_unused=True
        )
        grads = {
            n: (g if g is not None else torch.zeros_like(params[n]))
            for n, g in zip(params, grads, strict=True)
        }
        if math.isfinite(config.max_grad_norm):
            norm = torch.sqrt(sum((g * g).sum() for g in grads.values()))
            coef = torch.clamp(config.max_grad_norm / (norm + 1e-6), max=1.0)
            grads = {n: g * coef for n, g in grads.items()}
        params = optimizer.step(params, grads, learning_rates[step])
    with _substituted(policy, params):
        value = target.value(policy, context)
    (scores,) = torch.autograd.grad(value, weights)
    error = None
    if end_state is not None:
        error = max(
            float((params[n].detach().cpu() - end_state["policy." + n].to(dtype)).abs().max())
            for n in names
        )
    return MetagradResult(scores.detach(), float(value.detach()), error)
