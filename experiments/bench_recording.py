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

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from stable_baselines3 import PPO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, markdown_header, provenance, write_json
from rlattr.training.presets import Preset

ITERATIONS = {"cartpole": 100, "lunarlander": 6, "minigrid_empty": 4, "hopper": 20}


VARIANTS = ("ppo_tb", "rlattr_recording", "ppo_plain", "rlattr_no_recording")


def _time_run(preset: Preset, seed: int, variant: str, iterations: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``learn``; CPU time includes the run-log
    writer thread and is less sensitive to other load on the machine than wall time."""
    rollout = preset.n_envs * preset.ppo.get("n_steps", 2048)
    kwargs = {
        "seed": seed,
        "device": "cpu",
        "policy_kwargs": preset.resolved_policy_kwargs(),
        **preset.ppo_kwargs(),
    }
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        if variant == "rlattr_recording":
            model = preset.build(run_dir=scratch / "run", seed=seed, device="cpu")
        elif variant == "rlattr_no_recording":
            model = preset.build(seed=seed, device="cpu")
        elif variant == "ppo_tb":
            env = preset.make_env(seed)
            model = PPO(preset.policy, env, tensorboard_log=str(scratch / "tb"), **kwargs)
        else:
            model = PPO(preset.policy, preset.make_env(seed), **kwargs)
        start, cpu_start = time.perf_counter(), time.process_time()
        model.learn(iterations * rollout)
        return time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cartpole", "lunarlander"])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per run: less noise on a 2-core machine

    rows = []
    for name in args.presets:
        preset = Preset.load(name)
        iterations = ITERATIONS.get(name, 5)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for seed in range(args.seeds):
            shift = seed % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                wall_s, cpu_s = _time_run(preset, seed, variant, iterations)
                times[variant].append(wall_s)
                cpu[variant].append(cpu_s)
        row = {
            "preset": name,
            "iterations": iterations,
            "seeds": args.seeds,
            "times_s": times,
            "cpu_s": cpu,
        }
        for label, num, den in (
            ("recording_ratio", "rlattr_recording", "ppo_tb"),
            ("plan_only_ratio", "rlattr_no_recording", "ppo_plain"),
        ):
            per_seed = [a / b for a, b in zip(times[num], times[den], strict=True)]
            row[label] = sum(times[num]) / sum(times[den])
            row[label + "_cpu"] = sum(cpu[num]) / sum(cpu[den])
            row[label + "_per_seed_mean"] = statistics.mean(per_seed)
            row[label + "_per_seed_std"] = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
        rows.append(row)
        print(
            f"{name:14s} PPO+TB {sum(times['ppo_tb']):7.2f}s  rlattr recording "
            f"{sum(times['rlattr_recording']):7.2f}s  ratio {row['recording_ratio']:.3f} "
            f"(per seed {row['recording_ratio_per_seed_mean']:.3f} ± "
            f"{row['recording_ratio_per_seed_std']:.3f}; CPU time {row['recording_ratio_cpu']:.3f})"
            f" | plan only vs PPO: {row['plan_only_ratio']:.3f} "
            f"(CPU {row['plan_only_ratio_cpu']:.3f})",
            flush=True,
        )

    meta = provenance()
    write_json("bench_recording.json", {"rows": rows, **meta})
    lines = [
        *markdown_header(
            "Recording overhead: AttributedPPO (recording every iteration) ÷ SB3 PPO", meta
        ),
        "| preset | iterations × seeds | PPO + TensorBoard (s) | AttributedPPO recording (s) "
        "| **wall ratio** | per-seed wall ratio | CPU-time ratio | plan only ÷ plain PPO "
        "(wall / CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t = row["times_s"]
        lines.append(
            f"| {row['preset']} | {row['iterations']} × {row['seeds']} | {sum(t['ppo_tb']):.2f} "
            f"| {sum(t['rlattr_recording']):.2f} | **{row['recording_ratio']:.3f}** | "
            f"{row['recording_ratio_per_seed_mean']:.3f} ± "
            f"{row['recording_ratio_per_seed_std']:.3f} | {row['recording_ratio_cpu']:.3f} | "
            f"{row['plan_only_ratio']:.3f} / {row['plan_only_ratio_cpu']:.3f} |"
        )
    lines += ["", "Goal: ratio ≤ 1.05."]
    (RESULTS / "bench_recording.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
