"""A sweep's results as one table: per trial (CSV) and per task × arm (Markdown), plots.

Every arm's trial is measured against PPO's trial on the same seed (the paper's pairing,
``rlattr.analysis.efficiency``, docs/science.md §6): rounds until it first reaches PPO's peak
evaluation return, SE_ave, SE_peak and RT_peak (on the process's CPU clock: on a shared
machine the wall clock measures the neighbours), beside the arm's own AUC (mean return over
the rounds), final return and seconds per round. Cells are mean ± sample standard
deviation over seeds; with three seeds or more and rliable installed the final report adds
IQM with 95 % bootstrap CIs and the probability of improvement over PPO.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlattr.analysis.efficiency import auc, efficiency, final_return, first_reach
from rlattr.analysis.markup import markdown_text
from rlattr.record.io import atomic_write_text
from rlattr.sweep.spec import SweepSpec
from rlattr.sweep.trial import read_result

__all__ = [
    "SUMMARY_COLUMNS",
    "TRIAL_COLUMNS",
    "load_results",
    "markdown",
    "mean_spread",
    "plot_task",
    "result_path",
    "summary_rows",
    "trial_row",
    "trial_rows",
    "write_report",
    "write_trials_csv",
]

# Bootstrap resamples of the CIs (rliable's usual count; ~1 s per interval on one core).
BOOTSTRAP_REPS = 2000
# Columns of the per-trial CSV, in order.
TRIAL_COLUMNS = (
    "task",
    "arm",
    "seed",
    "rounds",
    "final_return",
    "auc",
    "peak_return",
    "ppo_peak",
    "rounds_to_ppo_peak",
    "ppo_peak_reached",
    "se_ave",
    "se_peak",
    "rt_peak",
    "rt_peak_wall",
    "levels",
    "censored_levels",
    "seconds_per_round",
    "cpu_seconds_per_round",
    "fraction_dropped",
)
# Per task × arm: (column title, trial column, digits); percentages carry "%" in the title.
SUMMARY_COLUMNS = (
    ("final return", "final_return", None),
    ("AUC", "auc", None),
    ("rounds to PPO's peak", "rounds_to_ppo_peak", 1),
    ("SE_ave %", "se_ave", 1),
    ("SE_peak %", "se_peak", 1),
    ("RT_peak % (CPU)", "rt_peak", 1),
    ("s / round", "seconds_per_round", 2),
    ("CPU s / round", "cpu_seconds_per_round", 2),
)


def result_path(out: Path, task: str, arm: str, seed: int) -> Path:
    """``<out>/<task>/<arm>-s<seed>.json`` (the layout of the committed paper suite)."""
    return out / task / f"{arm}-s{seed}.json"


def load_results(spec: SweepSpec) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """The finished results of ``spec``'s trials: task → arm → seed → result."""
    out = Path(spec.out)
    results: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for task in spec.tasks:
        for arm in spec.arms_of(task):
            for seed in spec.seeds_of(task):
                payload = read_result(result_path(out, task.name, arm, seed))
                if payload is not None and payload.get("status") == "done":
                    results.setdefault(task.name, {}).setdefault(arm, {})[seed] = payload
    return results


def _series(payload: Mapping[str, Any], key: str) -> np.ndarray:
    return np.array([float(point[key]) for point in payload["curve"]])


def _rounds(payload: Mapping[str, Any]) -> list[int]:
    """The round of each evaluation (0, 1, 2, ... or 0, N, 2N, ... with ``eval_every``)."""
    return [int(point["round"]) for point in payload["curve"]]


def _per_round(payload: Mapping[str, Any], clock: str) -> float:
    """Training seconds per round on ``clock`` (evaluations excluded)."""
    seconds = _series(payload, clock)
    return float(seconds[-1]) / max(_rounds(payload)[-1], 1)


