"""Live cost of the TensorBoard diagnostics: seconds per iteration with them on ÷ off.

Every arm trains the same preset with IIF (snapshot scores, the preset's rule), a run
directory and TensorBoard, from the same seed, for the same number of iterations; only
the ``BoardConfig`` differs: on = score quantiles, advantage diagnosis, normalised
histograms and (every ``details_every`` iterations, default 25) the score-vs-advantage
image and the record table; off = the time and filter scalars only. Goal (issue 12):
on ÷ off ≤ 1.05. A third arm adds the optional live fidelity check (``fidelity_every``,
off by default) to "on", to state what it costs.

Repeats are interleaved (the arm order rotates from one repeat to the next), so drift in
the machine's load hits every arm alike, and the median over repeats of the per-repeat
ratio is reported. On a shared machine whole-run ratios are noisy (other jobs come and go
within a repeat), so the board's own time is also measured inside each run (the CPU and
wall seconds spent in ``Board.write_iteration``): its on − off difference over the off
arm's run time is the diagnostics' share with the noise of the rest of the iteration
taken out.

The image's drawing module (Pillow and its font) is loaded before any arm runs: whichever
arm came first would otherwise pay the load (a once-per-process cost, measured separately
in a fresh interpreter and reported beside the ratios, not folded into a per-iteration
figure).

    python experiments/bench_board.py [--presets cartpole frozenlake] [--repeats 7]
        [--fidelity-every 25]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.bench_common import parse_args, rollout_steps, table, timed_learn, write_markdown
from experiments.common import RESULTS, markdown_header, provenance, write_json
from rlattr import Preset
from rlattr.training import BoardConfig
from rlattr.training.board import Board
from rlattr.training.score_plot import ScoreAdvantagePlot

# CartPole: 100 iterations so the images land at the default rate (iterations 0, 25, 50, 75).
ITERATIONS = {"cartpole": 100, "lunarlander": 10, "acrobot_paper": 10, "frozenlake": 25}
ARMS = ("off", "on", "fidelity")
# What the first image costs in a fresh interpreter: Pillow's import and the font.
COLD_START = """
import time
from rlattr.training.score_plot import ScoreAdvantagePlot
t = time.perf_counter(); c = time.process_time()
ScoreAdvantagePlot()
print(time.perf_counter() - t, time.process_time() - c)
"""


@contextmanager
def _board_timer(totals: dict[str, float]) -> Iterator[None]:
    """Adds the wall and CPU seconds spent in ``Board.write_iteration`` to ``totals``."""
    original = Board.write_iteration

    def timed(self: Board, *args: object, **kwargs: object) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        original(self, *args, **kwargs)
        totals["wall"] += time.perf_counter() - wall
        totals["cpu"] += time.process_time() - cpu

    Board.write_iteration = timed  # type: ignore[method-assign]
    try:
        yield
    finally:
        Board.write_iteration = original  # type: ignore[method-assign]


def _time(preset: Preset, seed: int, arm: str, iterations: int, fidelity_every: int) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-board-"))
    totals = {"wall": 0.0, "cpu": 0.0}
    board = (
        BoardConfig(fidelity_every=fidelity_every)
        if arm == "fidelity"
        else BoardConfig(diagnostics=arm == "on")
    )
    try:
        model = preset.build(
            run_dir=run_dir / "run", seed=seed, iif=True, board=board, device="cpu"
        )
        with _board_timer(totals):
            wall_s, cpu_s = timed_learn(model, iterations * rollout_steps(preset))
        return {
            "wall_s": wall_s,
            "cpu_s": cpu_s,
            "board_wall_s": totals["wall"],
            "board_cpu_s": totals["cpu"],
            "load": os.getloadavg()[0],
        }
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _summarise(name: str, iterations: int, runs: list[dict], fidelity_every: int) -> dict:
    def ratios(key: str, arm: str = "on", base: str = "off") -> list[float]:
        return [r[arm][key] / r[base][key] for r in runs]

    def per_iteration(arm: str, key: str) -> float:
        return statistics.median(r[arm][key] for r in runs) / iterations

    def share(key: str) -> float:  # the board's extra time, over the off arm's run time
        on, off = f"board_{key}_s", f"{key}_s"
        return statistics.median((r["on"][on] - r["off"][on]) / r["off"][off] for r in runs)

    checks = len(range(0, iterations, fidelity_every))
    return {
        "preset": name,
        "iterations": iterations,
        "repeats": len(runs),
        "runs": runs,
        "ratio_wall_median": statistics.median(ratios("wall_s")),
        "ratio_cpu_median": statistics.median(ratios("cpu_s")),
        "ratio_wall_iqr": _iqr(ratios("wall_s")),
        "ratio_cpu_iqr": _iqr(ratios("cpu_s")),
        "board_share_wall_median": share("wall"),
        "board_share_cpu_median": share("cpu"),
        "s_per_iteration": {arm: per_iteration(arm, "wall_s") for arm in ARMS},
        "board_ms_per_iteration": {
            arm: {k: 1000 * per_iteration(arm, f"board_{k}_s") for k in ("wall", "cpu")}
            for arm in ARMS
        },
        "load_median": statistics.median(r[a]["load"] for r in runs for a in ARMS),
        # The optional fidelity check, against diagnostics on without it.
        "fidelity_every": fidelity_every,
        "fidelity_ratio_wall_median": statistics.median(ratios("wall_s", "fidelity", "on")),
        "fidelity_ratio_cpu_median": statistics.median(ratios("cpu_s", "fidelity", "on")),
        "fidelity_s_per_check": statistics.median(
            (r["fidelity"]["board_wall_s"] - r["on"]["board_wall_s"]) / checks for r in runs
        ),
    }


def _iqr(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def markdown(rows: list[dict], cold: dict[str, float], meta: dict[str, Any]) -> list[str]:
    every = rows[0]["fidelity_every"]
    header = (
        "preset | iterations × repeats | off s/iteration | on s/iteration "
        "| **wall ratio** (median, IQR) | CPU ratio (median, IQR) "
        "| board ms/iteration on (off), CPU | **board share** CPU / wall | load (median)"
    )
    cost = []
    for r in rows:
        board, per_iteration = r["board_ms_per_iteration"], r["s_per_iteration"]
        (w0, w1), (c0, c1) = r["ratio_wall_iqr"], r["ratio_cpu_iqr"]
        cost.append(
            f"{r['preset']} | {r['iterations']} × {r['repeats']} | {per_iteration['off']:.3f} "
            f"| {per_iteration['on']:.3f} | **{r['ratio_wall_median']:.3f}** ({w0:.3f}–{w1:.3f}) "
            f"| {r['ratio_cpu_median']:.3f} ({c0:.3f}–{c1:.3f}) "
            f"| {board['on']['cpu']:.2f} ({board['off']['cpu']:.2f}) "
            f"| **{r['board_share_cpu_median']:.1%}** / {r['board_share_wall_median']:.1%} "
            f"| {r['load_median']:.1f}"
        )
    fidelity = [
        f"{r['preset']} | {r['fidelity_ratio_wall_median']:.3f} "
        f"| {r['fidelity_ratio_cpu_median']:.3f} | {r['fidelity_s_per_check']:.3f} "
        f"| {len(range(0, r['iterations'], every))} | {r['s_per_iteration']['off']:.3f}"
        for r in rows
    ]
    return [
        *markdown_header("Live diagnostics: seconds per iteration, on ÷ off", meta),
        *table(header, cost),
        "",
        f"**Optional live fidelity check** (`BoardConfig(fidelity_every={every})`, "
        "8 subsets, no ceiling; off by default), against diagnostics on without it:",
        "",
        *table(
            "preset | wall ratio (median) | CPU ratio (median) | seconds per check "
            "| checks per run | off s/iteration",
            fidelity,
        ),
        "",
        "Goal: ratio ≤ 1.05 (issue 12). Ratios are medians over interleaved off/on pairs "
        "(same seed within a pair). *Board share* = (board time on − board time off) ÷ the "
        "off arm's run time, per pair, median: the diagnostics' own cost, measured inside "
        "the run, so the noise of the rest of the iteration on a shared machine drops out.",
        "",
        f"Once per process, not per iteration: the first image imports Pillow and loads its "
        f"font, {cold['wall_s']:.3f} s wall ({cold['cpu_s']:.3f} s CPU) in a fresh "
        "interpreter. It is paid before the arms here; in a real run it lands on iteration 0.",
    ]


def main() -> None:
    args = parse_args(
        __doc__,
        presets=["cartpole", "frozenlake"],
        repeats=(7, "interleaved off/on pairs"),
        fidelity_every=(25, "the fidelity arm's fidelity_every"),
    )
    torch.set_num_threads(1)
    out = subprocess.run([sys.executable, "-c", COLD_START], capture_output=True, check=True)
    cold = dict(zip(("wall_s", "cpu_s"), map(float, out.stdout.split()), strict=True))
    ScoreAdvantagePlot()  # the import, once, before any arm (see the docstring)
    rows = []
    for name in args.presets:
        preset, iterations = Preset.load(name), ITERATIONS.get(name, 10)
        runs = []
        for repeat in range(args.repeats):
            # Same seed in every arm of a repeat; the order rotates between repeats.
            order = ARMS[repeat % 3 :] + ARMS[: repeat % 3]
            runs.append(
                {arm: _time(preset, repeat, arm, iterations, args.fidelity_every) for arm in order}
            )
            on, off = runs[-1]["on"], runs[-1]["off"]
            print(
                f"{name} repeat {repeat}: wall ratio {on['wall_s'] / off['wall_s']:.3f}, "
                f"CPU ratio {on['cpu_s'] / off['cpu_s']:.3f}; load {on['load']:.1f}",
                flush=True,
            )
        rows.append(_summarise(name, iterations, runs, args.fidelity_every))
    meta = provenance()
    write_json("bench_board.json", {"rows": rows, "cold_start": cold, **meta})
    write_markdown(RESULTS / "bench_board.md", markdown(rows, cold, meta))


if __name__ == "__main__":
    main()
