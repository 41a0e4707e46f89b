"""Live cost of the TensorBoard diagnostics: seconds per iteration with them on ÷ off.

Both arms train the same preset with IIF (snapshot scores, the preset's rule), a run
directory and TensorBoard, from the same seeds, for the same number of iterations; the
only difference is ``BoardConfig(diagnostics=...)``: on = score quantiles, advantage
diagnosis, normalised histograms and (every ``details_every`` iterations, default 25)
the score-vs-advantage image and the record table; off = the time and filter scalars
only. The arm order alternates between seeds. Goal (issue 12): ratio ≤ 1.05.

    python experiments/bench_board.py [--presets cartpole lunarlander] [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, markdown_header, provenance, write_json
from rlattr.training.board import BoardConfig
from rlattr.training.presets import Preset

ITERATIONS = {"cartpole": 60, "lunarlander": 10, "acrobot_paper": 10, "frozenlake": 20}
ARMS = ("off", "on")


def _time(preset: Preset, seed: int, arm: str, iterations: int) -> tuple[float, float]:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-board-"))
    try:
        model = preset.build(
            run_dir=run_dir / "run",
            seed=seed,
            device="cpu",
            iif=True,
            board=BoardConfig(diagnostics=arm == "on"),
        )
        steps = iterations * preset.n_envs * preset.ppo.get("n_steps", 2048)
        start, cpu = time.perf_counter(), time.process_time()
        model.learn(steps)
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cartpole", "lunarlander"])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.presets:
        preset = Preset.load(name)
        iterations = ITERATIONS.get(name, 10)
        wall: dict[str, list[float]] = {arm: [] for arm in ARMS}
        cpu: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for seed in range(args.seeds):
            for arm in ARMS if seed % 2 == 0 else ARMS[::-1]:
                w, c = _time(preset, seed, arm, iterations)
                wall[arm].append(w)
                cpu[arm].append(c)
        per_seed = [a / b for a, b in zip(wall["on"], wall["off"], strict=True)]
        row = {
            "preset": name,
            "iterations": iterations,
            "seeds": args.seeds,
            "wall_s": wall,
            "cpu_s": cpu,
            "ratio": sum(wall["on"]) / sum(wall["off"]),
            "ratio_cpu": sum(cpu["on"]) / sum(cpu["off"]),
            "ratio_per_seed_mean": statistics.mean(per_seed),
            "ratio_per_seed_std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
            "load_average": os.getloadavg(),
        }
        rows.append(row)
        n = iterations * args.seeds
        print(
            f"{name:14s} off {sum(wall['off']) / n:.3f} s/it, on {sum(wall['on']) / n:.3f} s/it: "
            f"ratio {row['ratio']:.3f} (CPU {row['ratio_cpu']:.3f}; per seed "
            f"{row['ratio_per_seed_mean']:.3f} ± {row['ratio_per_seed_std']:.3f}; load "
            f"{row['load_average'][0]:.1f})",
            flush=True,
        )
    meta = provenance()
    write_json("bench_board.json", {"rows": rows, **meta})
    lines = [
        *markdown_header("Live diagnostics: seconds per iteration, on ÷ off", meta),
        "| preset | iterations × seeds | off s/iteration | on s/iteration | **wall ratio** "
        "| CPU ratio | per-seed ratio | load (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["iterations"] * r["seeds"]
        cells = [
            r["preset"],
            f"{r['iterations']} × {r['seeds']}",
            f"{sum(r['wall_s']['off']) / n:.3f}",
            f"{sum(r['wall_s']['on']) / n:.3f}",
            f"**{r['ratio']:.3f}**",
            f"{r['ratio_cpu']:.3f}",
            f"{r['ratio_per_seed_mean']:.3f} ± {r['ratio_per_seed_std']:.3f}",
            f"{r['load_average'][0]:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Goal: ratio ≤ 1.05 (issue 12). The CPU ratio is the less load-sensitive figure on a "
        "shared machine.",
    ]
    (RESULTS / "bench_board.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
