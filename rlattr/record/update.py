"""Run the optimiser steps of one PPO iteration: the one code path for training and replay."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.record.loss import PPOLossConfig, ppo_minibatch_loss, weighted_minibatch_loss
from rlattr.record.plan import UpdatePlan
from rlattr.record.records import Records


@dataclass
class UpdateStats:
    """What SB3 logs after ``train()``, gathered as tensors and synchronised once."""

    pg_losses: list[torch.Tensor] = field(default_factory=list)
    value_losses: list[torch.Tensor] = field(default_factory=list)
    entropy_losses: list[torch.Tensor] = field(default_factory=list)
    clip_fractions: list[torch.Tensor] = field(default_factory=list)
    last_epoch_approx_kl: list[torch.Tensor] = field(default_factory=list)
    last_loss: torch.Tensor | None = None
    n_epochs_run: int = 0

    def means(self) -> dict[str, float]:
        def mean(values: list[torch.Tensor]) -> float:
            return float(torch.stack(values).mean()) if values else float("nan")

        return {
            "train/entropy_loss": mean(self.entropy_losses),
            "train/policy_gradient_loss": mean(self.pg_losses),
            "train/value_loss": mean(self.value_losses),
            "train/approx_kl": mean(self.last_epoch_approx_kl),
            "train/clip_fraction": mean(self.clip_fractions),
            "train/loss": float(self.last_loss) if self.last_loss is not None else float("nan"),
        }


@dataclass
class _StepTrace:
    epochs: list[int] = field(default_factory=list)
    minibatches: list[torch.Tensor] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    grad_norms: list[torch.Tensor] = field(default_factory=list)


def optimizer_step(
    policy: ActorCriticPolicy, loss: torch.Tensor, max_grad_norm: float
) -> torch.Tensor:
    """zero_grad → backward → clip_grad_norm_ → step, as SB3 does; returns the pre-clip norm."""
    policy.optimizer.zero_grad()
    loss.backward()
    total_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
    policy.optimizer.step()
    return total_norm.detach()


StepCallback = Callable[[int, torch.Tensor], None]
"""``callback(step, record_indices)``: called around each optimiser step (step counts from 0)."""


def run_update(
    policy: ActorCriticPolicy,
    records: Records,
    loss_config: PPOLossConfig,
    epochs: Iterable[tuple[int, Iterable[torch.Tensor]]],
    check_target_kl: bool,
    before_step: StepCallback | None = None,
    after_step: StepCallback | None = None,
    record_weights: torch.Tensor | None = None,
    weight_normalization: str = "weights",
) -> tuple[_StepTrace, UpdateStats, bool]:
    """Execute PPO optimiser steps over ``epochs`` (pairs of epoch index and minibatches).

    ``epochs`` is consumed lazily, so a training run can draw each epoch's permutation
    only when the epoch starts, as SB3 does. With ``check_target_kl`` the update stops
    as SB3's does when the approximate KL of a minibatch exceeds 1.5 × target_kl.
    ``before_step`` sees the parameters θ_t the step's gradient is taken at, ``after_step``
    the optimiser state after it (scorers use both; neither may change parameters).
    ``record_weights`` (``[N]``) switches to the weighted loss of ``weighted_minibatch_loss``;
    None keeps SB3's loss, bit for bit.
    Returns the executed steps, the loss statistics and whether it stopped early.
    """
    trace = _StepTrace()
    stats = UpdateStats()
    stopped = False
    for epoch, minibatches in epochs:
        stats.last_epoch_approx_kl = []
        for indices in minibatches:
            batch = records.minibatch(indices)
            if record_weights is None:
                terms = ppo_minibatch_loss(policy, batch, loss_config)
            else:
                terms = weighted_minibatch_loss(
                    policy, batch, loss_config, record_weights[indices], weight_normalization
                )
            stats.pg_losses.append(terms.policy_loss.detach())
            stats.value_losses.append(terms.value_loss.detach())
            stats.entropy_losses.append(terms.entropy_loss.detach())
            stats.clip_fractions.append(terms.clip_fraction)
            stats.last_epoch_approx_kl.append(terms.approx_kl)
            if check_target_kl and loss_config.target_kl is not None:
                # Same float32 comparison as SB3 (a NumPy float32 against a Python float).
                approx_kl_div = terms.approx_kl.cpu().numpy()
                if approx_kl_div > 1.5 * loss_config.target_kl:
                    stopped = True
                    break
            step = len(trace.epochs)
            if before_step is not None:
                before_step(step, indices)
            trace.epochs.append(epoch)
            trace.minibatches.append(indices)
            trace.learning_rates.append(policy.optimizer.param_groups[0]["lr"])
            trace.grad_norms.append(optimizer_step(policy, terms.loss, loss_config.max_grad_norm))
            stats.last_loss = terms.loss.detach()
            if after_step is not None:
                after_step(step, indices)
        stats.n_epochs_run += 1
        if stopped:
            break
    return trace, stats, stopped


def trace_to_plan(
    trace: _StepTrace,
    loss_config: PPOLossConfig,
    n_epochs: int,
    batch_size: int,
    permutations: list[np.ndarray],
    keep_mask: torch.Tensor,
    early_stopped: bool,
    record_weights: torch.Tensor | None = None,
    minibatching: str = "as_drawn",
) -> UpdatePlan:
    """Package an executed update as the ``UpdatePlan`` that replays it (``record_weights``:
    the per-record loss weights it trained with, if any; ``minibatching``: how its
    minibatches were formed around dropped records)."""
    device = keep_mask.device
    if trace.grad_norms:
        grad_norms = torch.stack(trace.grad_norms).to(torch.float32)
        # torch's clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1, in float32.
        clip_coefs = torch.clamp(loss_config.max_grad_norm / (grad_norms + 1e-6), max=1.0)
        indices = torch.cat(trace.minibatches)
    else:
        grad_norms = clip_coefs = torch.zeros(0, device=device)
        indices = torch.zeros(0, dtype=torch.int64, device=device)
    n_records = keep_mask.numel()
    perms = (
        torch.as_tensor(np.stack(permutations), device=device)
        if permutations
        else torch.zeros((0, n_records), dtype=torch.int64, device=device)
    )
    return UpdatePlan(
        loss_config=loss_config,
        n_epochs=n_epochs,
        batch_size=batch_size,
        epoch_permutations=perms.to(torch.int64),
        keep_mask=keep_mask.to(torch.bool),
        step_epochs=torch.tensor(trace.epochs, dtype=torch.int64, device=device),
        minibatch_indices=indices.to(torch.int64),
        minibatch_sizes=torch.tensor(
            [len(m) for m in trace.minibatches], dtype=torch.int64, device=device
        ),
        learning_rates=torch.tensor(trace.learning_rates, dtype=torch.float64, device=device),
        grad_norms=grad_norms.to(torch.float64),
        clip_coefs=clip_coefs.to(torch.float64),
        early_stopped=early_stopped,
        record_weights=record_weights,
        minibatching=minibatching,  # type: ignore[arg-type]
    )
