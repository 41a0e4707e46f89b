"""The IIF paper's experiment suite: tasks × arms × seeds, evaluated after every round.

Each task uses its preset with the paper's settings (agents/*.yaml, docs/science.md §6) and the
paper's budget in rounds of 2048 steps. Arms: ``ppo`` (plain PPO), ``iif`` (the preset's
IIF rule, the paper's neg_bottom with the task's p), ``random_like`` (drops as many
records as the IIF rule would, at random) and ``advantage_like`` (as many, those with the
most negative advantages). Seed s of every arm uses the same environment and
initialisation seed. After every round the stochastic policy is evaluated on K episodes
(episode j of every evaluation on seed 10000 + j, the same for every arm, seed and round),
see ``rlattr.training.evaluation.EvalEveryRound``.

Each trial writes experiments/results/suite/<task>/<arm>-s<seed>.json after every round
(atomically: temp file + rename) with the command, versions, git commit and settings; a
restart skips finished trials and starts unfinished ones anew (a trial has no checkpoint).

    python experiments/paper_suite.py --tasks frozenlake acrobot --seeds 0 1 2 3 4
    python experiments/paper_suite.py --tasks frozenlake --shard 0/2 &   # two processes
    python experiments/paper_suite.py --tasks frozenlake --shard 1/2 &
    python experiments/paper_suite.py --tasks frozenlake acrobot --summarize
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, provenance
from rlattr.provenance import git_commit as _git_commit
from rlattr.sweep.spec import Trial, parse_arm
from rlattr.sweep.trial import is_done
from rlattr.sweep.trial import run_trial as _run_trial

OUT = RESULTS / "suite"
ARMS = ("ppo", "iif", "random_like", "advantage_like")
EVAL_SEED = 10_000
EVAL_ENVS = 64
STEPS_PER_ROUND = 2048


@dataclass(frozen=True)
class Task:
    """One task of the paper's IIF experiments (docs/science.md §6, arXiv 2505.19281 Fig. 6(b)).

    Attributes:
        preset: the agents/ preset with the paper's settings.
        rounds: the paper's budget in rounds of 2048 steps.
        paper_episodes: evaluation episodes per round in the paper.
        episodes: evaluation episodes per round here (see the README of the results).
        paper: the paper's SE_ave, SE_peak, RT_peak (percent), Fig. 6(b).
    """

    preset: str
    rounds: int
    paper_episodes: int
    episodes: int
    paper: dict[str, float] = field(default_factory=dict)


# Evaluation episodes per round here: the paper's count where it fits our two shared
# cores, fewer where it does not (measured CPU seconds per evaluation, README of the
# results): FrozenLake 1000 episodes cost < 2 s; Acrobot's untrained policy plays 500
# steps per episode (1000 episodes: ~23 s per round against ~1.1 s of training).
TASKS = {
    "frozenlake": Task(
        "frozenlake", 50, 1000, 1000, {"SE_ave": 34.0, "SE_peak": 19.2, "RT_peak": 29.5}
    ),
    "acrobot": Task(
        "acrobot_paper", 50, 1000, 200, {"SE_ave": 36.7, "SE_peak": 48.5, "RT_peak": 55.2}
    ),
    "minigrid": Task(
        "minigrid_paper", 40, 1000, 200, {"SE_ave": 65.8, "SE_peak": 61.7, "RT_peak": 69.1}
    ),
    "highway": Task("highway", 100, 100, 20, {"SE_ave": 37.7, "SE_peak": 55.1, "RT_peak": 59.9}),
    "lunarlander": Task(
        "lunarlander_paper", 150, 1000, 50, {"SE_ave": 26.0, "SE_peak": 39.7, "RT_peak": 44.9}
    ),
    "bipedalwalker": Task(
        "bipedalwalker", 1000, 100, 20, {"SE_ave": 31.0, "SE_peak": 26.2, "RT_peak": 29.2}
    ),
}


def git_commit() -> str:
    return _git_commit(("rlattr", "agents", "experiments/paper_suite.py"))


def trial_path(task: str, arm: str, seed: int) -> Path:
    return OUT / task / f"{arm}-s{seed}.json"


def run_trial(
    task_name: str,
    arm: str,
    seed: int,
    rounds: int,
    episodes: int,
    device: str = "cpu",
    record_dir: Path | None = None,
    eval_every: int = 1,
) -> Path:
    """Train one arm on one seed for ``rounds`` rounds, evaluating after every round
    (``rlattr.sweep.trial.run_trial``, which ``rlattr sweep`` runs too; same result file).
    With ``record_dir`` the trial also keeps its run directory (TensorBoard events and the
    run log, for ``rlattr diagnose``) in ``record_dir/<task>/<arm>-s<seed>``: recording
    leaves training bit-identical, so the curve is the one an unrecorded trial gives. A
    recorded trial that was killed resumes from its run log's last checkpoint."""
    path = trial_path(task_name, arm, seed)
    if is_done(path):
        if record_dir is not None:
            print(f"{task_name} {arm} s{seed}: finished before, skipped; nothing recorded")
        return path
    task = TASKS[task_name]
    trial = Trial(
        task_name, task.preset, arm, seed, rounds, episodes, device, EVAL_SEED, EVAL_ENVS,
        eval_every,
    )  # fmt: skip

    def report(_: Trial, point: Any) -> None:
        print(
            f"{task_name} {arm} s{seed} round {point.round}: {point.return_mean:.3f} "
            f"(train {point.train_seconds:.0f}s wall, {point.train_cpu_seconds:.0f}s cpu; "
            f"eval {point.eval_seconds:.1f}s)",
            flush=True,
        )

    _run_trial(
        trial,
        path,
        origin=provenance(),
        commit=git_commit(),
        extra={"evaluation": {"paper_episodes": task.paper_episodes}},
        on_point=report,
        run_dir=None if record_dir is None else record_dir / task_name / f"{arm}-s{seed}",
        record=record_dir is not None,
    )
    return path


