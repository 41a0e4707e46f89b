"""Are the bottom-scored records the ones with a planted advantage error? (issue 12)

``rlattr/DelayedCredit-v0`` plants the error: with one-step GAE (λ = 0) the decision step
loses the delayed reward's credit and the payoff step gains it; ``info["rlattr_fault"]``
flags exactly those steps, and AttributedPPO records the flag per record. Each iteration
the records are scored on the return target (snapshot scores, ``ScoreHook``); we take the
k most harmful (lowest-scored) records, k = the number of flagged records, and measure
precision@k = the share of them that are flagged, against the base rate (flagged / N).
Goal (issue 12): precision@k ≥ 2 × the base rate.

    python experiments/planted_advantage_error.py [--seeds 3] [--iterations 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rlattr.envs  # noqa: F401  (registers rlattr/DelayedCredit-v0)

from experiments.common import RESULTS, markdown_header, provenance, write_json
from rlattr import AttributedPPO, ScoreHook

ENV = "rlattr.envs:rlattr/DelayedCredit-v0"


def run(seed: int, iterations: int) -> list[dict[str, float]]:
    hook = ScoreHook()
    model = AttributedPPO(
        "MlpPolicy", ENV, seed=seed, device="cpu", n_steps=256, batch_size=64, n_epochs=4,
        gae_lambda=0.0, record_hooks=[hook],
    )  # fmt: skip
    rows = []
    for k in range(iterations):
        model.learn(256, reset_num_timesteps=k == 0)
        flagged = model.last_ground_truth["rlattr_fault"].cpu()
        scores = hook.last_scores.detach().cpu()
        n_flagged = int(flagged.sum())
        if n_flagged == 0:
            continue
        bottom = torch.argsort(scores, stable=True)[:n_flagged]
        precision = float(flagged[bottom].double().mean())
        base = n_flagged / len(flagged)
        rows.append({"iteration": k, "precision": precision, "base_rate": base,
                     "lift": precision / base, "flagged": n_flagged})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    per_seed = {seed: run(seed, args.iterations) for seed in range(args.seeds)}
    lifts = [row["lift"] for rows in per_seed.values() for row in rows]
    summary = {
        "lift_mean": statistics.mean(lifts),
        "lift_median": statistics.median(lifts),
        "share_of_iterations_with_lift_2": sum(lift >= 2 for lift in lifts) / len(lifts),
        "base_rate_mean": statistics.mean(
            row["base_rate"] for rows in per_seed.values() for row in rows
        ),
    }
    meta = provenance()
    write_json("planted_advantage_error.json", {"per_seed": per_seed, "summary": summary, **meta})
    lines = [
        *markdown_header("Planted advantage error: precision@k of the most harmful records", meta),
        "Environment `rlattr/DelayedCredit-v0`, PPO with GAE λ = 0 (256 steps × 4 epochs × 64), "
        "snapshot scores on the return target; k = the number of flagged records.",
        "",
        "| seed | iterations | mean precision@k | mean base rate | mean lift "
        "| iterations with lift ≥ 2 |",
        "|---|---|---|---|---|---|",
    ]
    for seed, rows in per_seed.items():
        seed_lifts = [row["lift"] for row in rows]
        lines.append(
            f"| {seed} | {len(rows)} | {statistics.mean(r['precision'] for r in rows):.3f} | "
            f"{statistics.mean(r['base_rate'] for r in rows):.3f} | "
            f"{statistics.mean(seed_lifts):.2f} | {sum(x >= 2 for x in seed_lifts)}/{len(rows)} |"
        )
    lines += [
        "",
        f"All seeds: mean lift {summary['lift_mean']:.2f}, median {summary['lift_median']:.2f}; "
        f"lift ≥ 2 in {summary['share_of_iterations_with_lift_2']:.0%} of iterations "
        "(goal: precision@k ≥ 2 × the base rate).",
    ]
    (RESULTS / "planted_advantage_error.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-1:]))


if __name__ == "__main__":
    main()
