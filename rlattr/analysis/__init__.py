"""Layer 3: post-hoc analysis of a run: replay ground truth and fidelity, stage effects, plots.

``__all__`` lists what users and experiments import (``rlattr.analysis.plots`` is imported
on its own: it needs matplotlib). ``efficiency``, ``fidelity`` and ``whatif`` as attributes
of this package are the functions; their modules are ``importlib.import_module(
"rlattr.analysis.whatif")`` and so on.
"""

from rlattr.analysis.detection import Detection, baseline_suspicions, detect, per_record_losses
from rlattr.analysis.efficiency import (
    auc,
    efficiency,
    final_return,
    first_reach,
    iqm,
    normalize_by_task,
    performance_profiles,
    probability_of_improvement,
)
from rlattr.analysis.fidelity import fidelity
from rlattr.analysis.groundtruth import (
    pearson,
    random_subsets,
    reshuffled_plan,
    spearman,
    subset_effects,
)
from rlattr.analysis.stages import (
    estimate_stage_effects,
    parse_stages,
    stage_effects,
    stage_record_scores,
)
from rlattr.analysis.tables import scores_table
from rlattr.analysis.whatif import (
    WhatIfConfig,
    whatif,
    whatif_iterations,
    write_whatif_report,
)

__all__ = [
    "Detection",
    "WhatIfConfig",
    "auc",
    "baseline_suspicions",
    "detect",
    "efficiency",
    "estimate_stage_effects",
    "fidelity",
    "final_return",
    "first_reach",
    "iqm",
    "normalize_by_task",
    "parse_stages",
    "pearson",
    "per_record_losses",
    "performance_profiles",
    "probability_of_improvement",
    "random_subsets",
    "reshuffled_plan",
    "scores_table",
    "spearman",
    "stage_effects",
    "stage_record_scores",
    "subset_effects",
    "whatif",
    "whatif_iterations",
    "write_whatif_report",
]
