"""Scorers: the influence of each record of one iteration on a target (positive = helpful).

docs/science.md §2. One SGD step on ℓ_i changes f by −η⟨∇f, ∇ℓ_i⟩, so every score carries that
minus sign.

- ``snapshot_scores``: I_i = −⟨∇f(θ_k), ∇ℓ_i(θ_k)⟩ at the start of the iteration (the IIF
  paper's estimator; ρ = 1 there, so ratio clipping is inactive).
- ``tracin_scores``: the same product summed over the steps that actually used the record,
  at the parameters θ_t of each step, weighted by c_t / |b_t| and by the optimiser's map
  from a step's gradient to the parameter change it causes over the rest of the update
  (η_t for SGD; momentum and Adam spread it over later steps: the multipliers of
  ``rlattr.scoring.optimizers``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.record.loss import (
    PolicyOutputs,
    PPOLossConfig,
    normalize_advantages,
    per_record_ppo_losses,
)
from rlattr.record.records import Records
from rlattr.record.replay import IterationData, refuse_weighted, replay
from rlattr.scoring.grads import (
    Backend,
    ParamSelection,
    gradient_vector,
    parameter_names,
    per_record_dots,
    policy_actions,
)
from rlattr.scoring.optimizers import step_multipliers
from rlattr.scoring.targets import Target, TargetContext

Method = Literal["snapshot", "tracin", "metagrad"]
METHODS = ("snapshot", "tracin", "metagrad")


def record_loss_fn(
    records: Records, indices: torch.Tensor, advantages: torch.Tensor, config: PPOLossConfig
) -> Callable[[PolicyOutputs, torch.Tensor], torch.Tensor]:
    """Per-record PPO loss for the records ``indices`` trained on with advantages Ã."""
    old_log_prob = records.log_probs[indices]
    old_values = records.values[indices]
    returns = records.returns[indices]

    def fn(outputs: PolicyOutputs, position: torch.Tensor) -> torch.Tensor:
        dtype = outputs.log_prob.dtype
        return per_record_ppo_losses(
            outputs,
            old_log_prob[position].to(dtype),
            old_values[position].to(dtype),
            returns[position].to(dtype),
            advantages[position].to(dtype),
            config,
        )

    return fn


def snapshot_scores(
    policy: ActorCriticPolicy,
    records: Records,
    target: Target,
    loss_config: PPOLossConfig,
    context: TargetContext,
    params: ParamSelection = "policy",
    backend: Backend = "auto",
    advantage_normalization: Literal["buffer", "none"] = "buffer",
    chunk_size: int = 4096,
) -> torch.Tensor:
    """The paper's snapshot score of every record, at the policy's current parameters θ_k.

    Args:
        policy: the policy at θ_k (not modified).
        records: the iteration's buffer.
        target: the behaviour to explain.
        loss_config: the iteration's PPO loss hyperparameters.
        context: what the target needs (the buffer, γ, λ).
        params: which parameters the gradients are taken over.
        backend: per-record dot-product backend (see ``rlattr.scoring.grads``).
        advantage_normalization: ``"buffer"`` normalises advantages with the whole
            buffer's statistics (each record sits in a different minibatch every epoch;
            the buffer's statistics are their expectation); ``"none"`` uses raw advantages.
            Ignored when the run does not normalise advantages.
        chunk_size: records per batched pass (bounds memory).

    Returns:
        ``[N]`` scores aligned with ``records.record_ids``.
    """
    names = parameter_names(policy, params)
    vector = gradient_vector(target.value(policy, context), policy, names)
    advantages = records.advantages
    if advantage_normalization == "buffer":
        advantages = normalize_advantages(advantages, loss_config)
    elif advantage_normalization != "none":
        raise ValueError("advantage_normalization must be 'buffer' or 'none'")
    # ρ = 1 at θ_k by construction: the clipped ratio equals the ratio, nothing is clipped.
    all_indices = torch.arange(len(records), device=records.device)
    fn = record_loss_fn(records, all_indices, advantages, loss_config)
    actions = policy_actions(records.actions, policy.action_space)
    scores = []
    for start in range(0, len(records), chunk_size):
        chunk = all_indices[start : start + chunk_size]

        def chunk_fn(outputs: PolicyOutputs, position: torch.Tensor, _chunk=chunk):
            return fn(outputs, _chunk[position])

        dots = per_record_dots(
            policy, records.observations[chunk], actions[chunk], chunk_fn, vector, backend
        )
        scores.append(-dots.detach())
    return torch.cat(scores)


# --------------------------------------------------------------------------- TracIn
def tracin_scores(
    data: IterationData,
    policy: ActorCriticPolicy,
    target: Target,
    context: TargetContext,
    params: ParamSelection = "policy",
    backend: Backend = "auto",
    target_every: int = 1,
) -> torch.Tensor:
    """Replay TracIn: Σ over the steps that used record i of −(c_t/|b_t|)⟨∇f(θ_t), u_t ⊙ ∇ℓ_i(θ_t)⟩.

    Replays the iteration exactly as logged (``policy`` is overwritten and ends at θ_{k+1}).
    ∇ℓ_i(θ_t) is the record's true PPO loss gradient at θ_t (ratio, clipping, value and
    entropy terms), with the advantage normalisation of the minibatch that held it.

    Args:
        data: the logged iteration.
        policy: a policy built by ``rlattr.record.build_policy`` (its state is overwritten).
        target, context: the behaviour to explain and what it needs.
        params, backend: as for ``snapshot_scores``.
        target_every: recompute ∇f every this many steps (1: at every θ_t, the definition).

    Returns:
        ``[N]`` scores; records no step used score 0.

    Raises:
        UnsupportedError: the update down-weighted records (see ``refuse_weighted``).
    """
    refuse_weighted(data, "TracIn")
    if target_every < 1:
        raise ValueError(f"target_every must be >= 1, got {target_every}")
    names = parameter_names(policy, params)
    multipliers = step_multipliers(data, policy, names)
    records = data.records.to(next(policy.parameters()).device)
    config = data.plan.loss_config
    clip_coefs = data.plan.clip_coefs.tolist()
    actions = policy_actions(records.actions, policy.action_space)
    scores = torch.zeros(len(records), dtype=torch.float64, device=records.device)
    target_gradient: dict[str, torch.Tensor] = {}

    def score_step(step: int, indices: torch.Tensor) -> None:
        if step % target_every == 0 or not target_gradient:
            target_gradient.update(gradient_vector(target.value(policy, context), policy, names))
        weight = clip_coefs[step] / len(indices)
        u = multipliers[step]
        if isinstance(u, float):
            vector = {n: target_gradient[n] * (u * weight) for n in names}
        else:
            vector = {n: target_gradient[n] * u[n] * weight for n in names}
        # The minibatch's own advantage normalisation, exactly as the update used it.
        advantages = normalize_advantages(records.advantages[indices], config)
        fn = record_loss_fn(records, indices, advantages, config)
        dots = per_record_dots(
            policy, records.observations[indices], actions[indices], fn, vector, backend
        )
        scores.index_add_(0, indices, -dots.detach().to(scores.dtype))

    replay(data, policy, before_step=score_step)
    return scores
