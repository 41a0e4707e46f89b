"""Assembling a run: a preset and options become a ready model (layer 4).

``assemble(preset, RunOptions(...))`` is what ``rlattr train`` does; ``build_model`` is the
one function that builds an ``AttributedPPO`` from a preset (sweeps and experiments use it).
"""

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

__all__ = [
    "IIF_OPTION_FIELDS",
    "AssembledRun",
    "InterventionOptions",
    "RunOptions",
    "RunOptionsError",
    "assemble",
    "build_model",
    "check_resumable",
    "command_path",
    "committed_summary",
    "iif_config",
    "resume_command",
    "run_env_factory",
    "whole_rollouts",
]
