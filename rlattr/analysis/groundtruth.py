"""Ground truth for scores: leave-subset-out replay, and agreement metrics (LDS & co).

docs/science.md §2. The implementation lives one layer down, in ``rlattr.record.counterfactual``,
so that training (the board's ``fidelity_every`` check) and analysis share it; this module
keeps the analysis layer's names for it.
"""

from __future__ import annotations

from rlattr.record.counterfactual import (
    Behaviour,
    FidelityReport,
    check_scores,
    pearson,
    random_subsets,
    rank,
    reshuffled_plan,
    spearman,
    subset_effects,
)

__all__ = [
    "Behaviour",
    "FidelityReport",
    "check_scores",
    "pearson",
    "random_subsets",
    "rank",
    "reshuffled_plan",
    "spearman",
    "subset_effects",
]
