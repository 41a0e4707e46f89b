"""rlattr: data attribution and influence-based filtering for online RL (PPO, SB3)."""

from rlattr.analysis.fidelity import fidelity
from rlattr.analysis.stages import stage_effects, stage_record_scores
from rlattr.analysis.tables import scores_table
from rlattr.analysis.whatif import WhatIfConfig, whatif
from rlattr.errors import (
    CorruptRunLogError,
    FormatVersionError,
    PresetError,
    RlattrError,
    RunLogError,
    UnsupportedError,
)
from rlattr.record.records import Records
from rlattr.record.replay import build_policy, load_iteration, replay, replay_iteration
from rlattr.record.runlog import Retention, RunLog
from rlattr.scoring.attribute import attribute
from rlattr.scoring.influence import snapshot_scores, tracin_scores
from rlattr.scoring.live_tracin import LiveTracIn
from rlattr.scoring.metagrad import metagradient_scores
from rlattr.scoring.targets import ActionTarget, CallableTarget, ReturnTarget, Target, TargetContext
from rlattr.training.callback import RecordRun
from rlattr.training.filters import IIF
from rlattr.training.hooks import ScoreHook
from rlattr.training.intervention import Intervention
from rlattr.training.oracle import GroundTruthFilter
from rlattr.training.ppo import AttributedPPO
from rlattr.training.presets import Preset
from rlattr.training.seams import FilterDecision, IterationContext, KeepMaskFilter, StoredScores
from rlattr.versions import __version__ as __version__

__all__ = [
    "IIF",
    "ActionTarget",
    "AttributedPPO",
    "CallableTarget",
    "CorruptRunLogError",
    "FilterDecision",
    "FormatVersionError",
    "GroundTruthFilter",
    "Intervention",
    "IterationContext",
    "KeepMaskFilter",
    "LiveTracIn",
    "Preset",
    "PresetError",
    "RecordRun",
    "Records",
    "Retention",
    "ReturnTarget",
    "RlattrError",
    "RunLog",
    "RunLogError",
    "ScoreHook",
    "StoredScores",
    "Target",
    "TargetContext",
    "UnsupportedError",
    "WhatIfConfig",
    "attribute",
    "build_policy",
    "fidelity",
    "load_iteration",
    "metagradient_scores",
    "replay",
    "replay_iteration",
    "scores_table",
    "snapshot_scores",
    "stage_effects",
    "stage_record_scores",
    "tracin_scores",
    "whatif",
]
