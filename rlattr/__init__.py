"""rlattr: data attribution and influence-based filtering for online RL (PPO, SB3).

The names a user needs: train (``AttributedPPO`` with ``IIF``, ``Intervention``,
``ScoreHook``; ``RecordRun`` for a plain SB3 PPO; what each iteration did as
``IterationResult``), read a run (``RunLog``, ``replay_iteration``), score and check it
(``attribute``, ``fidelity``, ``whatif``, ``stage_effects``) and the errors. The building
blocks stay in their sub-packages, each listing them in ``__all__``: ``rlattr.record``
(``replay``, ``build_policy``, ``load_iteration``, ``Records``), ``rlattr.scoring``
(``snapshot_scores``, ``tracin_scores``, ``metagradient_scores``, ``TargetContext``),
``rlattr.analysis`` (``stage_record_scores``) and ``rlattr.training``.
"""

from rlattr.allowlist import DisallowedModuleError
from rlattr.analysis.fidelity import fidelity
from rlattr.analysis.stages import stage_effects
from rlattr.analysis.tables import scores_table
from rlattr.analysis.whatif import WhatIfConfig, whatif
from rlattr.errors import (
    CorruptRunLogError,
    FormatVersionError,
    NonFiniteError,
    PresetError,
    RlattrError,
    RunLogError,
    UnsupportedError,
)
from rlattr.record.io import RunLockedError
from rlattr.record.replay import replay_iteration
from rlattr.record.runlog import Retention, RunLog
from rlattr.run import Preset
from rlattr.scoring.attribute import attribute
from rlattr.scoring.live_tracin import LiveTracIn
from rlattr.scoring.targets import ActionTarget, CallableTarget, ReturnTarget, Target
from rlattr.training.callback import RecordRun
from rlattr.training.filters import IIF
from rlattr.training.hooks import ScoreHook
from rlattr.training.intervention import Intervention
from rlattr.training.oracle import GroundTruthFilter
from rlattr.training.ppo import AttributedPPO
from rlattr.training.seams import (
    FilterDecision,
    IterationContext,
    IterationResult,
    IterationResults,
    KeepMaskFilter,
    StoredScores,
)
from rlattr.versions import __version__ as __version__

__all__ = [
    "IIF",
    "ActionTarget",
    "AttributedPPO",
    "CallableTarget",
    "CorruptRunLogError",
    "DisallowedModuleError",
    "FilterDecision",
    "FormatVersionError",
    "GroundTruthFilter",
    "Intervention",
    "IterationContext",
    "IterationResult",
    "IterationResults",
    "KeepMaskFilter",
    "LiveTracIn",
    "NonFiniteError",
    "Preset",
    "PresetError",
    "RecordRun",
    "Retention",
    "ReturnTarget",
    "RlattrError",
    "RunLockedError",
    "RunLog",
    "RunLogError",
    "ScoreHook",
    "StoredScores",
    "Target",
    "UnsupportedError",
    "WhatIfConfig",
    "attribute",
    "fidelity",
    "replay_iteration",
    "scores_table",
    "stage_effects",
    "whatif",
]
