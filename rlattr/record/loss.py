"""The PPO minibatch loss exactly as SB3's ``PPO.train`` computes it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.record.records import Minibatch


@dataclass(frozen=True)
class PPOLossConfig:
    """The hyperparameters of one iteration's PPO loss, evaluated at that iteration.

    Attributes:
        clip_range: ratio clip ε (schedules already evaluated for this iteration).
        clip_range_vf: value clip, or None for no value clipping.
        normalize_advantage: normalise advantages per minibatch (SB3 default True).
        ent_coef: entropy coefficient c_e.
        vf_coef: value-loss coefficient c_v.
        max_grad_norm: gradient-norm clip; ``math.inf`` disables clipping.
        target_kl: early-stopping threshold on the approximate KL, or None.
        discrete_actions: True for ``Discrete`` action spaces (actions are cast to long).
    """

    clip_range: float
    clip_range_vf: float | None
    normalize_advantage: bool
    ent_coef: float
    vf_coef: float
    max_grad_norm: float
    target_kl: float | None
    discrete_actions: bool

    def __post_init__(self) -> None:
        # clip_range is not range-checked: SB3's linear schedules turn slightly negative
        # when the budget is not a whole number of rollouts, and PPO must mirror SB3.
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 (inf disables), got {self.max_grad_norm}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"target_kl must be > 0 or None, got {self.target_kl}")

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        # JSON has no infinity; keep it readable and exact.
        payload["max_grad_norm"] = "inf" if math.isinf(self.max_grad_norm) else self.max_grad_norm
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> PPOLossConfig:
        values = dict(payload)
        values["max_grad_norm"] = float(values["max_grad_norm"])
        return cls(**values)


class LossTerms(NamedTuple):
    """The minibatch loss and its parts (all scalar tensors)."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy_loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def ppo_minibatch_loss(
    policy: ActorCriticPolicy, batch: Minibatch, config: PPOLossConfig
) -> LossTerms:
    """SB3's clipped PPO loss on one minibatch, with the same operations in the same order.

    Bit-identity with ``stable_baselines3.PPO.train`` depends on this function doing exactly
    what SB3 does, so it is written to mirror it line by line.
    """
    actions = batch.actions
    if config.discrete_actions:
        actions = batch.actions.long().flatten()

    values, log_prob, entropy = policy.evaluate_actions(batch.observations, actions)
    values = values.flatten()

    advantages = batch.advantages
    # A single-record minibatch has no spread to normalise by (SB3 GH issue #325).
    if config.normalize_advantage and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

    ratio = torch.exp(log_prob - batch.old_log_prob)
    policy_loss_1 = advantages * ratio
    policy_loss_2 = advantages * torch.clamp(ratio, 1 - config.clip_range, 1 + config.clip_range)
    policy_loss = -torch.min(policy_loss_1, policy_loss_2).mean()

    if config.clip_range_vf is None:
        values_pred = values
    else:
        values_pred = batch.old_values + torch.clamp(
            values - batch.old_values, -config.clip_range_vf, config.clip_range_vf
        )
    value_loss = F.mse_loss(batch.returns, values_pred)

    if entropy is None:
        entropy_loss = -torch.mean(-log_prob)
    else:
        entropy_loss = -torch.mean(entropy)

    loss = policy_loss + config.ent_coef * entropy_loss + config.vf_coef * value_loss

    with torch.no_grad():
        clip_fraction = torch.mean((torch.abs(ratio - 1) > config.clip_range).float())
        log_ratio = log_prob - batch.old_log_prob
        approx_kl = torch.mean((torch.exp(log_ratio) - 1) - log_ratio)

    return LossTerms(loss, policy_loss, value_loss, entropy_loss, clip_fraction, approx_kl)


class PolicyOutputs(NamedTuple):
    """What ``ActorCriticPolicy.evaluate_actions`` returns, per record."""

    values: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor | None


