"""Does averaging the metagradient over random removals predict subset removal better?

The metagradient is the exact derivative at w = 1, but removing a subset S moves w by a
finite step along 1_S, and where the update map is rough (ratio clipping, Adam) the
slope at w = 1 says little about that step (experiments/smoothness.py). The removal
effect is an integral of slopes, Δ_S = ∫₀¹ Σ_{i∈S} ∂f/∂w_i(1 − t·1_S) dt, so scores that
average the slope over points a removal actually visits may predict it better:

- ``metagrad``: ∂f/∂w at w = 1 (the exact derivative);
- ``removal-avg``: mean of ∂f/∂w at w = 1 − 1_{S'} over K random removal sets S' of the
  same fraction (points where records are gone);
- ``path-avg``: mean at w = 1 − t·1_{S'}, t ~ U(0, 1) (points along removal paths).

Each is compared by LDS against same-order leave-subset-out replay on fresh subsets
(not the S' used for averaging). One seed of a recorded run, return target.

    python experiments/smoothed_metagrad.py --preset lunarlander --draws 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, markdown_header, provenance, recorded_run
from rlattr import ReturnTarget
from rlattr.analysis import random_subsets, spearman, subset_effects
from rlattr.record import build_policy, load_iteration
from rlattr.scoring import metagradient_scores, target_context
from rlattr.training import Preset


def averaged_scores(data, policy, target, context, fraction, draws, path, seed) -> torch.Tensor:
    """Mean metagradient over ``draws`` random points w = 1 − t·1_{S'}."""
    generator = torch.Generator().manual_seed(seed)
    masks = random_subsets(len(data.records), draws, fraction, seed, data.plan.keep_mask)
    total = torch.zeros(len(data.records), dtype=torch.float64)
    for mask in masks:
        t = float(torch.rand((), generator=generator)) if path else 1.0
        at = 1.0 - t * mask.to(torch.float64)
        total += metagradient_scores(data, policy, target, context, at=at).scores.double()
    return total / draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lunarlander")
    parser.add_argument("--timesteps", type=int)
    parser.add_argument("--iterations", type=int, nargs="+", help="default: early and middle")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--subsets", type=int, default=48)
    parser.add_argument("--draws", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    preset = Preset.load(args.preset)
    if args.timesteps:
        preset = preset.with_overrides(total_timesteps=args.timesteps)
    log = recorded_run(preset, 0)
    recorded = log.iterations()
    iterations = args.iterations or [2, recorded[len(recorded) // 2]]
    policy = build_policy(log)
    target = ReturnTarget()
    rows = []
    for k in iterations:
        data = load_iteration(log, k)
        context = target_context(log, data.records)
        for fraction in args.fractions:
            # Evaluation subsets: seed 0, as the fidelity study; averaging draws: seed 1000+.
            removed = random_subsets(len(data.records), args.subsets, fraction, 0,
                                     data.plan.keep_mask)  # fmt: skip
            actual = subset_effects(data, policy, target, context, removed)
            seconds = {}
            start = time.perf_counter()
            scores = {"metagrad": metagradient_scores(data, policy, target, context).scores}
            seconds["metagrad"] = time.perf_counter() - start
            for name, path in (("removal-avg", False), ("path-avg", True)):
                start = time.perf_counter()
                scores[name] = averaged_scores(
                    data, policy, target, context, fraction, args.draws, path, 1000 + k
                )
                seconds[name] = time.perf_counter() - start
            for name, values in scores.items():
                predicted = np.array([float(values[m].sum()) for m in removed])
                row = {
                    "iteration": k,
                    "fraction": fraction,
                    "method": name,
                    "lds": spearman(predicted, actual),
                    "seconds": seconds[name],
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = provenance()
    out = RESULTS / f"smoothed_metagrad-{preset.name}.json"
    out.write_text(json.dumps({**meta, "draws": args.draws, "rows": rows}, indent=2) + "\n")
    lines = [
        *markdown_header(f"Averaged metagradients on {preset.name} (return target)", meta),
        f"{args.subsets} evaluation subsets per cell, same-order leave-subset-out; "
        f"K = {args.draws} averaging draws.",
        "",
        "| iteration | drop | metagrad LDS | removal-avg LDS | path-avg LDS |",
        "|---|---|---|---|---|",
    ]
    for k in iterations:
        for fraction in args.fractions:
            cell = {r["method"]: r["lds"] for r in rows
                    if r["iteration"] == k and r["fraction"] == fraction}  # fmt: skip
            lines.append(
                f"| {k} | {fraction:.0%} | {cell['metagrad']:+.3f} | "
                f"{cell['removal-avg']:+.3f} | {cell['path-avg']:+.3f} |"
            )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
