"""Exact replay of a logged PPO iteration, optionally with records removed.

Replay runs the *same* code path as training (``rlattr.record.update.run_update``) from the
logged start-of-iteration checkpoint, records and update plan, so on the same device it
reproduces θ_{k+1} bit for bit. With a keep mask it gives the leave-subset-out ground
truth of docs/science.md §2: the records outside the mask are removed from every minibatch of
the plan, which otherwise stays as logged (same order, same learning rates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.errors import RunLogError, UnsupportedError
from rlattr.record.checkpoint import restore_checkpoint
from rlattr.record.plan import UpdatePlan
from rlattr.record.records import Records
from rlattr.record.runlog import RunLog
from rlattr.record.serialize import decode, import_class, run_allowance, space_from_json
from rlattr.record.update import StepCallback, UpdateStats, run_update


def build_policy(log: RunLog, device: torch.device | str = "cpu") -> ActorCriticPolicy:
    """Construct the run's policy (and optimiser) from ``run.json`` alone.

    The weights are whatever the constructor makes; load a checkpoint to give them
    meaning. The caller's torch RNG is left untouched (initialisation draws from it).
    """
    spec = log.meta["policy"]
    allowance = run_allowance(log)  # every class name checked before anything is imported
    return _construct(
        import_class(spec["class"], allowance),
        space_from_json(spec["observation_space"]),
        space_from_json(spec["action_space"]),
        lambda _: 0.0,  # the real learning rate comes from the checkpoint and the plan
        decode(spec["kwargs"], allowance),
    ).to(device)


def workspace_policy(model: Any, device: torch.device | str | None = None) -> ActorCriticPolicy:
    """A policy (and optimiser) of an SB3 on-policy model's architecture, to replay into.

    Built the way the model built its own (``policy_class`` with the spaces, learning-rate
    schedule and ``policy_kwargs``), not from ``policy._get_constructor_parameters()``:
    SB3 leaves ``share_features_extractor`` out of those, and a policy rebuilt from them
    ties two separate features extractors into one. Its weights mean nothing until a
    checkpoint is restored into it (as ``build_policy``'s from a run log); the caller's
    torch RNG is left untouched (initialisation draws from it).
    """
    policy = _construct(
        model.policy_class,
        model.observation_space,
        model.action_space,
        model.lr_schedule,
        model.policy_kwargs,
    )
    return policy.to(device if device is not None else model.device)


def _construct(
    policy_class: type[ActorCriticPolicy],
    observation_space: Any,
    action_space: Any,
    lr_schedule: Any,
    kwargs: dict[str, Any],
) -> ActorCriticPolicy:
    # Initialisation draws weights from the torch RNG: on a fork of it, so building a
    # workspace never moves the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        return policy_class(observation_space, action_space, lr_schedule, use_sde=False, **kwargs)


@dataclass
class IterationData:
    """Everything needed to replay iteration ``iteration``, loaded once."""

    iteration: int
    records: Records
    plan: UpdatePlan
    start_tensors: dict[str, torch.Tensor]
    start_meta: dict[str, Any]


def refuse_weighted(data: IterationData, method: str) -> None:
    """Scorers whose arithmetic assumes every record weighs 1 refuse an update that
    down-weighted some records, rather than describe an update that did not happen."""
    if data.plan.record_weights is not None:
        raise UnsupportedError(
            f"{method} scores do not model per-record loss weights yet, and iteration "
            f"{data.iteration} trained with down-weighted records; use snapshot scores, or "
            "replay/fidelity (which apply the stored weights)"
        )


def load_iteration(
    log: RunLog, iteration: int, device: torch.device | str = "cpu"
) -> IterationData:
    records = log.load_records(iteration, device)
    plan = log.load_plan(iteration, device)
    tensors, meta = log.load_checkpoint(iteration, device)
    return IterationData(iteration, records, plan, tensors, meta)


def replay(
    data: IterationData,
    policy: ActorCriticPolicy,
    keep_mask: torch.Tensor | None = None,
    before_step: StepCallback | None = None,
    after_step: StepCallback | None = None,
    record_weights: torch.Tensor | None = None,
    weight_normalization: str = "weights",
    from_checkpoint: bool = True,
) -> UpdateStats:
    """Replay ``data``'s update into ``policy`` (its state is overwritten).

    Args:
        data: the logged iteration.
        policy: a policy built by ``build_policy`` (reused across replays for speed).
        keep_mask: ``[N]`` bool; records that are False are removed from every minibatch.
        before_step, after_step: callbacks around each optimiser step (see ``run_update``).
        record_weights, weight_normalization: per-record loss weights (see
            ``rlattr.record.loss.weighted_minibatch_loss``); the minibatches stay as logged.
            A plan that trained with weights (``plan.record_weights``, e.g. an intervention
            that down-weights records) replays with them; ``record_weights`` given here
            then multiply them (1 = as trained, 0 = removed), with ``"weights"``
            normalisation only (the one the run trained with).
        from_checkpoint: start from the logged start-of-iteration state (default), or
            from the policy's and optimiser's current state (counterfactual chains).

    Returns:
        The loss statistics of the replayed steps; the result is ``policy``'s new state.
    """
    device = next(policy.parameters()).device
    if keep_mask is not None:
        if keep_mask.dtype != torch.bool or keep_mask.shape != (len(data.records),):
            raise ValueError(
                f"keep_mask must be a bool tensor of shape ({len(data.records)},), "
                f"got {keep_mask.dtype} {tuple(keep_mask.shape)}"
            )
        keep_mask = keep_mask.to(device)
    if from_checkpoint:
        restore_checkpoint(policy, data.start_tensors, data.start_meta)
    policy.set_training_mode(True)
    # The step log holds each step's learning rate; SB3 sets one per iteration.
    learning_rates = data.plan.learning_rates.tolist()
    if learning_rates and any(lr != learning_rates[0] for lr in learning_rates):
        raise RunLogError("per-step learning-rate changes within an iteration are not supported")
    for group in policy.optimizer.param_groups:
        if learning_rates:
            group["lr"] = learning_rates[0]
    record_weights = _effective_weights(data.plan, record_weights, weight_normalization, device)
    _, stats, _ = run_update(
        policy,
        data.records.to(device),
        data.plan.loss_config,
        data.plan.epochs(keep_mask),
        check_target_kl=False,
        before_step=before_step,
        after_step=after_step,
        record_weights=record_weights,
        weight_normalization=weight_normalization,
    )
    return stats


def _effective_weights(
    plan: UpdatePlan,
    record_weights: torch.Tensor | None,
    weight_normalization: str,
    device: torch.device,
) -> torch.Tensor | None:
    """The loss weights a replay runs with: the caller's, the plan's, or their product."""
    logged = plan.record_weights
    if logged is None:
        return None if record_weights is None else record_weights.to(device)
    logged = logged.to(device)
    if record_weights is None:
        return logged
    if weight_normalization != "weights":
        raise ValueError(
            "this iteration trained with per-record weights (normalised by their sum); "
            f"replaying it with weight_normalization={weight_normalization!r} would change "
            "the update itself: use 'weights'"
        )
    # x · 1 is exact in any precision: weights of 1 replay the logged update bit for bit.
    return logged * record_weights.to(device)


def replay_iteration(
    log: RunLog,
    iteration: int,
    keep_mask: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> ActorCriticPolicy:
    """Replay one logged iteration from the run log alone; returns the updated policy."""
    data = load_iteration(log, iteration, device)
    policy = build_policy(log, device)
    replay(data, policy, keep_mask)
    return policy


def state_matches(policy: ActorCriticPolicy, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of policy parameters/buffers that differ (bitwise) from a checkpoint's.

    A NaN equals a NaN of the same bits (``same_bits``): a faithful replay of a state that
    holds NaN matches it."""
    mismatched = []
    for name, value in policy.state_dict().items():
        stored = tensors.get("policy." + name)
        if stored is None or not same_bits(value.cpu(), stored.cpu()):
            mismatched.append(name)
    return mismatched


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``torch.equal``, except that floating-point values with the same bit pattern are
    equal too (NaN ≠ NaN in ``torch.equal``; here a NaN equals a NaN of the same payload)."""
    if torch.equal(a, b):
        return True
    if a.dtype != b.dtype or a.shape != b.shape or not (a.is_floating_point() or a.is_complex()):
        return False
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.view(bits), b.view(bits))
