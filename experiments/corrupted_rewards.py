"""Corrupted rewards (issue 13, item 5b): does IIF recover what dropping the planted records
would gain?

Environment: ``rlattr/CartPoleCorruptRegion-v0`` — CartPole-v1 where half of the
transitions that start right of centre have their +1 reward flipped to −1
(``rlattr.envs.faults.CorruptRewards``, ``info["rlattr_fault"]`` flags them). The fault is
learnable (the right half pays 0 on average), and it visibly slows PPO (measured before
choosing it: 71 against 196 true return after 40k steps, seed 0; random sign flips of 20 %
of all rewards did not hurt at all). PPO: the RL Zoo's CartPole settings (8 envs × 32
steps, 20 epochs × minibatch 256, linear lr 1e-3 and clip 0.2), 100k steps.

Arms, 5 paired seeds (same seed ⇒ same initial policy and environment seeds):

- ``ppo``: plain PPO;
- ``iif``: ``neg_bottom`` with p = 0.5 (the paper's p for its classic-control tasks;
  CartPole is not among its tasks), snapshot scores on the same-buffer return target;
- ``random_like``: as many records as ``iif``'s rule would drop, at random;
- ``oracle``: drops exactly the flagged records every iteration
  (``rlattr.training.oracle.GroundTruthFilter``);
- ``ppo_clean``: plain PPO on uncorrupted CartPole-v1 (what the corruption costs).

Evaluation uses the TRUE reward: the stochastic policy on plain CartPole-v1 every
``--eval-every`` iterations and at the end, ``--episodes`` episodes on fixed seeds (the
same for every arm and evaluation). Reported: the learning curves, the final return
(mean of the last 3 evaluations), the AUC (mean over all evaluations), and the goal:
IIF recovers at least half of the oracle's gain over PPO, recovery = (IIF − PPO) /
(oracle − PPO) on the seed means. Per iteration it also records how well the scores IIF
uses find the flagged records (AUPRC of −snapshot score, against −Â, |Â|, the per-record
loss and random; ``rlattr.analysis.detection``) and which share of each filter's dropped
records were flagged. All six scores on this setting: experiments/detection_study.py
(setting ``cartpole_region``, the same training as the ``ppo`` arm).

    python experiments/corrupted_rewards.py [--seeds 5] [--arms ppo iif random_like oracle]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rlattr.envs  # noqa: F401  (registers rlattr/CartPoleCorruptRegion-v0)

from experiments.bench_common import write_csv
from experiments.common import RESULTS, markdown_header, provenance, write_json
from rlattr import (
    IIF,
    AttributedPPO,
    IterationContext,
    IterationResult,
    ReturnTarget,
    StoredScores,
)
from rlattr.analysis.detection import baseline_suspicions, detect, per_record_losses
from rlattr.analysis.efficiency import auc as efficiency_auc
from rlattr.analysis.efficiency import iqm
from rlattr.record import atomic_write_text
from rlattr.run import Preset, build_model, resolve_preset_path
from rlattr.scoring.influence import snapshot_scores
from rlattr.training.evaluation import EvalEveryRound
from rlattr.training.oracle import GroundTruthFilter

OUT = RESULTS / "corrupted_rewards"
ENV = "rlattr.envs:rlattr/CartPoleCorruptRegion-v0"
ARMS = ("ppo", "iif", "random_like", "oracle", "ppo_clean")
P = 0.5  # neg_bottom's fraction of the negatives
EVAL_SEED = 10_000
CURVE_FIELDS = ("arm", "seed", "iteration", "timesteps", "true_return_mean")
DETECTION_FIELDS = (
    "arm", "seed", "iteration", "name", "average_precision", "precision_at_k", "base_rate",
    "random_average_precision",
)  # fmt: skip


class DetectionHook:
    """A record hook: snapshot return scores of every iteration, and how well −score and
    the baselines rank the flagged records (rows kept here; nothing stored)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def __call__(self, context: IterationContext) -> dict[str, StoredScores] | None:
        truth = context.ground_truth or {}
        planted = truth.get("rlattr_fault")
        if planted is None or not bool(planted.any()):
            return None
        records = context.records
        scores = snapshot_scores(
            context.policy,
            records,
            ReturnTarget(),
            context.loss_config,
            context.target_context(),
        ).detach()
        suspicions = {"-snapshot·return": -scores.cpu().double()}
        suspicions.update(
            baseline_suspicions(
                records, per_record_losses(context.policy, records, context.loss_config)
            )
        )
        for detection in detect(suspicions, planted.cpu()):
            self.rows.append({"iteration": context.iteration} | detection.to_dict())
        return None


