"""Layer 1: what is recorded: records, update plans, the PPO loss, the update loop shared by
training and replay, checkpoints and the run directory.

Importing this package installs the sparse-checkpoint rebuild (``rlattr.record.rebuild``)
into ``RunLog.load_checkpoint``. ``rlattr.record.replay`` as an attribute is the function
``replay`` (``__all__``); the module of that name is ``importlib.import_module(
"rlattr.record.replay")``.
"""

from rlattr.record.checkpoint import capture_checkpoint, restore_checkpoint
from rlattr.record.io import atomic_write_json, atomic_write_text
from rlattr.record.loss import PPOLossConfig, normalize_advantages
from rlattr.record.plan import UpdatePlan
from rlattr.record.rebuild import rebuild_checkpoint
from rlattr.record.records import Records
from rlattr.record.replay import (
    IterationData,
    build_policy,
    load_iteration,
    replay,
    replay_iteration,
    state_matches,
    workspace_policy,
)
from rlattr.record.runlog import Retention, RunLog, VerifyReport, writing_format

__all__ = [
    "IterationData",
    "PPOLossConfig",
    "Records",
    "Retention",
    "RunLog",
    "UpdatePlan",
    "VerifyReport",
    "atomic_write_json",
    "atomic_write_text",
    "build_policy",
    "capture_checkpoint",
    "load_iteration",
    "normalize_advantages",
    "rebuild_checkpoint",
    "replay",
    "replay_iteration",
    "restore_checkpoint",
    "state_matches",
    "workspace_policy",
    "writing_format",
]
