"""IIF overhead: wall time per iteration of AttributedPPO with IIF ÷ SB3 PPO, side by side.

Both arms train the same preset for the same number of iterations from the same seeds,
without run directory or TensorBoard (the cost of scoring and filtering alone). IIF uses
the preset's settings (default: neg_bottom p = 0.125, snapshot scores, return target).
The arm order alternates between seeds. Goal: ratio ≤ 1.10.

    python experiments/bench_iif.py [--presets cartpole lunarlander] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from stable_baselines3 import PPO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, markdown_header, provenance, write_json
from rlattr.training.presets import Preset

ITERATIONS = {"cartpole": 60, "lunarlander": 5, "minigrid_empty": 3, "hopper": 20}


def _time(preset: Preset, seed: int, arm: str, iterations: int) -> tuple[float, float]:
    if arm == "iif":
        model = preset.build(seed=seed, device="cpu", iif=True)
    else:
        model = PPO(
            preset.policy,
            preset.make_env(seed),
            seed=seed,
            device="cpu",
            policy_kwargs=preset.resolved_policy_kwargs(),
            **preset.ppo_kwargs(),
        )
    steps = iterations * preset.n_envs * preset.ppo.get("n_steps", 2048)
    start, cpu = time.perf_counter(), time.process_time()
    model.learn(steps)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cartpole", "lunarlander"])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.presets:
        preset = Preset.load(name)
        iterations = ITERATIONS.get(name, 5)
        wall: dict[str, list[float]] = {"ppo": [], "iif": []}
        cpu: dict[str, list[float]] = {"ppo": [], "iif": []}
        for seed in range(args.seeds):
            for arm in ("ppo", "iif") if seed % 2 == 0 else ("iif", "ppo"):
                w, c = _time(preset, seed, arm, iterations)
                wall[arm].append(w)
                cpu[arm].append(c)
        per_seed = [a / b for a, b in zip(wall["iif"], wall["ppo"], strict=True)]
        row = {
            "preset": name,
            "iterations": iterations,
            "seeds": args.seeds,
            "wall_s": wall,
            "cpu_s": cpu,
            "ratio": sum(wall["iif"]) / sum(wall["ppo"]),
            "ratio_cpu": sum(cpu["iif"]) / sum(cpu["ppo"]),
            "ratio_per_seed_mean": statistics.mean(per_seed),
            "ratio_per_seed_std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
        }
        rows.append(row)
        print(
            f"{name:14s} PPO {sum(wall['ppo']) / (iterations * args.seeds):.3f} s/it, IIF "
            f"{sum(wall['iif']) / (iterations * args.seeds):.3f} s/it: ratio {row['ratio']:.3f} "
            f"(CPU {row['ratio_cpu']:.3f}; per seed {row['ratio_per_seed_mean']:.3f} ± "
            f"{row['ratio_per_seed_std']:.3f})",
            flush=True,
        )
    meta = provenance()
    write_json("bench_iif.json", {"rows": rows, **meta})
    lines = [
        *markdown_header(
            "IIF overhead: seconds per iteration, AttributedPPO + IIF ÷ SB3 PPO", meta
        ),
        "| preset | iterations × seeds | PPO s/iteration | IIF s/iteration | **wall ratio** "
        "| CPU ratio | per-seed ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["iterations"] * r["seeds"]
        cells = [
            r["preset"],
            f"{r['iterations']} × {r['seeds']}",
            f"{sum(r['wall_s']['ppo']) / n:.3f}",
            f"{sum(r['wall_s']['iif']) / n:.3f}",
            f"**{r['ratio']:.3f}**",
            f"{r['ratio_cpu']:.3f}",
            f"{r['ratio_per_seed_mean']:.3f} ± {r['ratio_per_seed_std']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Goal: ratio ≤ 1.10."]
    (RESULTS / "bench_iif.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
