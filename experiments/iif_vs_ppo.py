"""IIF against PPO and the matched random-drop ablation, paired seeds, same budget.

Arms: ``ppo`` (plain PPO), ``iif`` (the preset's IIF settings; default the paper rule
neg_bottom p = 0.125, snapshot scores, return target on the same buffer) and
``random`` (drops as many records as the IIF rule would, at random); on request
``iif_metagrad`` (the same rule on metagradient scores, ``--arms iif_metagrad``) and
``advantage`` (drops as many as the rule, those with the most negative advantages).
Filtering arms remove the dropped records from the minibatches PPO drew (IIF's default);
``iif_recut`` and ``random_recut`` cut the kept records into minibatches anew instead.
Seed s of every arm uses the same environment and initialisation seed. Every
``--eval-every`` iterations the policy is evaluated on ``--eval-episodes`` stochastic
episodes of a separate environment with fixed seeds. Each finished run is written to
experiments/results/iif/<preset>/<arm>-s<seed>.csv, so an interrupted study resumes with
the runs still missing; ``--summarize`` builds the table and the plots.

    python experiments/iif_vs_ppo.py --preset cartpole --seeds 5
    python experiments/iif_vs_ppo.py --preset lunarlander --seed-list 0 2 4   # one core
    python experiments/iif_vs_ppo.py --preset lunarlander --summarize
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
from stable_baselines3.common.callbacks import BaseCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, provenance
from rlattr.training.filters import IIF
from rlattr.training.presets import Preset

ARMS = ("ppo", "iif", "random", "iif_metagrad", "advantage", "iif_recut", "random_recut")
DEFAULT_ARMS = ("ppo", "iif", "random")
OUT = RESULTS / "iif"
# Filtering arms take the dropped records out of the minibatches PPO drew (IIF's default,
# minibatching="as_drawn"); an arm ending in _recut cuts the kept records anew instead, as
# sessions 1-2 did (the last minibatch may be a record or two).
RECUT = "_recut"


def evaluate(model, env, episodes: int, seed: int) -> float:
    """Mean undiscounted return of ``episodes`` stochastic episodes with fixed seeds.

    Runs under a forked torch RNG, so evaluating does not change the training run.
    """
    with torch.random.fork_rng(devices=[]):
        return _evaluate(model, env, episodes, seed)


def _evaluate(model, env, episodes: int, seed: int) -> float:
    returns = []
    for episode in range(episodes):
        obs = env.reset(seed=seed + episode)[0]
        done, total = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=False)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


class Curve(BaseCallback):
    """Evaluate every ``every`` iterations; keep training-episode returns and timing."""

    def __init__(self, eval_env, every: int, episodes: int, eval_seed: int):
        super().__init__()
        self.eval_env, self.every, self.episodes, self.eval_seed = (
            eval_env,
            every,
            episodes,
            eval_seed,
        )
        self.rows: list[dict] = []
        self.iteration = 0
        self.last = time.perf_counter()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        # Called after each rollout, before the update of that rollout: evaluate the
        # policy that collected it (θ_k), so row k describes θ_k.
        now = time.perf_counter()
        row = {
            "iteration": self.iteration,
            "timesteps": self.model.num_timesteps,
            "train_return": (
                statistics.mean(e["r"] for e in self.model.ep_info_buffer)
                if self.model.ep_info_buffer
                else float("nan")
            ),
            "seconds_per_iteration": now - self.last,
            "eval_return": float("nan"),
        }
        if self.iteration % self.every == 0:
            row["eval_return"] = evaluate(self.model, self.eval_env, self.episodes, self.eval_seed)
        self.rows.append(row)
        self.iteration += 1
        self.last = time.perf_counter()


def _arm_iif(preset: Preset, arm: str, seed: int) -> IIF | None:
    if arm == "ppo":
        return None
    minibatching = "recut" if arm.endswith(RECUT) else "as_drawn"
    arm = arm.removesuffix(RECUT)
    base = preset.iif_config(seed=seed, minibatching=minibatching)
    if arm == "iif":
        return base
    if arm == "iif_metagrad":
        # The same rule on exact scores for the order the update will use (issue 6).
        return preset.iif_config(seed=seed, scorer="metagrad")
    # The ablations drop as many records as the IIF rule: at random, or those with the most
    # negative advantages (do the scores add anything to that?).
    return IIF(
        rule="advantage_like" if arm == "advantage" else "random_like",
        like=base.rule,
        like_fraction=base.fraction,
        warmup_iterations=base.warmup_iterations,
        minibatching=minibatching,
        seed=seed,
    )


def comparisons(arms: list[str]) -> list[tuple[str, str]]:
    """The paired differences a table reports: every arm against PPO; each filter against
    the random ablation and the snapshot IIF with the same minibatching, and the other
    filters against snapshot IIF (IIF(metagrad) forms minibatches as drawn)."""
    pairs = []
    for first in arms:
        if first == "ppo":
            continue
        seconds = ["ppo"]
        if not first.startswith("random"):
            recut = RECUT if first.endswith(RECUT) else ""
            matched = "random" + recut
            if matched not in arms:  # the other minibatching's ablation, if that is all
                matched = "random" + ("" if recut else RECUT)
            seconds += [matched, "iif" + recut, "iif", "iif" + RECUT]
        for second in dict.fromkeys(seconds):
            if second in arms and second != first and (second, first) not in pairs:
                pairs.append((first, second))
    return pairs


def run(preset: Preset, arm: str, seed: int, args: argparse.Namespace) -> Path:

    path = OUT / preset.name / f"{arm}-s{seed}.csv"
    if path.exists():
        return path
    torch.set_num_threads(1)
    model = preset.build(seed=seed, device="cpu", iif=_arm_iif(preset, arm, seed))
    eval_env = preset.env_factory()()
    curve = Curve(eval_env, args.eval_every, args.eval_episodes, eval_seed=10_000)
    start = time.perf_counter()
    model.learn(preset.total_timesteps, callback=curve)
    final = evaluate(model, eval_env, args.final_episodes, seed=20_000)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*curve.rows[0], "final_return", "wall_s"])
        writer.writeheader()
        for row in curve.rows:
            writer.writerow({**row, "final_return": final, "wall_s": time.perf_counter() - start})
    tmp.replace(path)
    print(f"{preset.name} {arm} seed {seed}: final return {final:.1f}", flush=True)
    return path


def _load(preset_name: str) -> dict[str, dict[int, list[dict]]]:
    runs: dict[str, dict[int, list[dict]]] = {}
    for path in sorted((OUT / preset_name).glob("*-s*.csv")):
        arm, seed = path.stem.rsplit("-s", 1)
        with open(path) as handle:
            runs.setdefault(arm, {})[int(seed)] = [
                {k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)
            ]
    return runs


def summarize(preset_name: str, arms: list[str]) -> None:
    """Table, plot and JSON over the seeds that every arm in ``arms`` has finished.

    The default arms write <preset>.{md,png,json}; other selections add their extra arms
    to the name (e.g. <preset>-iif_metagrad.md), so each comparison keeps its own seeds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {arm: r for arm, r in _load(preset_name).items() if arm in arms}
    extra = [a for a in arms if a not in DEFAULT_ARMS]
    stem = "-".join([preset_name, *extra])
    if "ppo" not in runs:
        raise SystemExit(f"no PPO runs for {preset_name} yet")
    seeds = sorted(set.intersection(*(set(r) for r in runs.values())))
    summary = {}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm in [a for a in arms if a in runs]:
        curves = [[r for r in runs[arm][s] if not np.isnan(r["eval_return"])] for s in seeds]
        steps = np.array([r["timesteps"] for r in curves[0]])
        values = np.array([[r["eval_return"] for r in c] for c in curves])
        mean, std = values.mean(0), values.std(0)
        ax.plot(steps, mean, label=f"{arm} (n={len(seeds)})")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        finals = [runs[arm][s][0]["final_return"] for s in seeds]
        summary[arm] = {
            "steps": steps,
            "mean_curve": mean,
            "auc": float(values.mean()),
            "auc_per_seed": values.mean(1).tolist(),
            "final_mean": float(np.mean(finals)),
            "final_std": float(np.std(finals)),
            "seconds_per_iteration": float(
                np.mean(
                    [np.mean([r["seconds_per_iteration"] for r in runs[arm][s][1:]]) for s in seeds]
                )
            ),
        }
    # PPO's final mean return: the 50-episode evaluation after training (the last point
    # of the curve is a 10-episode estimate, too noisy to be the bar).
    reference = summary["ppo"]["final_mean"]
    for values in summary.values():
        reached = np.nonzero(values["mean_curve"] >= reference)[0]
        values["steps_to_ppo_final"] = (
            float(values["steps"][reached[0]]) if len(reached) else float("nan")
        )
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"mean eval return (± std over {len(seeds)} seeds)")
    ax.set_title(preset_name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / f"{stem}.png", dpi=120)

    budget = int(
        max(r["timesteps"] for arm in runs.values() for rows in arm.values() for r in rows)
    )
    default = Preset.load(preset_name).total_timesteps
    override = "" if budget >= default else f" --timesteps {budget}"
    shortened = f", the preset has {default}" if override else ""
    lines = [
        f"## {preset_name} ({len(seeds)} paired seeds: {seeds})",
        "",
        f"Runs: `python experiments/iif_vs_ppo.py --preset {preset_name}{override} "
        f"--arms {' '.join(summary)} --seed-list {' '.join(map(str, seeds))}` "
        f"(about {budget} environment steps per run{shortened}); "
        f"table and plot: `python experiments/iif_vs_ppo.py --preset {preset_name} --summarize"
        f"{' --arms ' + ' '.join(arms) if extra else ''}`. "
        "Evaluation: mean return of 10 stochastic episodes with fixed seeds every 5 "
        "iterations (the curve, its mean is the AUC); final return: 50 episodes after "
        "training. Versions and machine: the JSON file beside this one.",
        "",
        "| arm | steps until the eval curve reaches PPO's final return | AUC (mean eval return, "
        "mean ± std) | final return (mean ± std) | s / iteration |",
        "|---|---|---|---|---|",
    ]
    # Returns in [0, 1] (MiniGrid) need more digits than returns in the hundreds.
    d = 3 if max(abs(v["final_mean"]) for v in summary.values()) < 10 else 1
    for arm, v in summary.items():
        reached = v["steps_to_ppo_final"]
        reached = "not reached" if np.isnan(reached) else f"{reached:.0f}"
        lines.append(
            f"| {arm} | {reached} | {v['auc']:.{d}f} ± "
            f"{float(np.std(v['auc_per_seed'])):.{d}f} | {v['final_mean']:.{d}f} ± "
            f"{v['final_std']:.{d}f} | {v['seconds_per_iteration']:.2f} |"
        )
    lines += [
        "",
        "Paired differences, seed by seed (mean ± standard error over seeds; in brackets "
        "the seeds where the first arm is higher):",
        "",
        "| comparison | AUC difference | final-return difference |",
        "|---|---|---|",
    ]
    finals = {arm: np.array([runs[arm][s][0]["final_return"] for s in seeds]) for arm in summary}
    paired = {}
    for first, second in comparisons(list(summary)):
        auc = np.array(summary[first]["auc_per_seed"]) - np.array(summary[second]["auc_per_seed"])
        final = finals[first] - finals[second]
        paired[f"{first}-{second}"] = {"auc": auc.tolist(), "final": final.tolist()}
        cells = []
        for gap in (auc, final):
            error = float(np.std(gap, ddof=1) / np.sqrt(len(gap))) if len(gap) > 1 else 0.0
            cells.append(f"{gap.mean():+.{d}f} ± {error:.{d}f} ({int((gap > 0).sum())}/{len(gap)})")
        lines.append(f"| {first} − {second} | {cells[0]} | {cells[1]} |")
    (OUT / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (OUT / f"{stem}.json").write_text(
        json.dumps(
            {
                **provenance(),
                "paired_differences": paired,
                "summary": {
                    a: {k: v for k, v in s.items() if k not in ("steps", "mean_curve")}
                    for a, s in summary.items()
                },
            },
            indent=2,
        )
        + "\n"
    )
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--seed-list", type=int, nargs="+", help="explicit seeds (one core each)")
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS)
    parser.add_argument("--timesteps", type=int)
    parser.add_argument("--eval-every", type=int, default=5, help="iterations between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--final-episodes", type=int, default=50)
    parser.add_argument("--summarize", action="store_true")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.preset, args.arms)
        return
    preset = Preset.load(args.preset)
    if args.timesteps:
        preset = preset.with_overrides(total_timesteps=args.timesteps)
    for seed in args.seed_list or range(args.seeds):
        for arm in args.arms:
            run(preset, arm, seed, args)


if __name__ == "__main__":
    main()
