"""Wall time of AttributedPPO with recording on vs SB3's PPO, side by side, same seeds.

Each pair trains the same preset for the same number of iterations with the same seed,
once as ``stable_baselines3.PPO`` and once as ``rlattr.AttributedPPO`` recording every
iteration to a run directory; the order within a pair alternates to cancel drift. The
ratio of the summed wall times is the recording overhead (goal ≤ 1.05).

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

from experiments.common import RESULTS, provenance, write_json  # noqa: E402
from rlattr.presets import Preset  # noqa: E402

ITERATIONS = {"cartpole": 100, "lunarlander": 6, "minigrid_empty": 4, "hopper": 20}


def _time_run(preset: Preset, seed: int, attributed: bool, iterations: int) -> float:
    rollout = preset.n_envs * preset.ppo.get("n_steps", 2048)
    env = preset.make_env(seed)
    kwargs = {
        "seed": seed,
        "device": "cpu",
        "policy_kwargs": preset.resolved_policy_kwargs(),
        **preset.ppo_kwargs(),
    }
    run_dir = Path(tempfile.mkdtemp(prefix="bench-")) / "run"
    try:
        if attributed:
            model = preset.build(run_dir=run_dir, seed=seed, device="cpu")
        else:
            model = PPO(preset.policy, env, **kwargs)
        start = time.perf_counter()
        model.learn(iterations * rollout)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(run_dir.parent, ignore_errors=True)


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
        ppo_times, rlattr_times = [], []
        for seed in range(args.seeds):
            order = [False, True] if seed % 2 == 0 else [True, False]
            for attributed in order:
                elapsed = _time_run(preset, seed, attributed, iterations)
                (rlattr_times if attributed else ppo_times).append(elapsed)
        ratio = sum(rlattr_times) / sum(ppo_times)
        per_seed = [a / b for a, b in zip(rlattr_times, ppo_times, strict=True)]
        rows.append(
            {
                "preset": name,
                "iterations": iterations,
                "seeds": args.seeds,
                "ppo_s": ppo_times,
                "rlattr_s": rlattr_times,
                "ratio": ratio,
                "ratio_per_seed_mean": statistics.mean(per_seed),
                "ratio_per_seed_std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
            }
        )
        print(
            f"{name:16s} PPO {sum(ppo_times):7.2f}s  AttributedPPO+recording "
            f"{sum(rlattr_times):7.2f}s  ratio {ratio:.3f} "
            f"(per seed {statistics.mean(per_seed):.3f} ± {rows[-1]['ratio_per_seed_std']:.3f})",
            flush=True,
        )

    meta = provenance()
    write_json("bench_recording.json", {"rows": rows, **meta})
    lines = [
        "# Recording overhead: AttributedPPO (recording every iteration) ÷ SB3 PPO",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; torch threads: 1; machine: {meta['machine']['cpu_count']} cores",
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
        "",
        "| preset | iterations × seeds | PPO total (s) | AttributedPPO total (s) | ratio | "
        "per-seed ratio (mean ± std) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['preset']} | {row['iterations']} × {row['seeds']} | {sum(row['ppo_s']):.2f} "
            f"| {sum(row['rlattr_s']):.2f} | **{row['ratio']:.3f}** | "
            f"{row['ratio_per_seed_mean']:.3f} ± {row['ratio_per_seed_std']:.3f} |"
        )
    lines += ["", "Goal: ratio ≤ 1.05."]
    (RESULTS / "bench_recording.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
