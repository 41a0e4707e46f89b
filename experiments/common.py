"""Helpers shared by the experiment scripts: result files with command, versions and the
git commit of the code that made them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rlattr.versions import package_versions

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
# What a result depends on: the package, the experiment scripts (not their outputs), presets.
CODE_PATHS = ("rlattr", "experiments", "pyproject.toml", ":(exclude)experiments/results")


def git_state() -> dict[str, Any]:
    """``git rev-parse HEAD`` of the checkout, and whether the code differs from it.

    ``dirty`` is True when ``CODE_PATHS`` hold uncommitted or untracked changes; up to 20 of
    those paths are listed (``dirty_paths``, ``dirty_count`` counts them all). Outside a
    git checkout the commit reads ``"unknown"`` and ``dirty`` None.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--", *CODE_PATHS)
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None, "dirty_paths": [], "dirty_count": 0}
    paths = [line[3:] for line in status.splitlines() if line.strip()]
    return {
        "commit": commit,
        "dirty": bool(paths),
        "dirty_paths": paths[:20],
        "dirty_count": len(paths),
    }


# Taken when a script starts (it imports this module first): a long run's result names the
# code it ran, not whatever the checkout holds when the result is finally written.
GIT_AT_START = git_state()


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


def provenance() -> dict[str, Any]:
    """The command, code commit, versions and machine a result came from."""
    return {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git": GIT_AT_START,
        "versions": package_versions(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            # Timings taken beside other jobs are slower and noisier: say how busy it was.
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
    }


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
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


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def peak_rss_growth_mib(fn: Any) -> float:
    """Peak resident memory while ``fn()`` runs, above the resident memory before (MiB).

    On Linux the kernel's peak counter (VmHWM) is reset first (``/proc/self/clear_refs``),
    so an earlier, higher peak does not hide this one. Elsewhere it falls back to the
    growth of the lifetime peak, which reads 0 when an earlier step peaked higher.
    (tracemalloc cannot see torch's allocations.) Freed memory that the allocator kept
    from earlier steps is reused without showing up, so run it in a fresh process for a
    number to quote.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024
    except OSError:
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