def normalize_advantages(
    advantages: torch.Tensor, config: PPOLossConfig, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The advantages PPO trains a minibatch on (Ã), as SB3 normalises them.

    With ``weights``, mean and standard deviation are w-weighted (unbiased, as torch's
    ``std``): a record of weight 0 then leaves the statistics exactly as if it were absent.
    """
    if not config.normalize_advantage or len(advantages) <= 1:
        return advantages
    if weights is None:
        return (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    # In the weights' precision: a 0-dim float64 mean would not promote a float32 vector.
    advantages = advantages.to(weights.dtype)
    total = weights.sum()
    mean = (weights * advantages).sum() / total
    var = (weights * (advantages - mean) ** 2).sum() / (total - 1)
    return (advantages - mean) / (var.sqrt() + 1e-8)


def per_record_ppo_losses(
    outputs: PolicyOutputs,
    old_log_prob: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    advantages: torch.Tensor,
    config: PPOLossConfig,
) -> torch.Tensor:
    """ℓ_i of docs/science.md §1: SB3's minibatch loss is the mean of these over the minibatch.

    Args:
        outputs: the policy's values, log-probabilities and entropies for the records.
        old_log_prob, old_values, returns: the records' stored quantities.
        advantages: the advantages as trained on (already normalised: Ã, a constant).
        config: the iteration's loss hyperparameters.
    """
    values = outputs.values.flatten()
    ratio = torch.exp(outputs.log_prob - old_log_prob)
    clipped = torch.clamp(ratio, 1 - config.clip_range, 1 + config.clip_range)
    policy_term = -torch.min(advantages * ratio, advantages * clipped)
    if config.clip_range_vf is None:
        values_pred = values
    else:
        values_pred = old_values + torch.clamp(
            values - old_values, -config.clip_range_vf, config.clip_range_vf
        )
    value_term = (returns - values_pred) ** 2
    # SB3: entropy_loss = -mean(entropy), or mean(log_prob) when there is no closed form.
    entropy_term = -outputs.entropy if outputs.entropy is not None else outputs.log_prob
    return policy_term + config.vf_coef * value_term + config.ent_coef * entropy_term


def weighted_minibatch_loss(
    policy: ActorCriticPolicy,
    batch: Minibatch,
    config: PPOLossConfig,
    weights: torch.Tensor,
    normalization: str = "weights",
) -> LossTerms:
    """PPO loss with per-record weights w (docs/science.md §2, metagradient setting).

    The loss is Σ w_i ℓ_i / D with D = Σ w_i (``normalization="weights"``: w_i = 0 is
    exactly removal, advantage statistics included) or D = |b| (``"count"``: w_i = 0
    zeroes the record's term but keeps every other record's weight 1/|b|). Advantages are
    normalised with w-weighted statistics in both cases. With w = 1 this equals
    ``ppo_minibatch_loss`` up to float rounding (the sums are taken in another order).
    """
    if normalization not in ("weights", "count"):
        raise ValueError(f"normalization must be 'weights' or 'count', got {normalization!r}")
    actions = batch.actions
    if config.discrete_actions:
        actions = batch.actions.long().flatten()
    values, log_prob, entropy = policy.evaluate_actions(batch.observations, actions)
    outputs = PolicyOutputs(values.flatten(), log_prob, entropy)
    weights = weights.to(log_prob.dtype)
    advantages = normalize_advantages(batch.advantages, config, weights)
    denominator = weights.sum() if normalization == "weights" else weights.new_tensor(len(weights))

    def mean(per_record: torch.Tensor) -> torch.Tensor:
        return (weights * per_record).sum() / denominator

    ratio = torch.exp(log_prob - batch.old_log_prob)
    clipped = torch.clamp(ratio, 1 - config.clip_range, 1 + config.clip_range)
    policy_loss = mean(-torch.min(advantages * ratio, advantages * clipped))
    values_pred = outputs.values
    if config.clip_range_vf is not None:
        values_pred = batch.old_values + torch.clamp(
            outputs.values - batch.old_values, -config.clip_range_vf, config.clip_range_vf
        )
    value_loss = mean((batch.returns - values_pred) ** 2)
    entropy_loss = mean(-entropy if entropy is not None else log_prob)
    loss = policy_loss + config.ent_coef * entropy_loss + config.vf_coef * value_loss
    with torch.no_grad():
        clip_fraction = mean((torch.abs(ratio - 1) > config.clip_range).to(ratio.dtype))
        log_ratio = log_prob - batch.old_log_prob
        approx_kl = mean((torch.exp(log_ratio) - 1) - log_ratio)
    return LossTerms(loss, policy_loss, value_loss, entropy_loss, clip_fraction, approx_kl)
