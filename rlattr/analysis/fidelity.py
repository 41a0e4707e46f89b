"""Fidelity of scores: how well they predict leave-subset-out replay (docs/science.md §2)."""

from __future__ import annotations

import torch

from rlattr.analysis.groundtruth import FidelityReport, check_scores
from rlattr.record.replay import build_policy, load_iteration
from rlattr.record.runlog import RunLog
from rlattr.scoring.attribute import score_logged_iteration, target_context
from rlattr.scoring.grads import ParamSelection
from rlattr.scoring.graph_memory import DEFAULT_MEMORY_BUDGET, MemoryBudget
from rlattr.scoring.influence import Method
from rlattr.scoring.targets import Target


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
    memory_budget: MemoryBudget = DEFAULT_MEMORY_BUDGET,
) -> FidelityReport:
    """LDS & co. of ``method``'s scores against leave-subset-out replay (docs/science.md §2).

    ``memory_budget``: the metagradient's graph memory (``metagradient_scores``).
    """
    log = log if isinstance(log, RunLog) else RunLog(log)
    data = load_iteration(log, iteration, device)
    if scores is None:
        scores = score_logged_iteration(
            log, data, target, method, params, "auto", device, memory_budget
        )
    policy = build_policy(log, device)
    context = target_context(log, data.records)
    return check_scores(data, policy, scores, target, context, n_subsets, fraction, seed, orders)
