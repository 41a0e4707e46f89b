"""Detection study (issue 13, item 2): do attribution scores rank the planted records first?

Plain PPO trains on an environment with planted faults, recording a run directory (under a
scratch folder, not committed) every ``score_every`` iterations. For each recorded
iteration the records are scored post hoc with ``rlattr.attribute`` — snapshot, replay
TracIn and exact metagradient, on the return target and on a behaviour target — and each
score's ranking of the flagged records (``info["rlattr_fault"]``) is measured by AUPRC
and precision@k (k = the number flagged; ``rlattr.analysis.detect``), against
attribution-free baselines: −Â, |Â|, the per-record PPO loss at θ_k, and a random ranking
(its exact expected AUPRC, about the base rate).

Direction: a harmful record has a *negative* score on the return target (docs/science.md §2),
and the behaviour targets below are behaviours the planted records work *against*, so
every score ranks by **−score** (most negative first). The other directions (+score and
|score|) are kept in the CSV as diagnostics; they never enter the goal.

Settings:

- ``delayed_credit``: ``rlattr/DelayedCredit-v0`` with one-step GAE (λ = 0), the planted
  advantage error of issue 12 (flagged: the decision step, which loses the delayed
  reward's credit, and the payoff step, which gains it). Behaviour target: "invest at the
  decision" (an ``ActionTarget``), the good behaviour the error works against.
- ``cartpole_region``: ``rlattr/CartPoleCorruptRegion-v0`` (half of the transitions that
  start right of centre have their +1 reward flipped to −1) with the RL Zoo's CartPole
  settings — the setting of experiments/corrupted_rewards.py. Behaviour target: the
  return target on the same buffer with advantages recomputed from the *true* rewards
  (``info["rlattr_true_reward"]``): what the corruption corrupts. It reads ground truth,
  so it is an upper reference (a run would need trusted rewards for it), not a baseline.

Goal (issue 13): AUPRC of the best score ≥ 2 × the best attribution-free baseline.

    python experiments/detection_study.py [--seeds 5] [--settings delayed_credit cartpole_region]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rlattr.envs  # noqa: F401  (registers the rlattr/ environments)

from experiments.bench_common import table, write_csv, write_markdown
from experiments.common import RESULTS, markdown_header, provenance, write_json
from rlattr import ActionTarget, AttributedPPO, Retention, ReturnTarget, RunLog, Target, attribute
from rlattr.analysis import Detection, baseline_suspicions, detect, iqm, per_record_losses
from rlattr.record import (
    Records,
    atomic_write_json,
    atomic_write_text,
    build_policy,
    load_iteration,
    restore_checkpoint,
)
from rlattr.run import Preset
from rlattr.scoring import gae_advantages

OUT = RESULTS / "detection"
METHODS = ("snapshot", "tracin", "metagrad")
BASELINES = ("-advantage", "|advantage|", "ppo_loss", "random")
METRICS = ("average_precision", "precision_at_k")


@dataclass(frozen=True)
class Setting:
    """One environment with planted faults and how PPO trains on it (``ppo``: AttributedPPO
    keyword arguments; ``score_every``: record and score iterations 0, m, 2m, ...;
    ``behaviour``: the behaviour target of a recorded iteration from its records, ground
    truth and the run's γ, λ)."""

    name: str
    description: str
    env_id: str
    n_envs: int
    ppo: dict[str, Any]
    total_timesteps: int
    score_every: int
    behaviour: Callable[[Records, dict[str, torch.Tensor], float, float], Target]
    behaviour_label: str


def _invest_target(records: Records, truth: dict, gamma: float, lam: float) -> Target:
    from rlattr.envs import INVEST

    observation = torch.zeros(1, records.observations.shape[1])
    observation[0, 0] = 1.0  # time step 0: the decision
    return ActionTarget(observation, torch.tensor([INVEST]))


def true_return_target(records: Records, truth: dict, gamma: float, lam: float) -> Target:
    """The return target with GAE advantages recomputed from the true rewards.

    ``CorruptRewards`` in ``sign_flip`` mode hands the agent −r on a flagged step, so the
    buffer's reward (which may also hold SB3's timeout bootstrap) gets 2r back there.
    """
    fault = truth["rlattr_fault"].to(records.rewards.device)
    true_reward = truth["rlattr_true_reward"].to(records.rewards.device)
    rewards = records.rewards + torch.where(fault, 2.0 * true_reward, 0.0).to(records.rewards.dtype)
    fixed = replace(records, rewards=rewards)
    return ReturnTarget(validation=replace(fixed, advantages=gae_advantages(fixed, gamma, lam)))


def _settings() -> dict[str, Setting]:
    cartpole = Preset.load("cartpole")
    return {
        "delayed_credit": Setting(
            name="delayed_credit",
            description="rlattr/DelayedCredit-v0, PPO with GAE λ = 0 (256 steps × 4 epochs × "
            "minibatch 64, Adam 3e-4), 30 iterations",
            env_id="rlattr.envs:rlattr/DelayedCredit-v0",
            n_envs=1,
            ppo={"n_steps": 256, "batch_size": 64, "n_epochs": 4, "gae_lambda": 0.0},
            total_timesteps=30 * 256,
            score_every=3,
            behaviour=_invest_target,
            behaviour_label="log π(invest | decision state)",
        ),
        "cartpole_region": Setting(
            name="cartpole_region",
            description="rlattr/CartPoleCorruptRegion-v0 (50 % of the rewards right of centre "
            "flipped to −1), RL Zoo CartPole PPO (8 envs × 32 steps, 20 epochs × minibatch "
            "256, linear lr 1e-3 and clip 0.2), 100k steps (391 iterations)",
            env_id="rlattr.envs:rlattr/CartPoleCorruptRegion-v0",
            n_envs=cartpole.n_envs,
            ppo={**cartpole.ppo_kwargs(), "policy_kwargs": cartpole.resolved_policy_kwargs()},
            total_timesteps=int(cartpole.total_timesteps),
            score_every=15,
            behaviour=true_return_target,
            behaviour_label="return target with advantages from the true rewards (reads "
            "ground truth: an upper reference)",
        ),
    }


def train(setting: Setting, seed: int, run_dir: Path) -> None:
    """Plain PPO recording every ``score_every``-th iteration into ``run_dir``."""
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(setting.env_id, n_envs=setting.n_envs, seed=seed)
    retention = Retention(record_every=setting.score_every)
    model = AttributedPPO(
        "MlpPolicy",
        env,
        seed=seed,
        device="cpu",
        run_dir=run_dir,
        retention=retention,
        **setting.ppo,
    )
    model.learn(setting.total_timesteps)
    model.flush_run_log()


def suspicions_of_iteration(
    log: RunLog, iteration: int, behaviour: Target
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every ranking of one recorded iteration: ``(primary, diagnostic)``. Primary: −score
    of each method on each target, and the attribution-free baselines; diagnostic: +score
    and |score|."""
    primary: dict[str, torch.Tensor] = {}
    diagnostic: dict[str, torch.Tensor] = {}
    for label, target in (("return", ReturnTarget()), ("behaviour", behaviour)):
        for method in METHODS:
            scores = attribute(log, iteration, target, method=method, store=False)
            primary[f"-{method}·{label}"] = -scores
            diagnostic[f"+{method}·{label}"] = scores
            diagnostic[f"|{method}·{label}|"] = scores.abs()
    data = load_iteration(log, iteration)
    policy = build_policy(log)
    restore_checkpoint(policy, data.start_tensors, data.start_meta)
    losses = per_record_losses(policy, data.records, data.plan.loss_config)
    return primary | baseline_suspicions(data.records, losses), diagnostic


def score_run(setting: Setting, seed: int, run_dir: Path) -> list[dict[str, Any]]:
    """Detection rows of every recorded iteration of one run."""
    log = RunLog(run_dir)
    algorithm = log.meta["algorithm"]
    gamma, lam = float(algorithm["gamma"]), float(algorithm["gae_lambda"])
    rows: list[dict[str, Any]] = []
    for k in log.iterations():
        truth = log.load_ground_truth(k)
        planted = truth["rlattr_fault"].bool()
        if not bool(planted.any()):
            continue
        behaviour = setting.behaviour(log.load_records(k), truth, gamma, lam)
        primary, diagnostic = suspicions_of_iteration(log, k, behaviour)
        found = [(d, "primary") for d in detect(primary, planted)]
        found += [(d, "diagnostic") for d in detect(diagnostic, planted)]
        # The random ranking: its exact expectation (AUPRC) and the base rate (precision@k).
        d = found[0][0]
        random_ap, rate = d.random_average_precision, d.base_rate
        random = Detection("random", random_ap, rate, rate, random_ap, d.n_planted, d.n_records)
        found.append((random, "primary"))
        # Evidence for the "why": is a planted record on the ranking's suspicious side (for
        # a score: is it negative?) more often than the others are, and how does each
        # ranking do against the other boolean ground-truth keys (DelayedCredit's cause /
        # payoff)?
        others = ~planted
        signs = {
            name: {
                "planted_suspicious_share": float((suspicion[planted] > 0).double().mean()),
                "others_suspicious_share": float((suspicion[others] > 0).double().mean())
                if bool(others.any())
                else float("nan"),
            }
            for name, suspicion in primary.items()
        }
        for key, flags in sorted(truth.items()):
            if key == "rlattr_fault" or flags.dtype != torch.bool or not bool(flags.any()):
                continue
            found += [(d, f"key:{key}") for d in detect(primary, flags)]
        for detection, kind in found:
            extra = signs.get(detection.name, {}) if kind == "primary" else {}
            rows.append(
                {"setting": setting.name, "seed": seed, "iteration": k, "kind": kind}
                | detection.to_dict()
                | {
                    share: extra.get(share, math.nan)
                    for share in ("planted_suspicious_share", "others_suspicious_share")
                }
            )
    return rows


def run_setting(setting: Setting, seeds: int, scratch: Path) -> list[dict[str, Any]]:
    """Train and score every seed (finished seeds are read back from ``scratch``)."""
    rows: list[dict[str, Any]] = []
    for seed in range(seeds):
        done = scratch / f"rows-{setting.name}-s{seed}.json"
        if done.exists():
            rows += json.loads(done.read_text())
            continue
        run_dir = scratch / f"{setting.name}-s{seed}"
        marker = run_dir / "trained.json"  # written once the run finished training
        if marker.exists():
            train_cpu_s = json.loads(marker.read_text())["train_cpu_s"]
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run: start it again
            start = time.process_time()
            train(setting, seed, run_dir)
            train_cpu_s = time.process_time() - start
            atomic_write_json(marker, {"train_cpu_s": train_cpu_s})
        trained = time.process_time()
        seed_rows = score_run(setting, seed, run_dir)
        for row in seed_rows:
            row["train_cpu_s"] = train_cpu_s
            row["score_cpu_s"] = time.process_time() - trained
        atomic_write_text(done, json.dumps(seed_rows))
        print(f"{setting.name} seed {seed}: train {train_cpu_s:.0f} s CPU", flush=True)
        rows += seed_rows
    return rows


# ------------------------------------------------------------------ summary
def per_seed_means(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[int, float]]:
    """name → seed → the metric averaged over the scored iterations."""
    values: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        values.setdefault(row["name"], {}).setdefault(row["seed"], []).append(row[metric])
    return {
        name: {seed: statistics.mean(v) for seed, v in by_seed.items()}
        for name, by_seed in values.items()
    }


def mean_over_seeds(rows: list[dict[str, Any]]) -> dict[str, float]:
    """name → mean over seeds of the mean AUPRC over the scored iterations."""
    return {
        name: statistics.mean(v.values())
        for name, v in per_seed_means(rows, "average_precision").items()
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Over training: IQM and 95 % CI over seeds of each ranking's mean AUPRC and
    precision@k; the goal's ratio; per-iteration curves."""
    primary = [row for row in rows if row["kind"] == "primary"]
    summary: dict[str, Any] = {}
    for metric in METRICS:
        means = per_seed_means(primary, metric)
        intervals = iqm({name: list(v.values()) for name, v in means.items()}, reps=2000)
        summary[metric] = {
            name: {"iqm": i.estimate, "low": i.low, "high": i.high}
            | {"mean": statistics.mean(means[name].values())}
            for name, i in intervals.items()
        }
    ap = summary["average_precision"]

    def best(names: Any) -> str:
        return max(names, key=lambda n: ap[n]["iqm"])

    scores = [name for name in ap if name not in BASELINES]
    best_score, best_baseline = best(scores), best(BASELINES)
    best_return = best(n for n in scores if n.endswith("return"))
    ratio = ap[best_score]["iqm"] / ap[best_baseline]["iqm"]
    summary["goal"] = {
        "best_score": best_score,
        "best_baseline": best_baseline,
        "ratio": ratio,
        "met": ratio >= 2.0,
        "best_return_score": best_return,
        "ratio_return_scores_only": ap[best_return]["iqm"] / ap[best_baseline]["iqm"],
    }
    summary["sign_shares"] = {
        name: {
            share: statistics.mean(
                r[share] for r in primary if r["name"] == name and not math.isnan(r[share])
            )
            for share in ("planted_suspicious_share", "others_suspicious_share")
        }
        for name in ap
        if name != "random"
    }
    keys = sorted({r["kind"] for r in rows if r["kind"].startswith("key:")})
    summary["by_key_average_precision_mean"] = {
        key.removeprefix("key:"): mean_over_seeds([r for r in rows if r["kind"] == key])
        for key in keys
    }
    summary["diagnostic_average_precision_mean"] = mean_over_seeds(
        [row for row in rows if row["kind"] == "diagnostic"]
    )
    iterations = sorted({row["iteration"] for row in primary})
    curves: dict[str, Any] = {"iterations": iterations}
    for metric in METRICS:
        curves[metric] = {}
        for name in ap:
            points = []
            for k in iterations:
                values = [r[metric] for r in primary if r["name"] == name and r["iteration"] == k]
                points.append(float(np.mean(values)) if values else float("nan"))
            curves[metric][name] = points
    summary["curves"] = curves
    summary["base_rate_mean"] = statistics.mean(r["base_rate"] for r in primary)
    summary["cpu_seconds"] = {
        f"{clock}_per_run": statistics.mean(
            {r["seed"]: r[f"{clock}_cpu_s"] for r in primary}.values()
        )
        for clock in ("train", "score")
    }
    return summary


def _plot(summaries: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, len(summaries), figsize=(6.5 * len(summaries), 8), squeeze=False, sharex="col"
    )
    for column, (setting, summary) in enumerate(summaries.items()):
        iterations = summary["curves"]["iterations"]
        for row, metric in enumerate(METRICS):
            ax = axes[row][column]
            for name, points in summary["curves"][metric].items():
                baseline = name in BASELINES
                style, width = ("--", 1.0) if baseline else ("-", 1.6)
                ax.plot(iterations, points, style, linewidth=width, label=name)
            ax.set_title(f"{setting}: {'AUPRC' if row == 0 else 'precision@k'}")
            ax.set_xlabel("iteration")
            ax.set_ylabel("mean over seeds")
            if row == 0 and column == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def setting_markdown(
    name: str, summary: dict[str, Any], setting: Setting, n_seeds: int
) -> list[str]:
    goal, ap, pk = summary["goal"], summary["average_precision"], summary["precision_at_k"]
    cpu = summary["cpu_seconds"]

    def ranked(values: dict[str, float]) -> str:
        return ", ".join(f"`{n}` {v:.3f}" for n, v in sorted(values.items(), key=lambda x: -x[1]))

    cells = [
        # |advantage| must not split the row
        f"{n.replace('|', chr(92) + '|')} | {ap[n]['iqm']:.3f} [{ap[n]['low']:.3f}, "
        f"{ap[n]['high']:.3f}] | {pk[n]['iqm']:.3f} [{pk[n]['low']:.3f}, {pk[n]['high']:.3f}]"
        for n in sorted(ap, key=lambda n: -ap[n]["iqm"])
    ]
    lines = [
        f"## {name}",
        "",
        f"{setting.description}; {n_seeds} seeds; iterations "
        f"{summary['curves']['iterations']} scored; behaviour target: "
        f"{setting.behaviour_label}. Mean base rate {summary['base_rate_mean']:.3f}. "
        f"CPU per run: train {cpu['train_per_run']:.0f} s, score {cpu['score_per_run']:.0f} s.",
        "",
        *table("ranking | AUPRC IQM [95 % CI] | precision@k IQM [95 % CI]", cells),
        "",
        f"**Goal (AUPRC of the best score ≥ 2 × the best attribution-free baseline): "
        f"{'met' if goal['met'] else 'not met'}** — best score `{goal['best_score']}` "
        f"{ap[goal['best_score']]['iqm']:.3f} vs best baseline `{goal['best_baseline']}` "
        f"{ap[goal['best_baseline']]['iqm']:.3f}: ratio {goal['ratio']:.2f}. On the "
        f"return target alone: `{goal['best_return_score']}`, ratio "
        f"{goal['ratio_return_scores_only']:.2f}.",
        "",
        "Other directions (diagnostic, mean AUPRC over seeds and iterations): "
        f"{ranked(summary['diagnostic_average_precision_mean'])}.",
        "",
        "Sign evidence (mean over seeds and iterations): share of planted records the "
        "ranking puts on its suspicious side (score < 0, Â < 0, ...) against the share of "
        "the other records: "
        + ", ".join(
            f"`{n}` {v['planted_suspicious_share']:.2f} vs {v['others_suspicious_share']:.2f}"
            for n, v in summary["sign_shares"].items()
            if n not in ("|advantage|", "ppo_loss")  # never negative: no sign to read
        )
        + ".",
        "",
    ]
    for key, by_name in summary["by_key_average_precision_mean"].items():
        lines += [f"Against `{key}` alone (mean AUPRC): {ranked(by_name)}.", ""]
    return lines


def write_results(
    rows: list[dict[str, Any]], summaries: dict[str, dict[str, Any]], settings: dict[str, Setting]
) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    meta = provenance()
    write_json(
        "detection/detection.json",
        {
            "settings": {name: settings[name].description for name in summaries},
            "summary": summaries,
            "rows": "detection.csv (one row per setting, seed, iteration, kind and ranking)",
            **meta,
        },
    )
    write_csv(OUT / "detection.csv", rows)
    _plot(summaries, OUT / "detection.png")
    lines = [
        *markdown_header("Detection study: do scores rank the planted records first?", meta),
        "Each recorded iteration of plain PPO is scored post hoc; every ranking is by "
        "**−score** (a harmful record has a negative return-target score, docs/science.md §2; "
        "the behaviour targets are behaviours the planted records work against). AUPRC = "
        "average precision; precision@k with k = the number of planted records. Per seed "
        "the metric is averaged over the scored iterations; the table gives the IQM over "
        "seeds with a stratified-bootstrap 95 % CI (rliable). `random` is the exact "
        "expected AUPRC of a random ranking (≈ the base rate).",
        "",
    ]
    for name, summary in summaries.items():
        n_seeds = len({r["seed"] for r in rows if r["setting"] == name})
        lines += setting_markdown(name, summary, settings[name], n_seeds)
    lines += ["![AUPRC and precision@k over training](detection.png)"]
    write_markdown(OUT / "detection.md", lines)


def main() -> None:
    settings = _settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--settings", nargs="+", default=list(settings), choices=list(settings))
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path("/tmp/rlattr-scratch/detection"),
        help="run directories and per-seed rows (not committed; finished seeds are reused)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.scratch.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    summaries: dict[str, dict[str, Any]] = {}
    for name in args.settings:
        setting_rows = run_setting(settings[name], args.seeds, args.scratch)
        rows += setting_rows
        summaries[name] = summarize(setting_rows)
    write_results(rows, summaries, settings)


if __name__ == "__main__":
    main()
