"""Shared by the bench_* scripts (and the tables of the other studies here): clocks, SB3's
PPO as the baseline, result files."""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stable_baselines3 import PPO

from rlattr import Preset
from rlattr.record import atomic_write_text


def parse_args(doc: str, **options: Any) -> argparse.Namespace:
    """The command line: ``name=default`` or ``name=(default, help)`` gives ``--name`` of the
    default's type; a list takes any number of values, ``False`` is a flag."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, spec in options.items():
        default, text = spec if isinstance(spec, tuple) else (spec, None)
        kwargs: dict[str, Any] = {"default": default, "help": text, "type": type(default)}
        if isinstance(default, bool):
            kwargs = {"action": "store_true", "help": text}
        elif isinstance(default, list):
            kwargs |= {"nargs": "*", "type": type(default[0]) if default else str}
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)
    return parser.parse_args()


def rollout_steps(preset: Preset) -> int:
    """Environment steps of one iteration (rollout) of the preset."""
    return preset.n_envs * preset.ppo.get("n_steps", 2048)


def sb3_ppo(preset: Preset, seed: int, cls: type[PPO] = PPO, **kwargs: Any) -> PPO:
    """Plain SB3 PPO with the preset's policy, environments and hyperparameters, on CPU."""
    return cls(
        preset.policy,
        preset.make_env(seed),
        seed=seed,
        device="cpu",
        policy_kwargs=preset.resolved_policy_kwargs(),
        **preset.ppo_kwargs(),
        **kwargs,
    )


def timed_learn(model: Any, steps: int) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``model.learn(steps)``; CPU time counts every thread
    (the run-log writer's too) and is less sensitive to other jobs than wall time."""
    start, cpu = time.perf_counter(), time.process_time()
    model.learn(steps)
    return time.perf_counter() - start, time.process_time() - cpu


def time_arms(
    preset: Preset, seeds: int, iterations: int, build: Mapping[str, Callable[[int, Path], Any]]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of ``learn`` per arm and seed; ``build[arm](seed, scratch)``
    makes the arm's model (``scratch``: an empty folder, removed afterwards). Every arm of
    a seed trains the same iterations from that seed; the arm order rotates by seed, so
    drift in the machine's load hits every arm alike."""
    arms = list(build)
    wall: dict[str, list[float]] = {arm: [] for arm in arms}
    cpu: dict[str, list[float]] = {arm: [] for arm in arms}
    for seed in range(seeds):
        shift = seed % len(arms)
        for arm in arms[shift:] + arms[:shift]:
            scratch = Path(tempfile.mkdtemp(prefix="bench-"))
            try:
                w, c = timed_learn(build[arm](seed, scratch), iterations * rollout_steps(preset))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            wall[arm].append(w)
            cpu[arm].append(c)
    return wall, cpu


def per_seed_ratio(num: Sequence[float], den: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation over seeds of ``num[i] / den[i]``."""
    ratios = [a / b for a, b in zip(num, den, strict=True)]
    return statistics.mean(ratios), statistics.stdev(ratios) if len(ratios) > 1 else 0.0


def table(header: str, rows: Iterable[str], sep: str = "") -> list[str]:
    """A Markdown table from ``"a | b | c"`` lines; ``sep`` replaces ``|---|---|---|``."""
    columns = header.count(" | ") + 1
    return [f"| {header} |", sep or "|" + "---|" * columns, *(f"| {row} |" for row in rows)]


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str] = ()) -> None:
    """The rows as CSV (columns ``fields``, default the first row's keys), one atomic write."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(fields or rows[0]), restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def write_markdown(path: Path, lines: Sequence[str]) -> None:
    """The lines, joined, as one atomic write."""
    atomic_write_text(path, "\n".join(lines) + "\n")
