"""Assembling a run: presets, and a preset plus options become a ready model (layer 4).

``Preset.load(name)`` reads an agent preset (agents/*.yaml); ``assemble(preset,
RunOptions(...))`` is what ``rlattr train`` does; ``build_model`` is the one function that
builds an ``AttributedPPO`` from a preset (sweeps and experiments use it); ``arm_iif``
gives a comparison arm's filter.
"""

from rlattr.run.arms import ARMS, ArmName, UnknownArmError, arm_iif, parse_arm
from rlattr.run.assembly import (
    IIF_OPTION_FIELDS,
    AssembledRun,
    InterventionOptions,
    RunOptions,
    RunOptionsError,
    assemble,
    build_model,
    check_resumable,
    command_path,
    committed_summary,
    iif_config,
    resume_command,
    run_env_factory,
    whole_rollouts,
)
from rlattr.run.presets import Preset, resolve_preset_path, shipped_presets

__all__ = [
    "ARMS",
    "IIF_OPTION_FIELDS",
    "ArmName",
    "AssembledRun",
    "InterventionOptions",
    "Preset",
    "RunOptions",
    "RunOptionsError",
    "UnknownArmError",
    "arm_iif",
    "assemble",
    "build_model",
    "check_resumable",
    "command_path",
    "committed_summary",
    "iif_config",
    "parse_arm",
    "resolve_preset_path",
    "resume_command",
    "run_env_factory",
    "shipped_presets",
    "whole_rollouts",
]
