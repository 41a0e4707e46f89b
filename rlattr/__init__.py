"""rlattr: data attribution and influence-based filtering for online RL (PPO, SB3)."""

from rlattr.errors import (
    CorruptRunLogError,
    FormatVersionError,
    PresetError,
    RlattrError,
    RunLogError,
    UnsupportedError,
)
from rlattr.ppo import AttributedPPO
from rlattr.presets import Preset
from rlattr.records import Records
from rlattr.replay import build_policy, load_iteration, replay, replay_iteration
from rlattr.runlog import Retention, RunLog

__version__ = "0.1.0"

__all__ = [
    "AttributedPPO",
    "CorruptRunLogError",
    "FormatVersionError",
    "Preset",
    "PresetError",
    "Records",
    "Retention",
    "RlattrError",
    "RunLog",
    "RunLogError",
    "UnsupportedError",
    "build_policy",
    "load_iteration",
    "replay",
    "replay_iteration",
]
