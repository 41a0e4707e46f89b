"""Fidelity study: snapshot and TracIn scores against leave-subset-out replay.

For a preset: train (or resume) a recorded run under experiments/runs/, then at an early,
a middle and a late iteration, and for the return target (same buffer) and an action
target, compute both scores and the ground truth Δ_S for random subsets (10 % of the
records by default) under the logged minibatch order and under independent orders
(the noise ceiling). Rows are appended to experiments/results/fidelity/<preset>.csv as
they finish, so an interrupted study resumes where it stopped.

    python experiments/fidelity.py --preset cartpole [--timesteps N] [--subsets 64]
    python experiments/fidelity.py --summarize        # markdown table + PNG from all CSVs

The action target: 64 states drawn (seeded) from the run's last recorded buffer, with the
action the *final* policy takes there deterministically — "which records of iteration k
pushed the agent toward what it finally does in these states".
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, provenance
from rlattr import ActionTarget, ReturnTarget, RunLog
from rlattr.attribution import target_context
from rlattr.checkpoint import restore_checkpoint
from rlattr.groundtruth import pearson, random_subsets, reshuffled_plan, spearman, subset_effects
from rlattr.influence import snapshot_scores, tracin_scores
from rlattr.presets import Preset
from rlattr.replay import build_policy, load_iteration

ROOT = Path(__file__).resolve().parent
OUT = RESULTS / "fidelity"
FIELDS = [
    "preset", "seed", "iteration", "stage", "target", "method", "subsets", "fraction",
    "lds", "pearson", "sign_agreement", "ceiling", "lds_mean_order", "score_seconds",
    "replay_seconds",
]  # fmt: skip


def _train(preset: Preset, seed: int) -> RunLog:
    run_dir = ROOT / "runs" / f"{preset.name}-s{seed}"
    model = preset.build(run_dir=run_dir, seed=seed, device="cpu", resume=True)
    remaining = preset.total_timesteps - model.num_timesteps
    if remaining > 0:
        print(f"training {preset.name} for {remaining} steps into {run_dir}", flush=True)
        model.learn(remaining, reset_num_timesteps=model.num_timesteps == 0)
    return RunLog(run_dir)


def _action_target(log: RunLog, n_states: int = 64) -> ActionTarget:
    last = log.iterations()[-1]
    records = log.load_records(last)
    policy = build_policy(log)
    tensors, meta = log.load_checkpoint(last + 1)
    restore_checkpoint(policy, tensors, meta)
    generator = torch.Generator().manual_seed(0)
    picks = torch.randperm(len(records), generator=generator)[:n_states]
    observations = records.observations[picks]
    with torch.no_grad():
        actions = policy.get_distribution(observations).get_actions(deterministic=True)
    return ActionTarget(observations, actions)


def _done_rows(path: Path) -> set[tuple[str, str, str]]:
    if not path.exists():
        return set()
    with open(path) as handle:
        return {(r["iteration"], r["target"], r["method"]) for r in csv.DictReader(handle)}


def study(args: argparse.Namespace) -> None:
    preset = Preset.load(args.preset)
    if args.timesteps:
        preset = preset.with_overrides(total_timesteps=args.timesteps)
    torch.set_num_threads(1)
    log = _train(preset, args.seed)
    iterations = log.iterations()
    # "late" is at 90 % of training, not the last iteration: a linear learning-rate
    # schedule (CartPole's) has decayed to ~0 there, and nothing is left to attribute.
    stages = {
        "early": 2,
        "middle": iterations[len(iterations) // 2],
        "late": iterations[int(0.9 * (len(iterations) - 1))],
    }
    targets = {"return": ReturnTarget(), "action": _action_target(log)}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{preset.name}.csv"
    done = _done_rows(path)
    policy = build_policy(log)
    for stage, k in stages.items():
        data = load_iteration(log, k)
        context = target_context(log, data.records)
        for target_name, target in targets.items():
            if all((str(k), target_name, m) in done for m in ("snapshot", "tracin")):
                continue
            start = time.perf_counter()
            restore_checkpoint(policy, data.start_tensors, data.start_meta)
            scores = {
                "snapshot": snapshot_scores(
                    policy, data.records, target, data.plan.loss_config, context
                ).double()
            }
            seconds = {"snapshot": time.perf_counter() - start}
            start = time.perf_counter()
            scores["tracin"] = tracin_scores(data, policy, target, context)
            seconds["tracin"] = time.perf_counter() - start

            removed = random_subsets(
                len(data.records), args.subsets, args.fraction, args.seed, data.plan.keep_mask
            )
            start = time.perf_counter()
            actual = subset_effects(data, policy, target, context, removed)
            generator = torch.Generator().manual_seed(args.seed + 1)
            others = []
            for _ in range(args.orders - 1):
                other = type(data)(
                    **{**data.__dict__, "plan": reshuffled_plan(data.plan, generator)}
                )
                others.append(subset_effects(other, policy, target, context, removed))
            replay_seconds = time.perf_counter() - start
            ceiling = spearman(actual, others[0]) if others else float("nan")
            mean_actual = np.mean([actual, *others], axis=0)
            with open(path, "a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=FIELDS)
                if handle.tell() == 0:
                    writer.writeheader()
                for method, values in scores.items():
                    predicted = np.array([float(values[m].sum()) for m in removed])
                    row = {
                        "preset": preset.name, "seed": args.seed, "iteration": k,
                        "stage": stage, "target": target_name, "method": method,
                        "subsets": args.subsets, "fraction": args.fraction,
                        "lds": spearman(predicted, actual),
                        "pearson": pearson(predicted, actual),
                        "sign_agreement": float(np.mean(np.sign(predicted) == np.sign(actual))),
                        "ceiling": ceiling,
                        "lds_mean_order": spearman(predicted, mean_actual),
                        "score_seconds": seconds[method], "replay_seconds": replay_seconds,
                    }  # fmt: skip
                    writer.writerow(row)
                    print(
                        f"{preset.name} {stage:6s} it {k:4d} {target_name:6s} {method:8s} "
                        f"LDS {row['lds']:+.3f} (ceiling {ceiling:+.3f}, vs mean order "
                        f"{row['lds_mean_order']:+.3f}) sign {row['sign_agreement']:.2f}",
                        flush=True,
                    )
    meta_path = OUT / f"{preset.name}.json"
    meta_path.write_text(json.dumps({**provenance(), "stages": stages}, indent=2) + "\n")


def summarize() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for path in sorted(OUT.glob("*.csv")):
        with open(path) as handle:
            rows.extend(csv.DictReader(handle))
    if not rows:
        raise SystemExit("no fidelity results yet")
    lines = [
        "# Fidelity of snapshot and TracIn scores (LDS against leave-subset-out replay)",
        "",
        "LDS = Spearman correlation over random subsets (fraction of the records removed "
        "from every minibatch of the logged plan) of Σ scores with the replayed Δ_S. "
        "Ceiling = Spearman of Δ_S under the logged order with Δ_S under an independent "
        "order. 'avg' = LDS against Δ_S averaged over the orders. Commands: see the JSON "
        "files beside the CSVs.",
        "",
        "| preset | stage (iteration) | target | snapshot LDS | TracIn LDS | ceiling | "
        "snapshot / TracIn LDS vs avg | sign agreement (snap / TracIn) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keyed = {}
    for r in rows:
        keyed.setdefault((r["preset"], r["stage"], r["iteration"], r["target"]), {})[
            r["method"]
        ] = r
    for (preset, stage, iteration, target), by_method in keyed.items():
        s, t = by_method.get("snapshot"), by_method.get("tracin")
        if not (s and t):
            continue
        lines.append(
            f"| {preset} | {stage} ({iteration}) | {target} | {float(s['lds']):+.3f} | "
            f"{float(t['lds']):+.3f} | {float(s['ceiling']):+.3f} | "
            f"{float(s['lds_mean_order']):+.3f} / {float(t['lds_mean_order']):+.3f} | "
            f"{float(s['sign_agreement']):.2f} / {float(t['sign_agreement']):.2f} |"
        )
    (RESULTS / "fidelity.md").write_text("\n".join(lines) + "\n")

    labels = [f"{p}\n{st} {tg}" for (p, st, _, tg) in keyed]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(labels)), 4.5))
    for offset, method in ((-0.2, "snapshot"), (0.2, "tracin")):
        values = [float(v.get(method, {}).get("lds", "nan")) for v in keyed.values()]
        ax.bar(x + offset, values, width=0.4, label=method)
    ceilings = [float(next(iter(v.values()))["ceiling"]) for v in keyed.values()]
    ax.scatter(x, ceilings, color="black", marker="_", s=300, label="ceiling (order noise)")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("LDS (Spearman)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylim(-1, 1)
    ax.legend(fontsize=8)
    ax.set_title("Score fidelity against leave-subset-out replay")
    fig.tight_layout()
    fig.savefig(RESULTS / "fidelity.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset")
    parser.add_argument("--timesteps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subsets", type=int, default=64)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--orders", type=int, default=2)
    parser.add_argument("--summarize", action="store_true")
    args = parser.parse_args()
    if args.summarize:
        summarize()
    elif args.preset:
        study(args)
    else:
        parser.error("give --preset or --summarize")


if __name__ == "__main__":
    main()
