"""Fidelity study: snapshot, TracIn and metagradient scores against leave-subset-out replay.

For a preset: train (or resume) a recorded run under experiments/runs/, then at an early,
a middle and a late iteration, and for the return target (same buffer) and an action
target, compute the three scores and the ground truth Δ_S for random subsets (1 %, 5 %
and 10 % of the records by default) under the logged minibatch order and under an
independent order (the noise ceiling). Rows are appended to
experiments/results/fidelity/<preset>.csv as they finish, so an interrupted study resumes
where it stopped.

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
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, final_action_target, provenance, recorded_run
from rlattr import ReturnTarget
from rlattr.analysis import pearson, random_subsets, reshuffled_plan, spearman, subset_effects
from rlattr.record import build_policy, load_iteration, restore_checkpoint
from rlattr.scoring import metagradient_scores, snapshot_scores, target_context, tracin_scores
from rlattr.training import Preset

ROOT = Path(__file__).resolve().parent
OUT = RESULTS / "fidelity"
FIELDS = [
    "preset", "seed", "iteration", "stage", "target", "method", "subsets", "fraction",
    "lds", "pearson", "sign_agreement", "ceiling", "lds_mean_order", "score_seconds",
    "replay_seconds",
]  # fmt: skip


METHODS = ("snapshot", "tracin", "metagrad")


def _done_rows(path: Path) -> set[tuple[str, str]]:
    if not path.exists():
        return set()
    with open(path) as handle:
        return {(r["iteration"], r["target"]) for r in csv.DictReader(handle)}


def _evaluate(args, preset_name, data, policy, target, context, scores, seconds, fraction,
              stage, target_name) -> list[dict]:  # fmt: skip
    """Ground truth for one fraction (logged order + independent orders) and every score."""
    removed = random_subsets(
        len(data.records), args.subsets, fraction, args.seed, data.plan.keep_mask
    )
    start = time.perf_counter()
    actual = subset_effects(data, policy, target, context, removed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    others = []
    for _ in range(args.orders - 1):
        other = type(data)(**{**data.__dict__, "plan": reshuffled_plan(data.plan, generator)})
        others.append(subset_effects(other, policy, target, context, removed))
    replay_seconds = time.perf_counter() - start
    ceiling = spearman(actual, others[0]) if others else float("nan")
    mean_actual = np.mean([actual, *others], axis=0)
    rows = []
    for method, values in scores.items():
        predicted = np.array([float(values[m].sum()) for m in removed])
        rows.append(
            {
                "preset": preset_name,
                "seed": args.seed,
                "iteration": data.iteration,
                "stage": stage,
                "target": target_name,
                "method": method,
                "subsets": args.subsets,
                "fraction": fraction,
                "lds": spearman(predicted, actual),
                "pearson": pearson(predicted, actual),
                "sign_agreement": float(np.mean(np.sign(predicted) == np.sign(actual))),
                "ceiling": ceiling,
                "lds_mean_order": spearman(predicted, mean_actual),
                "score_seconds": seconds[method],
                "replay_seconds": replay_seconds,
            }
        )
    return rows


def study(args: argparse.Namespace) -> None:
    preset = Preset.load(args.preset)
    if args.timesteps:
        preset = preset.with_overrides(total_timesteps=args.timesteps)
    torch.set_num_threads(1)
    log = recorded_run(preset, args.seed)
    iterations = log.iterations()
    # "late" is at 90 % of training, not the last iteration: a linear learning-rate
    # schedule (CartPole's) has decayed to ~0 there, and nothing is left to attribute.
    stages = {
        "early": 2,
        "middle": iterations[len(iterations) // 2],
        "late": iterations[int(0.9 * (len(iterations) - 1))],
    }
    targets = {"return": ReturnTarget(), "action": final_action_target(log)}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{preset.name}.csv"
    done = _done_rows(path)
    policy = build_policy(log)
    for stage, k in stages.items():
        data = load_iteration(log, k)
        context = target_context(log, data.records)
        for target_name, target in targets.items():
            if (str(k), target_name) in done:
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
            start = time.perf_counter()
            scores["metagrad"] = metagradient_scores(data, policy, target, context).scores
            seconds["metagrad"] = time.perf_counter() - start
            rows = []
            for fraction in args.fractions:
                rows.extend(
                    _evaluate(args, preset.name, data, policy, target, context, scores,
                              seconds, fraction, stage, target_name)
                )  # fmt: skip
            with open(path, "a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=FIELDS)
                if handle.tell() == 0:
                    writer.writeheader()
                for row in rows:
                    writer.writerow(row)
                    print(
                        f"{preset.name} {stage:6s} it {k:4d} {target_name:6s} "
                        f"{row['fraction']:.2f} {row['method']:8s} LDS {row['lds']:+.3f} "
                        f"(ceiling {row['ceiling']:+.3f}, vs mean order "
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
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["preset"], r["stage"], int(r["iteration"]), r["target"], float(r["fraction"]))
        keyed.setdefault(key, {})[r["method"]] = r
    lines = [
        "# Fidelity of snapshot, TracIn and metagradient scores",
        "",
        "LDS = Spearman correlation, over random subsets S of the iteration's records "
        "(removed from every minibatch of the logged plan), of the predicted Σ_{i∈S} score_i "
        "with the replayed Δ_S = f(θ_{k+1}) − f(θ_{k+1}^{−S}). Ceiling = Spearman of Δ_S "
        "under the logged order with Δ_S under an independent order (how much the ground "
        "truth itself depends on the minibatch order). Metagradient scores are exact for the "
        "logged order, so they can exceed the ceiling; snapshot and TracIn cannot be expected "
        "to. Command and versions: experiments/results/fidelity/<preset>.json.",
        "",
        "| preset | stage (iteration) | target | drop | snapshot | TracIn | metagrad | ceiling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (preset, stage, iteration, target, fraction), by in sorted(
        keyed.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][3], kv[0][4])
    ):
        cells = [f"{float(by[m]['lds']):+.3f}" if m in by else "–" for m in METHODS]
        ceiling = float(next(iter(by.values()))["ceiling"])
        lines.append(
            f"| {preset} | {stage} ({iteration}) | {target} | {fraction:.0%} | "
            + " | ".join(cells)
            + f" | {ceiling:+.3f} |"
        )
    lines += ["", *headline(keyed)]
    # Investigations (experiments/fidelity_regime.py) and their reading follow the table.
    for section in [*sorted(OUT.glob("regime-*.md")), *sorted(OUT.glob("why-*.md"))]:
        lines += ["", section.read_text().rstrip()]
    (RESULTS / "fidelity.md").write_text("\n".join(lines) + "\n")

    fractions = sorted({key[4] for key in keyed})
    fig, axes = plt.subplots(len(fractions), 1, figsize=(11, 3.2 * len(fractions)), squeeze=False)
    for ax, fraction in zip(axes[:, 0], fractions, strict=True):
        items = sorted(
            ((k, v) for k, v in keyed.items() if k[4] == fraction),
            key=lambda kv: (kv[0][0], kv[0][2], kv[0][3]),
        )
        labels = [f"{k[0]} {k[1]} {k[3]}" for k, _ in items]
        x = np.arange(len(items))
        for offset, method in zip((-0.27, 0.0, 0.27), METHODS, strict=True):
            values = [float(v[method]["lds"]) if method in v else np.nan for _, v in items]
            ax.bar(x + offset, values, width=0.27, label=method)
        ceilings = [float(next(iter(v.values()))["ceiling"]) for _, v in items]
        ax.scatter(x, ceilings, color="black", marker="_", s=200, label="ceiling")
        ax.set_xticks(x, labels, rotation=50, ha="right", fontsize=7)
        ax.set_ylim(-1, 1.05)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylabel(f"LDS, {fraction:.0%} drop")
    axes[0, 0].legend(fontsize=7, ncol=4)
    axes[0, 0].set_title("Score fidelity against leave-subset-out replay")
    fig.tight_layout()
    fig.savefig(RESULTS / "fidelity.png", dpi=110)


# Presets of the headline figures, in the README's order, with their labels there.
HEADLINE_PRESETS = {
    "minigrid_empty": "MiniGrid",
    "lunarlander_sgd": "LunarLander-SGD",
    "lunarlander": "LunarLander (Adam)",
    "hopper": "Hopper (Adam)",
    "cartpole": "CartPole",
}


def headline(keyed: dict[tuple, dict[str, dict]]) -> list[str]:
    """The study's headline figures (the README quotes them): per preset the median LDS of
    each method and the median ceiling over its cells, how often each method wins, and
    the spans of the two cells the README discusses."""
    cells = {(k[0], k[2], k[3], k[4]): v for k, v in keyed.items()}
    lds = lambda v, m: float(v[m]["lds"])  # noqa: E731
    ceiling = lambda v: float(v["snapshot"]["ceiling"])  # noqa: E731
    span = lambda xs, f=".2f": f"{min(xs):{f}} … {max(xs):{f}}"  # noqa: E731
    subsets = sorted({int(r["subsets"]) for v in cells.values() for r in v.values()})
    seeds = sorted({int(r["seed"]) for v in cells.values() for r in v.values()})
    rows = [
        ("random subsets per cell", f"{subsets[0]}–{subsets[-1]}"),
        ("seeds", ", ".join(map(str, seeds))),
    ]
    for preset, label in HEADLINE_PRESETS.items():
        mine = {k: v for k, v in cells.items() if k[0] == preset}
        medians = [statistics.median(lds(v, m) for v in mine.values()) for m in METHODS]
        iterations = ", ".join(map(str, sorted({k[1] for k in mine})))
        rows += [
            (
                f"{label}: median LDS snapshot / TracIn / metagrad over {len(mine)} cells "
                f"(iterations {iterations})",
                " / ".join(f"{m:.2f}" for m in medians),
            ),
            (f"{label}: median ceiling", f"{statistics.median(map(ceiling, mine.values())):.3f}"),
        ]
    tracin = sum(lds(v, "tracin") > lds(v, "snapshot") for v in cells.values())
    best = sum(
        lds(v, "metagrad") > max(lds(v, "tracin"), lds(v, "snapshot")) for v in cells.values()
    )
    rows += [
        ("cells where TracIn > snapshot", f"{tracin} of {len(cells)}"),
        ("cells where metagrad is the best of three", f"{best} of {len(cells)}"),
    ]
    for preset, label, iteration in (
        ("minigrid_empty", "MiniGrid", 43),
        ("cartpole", "CartPole", 195),
    ):
        chosen = [v for k, v in cells.items() if k[:3] == (preset, iteration, "return")]
        rows.append(
            (
                f"{label} iteration {iteration}, return target: LDS, all methods and drops",
                span([lds(v, m) for v in chosen for m in METHODS]),
            )
        )
        if preset == "minigrid_empty":
            rows.append(
                (
                    f"{label} iteration {iteration}, return target: ceilings",
                    span([ceiling(v) for v in chosen]),
                )
            )
    rows.append(
        (
            "CartPole: ceilings (one minibatch per epoch)",
            span([ceiling(v) for k, v in cells.items() if k[0] == "cartpole"], ".3f"),
        )
    )
    return [
        "## Headline figures",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {figure} | {value} |" for figure, value in rows),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset")
    parser.add_argument("--timesteps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subsets", type=int, default=64)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.1])
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
