"""Why the return target's LDS turns negative on CartPole at iteration 195 (issue 12.6).

The fidelity study (experiments/fidelity.py, results/fidelity.md) found every method's LDS
for the return target at about −0.58 there, against a ceiling of 1 (CartPole's update is
one 256-record minibatch per epoch, so the minibatch order does not matter). This script
takes that iteration apart. It replays the same update with one of PPO's non-linear,
whole-minibatch mechanisms switched off, and each time computes both the snapshot scores
and the leave-subset-out ground truth under that loss. The mechanisms are gradient-norm
clipping (``max_grad_norm``), per-minibatch advantage normalisation and the ratio clip.
If the LDS comes back positive with one mechanism off, that mechanism is what removal
does and the derivative misses. Beside it, the facts of the iteration: the gradient norms
against the clip threshold, the size of the update's effect on f, and how Δ_S relates to
the removed records' own advantages.

    python experiments/fidelity_regime.py [--preset cartpole] [--iteration 195] [--subsets 64]
    python experiments/fidelity_regime.py --scan 50 100 150 195 250 300 351 --subsets 32

Needs the fidelity study's recorded run (experiments/runs/<preset>-s0, trained by
``python experiments/fidelity.py --preset cartpole`` or on first use here, same seed and
steps). Writes experiments/results/fidelity/regime-<preset>-<iteration>.json and
.md; ``python experiments/fidelity.py --summarize`` appends the .md to fidelity.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, describe_git, provenance, recorded_run
from rlattr import ReturnTarget
from rlattr.analysis import random_subsets, spearman, subset_effects
from rlattr.record import IterationData, build_policy, load_iteration, replay, restore_checkpoint
from rlattr.scoring import snapshot_scores, target_context
from rlattr.training import Preset

OUT = RESULTS / "fidelity"
FROZEN = "normalisation statistics frozen"
SMALL_STEPS = "learning rate ÷ 10"
#: name → changes to the iteration's loss config (applied to scores and replays alike).
VARIANTS: dict[str, dict[str, object]] = {
    "as trained": {},
    # Removal without its effect on the normalisation: advantages normalised once with the
    # full buffer's mean and sd (as the trained update did: its one minibatch is the
    # buffer), then replayed without per-minibatch normalisation.
    FROZEN: {"normalize_advantage": False},
    "no gradient-norm clip": {"max_grad_norm": math.inf},
    "no advantage normalisation": {"normalize_advantage": False},
    "no ratio clip": {"clip_range": 1e6},
    "no clipping (ratio and norm)": {"max_grad_norm": math.inf, "clip_range": 1e6},
    # The same update in 10× smaller steps: is it the size of the update (curvature over a
    # long path) rather than a kink?
    SMALL_STEPS: {},
    "none of the three": {
        "max_grad_norm": math.inf,
        "normalize_advantage": False,
        "clip_range": 1e6,
    },
}


def _variant(data: IterationData, name: str, changes: dict[str, object]) -> IterationData:
    config = replace(data.plan.loss_config, **changes)
    records = data.records
    if name == FROZEN:
        # SB3's normalisation, (Â − mean) / (sd + 1e-8), done once on the whole buffer.
        a = records.advantages
        records = replace(records, advantages=(a - a.mean()) / (a.std() + 1e-8))
    plan = replace(data.plan, loss_config=config)
    if name == SMALL_STEPS:
        plan = replace(plan, learning_rates=plan.learning_rates / 10)
    return replace(data, records=records, plan=plan)


def _f(policy: torch.nn.Module, target: ReturnTarget, context: object) -> float:
    with torch.no_grad():
        return float(target.value(policy, context))


def study(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    preset = Preset.load(args.preset)
    log = recorded_run(preset, 0)
    data = load_iteration(log, args.iteration)
    policy = build_policy(log)
    context = target_context(log, data.records)
    target = ReturnTarget()
    plan = data.plan
    removed = random_subsets(len(data.records), args.subsets, args.fraction, 0, plan.keep_mask)
    advantages = data.records.advantages.double().cpu().numpy()
    subset_advantage = np.array([advantages[m.numpy()].sum() for m in removed])
    # What removing S does to the buffer's advantage spread (hence to every normalised Â).
    centred = (advantages - advantages.mean()) ** 2
    subset_square = np.array([centred[m.numpy()].sum() for m in removed])

    restore_checkpoint(policy, data.start_tensors, data.start_meta)
    f_start = _f(policy, target, context)
    facts = {
        "iteration": args.iteration,
        "records": len(data.records),
        "optimizer_steps": plan.n_optimizer_steps,
        "learning_rate": float(plan.learning_rates[0]),
        "clip_range": plan.loss_config.clip_range,
        "max_grad_norm": plan.loss_config.max_grad_norm,
        "grad_norm_median": float(plan.grad_norms.median()),
        "grad_norm_min": float(plan.grad_norms.min()),
        "steps_norm_clipped": float((plan.clip_coefs < 1).double().mean()),
        "clip_coef_median": float(plan.clip_coefs.median()),
        "advantage_mean": float(advantages.mean()),
        "advantage_std": float(advantages.std()),
        "f_start": f_start,
    }
    rows = []
    for name, changes in VARIANTS.items():
        variant = _variant(data, name, changes)
        start = time.perf_counter()
        restore_checkpoint(policy, data.start_tensors, data.start_meta)
        # The frozen variant's scores are the trained update's: the snapshot score already
        # normalises with the whole buffer's statistics. The target f keeps the raw Â.
        score_config = data.plan.loss_config if name == FROZEN else variant.plan.loss_config
        scores = snapshot_scores(policy, data.records, target, score_config, context).double()
        predicted = np.array([float(scores[m].sum()) for m in removed])
        stats = replay(variant, policy)
        f_end = _f(policy, target, context)
        actual = subset_effects(variant, policy, target, context, removed)
        row = {
            "variant": name,
            "changes": {k: str(v) for k, v in changes.items()},
            "lds": spearman(predicted, actual),
            "sign_agreement": float(np.mean(np.sign(predicted) == np.sign(actual))),
            "update_effect": f_end - f_start,
            "median_abs_effect": float(np.median(np.abs(actual))),
            "median_abs_predicted": float(np.median(np.abs(predicted))),
            "spearman_actual_vs_subset_advantage": spearman(actual, subset_advantage),
            "spearman_predicted_vs_subset_advantage": spearman(predicted, subset_advantage),
            "spearman_actual_vs_subset_square": spearman(actual, subset_square),
            "predicted": predicted.tolist(),
            "actual": actual.tolist(),
            "ratio_clip_fraction": float(torch.stack(stats.clip_fractions).mean()),
            "seconds": time.perf_counter() - start,
        }
        if name == "as trained":
            # Removal that keeps the minibatch divisor |b| (zeroes the removed loss terms):
            # isolates what dropping does to the mean's denominator.
            zero = subset_effects(variant, policy, target, context, removed, "zero_weight")
            row["lds_zero_weight_removal"] = spearman(predicted, zero)
        rows.append(row)
        print(
            f"{name:28s} LDS {row['lds']:+.3f}  update moved f by {row['update_effect']:+.2e}, "
            f"median |Δ_S| {row['median_abs_effect']:.2e}; Spearman(Δ_S, ΣÂ_S) "
            f"{row['spearman_actual_vs_subset_advantage']:+.3f}",
            flush=True,
        )
    return {"facts": facts, "rows": rows, "subsets": args.subsets, "fraction": args.fraction}


def scan(args: argparse.Namespace) -> list[dict]:
    """LDS as trained and without advantage normalisation at several iterations, beside
    the raw advantages' spread: is iteration 195 one case of a regime?"""
    torch.set_num_threads(1)
    log = recorded_run(Preset.load(args.preset), 0)
    policy = build_policy(log)
    target = ReturnTarget()
    rows = []
    for k in args.scan:
        data = load_iteration(log, k)
        context = target_context(log, data.records)
        removed = random_subsets(len(data.records), args.subsets, args.fraction, 0)
        row = {
            "iteration": k,
            "advantage_sd": float(data.records.advantages.double().std()),
            "steps_norm_clipped": float((data.plan.clip_coefs < 1).double().mean()),
        }
        for name in ("as trained", "no advantage normalisation"):
            variant = _variant(data, name, VARIANTS[name])
            restore_checkpoint(policy, data.start_tensors, data.start_meta)
            f_start = _f(policy, target, context)
            scores = snapshot_scores(
                policy, data.records, target, variant.plan.loss_config, context
            ).double()
            predicted = np.array([float(scores[m].sum()) for m in removed])
            replay(variant, policy)
            effect = _f(policy, target, context) - f_start
            actual = subset_effects(variant, policy, target, context, removed)
            row[name] = {"lds": spearman(predicted, actual), "update_effect": effect}
        rows.append(row)
        print(
            f"iteration {k}: sd(Â) {row['advantage_sd']:.4f}, LDS as trained "
            f"{row['as trained']['lds']:+.3f}, without normalisation "
            f"{row['no advantage normalisation']['lds']:+.3f}",
            flush=True,
        )
    return rows


