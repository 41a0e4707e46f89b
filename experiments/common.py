"""Helpers shared by the experiment scripts: result files with command, versions and the
git commit of the code that made them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlattr.provenance import describe_git, git_state
from rlattr.provenance import provenance as _provenance
from rlattr.record import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
# What a result depends on: the package, the experiment scripts (not their outputs), presets.
CODE_PATHS = ("rlattr", "experiments", "pyproject.toml", ":(exclude)experiments/results")


# Taken when a script starts (it imports this module first): a long run's result names the
# code it ran, not whatever the checkout holds when the result is finally written.
GIT_AT_START = git_state(CODE_PATHS)


def provenance() -> dict[str, Any]:
    """The command, code commit (at the script's start), versions and machine."""
    return _provenance(git=GIT_AT_START)


def final_action_target(log: Any, n_states: int = 64, seed: int = 0) -> Any:
    """``ActionTarget`` of the run's final policy: its greedy actions on ``n_states``
    observations of the last iteration's buffer (drawn with ``seed``)."""
    import torch

    from rlattr import ActionTarget
    from rlattr.record import build_policy, restore_checkpoint

    last = log.iterations()[-1]
    records = log.load_records(last)
    policy = build_policy(log)
    restore_checkpoint(policy, *log.load_checkpoint(last + 1))
    picks = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))[:n_states]
    observations = records.observations[picks]
    with torch.no_grad():
        actions = policy.get_distribution(observations).get_actions(deterministic=True)
    return ActionTarget(observations, actions)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """``payload`` into ``results/<name>``, atomically (indented, keys sorted)."""
    path = RESULTS / name
    atomic_write_json(path, payload)
    return path


def markdown_header(title: str, meta: dict[str, Any]) -> list[str]:
    """Title, command, code commit, date, machine and versions: the first lines of every
    result file."""
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    git = meta.get("git")
    return [
        f"# {title}",
        "",
        f"Command: `{meta['command']}`  ",
        *([f"Code: git commit {describe_git(git)}  "] if git else []),
        f"Date: {meta['date']}; torch threads: 1; {meta['machine']['cpu_count']} cores; "
        f"load average when written: {meta['machine'].get('load_average_1min', '?')}  ",
        f"Versions: {versions}",
        "",
    ]
