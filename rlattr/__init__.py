"""rlattr: data attribution and influence-based filtering for online RL (PPO, SB3)."""

from rlattr.attribution import (
    ScoreHook,
    attribute,
    fidelity,
    stage_effects,
    stage_record_scores,
)
from rlattr.errors import (
    CorruptRunLogError,
    FormatVersionError,
    PresetError,
    RlattrError,
    RunLogError,
    UnsupportedError,
)
from rlattr.filters import IIF
from rlattr.influence import snapshot_scores, tracin_scores
from rlattr.metagrad import metagradient_scores
from rlattr.ppo import AttributedPPO
from rlattr.presets import Preset
from rlattr.records import Records
from rlattr.replay import build_policy, load_iteration, replay, replay_iteration
from rlattr.runlog import Retention, RunLog
from rlattr.targets import ActionTarget, CallableTarget, ReturnTarget, Target, TargetContext

__version__ = "0.1.0"

__all__ = [
    "IIF",
    "ActionTarget",
    "AttributedPPO",
    "CallableTarget",
    "CorruptRunLogError",
    "FormatVersionError",
    "Preset",
    "PresetError",
    "Records",
    "Retention",
    "ReturnTarget",
    "RlattrError",
    "RunLog",
    "RunLogError",
    "ScoreHook",
    "Target",
    "TargetContext",
    "UnsupportedError",
    "attribute",
    "build_policy",
    "fidelity",
    "load_iteration",
    "metagradient_scores",
    "replay",
    "replay_iteration",
    "snapshot_scores",
    "stage_effects",
    "stage_record_scores",
    "tracin_scores",
]
