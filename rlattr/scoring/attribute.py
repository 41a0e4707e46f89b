"""Score a logged iteration: the ``attribute`` facade over snapshot, TracIn and metagradients."""

from __future__ import annotations

import time

import torch

from rlattr.record.records import Records
from rlattr.record.replay import IterationData, build_policy, load_iteration
from rlattr.record.runlog import RunLog
from rlattr.scoring.grads import Backend, ParamSelection
from rlattr.scoring.influence import METHODS, Method, snapshot_scores, tracin_scores
from rlattr.scoring.targets import Target, TargetContext


def target_context(log: RunLog, records: Records) -> TargetContext:
    algorithm = log.meta["algorithm"]
    return TargetContext(records, float(algorithm["gamma"]), float(algorithm["gae_lambda"]))


def score_name(method: str, target: Target, params: str = "policy") -> str:
    """The name scores are stored under: method, the target's identity, non-default params.

    ``snapshot-return``, ``tracin-return-mc``, ``snapshot-action-1f2e3d4c``,
    ``snapshot-return-params-all``: scores that differ never share a name (and overwrite
    each other); the same computation run again replaces its own entry.
    """
    name = f"{method}-{target.identity}"
    return name if params == "policy" else f"{name}-params-{params}"


def _score(
    log: RunLog,
    data: IterationData,
    target: Target,
    method: Method,
    params: ParamSelection,
    backend: Backend,
    device: str,
) -> torch.Tensor:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    policy = build_policy(log, device)
    context = target_context(log, data.records)
    if method == "snapshot":
        from rlattr.record.checkpoint import restore_checkpoint

        restore_checkpoint(policy, data.start_tensors, data.start_meta)
        return snapshot_scores(
            policy, data.records, target, data.plan.loss_config, context, params, backend
        ).to(torch.float64)
    if method == "metagrad":
        from rlattr.scoring.metagrad import metagradient_scores

        return metagradient_scores(data, policy, target, context).scores.to(torch.float64)
    return tracin_scores(data, policy, target, context, params, backend)


def attribute(
    log: RunLog | str,
    iteration: int,
    target: Target,
    method: Method = "snapshot",
    params: ParamSelection = "policy",
    backend: Backend = "auto",
    device: str = "cpu",
    store: bool = True,
) -> torch.Tensor:
    """Score every record of a logged iteration on ``target`` (positive = helpful).

    Args:
        log: the run (a ``RunLog`` or its directory).
        iteration: a recorded iteration.
        target: the behaviour to explain (``ReturnTarget()``, ``ActionTarget(...)``, ...).
        method: ``"snapshot"`` (θ_k only), ``"tracin"`` (replayed over the update) or
            ``"metagrad"`` (exact derivative through the replayed update, SCIENCE.md §2).
        params, backend: see ``rlattr.scoring.grads``.
        device: where to compute.
        store: also store the scores in the run log, named by ``score_name``.

    Returns:
        ``[N]`` float64 scores aligned with the iteration's record ids.
    """
    log = log if isinstance(log, RunLog) else RunLog(log)
    data = load_iteration(log, iteration, device)
    start = time.perf_counter()
    scores = _score(log, data, target, method, params, backend, device)
    if not torch.isfinite(scores).all():
        raise ValueError(
            f"{method} scores of iteration {iteration} contain NaN or inf "
            f"({int((~torch.isfinite(scores)).sum())} of {len(scores)})"
        )
    if store:
        log.write_scores(
            iteration,
            score_name(method, target, params),
            scores.cpu(),
            {
                "method": method,
                "target": target.name,
                "target_identity": target.identity,
                "params": params,
                "backend": backend,
                "seconds": time.perf_counter() - start,
            },
        )
    return scores