def trials(tasks: list[str], arms: list[str], seeds: list[int]) -> list[tuple[str, str, int]]:
    """Every (task, arm, seed): per task first PPO and IIF on every seed (the main
    comparison), then the ablations; within each group seed by seed."""
    main = [a for a in arms if a in ("ppo", "iif")]
    ablations = [a for a in arms if a not in main]
    return [(t, a, s) for t in tasks for group in (main, ablations) for s in seeds for a in group]


def load_trials(task: str) -> dict[str, dict[int, dict[str, Any]]]:
    """Finished trials of ``task``: arm → seed → the trial's JSON."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted((OUT / task).glob("*-s*.json")):
        payload = json.loads(path.read_text())
        if payload.get("status") == "done":
            runs.setdefault(payload["arm"], {})[int(payload["seed"])] = payload
    return runs


def _series(trial: dict[str, Any], key: str) -> list[float]:
    return [float(point[key]) for point in trial["curve"]]


def trial_metrics(ppo: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """The paper's metrics of one arm against PPO on the same seed, and both curves' AUC
    and final return. RT_peak on two clocks: the process's CPU time (steady on a shared
    machine) and the wall clock (the paper's; here slowed by other jobs)."""
    from rlattr.analysis.efficiency import auc, efficiency, final_return

    ppo_curve, curve = _series(ppo, "return_mean"), _series(other, "return_mean")
    cpu = efficiency(
        ppo_curve, curve, _series(ppo, "train_cpu_seconds"), _series(other, "train_cpu_seconds")
    )
    wall = efficiency(
        ppo_curve, curve, _series(ppo, "train_seconds"), _series(other, "train_seconds")
    )
    dropped = [p["fraction_dropped"] for p in other["curve"] if p["fraction_dropped"] is not None]
    return {
        "SE_ave": 100 * cpu.se_ave,
        "SE_peak": 100 * cpu.se_peak,
        "RT_peak": 100 * cpu.rt_peak,
        "RT_peak_wall": 100 * wall.rt_peak,
        "levels": len(cpu.levels),
        "censored_levels": cpu.censored_levels,
        "peak_reached": float(cpu.peak_reached),
        "AUC": auc(curve),
        "final": final_return(curve),
        "fraction_dropped": float(np.mean(dropped)) if dropped else 0.0,
        "cpu_seconds_per_round": _series(other, "train_cpu_seconds")[-1] / (len(curve) - 1),
    }


def noise_study(task: str, arm: str = "iif", draws: int = 200, seed: int = 0) -> None:
    """How much of the metrics' spread the evaluation's finite episode count causes.

    For each seed with PPO and ``arm`` finished, both recorded curves are taken as the
    truth and re-drawn ``draws`` times as if each round had been evaluated on K episodes
    (binomial noise where every episode returns 0 or 1, else normal noise with the round's
    recorded episode std / sqrt(K)); the spread of SE_ave
    and SE_peak over the draws is the evaluation-noise part of their spread, to compare
    with their spread over training seeds. (The recorded curves carry their own noise of
    the recorded count: the numbers for K at or above it are a lower bound.)
    """
    from rlattr.analysis.efficiency import efficiency

    runs = load_trials(task)
    seeds = sorted(set(runs.get("ppo", {})) & set(runs.get(arm, {})))
    if not seeds:
        print(f"{task}: no seed with both ppo and {arm} finished")
        return
    rng = np.random.default_rng(seed)
    counts = [10, 30, 100, 300, 1000]
    recorded = runs["ppo"][seeds[0]]["evaluation"]["episodes"]
    table: dict[int, dict[str, list[float]]] = {}
    for k in counts:
        for s in seeds:
            curves = []
            for name in ("ppo", arm):
                mean = np.array(_series(runs[name][s], "return_mean"))
                std = np.array(_series(runs[name][s], "return_std"))
                if np.allclose(std**2, mean * (1 - mean), atol=1e-9):
                    # Returns are 0 or 1 (FrozenLake): the mean of K episodes is binomial.
                    curves.append(rng.binomial(k, np.clip(mean, 0, 1), (draws, len(mean))) / k)
                else:
                    noise = rng.standard_normal((draws, len(mean))) * std / np.sqrt(k)
                    curves.append(mean + noise)
            results = [efficiency(p, f) for p, f in zip(*curves, strict=True)]
            for key in ("se_ave", "se_peak"):
                values = 100 * np.array([getattr(r, key) for r in results])
                table.setdefault(k, {}).setdefault(key, []).append(float(np.nanstd(values)))
    across = {
        key: float(
            np.std(
                [
                    100
                    * getattr(
                        efficiency(
                            _series(runs["ppo"][s], "return_mean"),
                            _series(runs[arm][s], "return_mean"),
                        ),
                        key,
                    )
                    for s in seeds
                ]
            )
        )
        for key in ("se_ave", "se_peak")
    }
    lines = [
        f"# {task}: evaluation noise in SE_ave and SE_peak ({arm} against PPO)",
        "",
        f"Command: `python experiments/paper_suite.py --tasks {task} --noise-study`; "
        f"seeds {seeds}; {draws} draws per seed and count; recorded with {recorded} "
        "episodes per round.",
        "",
        "Each recorded curve is re-drawn as if every round had been evaluated on K episodes "
        "(both arms independently: binomial noise where every episode returns 0 or 1, as "
        "on FrozenLake, else normal noise with the round's episode std / √K); the cells "
        "are the standard deviation of the metric over the draws (percentage points), "
        "averaged over seeds. Counts at or above the recorded one are lower bounds (the "
        "recorded curves carry their own noise).",
        "",
        "| episodes K | std of SE_ave (pp) | std of SE_peak (pp) |",
        "|---|---|---|",
    ]
    for k in counts:
        lines.append(
            f"| {k} | {np.mean(table[k]['se_ave']):.1f} | {np.mean(table[k]['se_peak']):.1f} |"
        )
    lines += [
        "",
        f"For comparison, their standard deviation over the {len(seeds)} training seeds: "
        f"SE_ave {across['se_ave']:.1f} pp, SE_peak {across['se_peak']:.1f} pp.",
    ]
    (OUT / f"{task}-eval-noise.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def summarize(task: str, arms: list[str]) -> None:
    """Table (Markdown + CSV) and plot of a task over the seeds PPO and each arm finished."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlattr.analysis.efficiency import efficiency, iqm, probability_of_improvement

    runs = load_trials(task)
    if "ppo" not in runs:
        print(f"{task}: no finished PPO trial yet")
        return
    spec = TASKS[task]
    arms = [a for a in arms if a in runs]
    rows: list[dict[str, Any]] = []
    per_arm: dict[str, dict[str, list[float]]] = {}
    for arm in arms:
        seeds = sorted(set(runs[arm]) & set(runs["ppo"]))
        for seed in seeds:
            row = {"arm": arm, "seed": seed, **trial_metrics(runs["ppo"][seed], runs[arm][seed])}
            rows.append(row)
            for key, value in row.items():
                if key not in ("arm", "seed"):
                    per_arm.setdefault(arm, {}).setdefault(key, []).append(float(value))
            per_arm[arm].setdefault("seeds", []).append(seed)

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{task}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def cell(values: list[float], digits: int) -> str:
        finite = [v for v in values if np.isfinite(v)]
        if not finite:
            return "n/a"
        if len(finite) < 3:
            return " / ".join(f"{v:.{digits}f}" for v in finite) + " (too few seeds for a CI)"
        est = iqm({"x": finite})["x"]
        return f"{est.estimate:.{digits}f} [{est.low:.{digits}f}, {est.high:.{digits}f}]"

    d = 3 if max(abs(v) for a in per_arm.values() for v in a["final"]) < 10 else 1
    shown = [runs[arm][seed] for arm in {"ppo", *arms} for seed in runs[arm]]
    commits = sorted({t["git_commit"] for t in shown})
    commands = sorted({t["command"] for t in shown})
    versions = next(iter(runs["ppo"].values()))["versions"]
    episodes = sorted({t["evaluation"]["episodes"] for t in shown})
    rounds = sorted({t["rounds"] for t in shown})
    lines = [
        f"# {task}: IIF paper suite ({spec.preset}, {rounds} rounds of 2048 steps)",
        "",
        "Trials, as run (each trial's JSON holds its command): "
        + "; ".join(f"`{c}`" for c in commands)
        + f".  \nThis table: `python experiments/paper_suite.py --tasks {task} --summarize`.  ",
        f"Code: git commit(s) {', '.join(commits)}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".  ",
        f"Evaluation: stochastic policy after every round, {episodes} episodes (the paper: "
        f"{spec.paper_episodes}), episode j on seed {EVAL_SEED} + j for every arm, seed and "
        "round.",
        "",
        "Metrics (docs/science.md §6, `rlattr.analysis.efficiency`), per seed against PPO on the "
        "same seed, in percent: SE_ave over PPO's successive running maxima (the paper does "
        "not list its levels), SE_peak at PPO's peak, RT_peak on the process's CPU clock "
        "(the wall clock of a shared machine measures the neighbours; `RT_peak wall` "
        "beside it). A level an arm never reaches counts as reached right after the budget "
        "(an upper bound on its gain; `censored` counts them). Cells: IQM over seeds with "
        "a stratified-bootstrap 95 % CI (rliable, 2000 resamples). The `ppo` row is PPO "
        "against itself: its SE values are 0 by construction, and its RT_peak says how early "
        "PPO itself reaches its own peak (RT_peak divides by PPO's *whole* run, so an arm "
        "needs more than PPO's own value to be faster). Clocks of two trials compare only "
        "when they ran under the same load: the suite's two processes run PPO and IIF of "
        "a seed side by side, but the ablations ran later, on a machine that was quieter "
        "or busier, so their RT_peak (even on the CPU clock: contention slows a process's "
        "CPU time too) is not comparable with IIF's.",
        "",
        "| arm | seeds | SE_ave % | SE_peak % | RT_peak % (CPU) | RT_peak % (wall) | "
        "censored levels / levels | PPO's peak reached | AUC | final return | "
        "fraction dropped | CPU s / round |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        v = per_arm[arm]
        lines.append(
            f"| {arm} | {len(v['seeds'])} | {cell(v['SE_ave'], 1)} | {cell(v['SE_peak'], 1)} | "
            f"{cell(v['RT_peak'], 1)} | {cell(v['RT_peak_wall'], 1)} | "
            f"{int(sum(v['censored_levels']))} / {int(sum(v['levels']))} | "
            f"{int(sum(v['peak_reached']))}/{len(v['seeds'])} | {cell(v['AUC'], d)} | "
            f"{cell(v['final'], d)} | {np.mean(v['fraction_dropped']):.3f} | "
            f"{np.mean(v['cpu_seconds_per_round']):.2f} |"
        )
    paper = spec.paper
    lines += [
        # docs/science.md §6: the paper ran 3 seeds for most tables, 5 for Fig. 6 and Table 4.
        f"| **paper, IIF** (Fig. 6(b), 5 seeds, {spec.paper_episodes} episodes) | 5 | "
        f"{paper['SE_ave']} | {paper['SE_peak']} | | {paper['RT_peak']} | | | | | | |",
        "",
        "The same metrics on the curves averaged over the seeds (one number per arm; "
        "averaging first smooths the evaluation noise that the running maxima and the "
        "peak pick up):",
        "",
        "| arm | seeds | SE_ave % | SE_peak % | RT_peak % (CPU) | RT_peak % (wall) |",
        "|---|---|---|---|---|---|",
    ]
    for arm in arms:
        seeds = per_arm[arm]["seeds"]
        mean_of = {
            (name, key): np.mean([_series(runs[name][s], key) for s in seeds], axis=0)
            for name in ("ppo", arm)
            for key in ("return_mean", "train_cpu_seconds", "train_seconds")
        }
        on_mean = [
            efficiency(
                mean_of["ppo", "return_mean"],
                mean_of[arm, "return_mean"],
                mean_of["ppo", clock],
                mean_of[arm, clock],
            )
            for clock in ("train_cpu_seconds", "train_seconds")
        ]
        lines.append(
            f"| {arm} | {len(seeds)} | {100 * on_mean[0].se_ave:.1f} | "
            f"{100 * on_mean[0].se_peak:.1f} | {100 * on_mean[0].rt_peak:.1f} | "
            f"{100 * on_mean[1].rt_peak:.1f} |"
        )
    lines += [
        "",
        "Probability that an arm's run beats PPO's run (rliable, ties count half; 95 % CI):",
        "",
        "| arm | P(AUC > PPO's) | P(final return > PPO's) |",
        "|---|---|---|",
    ]
    for arm in arms:
        if arm == "ppo" or len(per_arm[arm]["seeds"]) < 2:
            continue
        ppo_auc = per_arm["ppo"]["AUC"]
        ppo_final = per_arm["ppo"]["final"]
        cells = []
        for key, reference in (("AUC", ppo_auc), ("final", ppo_final)):
            p = probability_of_improvement(per_arm[arm][key], reference)
            cells.append(f"{p.estimate:.2f} [{p.low:.2f}, {p.high:.2f}]")
        lines.append(f"| {arm} | {cells[0]} | {cells[1]} |")
    (OUT / f"{task}.md").write_text("\n".join(lines) + "\n")

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for arm in arms:
        seeds = per_arm[arm]["seeds"]
        curves = np.array([_series(runs[arm][s], "return_mean") for s in seeds])
        x = np.arange(curves.shape[1])
        mean, std = curves.mean(0), curves.std(0)
        top.plot(x, mean, label=f"{arm} (n={len(seeds)})")
        top.fill_between(x, mean - std, mean + std, alpha=0.15)
        if arm != "ppo":
            dropped = np.array(
                [[p["fraction_dropped"] or 0.0 for p in runs[arm][s]["curve"]] for s in seeds]
            )
            bottom.plot(x[1:], dropped.mean(0)[1:], label=arm)
    top.set_ylabel(f"eval return ({episodes} stochastic episodes)\nmean ± std over seeds")
    top.set_title(f"{task} ({spec.preset})")
    top.legend()
    bottom.set_xlabel("round (2048 steps each)")
    bottom.set_ylabel("fraction dropped")
    fig.tight_layout()
    fig.savefig(OUT / f"{task}.png", dpi=110)
    plt.close(fig)
    print("\n".join(lines))


def profiles(tasks: list[str], arms: list[str]) -> None:
    """Performance profiles (rliable) of the area under the evaluation curve, pooled over
    ``tasks``: each task's AUC min–max normalised over every profiled arm's runs, seeds
    that every arm finished on every task. -> profiles-<arms>.md / .png"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlattr.analysis.efficiency import auc, normalize_by_task, performance_profiles

    runs = {task: load_trials(task) for task in tasks}
    tasks = [t for t in tasks if all(a in runs[t] for a in arms)]
    seeds = sorted(set.intersection(*(set(runs[t][a]) for t in tasks for a in arms)))
    if not tasks or len(seeds) < 2:
        print("profiles: too few finished trials")
        return
    raw = {
        arm: np.array(
            [[auc(_series(runs[t][arm][s], "return_mean")) for t in tasks] for s in seeds]
        )
        for arm in arms
    }
    taus = np.linspace(0.0, 1.0, 41)
    result = performance_profiles(normalize_by_task(raw), taus)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for arm, profile in result.items():
        ax.plot(taus, profile.fraction, label=arm)
        ax.fill_between(taus, profile.low, profile.high, alpha=0.2)
    ax.set_xlabel("normalised AUC τ (0: worst run of the task, 1: best)")
    ax.set_ylabel("fraction of runs with AUC > τ")
    ax.set_title(f"{', '.join(tasks)}; seeds {seeds[0]}-{seeds[-1]}")
    ax.legend()
    fig.tight_layout()
    name = "profiles-" + "-".join(arms)
    fig.savefig(OUT / f"{name}.png", dpi=110)
    plt.close(fig)
    shown = [0.25, 0.5, 0.75]
    lines = [
        "# Performance profiles of the area under the evaluation curve",
        "",
        f"`python experiments/paper_suite.py --tasks {' '.join(tasks)} --arms {' '.join(arms)} "
        "--profiles`. Each task's AUC is min–max normalised over every run of these arms "
        "(0: the task's worst run, 1: its best); a profile is the fraction of runs, pooled "
        "over tasks, above τ, with rliable's stratified-bootstrap 95 % band "
        f"(seeds {', '.join(map(str, seeds))}; plot: {name}.png).",
        "",
        "| arm | " + " | ".join(f"runs above τ = {t}" for t in shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for arm, profile in result.items():
        cells = []
        for tau in shown:
            i = int(np.argmin(np.abs(taus - tau)))
            cells.append(f"{profile.fraction[i]:.2f} [{profile.low[i]:.2f}, {profile.high[i]:.2f}]")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _arm(text: str) -> str:
    parse_arm(text)  # raises SweepSpecError, naming the arms, for an unknown one
    return text


# The paper's p sweep (Table 2): SE_ave in percent for p = 12.5, 25, 50, 100 % of the negatives.
PAPER_P_SWEEP = {
    "frozenlake": {0.125: 23.5, 0.25: 30.5, 0.5: 33.7, 1.0: 32.7},
    "acrobot": {0.125: 29.2, 0.25: 35.1, 0.5: 36.7, 1.0: 35.0},
    "minigrid": {0.125: 67.5, 0.25: 60.3, 0.5: 67.0, 1.0: 75.4},
    "lunarlander": {0.125: 28.2, 0.25: 22.7, 0.5: 10.2, 1.0: 8.9},
}


def p_sweep(tasks: list[str]) -> None:
    """The paper's p sweep: IIF's metrics against PPO for every drop fraction p that has
    finished trials (``iif`` at the preset's p, ``iif_p<percent>`` at others), beside the
    paper's Table 2 -> p_sweep.md / .csv / .png."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlattr.analysis.efficiency import iqm

    rows: list[dict[str, Any]] = []
    lines = [
        "# The paper's p sweep: IIF's drop fraction p (of the negative records)",
        "",
        "`python experiments/paper_suite.py --tasks "
        + " ".join(tasks)
        + " --p-sweep` (trials: `--arms iif_p12.5 iif_p25 iif_p100`; the `iif` arm is the "
        "preset's p). Metrics against PPO on the same seed, as in each task's table; "
        "IQM over seeds with a stratified-bootstrap 95 % CI (rliable). Paper: Table 2 "
        "(SE_ave, 3 seeds, 1000 evaluation episodes).",
        "",
        "| task | p % | seeds | SE_ave % | paper SE_ave % | SE_peak % | AUC | final return | "
        "fraction dropped | CPU s / round (PPO: same seeds) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        runs = load_trials(task)
        if "ppo" not in runs:
            continue
        by_p: dict[float, str] = {}
        for arm in runs:
            name = parse_arm(arm)
            if name.base != "iif":
                continue
            trial = next(iter(runs[arm].values()))
            by_p[name.fraction or float(trial["iif"]["fraction"])] = arm
        ppo_cpu = [
            _series(t, "train_cpu_seconds")[-1] / (len(t["curve"]) - 1)
            for t in runs["ppo"].values()
        ]
        xs, ys, lows, highs, paper = [], [], [], [], []
        for fraction in sorted(by_p):
            arm = by_p[fraction]
            seeds = sorted(set(runs[arm]) & set(runs["ppo"]))
            metrics = [trial_metrics(runs["ppo"][s], runs[arm][s]) for s in seeds]
            for seed, m in zip(seeds, metrics, strict=True):
                rows.append({"task": task, "p": fraction, "arm": arm, "seed": seed, **m})

            def cell(key: str, digits: int = 1, _metrics: list = metrics) -> tuple[str, Any]:
                values = [m[key] for m in _metrics if np.isfinite(m[key])]
                if len(values) < 3:
                    return " / ".join(f"{v:.{digits}f}" for v in values) + " (n<3)", None
                est = iqm({"x": values})["x"]
                return (
                    f"{est.estimate:.{digits}f} [{est.low:.{digits}f}, {est.high:.{digits}f}]",
                    est,
                )

            se_ave, est = cell("SE_ave")
            reference = PAPER_P_SWEEP.get(task, {}).get(fraction)
            d = 3 if task in ("frozenlake", "minigrid") else 1
            lines.append(
                f"| {task} | {100 * fraction:g} | {len(seeds)} | {se_ave} | "
                f"{'' if reference is None else reference} | {cell('SE_peak')[0]} | "
                f"{cell('AUC', d)[0]} | {cell('final', d)[0]} | "
                f"{np.mean([m['fraction_dropped'] for m in metrics]):.3f} | "
                f"{np.mean([m['cpu_seconds_per_round'] for m in metrics]):.2f} "
                f"({np.mean(ppo_cpu):.2f}) |"
            )
            if est is not None:
                xs.append(100 * fraction)
                ys.append(est.estimate)
                lows.append(est.estimate - est.low)
                highs.append(est.high - est.estimate)
                paper.append(reference)
        ax.errorbar(
            xs, ys, yerr=[lows, highs], marker="o", capsize=3, label="rlattr (IQM, 95 % CI)"
        )
        if any(v is not None for v in paper):
            ax.plot(xs, paper, "s--", color="grey", label="paper, Table 2")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel("p (% of the negative records dropped)")
        ax.set_ylabel("SE_ave %")
        ax.set_title(task)
        ax.legend(fontsize=8)
    if not rows:
        print("p sweep: no finished trials")
        return
    with open(OUT / "p_sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    arms_used = sorted({str(r["arm"]) for r in rows})
    lines += [
        "",
        f"Arms: {', '.join(arms_used)}. Per-seed values: p_sweep.csv; plot: p_sweep.png. "
        "CPU seconds per round are the process's CPU time; the arms ran at different times "
        "under different load on two shared cores (the iif_p trials later than PPO's), and "
        "CPU time also rises under contention, so compare them to one digit.",
    ]
    (OUT / "p_sweep.md").write_text("\n".join(lines) + "\n")
    fig.tight_layout()
    fig.savefig(OUT / "p_sweep.png", dpi=110)
    plt.close(fig)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["frozenlake", "acrobot"], choices=TASKS)
    parser.add_argument(
        "--arms",
        nargs="+",
        default=list(ARMS),
        type=_arm,
        help=f"of {', '.join(ARMS)}; any but ppo may end in _p<percent> (iif_p25: p = 25 %%)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rounds", type=int, help="override the paper's budget (rounds)")
    parser.add_argument("--episodes", type=int, help="override the evaluation episodes")
    parser.add_argument(
        "--eval-every",
        type=int,
        default=1,
        help="evaluate after every N rounds (and the last), for budgets whose evaluations "
        "would cost more than the training",
    )
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th trial from I")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--record-dir",
        type=Path,
        help="keep each trial's run directory (run log, TensorBoard) under this folder "
        "(outside the repository: a run log is megabytes), for `rlattr diagnose`",
    )
    parser.add_argument("--summarize", action="store_true")
    parser.add_argument(
        "--p-sweep", action="store_true", help="summarize the p sweep (iif_p<percent> arms)"
    )
    parser.add_argument(
        "--profiles", action="store_true", help="performance profiles of AUC over the tasks"
    )
    parser.add_argument(
        "--noise-study", action="store_true", help="evaluation noise in SE_ave and SE_peak"
    )
    parser.add_argument("--out", help="results folder (default experiments/results/suite)")
    args = parser.parse_args()
    if args.out:
        global OUT
        OUT = Path(args.out)
    if args.noise_study:
        for task in args.tasks:
            noise_study(task)
        return
    if args.p_sweep:
        p_sweep(args.tasks)
        return
    if args.profiles:
        profiles(args.tasks, args.arms)
        return
    if args.summarize:
        for task in args.tasks:
            summarize(task, args.arms)
        return
    index, count = (int(x) for x in args.shard.split("/"))
    todo = trials(args.tasks, args.arms, args.seeds)[index::count]
    for task, arm, seed in todo:
        spec = TASKS[task]
        run_trial(
            task,
            arm,
            seed,
            rounds=args.rounds or spec.rounds,
            episodes=args.episodes or spec.episodes,
            device=args.device,
            record_dir=args.record_dir,
            eval_every=args.eval_every,
        )


if __name__ == "__main__":
    main()
