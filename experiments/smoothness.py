"""Is the update map w ↦ f(θ_{k+1}(w)) smooth enough for derivatives to predict removals?

For one logged iteration, random 1 % subsets S, and step sizes h, the secant
(f(θ_{k+1}(1)) − f(θ_{k+1}(1 − h·1_S))) / h is compared with the exact metagradient
Σ_{i∈S} ∂f/∂w_i: h = 1 is removing S, small h the derivative. Run with the logged PPO
loss and with ratio clipping switched off (clip_range → ∞) in both replay and metagradient.

    python experiments/smoothness.py --run experiments/runs/lunarlander-s0 --iteration 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, markdown_header, provenance
from rlattr import ReturnTarget, RunLog
from rlattr.analysis import random_subsets
from rlattr.record import build_policy, load_iteration, replay
from rlattr.scoring import metagradient_scores, target_context

STEPS = (1.0, 0.1, 0.01, 0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--iteration", type=int, required=True)
    parser.add_argument("--subsets", type=int, default=4)
    parser.add_argument("--fraction", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(1)
    log = RunLog(args.run)
    data = load_iteration(log, args.iteration)
    context = target_context(log, data.records)
    target = ReturnTarget()
    policy = build_policy(log)
    logged = data.plan.loss_config
    results = []
    for label, config in (
        ("logged PPO loss", logged),
        ("ratio clipping off", dataclasses.replace(logged, clip_range=1e6)),
    ):
        data.plan = dataclasses.replace(data.plan, loss_config=config)
        exact = metagradient_scores(data, policy, target, context).scores
        replay(data, policy)
        with torch.no_grad():
            full = float(target.value(policy, context))
        for index, mask in enumerate(
            random_subsets(len(data.records), args.subsets, args.fraction, 0)
        ):
            secants = {}
            for h in STEPS:
                weights = torch.ones(len(mask), dtype=torch.float64) - h * mask.double()
                replay(data, policy, record_weights=weights)
                with torch.no_grad():
                    secants[h] = (full - float(target.value(policy, context))) / h
            results.append(
                {
                    "loss": label,
                    "subset": index,
                    "metagradient": float(exact[mask].sum()),
                    **{f"h={h:g}": v for h, v in secants.items()},
                }
            )
            print(results[-1], flush=True)
    meta = provenance()
    name = f"smoothness-{Path(args.run).name}-it{args.iteration}"
    (RESULTS / f"{name}.json").write_text(json.dumps({**meta, "rows": results}, indent=2) + "\n")
    lines = markdown_header(
        f"Secants vs exact metagradient, {Path(args.run).name}, iteration {args.iteration}", meta
    )
    lines += [
        f"Subsets of {args.fraction:.0%} of the records; secant = (f(1) − f(1 − h·1_S)) / h; "
        "h = 1 is removing S. All in float32 replays.",
        "",
        "| loss | subset | metagradient | " + " | ".join(f"h = {h:g}" for h in STEPS) + " |",
        "|---|---|---|" + "---|" * len(STEPS),
    ]
    for r in results:
        cells = " | ".join(f"{r[f'h={h:g}']:+.3e}" for h in STEPS)
        lines.append(f"| {r['loss']} | {r['subset']} | {r['metagradient']:+.3e} | {cells} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