def trial_row(
    payload: Mapping[str, Any], ppo: Mapping[str, Any] | None, ppo_itself: bool = False
) -> dict[str, Any]:
    """One trial's metrics; those against PPO are NaN without PPO's trial on its seed.

    The efficiency metrics (SE_ave, SE_peak, RT_peak on the CPU clock and on the wall
    clock, PPO's levels and how many of them the arm never reached) are NaN for PPO's own
    trial unless ``ppo_itself``: then PPO is measured against itself (SE 0 by construction;
    its RT_peak says how early PPO reaches its own peak).
    """
    curve = _series(payload, "return_mean")
    evaluated = _rounds(payload)
    rounds = evaluated[-1]
    dropped = [p["fraction_dropped"] for p in payload["curve"] if p["fraction_dropped"] is not None]
    row: dict[str, Any] = {
        "task": payload["task"],
        "arm": payload["arm"],
        "seed": int(payload["seed"]),
        "rounds": rounds,
        "final_return": final_return(curve),
        "auc": auc(curve),
        "peak_return": float(curve.max()),
        "ppo_peak": math.nan,
        "rounds_to_ppo_peak": math.nan,
        "ppo_peak_reached": "",
        "se_ave": math.nan,
        "se_peak": math.nan,
        "rt_peak": math.nan,
        "rt_peak_wall": math.nan,
        "levels": math.nan,
        "censored_levels": math.nan,
        "seconds_per_round": _per_round(payload, "train_seconds"),
        "cpu_seconds_per_round": _per_round(payload, "train_cpu_seconds"),
        "fraction_dropped": float(np.mean(dropped)) if dropped else 0.0,
    }
    if ppo is None:
        return row
    ppo_curve = _series(ppo, "return_mean")
    peak = float(ppo_curve.max())
    reached = first_reach(curve, peak)
    # Never reached: counted right after the budget (R + 1), as the efficiency metrics do.
    row.update(
        ppo_peak=peak,
        rounds_to_ppo_peak=float(rounds + 1 if reached is None else evaluated[reached]),
        ppo_peak_reached=reached is not None,
    )
    if payload["arm"] != "ppo" or ppo_itself:
        cpu, wall = (
            efficiency(ppo_curve, curve, _series(ppo, clock), _series(payload, clock))
            for clock in ("train_cpu_seconds", "train_seconds")
        )
        # RT_peak, like SE_peak, has no meaning when PPO peaks with its initial policy.
        meaningful = cpu.m_ppo_peak > 0
        row.update(
            se_ave=100 * cpu.se_ave,
            se_peak=100 * cpu.se_peak,
            rt_peak=100 * cpu.rt_peak if meaningful else math.nan,
            rt_peak_wall=100 * wall.rt_peak if meaningful else math.nan,
            levels=len(cpu.levels),
            censored_levels=cpu.censored_levels,
        )
    return row


def trial_rows(
    results: Mapping[str, Mapping[str, Mapping[int, Mapping[str, Any]]]], ppo_itself: bool = False
) -> list[dict]:
    """``trial_row`` of every finished trial, task by task, arm by arm, seed by seed."""
    rows = []
    for arms in results.values():
        ppo = arms.get("ppo", {})
        for trials in arms.values():
            for seed in sorted(trials):
                rows.append(trial_row(trials[seed], ppo.get(seed), ppo_itself))
    return rows


def mean_spread(values: Iterable[float], digits: int | None = None) -> str:
    """``mean ± sd`` over the finite values (sample sd; none for one value), or ``n/a``."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return "n/a"
    if digits is None:
        digits = 3 if max(abs(v) for v in finite) < 10 else 1
    mean = float(np.mean(finite))
    if len(finite) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(finite, ddof=1)):.{digits}f}"


def summary_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row per task × arm: seeds and every ``SUMMARY_COLUMNS`` cell as text."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["arm"]), []).append(row)
    summary = []
    for (task, arm), group in groups.items():
        cells = {"task": task, "arm": arm, "seeds": str(len(group))}
        for title, key, digits in SUMMARY_COLUMNS:
            cells[title] = mean_spread((r[key] for r in group), digits)
        reached = [r["ppo_peak_reached"] for r in group if r["ppo_peak_reached"] != ""]
        if reached and not all(reached):
            cells["rounds to PPO's peak"] += f" ({sum(reached)}/{len(reached)} reached)"
        summary.append(cells)
    return summary


def write_trials_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """The per-trial rows as CSV (written to a temp file, then renamed)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(TRIAL_COLUMNS))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row[k]) for k in TRIAL_COLUMNS})
    atomic_write_text(path, buffer.getvalue())
    return path


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def markdown(
    spec: SweepSpec,
    rows: Sequence[Mapping[str, Any]],
    results: Mapping[str, Mapping[str, Mapping[int, Mapping[str, Any]]]],
    statistics: bool = False,
) -> str:
    """The sweep's Markdown report: settings, then one table per task.

    Task, preset and arm names are the spec's text: escaped (``markdown_text``), so that a
    name shows as itself and a table keeps one row per arm."""
    lines = [
        "# Sweep results",
        "",
        f"Arms {', '.join(map(markdown_text, spec.arms))}; seeds "
        f"{', '.join(map(str, spec.seeds))} (where a task names none of its own); "
        "stochastic evaluation after every round. Metrics against PPO on the same seed "
        "(rlattr.analysis.efficiency; SE_ave over PPO's successive running maxima, RT_peak "
        "on the CPU clock; a level never reached counts at round R + 1). Cells: mean ± "
        "sample standard deviation over the finished seeds.",
        "",
    ]
    commits = sorted(
        {t["git_commit"] for arms in results.values() for s in arms.values() for t in s.values()}
    )
    if commits:
        lines += [f"Code: git commit(s) {', '.join(map(markdown_text, commits))}.", ""]
    titles = [title for title, _, _ in SUMMARY_COLUMNS]
    by_task: dict[str, list[dict[str, str]]] = {}
    for cells in summary_rows(rows):
        by_task.setdefault(cells["task"], []).append(cells)
    for task, group in by_task.items():
        trials = [t for s in results[task].values() for t in s.values()]
        rounds = _listed(int(t["rounds"]) for t in trials)
        episodes = _listed(int(t["evaluation"]["episodes"]) for t in trials)
        steps = _listed(int(t["steps_per_round"]) for t in trials)
        lines += [
            f"## {markdown_text(task)} ({markdown_text(trials[0]['preset']['name'])}: "
            f"{rounds} rounds of {steps} steps, {episodes} evaluation episodes)",
            "",
            "| arm | seeds | " + " | ".join(titles) + " |",
            "|---" * (len(titles) + 2) + "|",
        ]
        for cells in group:
            lines.append(
                f"| {markdown_text(cells['arm'])} | {cells['seeds']} | "
                + " | ".join(cells[t] for t in titles)
                + " |"
            )
        lines.append("")
        if statistics:
            lines += _statistics(rows, task)
    return "\n".join(lines) + "\n"


