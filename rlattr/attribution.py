"""The attribution facade: score a logged iteration, check scores against replay, and a
record hook that scores every iteration during training (with TensorBoard diagnostics)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from rlattr.grads import Backend, ParamSelection
from rlattr.groundtruth import FidelityReport, check_scores
from rlattr.influence import METHODS, Method, snapshot_scores, tracin_scores
from rlattr.records import Records
from rlattr.replay import IterationData, build_policy, load_iteration
from rlattr.runlog import RunLog
from rlattr.stages import Stage
from rlattr.targets import Target, TargetContext


def target_context(log: RunLog, records: Records) -> TargetContext:
    algorithm = log.meta["algorithm"]
    return TargetContext(records, float(algorithm["gamma"]), float(algorithm["gae_lambda"]))


def score_name(method: str, target: Target) -> str:
    return f"{method}-{target.name}"


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
        from rlattr.checkpoint import restore_checkpoint

        restore_checkpoint(policy, data.start_tensors, data.start_meta)
        return snapshot_scores(
            policy, data.records, target, data.plan.loss_config, context, params, backend
        ).to(torch.float64)
    if method == "metagrad":
        from rlattr.metagrad import metagradient_scores

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
        params, backend: see ``rlattr.grads``.
        device: where to compute.
        store: also store the scores in the run log as ``<method>-<target.name>``.

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
            score_name(method, target),
            scores.cpu(),
            {
                "method": method,
                "target": target.name,
                "params": params,
                "backend": backend,
                "seconds": time.perf_counter() - start,
            },
        )
    return scores


def fidelity(
    log: RunLog | str,
    iteration: int,
    target: Target,
    method: Method = "snapshot",
    scores: torch.Tensor | None = None,
    n_subsets: int = 64,
    fraction: float = 0.1,
    orders: int = 1,
    seed: int = 0,
    params: ParamSelection = "policy",
    device: str = "cpu",
) -> FidelityReport:
    """LDS & co. of ``method``'s scores against leave-subset-out replay (SCIENCE.md §2)."""
    log = log if isinstance(log, RunLog) else RunLog(log)
    data = load_iteration(log, iteration, device)
    if scores is None:
        scores = _score(log, data, target, method, params, "auto", device)
    policy = build_policy(log, device)
    context = target_context(log, data.records)
    return check_scores(data, policy, scores, target, context, n_subsets, fraction, seed, orders)


@dataclass
class ScoreHook:
    """Score each iteration's records during training (a record hook for AttributedPPO).

    Scores are computed at θ_k before the update, logged to TensorBoard (histogram,
    fraction negative, correlation with the advantage) and stored with the iteration.

    Attributes:
        target: what to score against (default: the return target on the same buffer).
        params, backend: see ``rlattr.grads``.
        last_scores: the latest iteration's scores.
    """

    target: Target | None = None
    params: ParamSelection = "policy"
    backend: Backend = "auto"
    last_scores: torch.Tensor | None = field(default=None, init=False)

    def __call__(self, model: Any, records: Records) -> None:
        from rlattr.targets import ReturnTarget

        target = self.target or ReturnTarget()
        context = TargetContext(records, model.gamma, model.gae_lambda)
        scores = snapshot_scores(
            model.policy, records, target, model.loss_config(), context, self.params, self.backend
        ).detach()
        self.last_scores = scores
        model.pending_scores[score_name("snapshot", target)] = (
            scores.cpu(),
            {
                "method": "snapshot",
                "target": target.name,
                "params": self.params,
                "during": "training",
            },
        )
        log_score_diagnostics(model.logger, scores, records)


def log_score_diagnostics(logger: Any, scores: torch.Tensor, records: Records) -> None:
    """Histogram, fraction negative and score–advantage correlation, to TensorBoard."""
    finite = torch.isfinite(scores)
    logger.record("attribution/fraction_negative", float((scores[finite] < 0).float().mean()))
    logger.record("attribution/nonfinite", int((~finite).sum()))
    if bool(finite.any()):
        logger.record(
            "attribution/scores",
            scores[finite].detach().cpu(),
            exclude=("stdout", "log", "json", "csv"),
        )
        pair = torch.stack([scores[finite].double(), records.advantages[finite].double()])
        corr = torch.corrcoef(pair)[0, 1]
        logger.record("attribution/score_advantage_corr", float(corr))


def _whole_run(log: RunLog, device: str):
    """Every iteration, the final checkpoint, a policy and the target context of a run
    that recorded every iteration (what stage effects need)."""
    recorded = log.iterations()
    if not recorded or recorded != list(range(len(recorded))):
        raise ValueError(
            f"stage effects need every iteration recorded from 0; {log.path} holds "
            f"{len(recorded)} iterations ({recorded[:3]}…): train with record_every=1"
        )
    iterations = [load_iteration(log, k, device) for k in recorded]
    final_state, _ = log.load_checkpoint(len(recorded), device)
    policy = build_policy(log, device)
    context = target_context(log, iterations[-1].records)
    return iterations, final_state, policy, context


def _default_behavior(behavior: Target | None, iterations: list) -> Target:
    from rlattr.targets import ReturnTarget

    return behavior or ReturnTarget(validation=iterations[-1].records)


def stage_effects(
    log: RunLog | str,
    stages: Any,
    behavior: Target | None = None,
    second_order: bool = True,
    ground_truth: bool = False,
    optimizer_state: str = "rollback",
    device: str = "cpu",
) -> list[Any]:
    """Stage effects on a behaviour of the final policy (SCIENCE.md §4).

    Args:
        log: the run; every iteration must be recorded (``record_every=1``, no ``keep_last``).
        stages: ``K`` (equal spans), ``"a:b,c:d"`` or a list of ``rlattr.stages.Stage``.
        behavior: the behaviour f of the final policy; default: the return target on the
            last recorded buffer.
        second_order, ground_truth, optimizer_state: see ``rlattr.stages.stage_effects``.
    """
    from rlattr.stages import parse_stages
    from rlattr.stages import stage_effects as estimate

    log = log if isinstance(log, RunLog) else RunLog(log)
    iterations, final_state, policy, context = _whole_run(log, device)
    spans = stages if isinstance(stages, list) else parse_stages(stages, len(iterations))
    return estimate(
        iterations, final_state, policy, _default_behavior(behavior, iterations), context,
        spans, second_order, ground_truth, optimizer_state,
    )  # fmt: skip


def stage_record_scores(
    log: RunLog | str,
    stage: Any,
    behavior: Target | None = None,
    optimizer_state: str = "rollback",
    device: str = "cpu",
) -> Any:
    """A stage's first-order effect split over the records its updates used.

    Args:
        log: the run (every iteration recorded).
        stage: a ``rlattr.stages.Stage`` or ``"a:b"`` (iterations a … b−1).
        behavior: as in ``stage_effects`` (default: return target on the last buffer).
        optimizer_state: see ``rlattr.stages.stage_effects``.

    Returns:
        ``rlattr.stages.StageRecordScores``: per iteration of the stage, each record's
        share; the shares and ``remainder`` add up to the stage's FO estimate.
    """
    from rlattr.stages import parse_stages
    from rlattr.stages import stage_record_scores as split

    log = log if isinstance(log, RunLog) else RunLog(log)
    iterations, final_state, policy, context = _whole_run(log, device)
    if not isinstance(stage, Stage):
        [stage] = parse_stages(str(stage), len(iterations))
    return split(
        iterations, final_state, policy, _default_behavior(behavior, iterations), context,
        stage, optimizer_state,
    )  # fmt: skip
