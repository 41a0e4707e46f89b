"""Helpers shared by the experiment scripts: result files with command, versions and the
git commit of the code that made them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlattr.provenance import describe_git, git_state
from rlattr.provenance import provenance as _provenance

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


def recorded_run(preset: Any, seed: int) -> Any:
    """The recorded run of ``preset`` on ``seed`` in experiments/runs/<preset>-s<seed>,
    trained first (or resumed to the preset's budget) where it is not complete."""
    from rlattr import RunLog

    run_dir = RESULTS.parent / "runs" / f"{preset.name}-s{seed}"
    model = preset.build(run_dir=run_dir, seed=seed, device="cpu", resume=True)
    remaining = preset.total_timesteps - model.num_timesteps
    if remaining > 0:
        print(f"training {preset.name} for {remaining} steps into {run_dir}", flush=True)
        model.learn(remaining, reset_num_timesteps=model.num_timesteps == 0)
    return RunLog(run_dir)


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
