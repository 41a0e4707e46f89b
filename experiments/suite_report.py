"""The IIF paper suite's tables, from the trials of experiments/sweeps/suite.yaml.

The trials are run by ``rlattr sweep experiments/sweeps/suite.yaml`` (which also writes the
sweep's own summary.md / summary.csv and the <task>.png curves). This writes, into the
spec's ``out`` (experiments/results/suite), per task ``<task>.md`` / ``.csv`` (IQM over
seeds with 95 % CIs, the paper's numbers beside them) and ``<task>-eval-noise.md``, and
``p_sweep.md`` / ``.csv`` / ``.png`` and the performance profiles
``profiles-<arms>.md`` / ``.png``. Per-seed metrics are ``rlattr.sweep.report.trial_row``
(``rlattr.analysis.efficiency``); nothing is trained.

    python experiments/suite_report.py                     # every table and plot
    python experiments/suite_report.py --tasks acrobot     # one task's tables
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlattr.analysis import (
    efficiency,
    iqm,
    normalize_by_task,
    performance_profiles,
    probability_of_improvement,
)
from rlattr.record import atomic_write_text
from rlattr.sweep import (
    EVAL_SEED,
    SweepSpec,
    load_results,
    parse_arm,
    trial_rows,
    write_report,
    write_trials_csv,
)

SPEC = Path(__file__).resolve().parent / "sweeps" / "suite.yaml"
COMMAND = "python experiments/suite_report.py"
ARMS = ("ppo", "iif", "random_like", "advantage_like")
# The paper's IIF row (Fig. 6(b), 5 seeds): evaluation episodes, SE_ave, SE_peak, RT_peak %.
PAPER = {
    "frozenlake": (1000, 34.0, 19.2, 29.5),
    "acrobot": (1000, 36.7, 48.5, 55.2),
    "minigrid": (1000, 65.8, 61.7, 69.1),
    "highway": (100, 37.7, 55.1, 59.9),
    "lunarlander": (1000, 26.0, 39.7, 44.9),
    "bipedalwalker": (100, 31.0, 26.2, 29.2),
}
# The paper's p sweep (Table 2): SE_ave % for p = 12.5, 25, 50, 100 % of the negatives.
PAPER_P_SWEEP = {
    "frozenlake": {0.125: 23.5, 0.25: 30.5, 0.5: 33.7, 1.0: 32.7},
    "acrobot": {0.125: 29.2, 0.25: 35.1, 0.5: 36.7, 1.0: 35.0},
    "minigrid": {0.125: 67.5, 0.25: 60.3, 0.5: 67.0, 1.0: 75.4},
    "lunarlander": {0.125: 28.2, 0.25: 22.7, 0.5: 10.2, 1.0: 8.9},
}
Results = Mapping[str, Mapping[int, Mapping[str, Any]]]  # arm → seed → trial


def _series(trial: Mapping[str, Any], key: str) -> np.ndarray:
    return np.array([float(point[key]) for point in trial["curve"]])


def _iqm_cell(values: Sequence[float], digits: int, few: str = " (too few seeds for a CI)"):
    """``IQM [low, high]`` over the finite values (and the estimate), or the values."""
    finite = [float(v) for v in values if np.isfinite(v)]
    if not finite:
        return "n/a", None
    if len(finite) < 3:
        return " / ".join(f"{v:.{digits}f}" for v in finite) + few, None
    est = iqm({"x": finite})["x"]
    return f"{est.estimate:.{digits}f} [{est.low:.{digits}f}, {est.high:.{digits}f}]", est


def _rows(runs: Results, arms: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """arm → ``trial_row`` per seed that PPO finished too (PPO against itself)."""
    rows = trial_rows({"task": {arm: runs[arm] for arm in arms}}, ppo_itself=True)
    shared = {arm: set(runs[arm]) & set(runs["ppo"]) for arm in arms}
    return {arm: [r for r in rows if r["arm"] == arm and r["seed"] in shared[arm]] for arm in arms}


def task_table(out: Path, task: str, runs: Results) -> None:
    """<task>.md and .csv: the paper's metrics per arm, IQM over seeds."""
    arms = [arm for arm in ARMS if arm in runs]
    per_arm = _rows(runs, arms)
    write_trials_csv([r for arm in arms for r in per_arm[arm]], out / f"{task}.csv")
    shown = [t for arm in arms for t in runs[arm].values()]
    first = shown[0]
    d = 3 if max(abs(r["final_return"]) for rs in per_arm.values() for r in rs) < 10 else 1
    paper = PAPER[task]
    lines = [
        f"# {task}: IIF paper suite ({first['preset']['name']}, "
        f"{sorted({t['rounds'] for t in shown})} rounds of 2048 steps)",
        "",
        "Trials: `rlattr sweep experiments/sweeps/suite.yaml`; as run (each trial's JSON "
        "holds its command): "
        + "; ".join(f"`{c}`" for c in sorted({t["command"] for t in shown}))
        + f".  \nThis table: `{COMMAND} --tasks {task}`.  ",
        f"Code: git commit(s) {', '.join(sorted({t['git_commit'] for t in shown}))}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in first["versions"].items()) + ".  ",
        "Evaluation: stochastic policy after every round, "
        f"{sorted({t['evaluation']['episodes'] for t in shown})} episodes (the paper: "
        f"{paper[0]}), episode j on seed {EVAL_SEED} + j for every arm, seed and round.",
        "",
        "Metrics (docs/science.md §6, `rlattr.analysis.efficiency`), per seed against PPO on "
        "the same seed, in percent: SE_ave over PPO's successive running maxima (the paper "
        "does not list its levels), SE_peak at PPO's peak, RT_peak on the process's CPU clock "
        "(the wall clock of a shared machine measures the neighbours; `RT_peak wall` beside "
        "it). A level an arm never reaches counts as reached right after the budget (an upper "
        "bound on its gain; `censored` counts them). Cells: IQM over seeds with a "
        "stratified-bootstrap 95 % CI (rliable, 2000 resamples). The `ppo` row is PPO against "
        "itself: its SE values are 0 by construction, and its RT_peak says how early PPO "
        "itself reaches its own peak (RT_peak divides by PPO's *whole* run, so an arm needs "
        "more than PPO's own value to be faster). Clocks of two trials compare only when they "
        "ran under the same load: the suite's two processes run PPO and IIF of a seed side by "
        "side, but the ablations ran later, on a machine that was quieter or busier, so their "
        "RT_peak (even on the CPU clock: contention slows a process's CPU time too) is not "
        "comparable with IIF's.",
        "",
        "| arm | seeds | SE_ave % | SE_peak % | RT_peak % (CPU) | RT_peak % (wall) | "
        "censored levels / levels | PPO's peak reached | AUC | final return | "
        "fraction dropped | CPU s / round |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        rs = per_arm[arm]

        def cell(key: str, digits: int = 1, _rs: list = rs) -> str:
            return _iqm_cell([r[key] for r in _rs], digits)[0]

        lines.append(
            f"| {arm} | {len(rs)} | {cell('se_ave')} | {cell('se_peak')} | {cell('rt_peak')} | "
            f"{cell('rt_peak_wall')} | {sum(r['censored_levels'] for r in rs)} / "
            f"{sum(r['levels'] for r in rs)} | {sum(bool(r['ppo_peak_reached']) for r in rs)}/"
            f"{len(rs)} | {cell('auc', d)} | {cell('final_return', d)} | "
            f"{np.mean([r['fraction_dropped'] for r in rs]):.3f} | "
            f"{np.mean([r['cpu_seconds_per_round'] for r in rs]):.2f} |"
        )
    lines += [
        f"| **paper, IIF** (Fig. 6(b), 5 seeds, {paper[0]} episodes) | 5 | "
        f"{paper[1]} | {paper[2]} | | {paper[3]} | | | | | | |",
        "",
        "The same metrics on the curves averaged over the seeds (one number per arm; "
        "averaging first smooths the evaluation noise that the running maxima and the "
        "peak pick up):",
        "",
        "| arm | seeds | SE_ave % | SE_peak % | RT_peak % (CPU) | RT_peak % (wall) |",
        "|---|---|---|---|---|---|",
    ]
    for arm in arms:
        seeds = [r["seed"] for r in per_arm[arm]]

        def mean(name: str, key: str, _seeds: list = seeds) -> np.ndarray:
            return np.mean([_series(runs[name][s], key) for s in _seeds], axis=0)

        cpu, wall = (
            efficiency(mean("ppo", "return_mean"), mean(arm, "return_mean"), mean("ppo", c),
                       mean(arm, c))
            for c in ("train_cpu_seconds", "train_seconds")
        )  # fmt: skip
        lines.append(
            f"| {arm} | {len(seeds)} | {100 * cpu.se_ave:.1f} | {100 * cpu.se_peak:.1f} | "
            f"{100 * cpu.rt_peak:.1f} | {100 * wall.rt_peak:.1f} |"
        )
    lines += [
        "",
        "Probability that an arm's run beats PPO's run (rliable, ties count half; 95 % CI):",
        "",
        "| arm | P(AUC > PPO's) | P(final return > PPO's) |",
        "|---|---|---|",
    ]
    for arm in arms:
        if arm == "ppo" or len(per_arm[arm]) < 2:
            continue
        cells = []
        for key in ("auc", "final_return"):
            p = probability_of_improvement(
                [r[key] for r in per_arm[arm]], [r[key] for r in per_arm["ppo"]]
            )
            cells.append(f"{p.estimate:.2f} [{p.low:.2f}, {p.high:.2f}]")
        lines.append(f"| {arm} | {cells[0]} | {cells[1]} |")
    atomic_write_text(out / f"{task}.md", "\n".join(lines) + "\n")


def noise_study(out: Path, task: str, runs: Results, arm: str = "iif", draws: int = 200) -> None:
    """<task>-eval-noise.md: how much of the spread of SE_ave and SE_peak the evaluation's
    finite episode count causes. Both recorded curves of a seed are taken as the truth and
    re-drawn ``draws`` times as if every round had been evaluated on K episodes (binomial
    noise where every episode returns 0 or 1, else normal noise with the round's episode
    std / sqrt(K))."""
    seeds = sorted(set(runs.get("ppo", {})) & set(runs.get(arm, {})))
    rng = np.random.default_rng(0)
    counts = [10, 30, 100, 300, 1000]
    table: dict[int, dict[str, list[float]]] = {}
    for k in counts:
        for s in seeds:
            curves = []
            for name in ("ppo", arm):
                mean = _series(runs[name][s], "return_mean")
                std = _series(runs[name][s], "return_std")
                if np.allclose(std**2, mean * (1 - mean), atol=1e-9):
                    curves.append(rng.binomial(k, np.clip(mean, 0, 1), (draws, len(mean))) / k)
                else:
                    curves.append(mean + rng.standard_normal((draws, len(mean))) * std / np.sqrt(k))
            results = [efficiency(p, f) for p, f in zip(*curves, strict=True)]
            for key in ("se_ave", "se_peak"):
                values = 100 * np.array([getattr(r, key) for r in results])
                table.setdefault(k, {}).setdefault(key, []).append(float(np.nanstd(values)))
    rows = _rows(runs, ["ppo", arm])[arm]
    across = {key: float(np.std([r[key] for r in rows])) for key in ("se_ave", "se_peak")}
    lines = [
        f"# {task}: evaluation noise in SE_ave and SE_peak ({arm} against PPO)",
        "",
        f"Command: `{COMMAND} --tasks {task}`; seeds {seeds}; {draws} draws per seed and "
        f"count; recorded with {runs['ppo'][seeds[0]]['evaluation']['episodes']} "
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
        *(
            f"| {k} | {np.mean(table[k]['se_ave']):.1f} | {np.mean(table[k]['se_peak']):.1f} |"
            for k in counts
        ),
        "",
        f"For comparison, their standard deviation over the {len(seeds)} training seeds: "
        f"SE_ave {across['se_ave']:.1f} pp, SE_peak {across['se_peak']:.1f} pp.",
    ]
    atomic_write_text(out / f"{task}-eval-noise.md", "\n".join(lines) + "\n")


def p_sweep(out: Path, results: Mapping[str, Results], tasks: Sequence[str]) -> None:
    """p_sweep.md / .csv / .png: IIF against PPO at every drop fraction p with finished
    trials (``iif`` at the preset's p, ``iif_p<percent>``), beside the paper's Table 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        "# The paper's p sweep: IIF's drop fraction p (of the negative records)",
        "",
        f"`{COMMAND}` (trials: the `iif_p12.5 iif_p25 iif_p100` arms of "
        "experiments/sweeps/suite.yaml; the `iif` arm is the preset's p). Metrics against PPO "
        "on the same seed, as in each task's table; IQM over seeds with a stratified-bootstrap "
        "95 % CI (rliable). Paper: Table 2 (SE_ave, 3 seeds, 1000 evaluation episodes).",
        "",
        "| task | p % | seeds | SE_ave % | paper SE_ave % | SE_peak % | AUC | final return | "
        "fraction dropped | CPU s / round (PPO: same seeds) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    csv_rows: list[dict[str, Any]] = []
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        runs = results[task]
        by_p = {}
        for arm in runs:
            name = parse_arm(arm)
            if name.base == "iif":
                trial = next(iter(runs[arm].values()))
                by_p[name.fraction or float(trial["iif"]["fraction"])] = arm
        per_arm = _rows(runs, ["ppo", *by_p.values()])
        ppo_cpu = np.mean([r["cpu_seconds_per_round"] for r in per_arm["ppo"]])
        points = []
        for fraction in sorted(by_p):
            rows = per_arm[by_p[fraction]]
            csv_rows += rows
            d = 3 if task in ("frozenlake", "minigrid") else 1

            def cell(key: str, digits: int = 1, _rows: list = rows) -> tuple[str, Any]:
                return _iqm_cell([r[key] for r in _rows], digits, few=" (n<3)")

            se_ave, est = cell("se_ave")
            reference = PAPER_P_SWEEP.get(task, {}).get(fraction)
            lines.append(
                f"| {task} | {100 * fraction:g} | {len(rows)} | {se_ave} | "
                f"{'' if reference is None else reference} | {cell('se_peak')[0]} | "
                f"{cell('auc', d)[0]} | {cell('final_return', d)[0]} | "
                f"{np.mean([r['fraction_dropped'] for r in rows]):.3f} | "
                f"{np.mean([r['cpu_seconds_per_round'] for r in rows]):.2f} ({ppo_cpu:.2f}) |"
            )
            if est is not None:
                points.append((100 * fraction, est, reference))
        xs = [x for x, _, _ in points]
        ys = [e.estimate for _, e, _ in points]
        errors = [
            [e.estimate - e.low for _, e, _ in points],
            [e.high - e.estimate for _, e, _ in points],
        ]
        ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label="rlattr (IQM, 95 % CI)")
        if any(r is not None for _, _, r in points):
            ax.plot(xs, [r for _, _, r in points], "s--", color="grey", label="paper, Table 2")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set(xlabel="p (% of the negative records dropped)", ylabel="SE_ave %", title=task)
        ax.legend(fontsize=8)
    write_trials_csv(csv_rows, out / "p_sweep.csv")
    lines += [
        "",
        f"Arms: {', '.join(sorted({r['arm'] for r in csv_rows}))}. Per-seed values: "
        "p_sweep.csv; plot: p_sweep.png. CPU seconds per round are the process's CPU time; "
        "the arms ran at different times under different load on two shared cores (the "
        "iif_p trials later than PPO's), and CPU time also rises under contention, so "
        "compare them to one digit.",
    ]
    atomic_write_text(out / "p_sweep.md", "\n".join(lines) + "\n")
    fig.tight_layout()
    fig.savefig(out / "p_sweep.png", dpi=110)
    plt.close(fig)


def profiles(out: Path, results: Mapping[str, Results], tasks: Sequence[str], arms: Sequence[str]):
    """profiles-<arms>.md / .png: performance profiles (rliable) of the AUC pooled over
    ``tasks``, each task's AUC min–max normalised over every profiled run, on the seeds
    that every arm finished on every task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(set.intersection(*(set(results[t][a]) for t in tasks for a in arms)))
    rows = {t: _rows(results[t], ["ppo", *arms]) for t in tasks}
    raw = {
        arm: np.array(
            [[next(r["auc"] for r in rows[t][arm] if r["seed"] == s) for t in tasks] for s in seeds]
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
    fig.savefig(out / f"{name}.png", dpi=110)
    plt.close(fig)
    shown = [0.25, 0.5, 0.75]
    lines = [
        "# Performance profiles of the area under the evaluation curve",
        "",
        f"`{COMMAND}` (tasks {' '.join(tasks)}; arms {' '.join(arms)}). Each task's AUC is "
        "min–max normalised over every run of these arms (0: the task's worst run, 1: its "
        "best); a profile is the fraction of runs, pooled over tasks, above τ, with rliable's "
        f"stratified-bootstrap 95 % band (seeds {', '.join(map(str, seeds))}; plot: {name}.png).",
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
    atomic_write_text(out / f"{name}.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=SPEC, help="the suite's sweep spec")
    parser.add_argument("--tasks", nargs="+", help="only these tasks' tables (default: all)")
    args = parser.parse_args()
    spec = SweepSpec.load(args.spec)
    out = Path(spec.out)
    results = load_results(spec)
    for task in args.tasks or list(results):
        task_table(out, task, results[task])
        noise_study(out, task, results[task])
    if args.tasks is None:
        write_report(spec, final=True)  # summary.md / .csv and <task>.png, as rlattr sweep
        swept = [t for t in results if any(parse_arm(a).fraction for a in results[t])]
        p_sweep(out, results, swept)
        four = ["frozenlake", "acrobot", "minigrid", "lunarlander"]
        profiles(out, results, four, ["ppo", "iif"])
        profiles(out, results, four, list(ARMS))
    print(f"tables in {out}")


if __name__ == "__main__":
    main()