class FlaggedDrops(BaseCallback):
    """After each update (``AttributedPPO`` delivers its ``IterationResult``): the share of
    the buffer the filter dropped and its overlap with the flagged records."""

    def __init__(self) -> None:
        super().__init__()
        self.drops: list[dict[str, float]] = []

    def _on_step(self) -> bool:
        return True

    def on_iteration(self, result: IterationResult) -> None:
        truth = result.ground_truth or {}
        fault = truth.get("rlattr_fault")
        if fault is None:
            return
        fault = fault.cpu().bool()
        mask = result.keep_mask
        dropped = torch.zeros_like(fault) if mask is None else ~mask.cpu()
        n_dropped = int(dropped.sum())
        self.drops.append(
            {
                "iteration": result.iteration,
                "fraction_flagged": float(fault.double().mean()),
                "fraction_dropped": n_dropped / len(fault),
                # Of the dropped records, the share flagged; of the flagged, the share dropped.
                "dropped_flagged": float(fault[dropped].double().mean()) if n_dropped else 0.0,
                "flagged_dropped": float(dropped[fault].double().mean()) if fault.any() else 0.0,
            }
        )


def build(arm: str, seed: int, hook: DetectionHook | None) -> AttributedPPO:
    env_id = "CartPole-v1" if arm == "ppo_clean" else ENV
    preset = Preset.load(resolve_preset_path("cartpole")).with_overrides(env_id=env_id)
    filters: dict[str, Any] = {}
    if arm == "iif":
        filters["iif"] = IIF(rule="neg_bottom", fraction=P)
    elif arm == "random_like":
        filters["iif"] = IIF(rule="random_like", like="neg_bottom", like_fraction=P)
    elif arm == "oracle":
        filters["keep_mask_fn"] = GroundTruthFilter()
    elif arm not in ("ppo", "ppo_clean"):
        raise ValueError(f"unknown arm {arm!r}; choose from {ARMS}")
    hooks = [hook] if hook is not None else []
    return build_model(preset, seed=seed, device="cpu", record_hooks=hooks, **filters)


