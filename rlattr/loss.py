"""The PPO minibatch loss exactly as SB3's ``PPO.train`` computes it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.records import Minibatch


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
