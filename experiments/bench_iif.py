"""IIF overhead: wall time per iteration of AttributedPPO with IIF ÷ SB3 PPO, side by side.

Both arms train the same preset for the same number of iterations from the same seeds,
without run directory or TensorBoard (the cost of scoring and filtering alone). IIF uses
the preset's settings (default: neg_bottom p = 0.125, snapshot scores, return target).
The arm order alternates between seeds. Goal: ratio ≤ 1.10.

    python experiments/bench_iif.py [--presets cartpole lunarlander] [--seeds 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

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

ARMS = ("ppo", "iif")
ITERATIONS = {"cartpole": 60, "lunarlander": 5, "minigrid_empty": 3, "hopper": 20}


def main() -> None:
    args = parse_args(__doc__, presets=["cartpole", "lunarlander"], seeds=3)
    torch.set_num_threads(1)
    rows = []
    for name in args.presets:
        preset, iterations = Preset.load(name), ITERATIONS.get(name, 5)
        wall, cpu = time_arms(
            preset,
            args.seeds,
            iterations,
            {
                "ppo": lambda seed, _, p=preset: sb3_ppo(p, seed),
                "iif": lambda seed, _, p=preset: p.build(seed=seed, device="cpu", iif=True),
            },
        )
        mean, std = per_seed_ratio(wall["iif"], wall["ppo"])
        n = iterations * args.seeds
        r = {"preset": name, "iterations": iterations, "seeds": args.seeds, "wall_s": wall}
        r |= {"cpu_s": cpu, "ratio": sum(wall["iif"]) / sum(wall["ppo"])}
        r |= {"ratio_cpu": sum(cpu["iif"]) / sum(cpu["ppo"])}
        rows.append(r | {"ratio_per_seed_mean": mean, "ratio_per_seed_std": std})
        print(
            f"{name:14s} PPO {sum(wall['ppo']) / n:.3f} s/it, IIF {sum(wall['iif']) / n:.3f} "
            f"s/it: ratio {r['ratio']:.3f} (CPU {r['ratio_cpu']:.3f}; per seed {mean:.3f} ± "
            f"{std:.3f})",
            flush=True,
        )
    meta = provenance()
    write_json("bench_iif.json", {"rows": rows, **meta})
    header = (
        "preset | iterations × seeds | PPO s/iteration | IIF s/iteration | **wall ratio** "
        "| CPU ratio | per-seed ratio"
    )
    cells = [
        f"{r['preset']} | {r['iterations']} × {r['seeds']} | "
        + " | ".join(f"{sum(r['wall_s'][a]) / r['iterations'] / r['seeds']:.3f}" for a in ARMS)
        + f" | **{r['ratio']:.3f}** | {r['ratio_cpu']:.3f} "
        f"| {r['ratio_per_seed_mean']:.3f} ± {r['ratio_per_seed_std']:.3f}"
        for r in rows
    ]
    title = "IIF overhead: seconds per iteration, AttributedPPO + IIF ÷ SB3 PPO"
    write_markdown(
        RESULTS / "bench_iif.md",
        [*markdown_header(title, meta), *table(header, cells), "", "Goal: ratio ≤ 1.10."],
    )


if __name__ == "__main__":
    main()