def _listed(values: Iterable[int]) -> str:
    return " / ".join(str(v) for v in sorted(set(values)))


def _statistics(rows: Sequence[Mapping[str, Any]], task: str) -> list[str]:
    """IQM [95 % CI] of the final return and AUC, and P(arm > PPO), where seeds allow."""
    try:
        import rliable  # noqa: F401  (probe: the functions import it lazily)

        from rlattr.analysis.efficiency import iqm, probability_of_improvement
    except ImportError:
        return ["(IQM and confidence intervals need rliable: pip install 'rlattr[stats]')", ""]
    per_arm: dict[str, dict[int, Mapping[str, Any]]] = {}
    for row in rows:
        if row["task"] == task:
            per_arm.setdefault(row["arm"], {})[int(row["seed"])] = row
    if min(len(seeds) for seeds in per_arm.values()) < 3:
        return []
    lines = [
        f"IQM over seeds [stratified-bootstrap 95 % CI, {BOOTSTRAP_REPS} resamples] (rliable); "
        "P(run beats PPO's run on the same measure), ties counting half:",
        "",
        "| arm | IQM final return | IQM AUC | P(final > PPO) | P(AUC > PPO) |",
        "|---|---|---|---|---|",
    ]
    for arm, seeds in per_arm.items():
        cells = []
        for key in ("final_return", "auc"):
            est = iqm({arm: [seeds[s][key] for s in sorted(seeds)]}, reps=BOOTSTRAP_REPS)[arm]
            cells.append(f"{est.estimate:.3g} [{est.low:.3g}, {est.high:.3g}]")
        for key in ("final_return", "auc"):
            if arm == "ppo" or "ppo" not in per_arm:
                cells.append("")
                continue
            p = probability_of_improvement(
                [seeds[s][key] for s in sorted(seeds)],
                [per_arm["ppo"][s][key] for s in sorted(per_arm["ppo"])],
                reps=BOOTSTRAP_REPS,
            )
            cells.append(f"{p.estimate:.2f} [{p.low:.2f}, {p.high:.2f}]")
        lines.append(f"| {markdown_text(arm)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def plot_task(
    task: str, arms: Mapping[str, Mapping[int, Mapping[str, Any]]], path: Path
) -> Path | None:
    """Evaluation return per round, mean ± sd over seeds per arm, and below it the share of
    records each filtering arm dropped (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    episodes: set[int] = set()
    for number, (arm, seeds) in enumerate(arms.items()):
        color = f"C{number}"  # one colour per arm in both panels
        trials = [seeds[s] for s in sorted(seeds)]
        length = min(len(t["curve"]) for t in trials)
        x = np.array([p["round"] for p in trials[0]["curve"][:length]])
        matrix = np.array([_series(t, "return_mean")[:length] for t in trials])
        mean, sd = matrix.mean(0), matrix.std(0)
        top.plot(x, mean, label=f"{arm} (n={len(trials)})", color=color)
        top.fill_between(x, mean - sd, mean + sd, alpha=0.15, color=color)
        episodes.update(int(t["evaluation"]["episodes"]) for t in trials)
        if arm != "ppo":
            dropped = [[p["fraction_dropped"] or 0.0 for p in t["curve"][:length]] for t in trials]
            bottom.plot(x[1:], np.mean(dropped, axis=0)[1:], label=arm, color=color)
    top.set_ylabel(f"eval return ({_listed(episodes)} stochastic episodes)\nmean ± sd over seeds")
    top.set_title(task)
    top.legend()
    bottom.set_xlabel("round")
    bottom.set_ylabel("fraction dropped")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(spec: SweepSpec, final: bool = False) -> dict[str, Path]:
    """Rewrite ``summary.csv`` and ``summary.md`` in ``spec.out`` from the finished trials;
    ``final`` adds the rliable statistics and one plot per task (``<task>.png``)."""
    out = Path(spec.out)
    results = load_results(spec)
    rows = trial_rows(results)
    paths = {"csv": write_trials_csv(rows, out / "summary.csv")}
    md = out / "summary.md"
    atomic_write_text(md, markdown(spec, rows, results, statistics=final))
    paths["markdown"] = md
    if final:
        for task, arms in results.items():
            plot = plot_task(task, arms, out / f"{task}.png")
            if plot is not None:
                paths[f"plot:{task}"] = plot
    return paths
