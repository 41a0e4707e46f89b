"""Where a result came from: the command, the code's git commit, versions and machine.

Every result file rlattr or its experiments write carries ``provenance()``; a sweep trial
also keeps ``git_commit()`` (one line). One place, so every result names its code alike.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlattr.versions import package_versions

#: The repository rlattr is imported from (meaningful in a git checkout only).
ROOT = Path(__file__).resolve().parent.parent
#: What a result depends on: the package, the presets, the experiment scripts.
CODE_PATHS = (
    "rlattr", "agents", "envs", "experiments", "pyproject.toml", ":(exclude)experiments/results",
)  # fmt: skip


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout


def git_state(paths: Sequence[str] = CODE_PATHS) -> dict[str, Any]:
    """``git rev-parse HEAD`` of the checkout, and whether ``paths`` differ from it.

    ``dirty`` is True when ``paths`` hold uncommitted or untracked changes; up to 20 of
    them are listed (``dirty_paths``; ``dirty_count`` counts them all). Outside a git
    checkout (an installed wheel) the commit reads ``"unknown"`` and ``dirty`` None.
    """
    try:
        commit = _git("rev-parse", "HEAD").strip()
        status = _git("status", "--porcelain", "--", *paths)
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None, "dirty_paths": [], "dirty_count": 0}
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {
        "commit": commit,
        "dirty": bool(changed),
        "dirty_paths": changed[:20],
        "dirty_count": len(changed),
    }


def describe_git(state: dict[str, Any]) -> str:
    """``abc1234…`` plus ``(clean)`` or ``(+ uncommitted changes in N paths: …)``."""
    commit = state.get("commit", "unknown")
    if state.get("dirty") is None:
        return f"{commit} (cleanliness unknown)"
    if not state["dirty"]:
        return f"{commit} (clean)"
    shown = ", ".join(state["dirty_paths"][:5])
    more = state["dirty_count"] - min(5, len(state["dirty_paths"]))
    return f"{commit} (+ uncommitted changes in {state['dirty_count']} paths: {shown}" + (
        f", … {more} more)" if more > 0 else ")"
    )


def git_commit(paths: Sequence[str] = ("rlattr", "agents")) -> str:
    """HEAD in one line, marked ``(with uncommitted changes)`` if ``paths`` are modified;
    ``unknown`` outside a git checkout."""
    state = git_state(paths)
    if state["dirty"] is None:
        return "unknown"
    return state["commit"] + (" (with uncommitted changes)" if state["dirty"] else "")


def provenance(command: str | None = None, git: dict[str, Any] | None = None) -> dict[str, Any]:
    """The command, code commit, versions and machine a result came from.

    Args:
        command: the command that made the result (default: this process's, as typed).
        git: the git state to record (default: taken now; a long run passes the state it
            took at its start, so its result names the code it ran).
    """
    if command is None:
        script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
        command = " ".join(["python", script, *sys.argv[1:]])
    return {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git": git if git is not None else git_state(),
        "versions": package_versions(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            # Timings taken beside other jobs are slower and noisier: say how busy it was.
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
    }
