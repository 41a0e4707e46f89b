"""Layer 2: per-record scores: gradient products, targets, the optimiser model, and the
snapshot / TracIn / metagradient scorers.

``__all__`` lists what users and experiments import; the rest of the modules are building
blocks of the scorers. ``rlattr.scoring.attribute`` as an attribute is the function (the
module of that name: ``importlib.import_module("rlattr.scoring.attribute")``).
"""

from rlattr.scoring.attribute import (
    attribute,
    score_iteration,
    score_logged_iteration,
    score_name,
    target_context,
)
from rlattr.scoring.diagnosis import episode_ends_in_buffer
from rlattr.scoring.grads import (
    BACKENDS,
    gradient_vector,
    parameter_names,
    per_record_dots,
    policy_actions,
)
from rlattr.scoring.graph_memory import DEFAULT_MEMORY_BUDGET, MemoryBudget, SavedTensorMeter
from rlattr.scoring.influence import record_loss_fn, snapshot_scores, tracin_scores
from rlattr.scoring.live_tracin import LiveTracIn, SubsampledTarget, replay_live_tracin
from rlattr.scoring.metagrad import MetagradResult, metagradient_scores
from rlattr.scoring.targets import (
    ActionTarget,
    CallableTarget,
    ReturnTarget,
    Target,
    TargetContext,
    gae_advantages,
    monte_carlo_advantages,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_MEMORY_BUDGET",
    "ActionTarget",
    "CallableTarget",
    "LiveTracIn",
    "MemoryBudget",
    "MetagradResult",
    "ReturnTarget",
    "SavedTensorMeter",
    "SubsampledTarget",
    "Target",
    "TargetContext",
    "attribute",
    "episode_ends_in_buffer",
    "gae_advantages",
    "gradient_vector",
    "metagradient_scores",
    "monte_carlo_advantages",
    "parameter_names",
    "per_record_dots",
    "policy_actions",
    "record_loss_fn",
    "replay_live_tracin",
    "score_iteration",
    "score_logged_iteration",
    "score_name",
    "snapshot_scores",
    "target_context",
    "tracin_scores",
]
