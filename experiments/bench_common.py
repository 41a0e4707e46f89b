"""Shared by the bench_* scripts (and the tables of the other studies here): clocks, SB3's
PPO as the baseline, one recorded iteration to score, fresh-process memory, result files."""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stable_baselines3 import PPO

from experiments.common import ROOT
from rlattr import Preset, RunLog
from rlattr.record import atomic_write_text, build_policy, load_iteration
from rlattr.scoring import target_context


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


class TimedPPO(PPO):
    """SB3's PPO with a stopwatch around ``train()`` (nothing else changes)."""

    train_seconds: list[float]

    def train(self) -> None:
        start = time.perf_counter()
        super().train()
        self.train_seconds.append(time.perf_counter() - start)


def sb3_train_seconds(preset: Preset, iterations: int) -> list[float]:
    """Seconds of each of SB3's ``PPO.train()`` calls over ``iterations`` (seed 0)."""
    model = sb3_ppo(preset, 0, cls=TimedPPO)
    model.train_seconds = []
    model.learn(iterations * rollout_steps(preset))
    return model.train_seconds


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


@contextmanager
def recorded_iteration(preset: Preset, prefix: str = "bench-") -> Iterator[tuple[Path, Any]]:
    """A run of the preset recorded for two iterations (seed 0, CPU), in a scratch folder
    removed afterwards: yields ``(run_dir, (data, policy, context))`` of iteration 1."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        preset.build(run_dir=scratch / "run", seed=0, device="cpu").learn(2 * rollout_steps(preset))
        log = RunLog(scratch / "run")
        data = load_iteration(log, 1)
        yield scratch / "run", (data, build_policy(log), target_context(log, data.records))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_CHILD = """
import sys, torch
sys.path.insert(0, {root!r})
from experiments.common import peak_rss_growth_mib
from rlattr import ReturnTarget, RunLog
from rlattr.record import build_policy, load_iteration
from rlattr.scoring import metagradient_scores, target_context
torch.set_num_threads(1)
log = RunLog({run!r})
data = load_iteration(log, 1)
policy = build_policy(log)
context = target_context(log, data.records)
print(peak_rss_growth_mib(lambda: metagradient_scores(data, policy, ReturnTarget(), context,
                                                      **{options!r})))
"""


def metagrad_rss_growth_mib(run_dir: Path, options: Mapping[str, Any]) -> float:
    """Resident-memory growth of one metagradient (return target, iteration 1) in a fresh
    process, in MiB: in this process an earlier, higher peak would hide it."""
    code = _CHILD.format(root=str(ROOT), run=str(run_dir), options=dict(options))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


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