def write_scan(rows: list[dict], args: argparse.Namespace) -> None:
    meta = provenance()
    name = f"regime-{args.preset}-scan"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"rows": rows, **meta}, indent=2) + "\n")
    lines = [
        f"### Across training ({args.preset})",
        "",
        f"Command: `{meta['command']}` (git {describe_git(meta['git'])}; {args.subsets} "
        f"subsets of {args.fraction:.0%}; load {meta['machine']['load_average_1min']})",
        "",
        "| iteration | sd of raw Â | steps norm-clipped | LDS as trained "
        "| f moved by (as trained) | LDS without advantage normalisation "
        "| f moved by (without) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["as trained"], r["no advantage normalisation"]
        lines.append(
            f"| {r['iteration']} | {r['advantage_sd']:.4f} | {r['steps_norm_clipped']:.0%} "
            f"| {a['lds']:+.3f} | {a['update_effect']:+.2e} | {b['lds']:+.3f} "
            f"| {b['update_effect']:+.2e} |"
        )
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write(result: dict, args: argparse.Namespace) -> None:
    meta = provenance()
    name = f"regime-{args.preset}-{args.iteration}"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({**result, **meta}, indent=2) + "\n")
    facts, rows = result["facts"], result["rows"]
    by = {r["variant"]: r for r in rows}
    lines = [
        f"## Why the return target's LDS is negative: {args.preset}, iteration {args.iteration}",
        "",
        f"Command: `{meta['command']}` (git {describe_git(meta['git'])}; "
        f"{result['subsets']} subsets of {result['fraction']:.0%}, seed 0; load "
        f"{meta['machine']['load_average_1min']})",
        "",
        f"The iteration: {facts['records']} records, {facts['optimizer_steps']} optimiser "
        f"steps (one full-buffer minibatch per epoch), learning rate "
        f"{facts['learning_rate']:.2e}, ratio clip {facts['clip_range']:.3f}. Gradient norm "
        f"median {facts['grad_norm_median']:.2f} (min {facts['grad_norm_min']:.2f}) against "
        f"max_grad_norm {facts['max_grad_norm']}: **{facts['steps_norm_clipped']:.0%} of the "
        f"steps are norm-clipped** (median clip coefficient {facts['clip_coef_median']:.3f}). "
        f"Advantages Â: mean {facts['advantage_mean']:+.3f}, sd {facts['advantage_std']:.3f}; "
        f"f(θ_k) = {facts['f_start']:.4g}.",
        "",
        "Each row changes the iteration's loss for the scores *and* the replays alike (a "
        "counterfactual update, not the one trained), and asks whether the scores then "
        "predict removal:",
        "",
        "| loss | LDS (snapshot) | sign agreement | f(θ_k+1) − f(θ_k) | median abs Δ_S "
        "| median abs prediction | Spearman(Δ_S, Σ_S Â) | Spearman(prediction, Σ_S Â) "
        "| Spearman(Δ_S, Σ_S (Â − mean)²) | ratio-clip fraction |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | **{r['lds']:+.3f}** | {r['sign_agreement']:.2f} "
            f"| {r['update_effect']:+.2e} | {r['median_abs_effect']:.2e} "
            f"| {r['median_abs_predicted']:.2e} "
            f"| {r['spearman_actual_vs_subset_advantage']:+.3f} "
            f"| {r['spearman_predicted_vs_subset_advantage']:+.3f} "
            f"| {r['spearman_actual_vs_subset_square']:+.3f} "
            f"| {r['ratio_clip_fraction']:.3f} |"
        )
    trained = by["as trained"]
    lines += [
        "",
        f"Removal that keeps the divisor (zero-weighting the removed loss terms instead of "
        f"dropping them): LDS {trained['lds_zero_weight_removal']:+.3f}.",
        "",
    ]
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cartpole")
    parser.add_argument("--iteration", type=int, default=195)
    parser.add_argument("--subsets", type=int, default=64)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument(
        "--scan", type=int, nargs="+", help="instead: LDS at these iterations, two variants"
    )
    args = parser.parse_args()
    if args.scan:
        write_scan(scan(args), args)
    else:
        write(study(args), args)


if __name__ == "__main__":
    main()
