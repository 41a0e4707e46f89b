"""Score a logged iteration: the ``attribute`` facade over snapshot, TracIn and metagradients."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.errors import NonFiniteError
from rlattr.record.records import Records
from rlattr.record.replay import IterationData, build_policy, load_iteration
from rlattr.record.runlog import RunLog
from rlattr.scoring.grads import Backend, ParamSelection
from rlattr.scoring.graph_memory import DEFAULT_MEMORY_BUDGET, MemoryBudget
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


@runtime_checkable
class IterationSource(Protocol):
    """An in-memory source of a trained iteration (``AttributedPPO`` keeps its last one).

    Attributes:
        gamma, gae_lambda: the discount and GAE λ the iteration's advantages used.
    """

    gamma: float
    gae_lambda: float

    def iteration_data(self, iteration: int, device: torch.device | str | None) -> IterationData:
        """Records, executed plan and start state of ``iteration``, on ``device``."""
        ...

    def workspace_policy(self, device: torch.device | str | None) -> ActorCriticPolicy:
        """A policy of the run's architecture (with optimiser) that scorers may overwrite."""
        ...


def score_iteration(
    data: IterationData,
    policy: ActorCriticPolicy,
    target: Target,
    context: TargetContext,
    method: Method = "snapshot",
    params: ParamSelection = "policy",
    backend: Backend = "auto",
    memory_budget: MemoryBudget = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """Score the records of one iteration, wherever it came from (run log or memory).

    ``policy`` is a workspace of the run's architecture: its state is overwritten.
    ``memory_budget``: the metagradient's graph memory (``metagradient_scores``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "snapshot":
        from rlattr.record.checkpoint import restore_checkpoint

        restore_checkpoint(policy, data.start_tensors, data.start_meta)
        return snapshot_scores(
            policy, data.records, target, data.plan.loss_config, context, params, backend
        ).to(torch.float64)
    if method == "metagrad":
        from rlattr.scoring.metagrad import metagradient_scores

        result = metagradient_scores(data, policy, target, context, memory_budget=memory_budget)
        return result.scores.to(torch.float64)
    return tracin_scores(data, policy, target, context, params, backend)


def score_logged_iteration(
    log: RunLog,
    data: IterationData,
    target: Target,
    method: Method,
    params: ParamSelection,
    backend: Backend,
    device: str,
    memory_budget: MemoryBudget = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """``score_iteration`` on a logged iteration, with a policy built from ``run.json``."""
    policy = build_policy(log, device)
    context = target_context(log, data.records)
    return score_iteration(data, policy, target, context, method, params, backend, memory_budget)


def attribute(
    log: RunLog | str | Path | IterationSource,
    iteration: int,
    target: Target,
    method: Method = "snapshot",
    params: ParamSelection = "policy",
    backend: Backend = "auto",
    device: str = "cpu",
    store: bool = True,
    memory_budget: MemoryBudget = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """Score every record of a logged iteration on ``target`` (positive = helpful).

    Args:
        log: the run (a ``RunLog`` or its directory), or a model that holds the iteration
            in memory (``AttributedPPO``: the iteration it trained last, no run directory
            needed).
        iteration: a recorded iteration.
        target: the behaviour to explain (``ReturnTarget()``, ``ActionTarget(...)``, ...).
        method: ``"snapshot"`` (θ_k only), ``"tracin"`` (replayed over the update) or
            ``"metagrad"`` (exact derivative through the replayed update, docs/science.md §2).
        params, backend: see ``rlattr.scoring.grads``.
        device: where to compute.
        store: also store the scores in the run log, named by ``score_name`` (run logs
            only: scores of an in-memory iteration are returned, not stored).
        memory_budget: ``"metagrad"`` only: the graph memory to stay within (bytes, a
            size such as ``"1GiB"``, or None: no limit); see ``metagradient_scores``.

    Returns:
        ``[N]`` float64 scores aligned with the iteration's record ids.
    """
    start = time.perf_counter()
    if isinstance(log, IterationSource):
        data = log.iteration_data(iteration, device)
        policy = log.workspace_policy(device)
        context = TargetContext(data.records, float(log.gamma), float(log.gae_lambda))
        store = False
    else:
        log = log if isinstance(log, RunLog) else RunLog(log)
        data = load_iteration(log, iteration, device)
        policy = build_policy(log, device)
        context = target_context(log, data.records)
    scores = score_iteration(data, policy, target, context, method, params, backend, memory_budget)
    if not torch.isfinite(scores).all():
        raise NonFiniteError(
            f"{method} scores of iteration {iteration} contain NaN or inf "
            f"({int((~torch.isfinite(scores)).sum())} of {len(scores)}): the iteration's "
            "records or start state hold non-finite values, or the target gives them; "
            "nothing was stored"
        )
    if store:
        assert isinstance(log, RunLog)
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