def run_trial(arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one arm on one seed; its curve, drops and detection rows."""
    hook = DetectionHook() if arm in ("ppo", "iif") else None
    model = build(arm, seed, hook)
    # The TRUE return: plain CartPole-v1, every --eval-every iterations and at the end.
    evaluation = EvalEveryRound(
        lambda: gym.make("CartPole-v1"), args.episodes, EVAL_SEED, 32, dump=False,
        every=args.eval_every,
    )  # fmt: skip
    drops = FlaggedDrops()
    start = time.process_time()
    model.learn(args.timesteps, callback=[evaluation, drops])
    curve = [
        {"iteration": p.round, "timesteps": p.timesteps, "return_mean": p.return_mean}
        for p in evaluation.curve
    ]
    return {
        "arm": arm,
        "seed": seed,
        "curve": curve,
        "drops": drops.drops,
        "detection": hook.rows if hook is not None else [],
        "cpu_seconds": time.process_time() - start,
    }


# ------------------------------------------------------------------ summary
def final_return(trial: dict[str, Any]) -> float:
    return statistics.mean(point["return_mean"] for point in trial["curve"][-3:])


def auc(trial: dict[str, Any]) -> float:
    return efficiency_auc([point["return_mean"] for point in trial["curve"]])


def summarize(trials: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    arms = list(trials)
    seeds = sorted(set.intersection(*(set(by_seed) for by_seed in trials.values())))
    summary: dict[str, Any] = {"seeds": seeds}
    for metric, fn in (("final_return", final_return), ("auc", auc)):
        values = {arm: [fn(trials[arm][s]) for s in seeds] for arm in arms}
        intervals = iqm(values)
        summary[metric] = {
            arm: {
                "per_seed": values[arm],
                "mean": statistics.mean(values[arm]),
                "sd": statistics.stdev(values[arm]) if len(seeds) > 1 else 0.0,
                "iqm": intervals[arm].estimate,
                "low": intervals[arm].low,
                "high": intervals[arm].high,
            }
            for arm in arms
        }
        if "ppo" in arms:
            summary[metric]["paired_minus_ppo"] = {
                arm: _paired(values[arm], values["ppo"]) for arm in arms if arm != "ppo"
            }
        if {"ppo", "iif", "oracle"} <= set(arms):
            gain = summary[metric]["oracle"]["mean"] - summary[metric]["ppo"]["mean"]
            recovered = summary[metric]["iif"]["mean"] - summary[metric]["ppo"]["mean"]
            summary[metric]["recovery"] = recovered / gain if gain != 0 else float("nan")
            summary[metric]["oracle_gain"] = gain
    # A share is averaged over the iterations where it is defined: "of dropped, flagged"
    # where something was dropped, "of flagged, dropped" where something was flagged.
    defined_by = {
        "fraction_flagged": None,
        "fraction_dropped": None,
        "dropped_flagged": "fraction_dropped",
        "flagged_dropped": "fraction_flagged",
    }
    summary["drops"] = {
        arm: {
            key: _mean_or_nan(
                d[key]
                for s in seeds
                for d in trials[arm][s]["drops"]
                if condition is None or d[condition] > 0
            )
            for key, condition in defined_by.items()
        }
        for arm in arms
        if all(trials[arm][s]["drops"] for s in seeds)  # ppo_clean flags nothing
    }
    summary["detection"] = {}
    for arm in arms:
        rows = [r | {"seed": s} for s in seeds for r in trials[arm][s]["detection"]]
        if not rows:
            continue
        names = sorted({r["name"] for r in rows})
        per_seed = {
            name: [
                statistics.mean(
                    r["average_precision"] for r in rows if r["name"] == name and r["seed"] == s
                )
                for s in seeds
            ]
            for name in names
        }
        per_seed["random"] = [
            statistics.mean(
                r["random_average_precision"]
                for r in rows
                if r["seed"] == s and r["name"] == names[0]
            )
            for s in seeds
        ]
        intervals = iqm(per_seed)
        summary["detection"][arm] = {
            name: {"iqm": i.estimate, "low": i.low, "high": i.high} for name, i in intervals.items()
        }
    summary["cpu_seconds"] = {
        arm: statistics.mean(trials[arm][s]["cpu_seconds"] for s in seeds) for arm in arms
    }
    return summary


def _mean_or_nan(values: Any) -> float:
    values = list(values)
    return statistics.mean(values) if values else float("nan")


def _cell(text: str) -> str:
    """A Markdown table cell: ``|`` (as in ``|advantage|``) escaped."""
    return text.replace("|", "\\|")


def _paired(values: list[float], reference: list[float]) -> dict[str, float]:
    diffs = [a - b for a, b in zip(values, reference, strict=True)]
    return {
        "mean": statistics.mean(diffs),
        "sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        "wins": sum(d > 0 for d in diffs),
        "n": len(diffs),
    }


def _plot(trials: dict[str, dict[int, dict[str, Any]]], summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_curve, ax_det) = plt.subplots(1, 2, figsize=(13, 4.5))
    for arm, by_seed in trials.items():
        curves = [by_seed[s]["curve"] for s in summary["seeds"]]
        steps = [p["timesteps"] for p in curves[0]]
        matrix = np.array([[p["return_mean"] for p in c] for c in curves])
        mean = matrix.mean(axis=0)
        ax_curve.plot(steps, mean, label=arm)
        ax_curve.fill_between(steps, matrix.min(axis=0), matrix.max(axis=0), alpha=0.12)
    ax_curve.set_xlabel("timesteps")
    ax_curve.set_ylabel("true return (mean over seeds; band: min–max)")
    ax_curve.set_title("CartPole, rewards right of centre corrupted")
    ax_curve.legend()
    rows = (
        [r | {"seed": s} for s in summary["seeds"] for r in trials.get("ppo", {})[s]["detection"]]
        if "ppo" in trials
        else []
    )
    if rows:
        iterations = sorted({r["iteration"] for r in rows})
        window = 10
        for name in [*sorted({r["name"] for r in rows}), "random"]:
            key = "random_average_precision" if name == "random" else "average_precision"
            source = "-advantage" if name == "random" else name
            points = [
                np.mean([r[key] for r in rows if r["name"] == source and r["iteration"] == k])
                for k in iterations
            ]
            smooth = np.convolve(points, np.ones(window) / window, mode="valid")
            ax_det.plot(iterations[window - 1 :], smooth, label=name)
        ax_det.set_xlabel("iteration")
        ax_det.set_ylabel(f"AUPRC (PPO arm, mean over seeds, {window}-iteration mean)")
        ax_det.set_title("Detection of the flagged records")
        ax_det.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "corrupted_rewards.png", dpi=110)
    plt.close(fig)


def write_results(trials: dict[str, dict[int, dict[str, Any]]], args: argparse.Namespace) -> None:
    summary = summarize(trials)
    meta = provenance()
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(
        "corrupted_rewards/corrupted_rewards.json",
        {
            "summary": summary,
            # The per-iteration detection rows go to detection.csv (compact), not here.
            "trials": {
                arm: {
                    seed: {k: v for k, v in trial.items() if k != "detection"}
                    | {"detection": "detection.csv"}
                    for seed, trial in by_seed.items()
                }
                for arm, by_seed in trials.items()
            },
            "settings": vars(args) | {"p": P},
            **meta,
        },
    )
    curve_rows = [
        dict(
            zip(
                CURVE_FIELDS,
                (arm, seed, p["iteration"], p["timesteps"], p["return_mean"]),
                strict=True,
            )
        )
        for arm, by_seed in trials.items()
        for seed, trial in sorted(by_seed.items())
        for p in trial["curve"]
    ]
    write_csv(OUT / "curves.csv", curve_rows, CURVE_FIELDS)
    detection_rows = [
        {"arm": arm, "seed": seed, **{f: r[f] for f in DETECTION_FIELDS[2:]}}
        for arm, by_seed in trials.items()
        for seed, trial in sorted(by_seed.items())
        for r in trial["detection"]
    ]
    write_csv(OUT / "detection.csv", detection_rows, DETECTION_FIELDS)
    _plot(trials, summary)
    lines = markdown_header("Corrupted rewards: IIF vs PPO vs random drop vs oracle", meta)
    lines += [
        f"`{ENV}` (half of the rewards of transitions starting right of centre flipped "
        f"+1 → −1), RL Zoo CartPole PPO, {args.timesteps} steps, seeds {summary['seeds']} "
        f"(paired). IIF: neg_bottom p = {P}, snapshot scores, same-buffer return target. "
        f"Evaluation on the TRUE reward (plain CartPole-v1): {args.episodes} stochastic "
        f"episodes every {args.eval_every} iterations and at the end. Final = mean of the "
        "last 3 evaluations; AUC = mean over all evaluations. IQM with stratified-bootstrap "
        "95 % CI over seeds (rliable); paired differences to PPO as mean ± sd (wins / seeds).",
        "",
        "| arm | final return IQM [95 % CI] | final − PPO | AUC IQM [95 % CI] | AUC − PPO "
        "| dropped | of dropped, flagged | of flagged, dropped | CPU s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in trials:
        row = [arm]
        for metric in ("final_return", "auc"):
            m = summary[metric][arm]
            row.append(f"{m['iqm']:.1f} [{m['low']:.1f}, {m['high']:.1f}]")
            paired = summary[metric].get("paired_minus_ppo", {}).get(arm)
            row.append(
                "—"
                if paired is None
                else f"{paired['mean']:+.1f} ± {paired['sd']:.1f} ({paired['wins']}/{paired['n']})"
            )
        d = summary["drops"].get(arm)
        row += (
            ["—", "—", "—"]
            if d is None
            else [
                f"{d['fraction_dropped']:.1%}",
                f"{d['dropped_flagged']:.1%}" if d["fraction_dropped"] else "—",
                f"{d['flagged_dropped']:.1%}",
            ]
        )
        row.append(f"{summary['cpu_seconds'][arm]:.0f}")
        lines.append("| " + " | ".join(row) + " |")
    flagged = statistics.mean(d["fraction_flagged"] for d in summary["drops"].values())
    lines += [
        "",
        f"Share of records flagged (mean over the corrupted arms, iterations, seeds): "
        f"{flagged:.1%} (0 in iterations where no episode went right of centre). "
        '"Of dropped, flagged" averages over the iterations that dropped something, "of '
        'flagged, dropped" over those that flagged something.',
        "",
        "Per seed (AUC of the true-return curve; final return in brackets):",
        "",
        "| arm | " + " | ".join(f"seed {s}" for s in summary["seeds"]) + " |",
        "|---|" + "---|" * len(summary["seeds"]),
        *(
            f"| {arm} | "
            + " | ".join(
                f"{a:.0f} ({f:.0f})"
                for a, f in zip(
                    summary["auc"][arm]["per_seed"],
                    summary["final_return"][arm]["per_seed"],
                    strict=True,
                )
            )
            + " |"
            for arm in trials
        ),
        "",
    ]
    if "recovery" in summary["final_return"]:
        for metric, label in (("final_return", "final return"), ("auc", "AUC")):
            s = summary[metric]
            lines.append(
                f"- Recovery on {label}: (IIF − PPO) / (oracle − PPO) = "
                f"({s['iif']['mean']:.1f} − {s['ppo']['mean']:.1f}) / "
                f"({s['oracle']['mean']:.1f} − {s['ppo']['mean']:.1f}) = {s['recovery']:.2f}"
            )
        gains = [summary[m]["oracle_gain"] for m in ("final_return", "auc")]
        if min(gains) <= 0:
            verdict = (
                "not met: undefined, the oracle does not gain over PPO "
                f"(oracle − PPO: final {gains[0]:+.1f}, AUC {gains[1]:+.1f})"
            )
        else:
            met = min(summary[m]["recovery"] for m in ("final_return", "auc")) >= 0.5
            verdict = f"{'met' if met else 'not met'} (on both final return and AUC)"
        lines += [
            "",
            f"**Goal (IIF recovers ≥ half of the oracle's gain over PPO): {verdict}**",
            "",
        ]
        drops = summary["drops"]
        if {"iif", "random_like"} <= set(drops) and "iif" in summary["detection"]:
            detection = summary["detection"]["iif"]
            lines += [
                f"Which records IIF drops: {drops['iif']['fraction_dropped']:.1%} of the "
                f"buffer, of which {drops['iif']['dropped_flagged']:.1%} flagged (random_like: "
                f"{drops['random_like']['dropped_flagged']:.1%}; share flagged in IIF's "
                f"buffers {drops['iif']['fraction_flagged']:.1%}); it drops "
                f"{drops['iif']['flagged_dropped']:.1%} of the flagged records (oracle: "
                f"{drops['oracle']['flagged_dropped']:.1%}). Its snapshot scores rank the "
                f"flagged records at AUPRC {detection['-snapshot·return']['iqm']:.3f}, against "
                f"{detection['-advantage']['iqm']:.3f} for −Â and "
                f"{detection['random']['iqm']:.3f} for a random ranking.",
                "",
            ]
    if summary["detection"]:
        lines += [
            "Detection of the flagged records per iteration (AUPRC of each ranking, averaged "
            "over all iterations per seed; IQM [95 % CI] over seeds; `random` = expected AUPRC "
            "of a random ranking):",
            "",
            "| arm | "
            + " | ".join(_cell(n) for n in next(iter(summary["detection"].values())))
            + " |",
            "|---|" + "---|" * len(next(iter(summary["detection"].values()))),
        ]
        for arm, by_name in summary["detection"].items():
            lines.append(
                f"| {arm} | "
                + " | ".join(
                    f"{v['iqm']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" for v in by_name.values()
                )
                + " |"
            )
        lines.append("")
    lines += ["![true return and detection](corrupted_rewards.png)", ""]
    (OUT / "corrupted_rewards.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=13, help="iterations between evals")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per evaluation")
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path("/tmp/rlattr-scratch/corrupted_rewards"),
        help="finished trials (not committed; reused when the command runs again)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.scratch.mkdir(parents=True, exist_ok=True)
    tag = f"t{args.timesteps}-e{args.eval_every}-k{args.episodes}"
    trials: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in args.arms}
    for seed in range(args.seeds):
        for arm in args.arms:
            path = args.scratch / f"{arm}-s{seed}-{tag}.json"
            if path.exists():
                trials[arm][seed] = json.loads(path.read_text())
                continue
            trial = run_trial(arm, seed, args)
            atomic_write_text(path, json.dumps(trial))
            trials[arm][seed] = trial
            print(
                f"{arm} seed {seed}: final {final_return(trial):.1f}, AUC {auc(trial):.1f}, "
                f"{trial['cpu_seconds']:.0f} s CPU",
                flush=True,
            )
    args.scratch = str(args.scratch)
    write_results(trials, args)


if __name__ == "__main__":
    main()
