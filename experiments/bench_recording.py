"""Wall time of AttributedPPO with recording on vs SB3's PPO, side by side, same seeds.

Each round trains the same preset for the same number of iterations with the same seed
three ways: ``stable_baselines3.PPO`` writing TensorBoard logs (as a user would run it),
``rlattr.AttributedPPO`` recording every iteration into a run directory (which also holds
its TensorBoard logs), and ``AttributedPPO`` with no run directory and no TensorBoard
(the cost of the explicit update plan alone, against PPO without TensorBoard). The order
rotates between rounds to cancel drift. Ratios are of summed wall times (goal ≤ 1.05).

    python experiments/bench_recording.py [--presets cartpole lunarlander] [--seeds 3]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.bench_common import (
    parse_args,
    per_seed_ratio,
    sb3_ppo,
    table,
    time_arms,
    write_markdown,
)
from experiments.common import RESULTS, markdown_header, provenance, write_json
from rlattr import Preset
from rlattr.run import build_model

ITERATIONS = {"cartpole": 100, "lunarlander": 6, "minigrid_empty": 4, "hopper": 20}
RATIOS = {
    "recording_ratio": ("rlattr_recording", "ppo_tb"),
    "plan_only_ratio": ("rlattr_no_recording", "ppo_plain"),
}


def arms(preset: Preset) -> dict[str, Callable[[int, Path], Any]]:
    """How each arm's model is made from (seed, scratch folder); order as the arms rotate."""
    return {
        "ppo_tb": lambda s, tmp: sb3_ppo(preset, s, tensorboard_log=str(tmp / "tb")),
        "rlattr_recording": lambda s, tmp: build_model(
            preset, run_dir=tmp / "run", seed=s, device="cpu"
        ),
        "ppo_plain": lambda s, _: sb3_ppo(preset, s),
        "rlattr_no_recording": lambda s, _: build_model(preset, seed=s, device="cpu"),
    }


def main() -> None:
    args = parse_args(__doc__, presets=["cartpole", "lunarlander"], seeds=3)
    torch.set_num_threads(1)  # one core per run: less noise on a 2-core machine
    rows = []
    for name in args.presets:
        preset, iterations = Preset.load(name), ITERATIONS.get(name, 5)
        times, cpu = time_arms(preset, args.seeds, iterations, arms(preset))
        row = {"preset": name, "iterations": iterations, "seeds": args.seeds}
        row |= {"times_s": times, "cpu_s": cpu}
        for label, (num, den) in RATIOS.items():
            row[label] = sum(times[num]) / sum(times[den])
            row[label + "_cpu"] = sum(cpu[num]) / sum(cpu[den])
            row[label + "_per_seed_mean"], row[label + "_per_seed_std"] = per_seed_ratio(
                times[num], times[den]
            )
        rows.append(row)
        print(
            f"{name:14s} PPO+TB {sum(times['ppo_tb']):7.2f}s  rlattr recording "
            f"{sum(times['rlattr_recording']):7.2f}s  ratio {row['recording_ratio']:.3f} "
            f"(CPU time {row['recording_ratio_cpu']:.3f}) | plan only vs PPO: "
            f"{row['plan_only_ratio']:.3f} (CPU {row['plan_only_ratio_cpu']:.3f})",
            flush=True,
        )
    meta = provenance()
    write_json("bench_recording.json", {"rows": rows, **meta})
    header = (
        "preset | iterations × seeds | PPO + TensorBoard (s) | AttributedPPO recording (s) "
        "| **wall ratio** | per-seed wall ratio | CPU-time ratio | plan only ÷ plain PPO "
        "(wall / CPU)"
    )
    cells = [
        f"{r['preset']} | {r['iterations']} × {r['seeds']} | {sum(r['times_s']['ppo_tb']):.2f} "
        f"| {sum(r['times_s']['rlattr_recording']):.2f} | **{r['recording_ratio']:.3f}** | "
        f"{r['recording_ratio_per_seed_mean']:.3f} ± {r['recording_ratio_per_seed_std']:.3f} "
        f"| {r['recording_ratio_cpu']:.3f} | "
        f"{r['plan_only_ratio']:.3f} / {r['plan_only_ratio_cpu']:.3f}"
        for r in rows
    ]
    title = "Recording overhead: AttributedPPO (recording every iteration) ÷ SB3 PPO"
    write_markdown(
        RESULTS / "bench_recording.md",
        [*markdown_header(title, meta), *table(header, cells), "", "Goal: ratio ≤ 1.05."],
    )


if __name__ == "__main__":
    main()
