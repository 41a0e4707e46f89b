"""``rlattr sweep SPEC.yaml``: every trial of a sweep spec, resumable, one table.

The handler returns the exit status (0 every trial finished, 1 a trial failed on every
attempt) and raises ``RlattrError`` subclasses for bad input, which the command line
prints as one ``error:`` line (exit status 2). ``rlattr compare`` (``rlattr.cli.compare``)
shares the backend options and the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from rlattr.analysis.efficiency import rounds_to_share_of_peak
from rlattr.argtypes import at_least
from rlattr.cli.args import HelpFormatter, add_allow_module, allowed_modules
from rlattr.sweep.engine import SweepOutcome, run_sweep
from rlattr.sweep.report import load_results, trial_rows
from rlattr.sweep.spec import SweepSpec, SweepSpecError, parse_arm

EXIT_OK = 0
EXIT_TRIAL_FAILED = 1


def arm(text: str) -> str:
    """An arm name as ``parse_arm`` accepts it (``iif``, ``iif_p25``, ...)."""
    try:
        parse_arm(text)
    except SweepSpecError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where trials run")
    group.add_argument(
        "--backend",
        choices=["auto", "ray", "local"],
        default="auto",
        help="ray: Ray tasks side by side; local: one after another here; auto: ray if installed",
    )
    group.add_argument(
        "--address", help="join the Ray cluster at this address (default: start one here)"
    )
    group.add_argument(
        "--workers", type=at_least(1), help="trials side by side on a local Ray (default: cores)"
    )
    group.add_argument(
        "--retries", type=at_least(0), help="runs again of a failed trial (default: the spec's, 2)"
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--record",
        action="store_true",
        help="keep every trial's run log in <run dir>/runlog (for rlattr diagnose, attribute, "
        "fidelity, intervene)",
    )
    add_allow_module(parser)


def add(sub: Any) -> None:
    """The ``sweep`` subcommand."""
    parser = sub.add_parser(
        "sweep",
        help="train tasks × arms × seeds, evaluated every round; resumable; one table",
        description="Run every trial of a sweep spec: each arm of each task on each seed, "
        "evaluated after every round. A killed sweep resumes when run again.",
        epilog=_spec_keys(),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("spec", help="sweep spec (YAML file)")
    parser.add_argument(
        "--out", help="results folder, from the current folder (default: the spec's out)"
    )
    add_backend_options(parser)
    parser.set_defaults(func=run)


def _spec_keys() -> str:
    """The spec's keys with their help (from the dataclass fields' metadata)."""
    keys = "; ".join(f"{f.name}: {f.metadata['help']}" for f in dataclasses.fields(SweepSpec))
    return f"Spec keys (YAML mapping; only tasks is required) - {keys}."


def run_spec(spec: SweepSpec, args: argparse.Namespace, console: Console) -> SweepOutcome:
    allow = (*spec.allow_modules, *allowed_modules(args)) or None
    spec = spec.with_overrides(
        retries=args.retries, record=True if args.record else None, allow_modules=allow
    )
    return run_sweep(
        spec,
        args.backend,
        address=args.address,
        workers=args.workers,
        show_progress=not args.no_progress,
        console=console,
    )


def finish(outcome: SweepOutcome, console: Console) -> int:
    for key, error in outcome.failed.items():
        console.print(f"{key} failed on every attempt: {error}", markup=False, style="red")
    if outcome.failed:
        console.print(
            f"{len(outcome.failed)} trial(s) failed; their result files say why. Run the "
            "same command again to retry them (finished trials are skipped)."
        )
        return EXIT_TRIAL_FAILED
    return EXIT_OK


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    """``rlattr sweep``: run the spec, print where the table and TensorBoard logs are."""
    console = console or Console()
    spec = SweepSpec.load(args.spec)
    if args.out:
        spec = spec.with_overrides(out=args.out)
    outcome = run_spec(spec, args, console)
    for task in spec.tasks:
        console.print(comparison_table(spec, task.name))
    # soft_wrap: paths and commands stay on one line, to be copied whole.
    console.print(
        f"table: {outcome.report['markdown']} (per trial: {outcome.report['csv']})",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"curves: tensorboard --logdir {shlex.quote(str(spec.runs_dir))}",
        soft_wrap=True,
        highlight=False,
    )
    return finish(outcome, console)


def _cell(values: list[float], digits: int) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a"
    if len(finite) == 1:
        return f"{finite[0]:.{digits}f}"
    return f"{np.mean(finite):.{digits}f} ± {np.std(finite, ddof=1):.{digits}f}"


# Shares of PPO's peak the comparison table leads with (rounds an arm needs to get there).
PEAK_SHARES = (0.5, 0.9, 0.99)
MEANING = (
    "n: seeds. →x %: rounds until an arm's return is x % of the way from PPO's initial "
    "return to PPO's peak on the same seed (fewer is faster; >R: not within its R rounds). "
    "SE_ave / SE_peak: the IIF paper's sample-efficiency gain over PPO in % (0 = as fast "
    "as PPO, higher = faster). final: the last evaluation's return. CPU s: training CPU "
    "seconds per round."
)


def rounds_to_shares(payload: dict[str, Any], ppo: dict[str, Any]) -> list[float]:
    """Per share of ``PEAK_SHARES``: the round at which ``payload``'s curve first reaches
    it, or ``inf`` if never (``rlattr.analysis.efficiency.rounds_to_share_of_peak``)."""
    rounds = [point["round"] for point in payload["curve"]]
    curve = [point["return_mean"] for point in payload["curve"]]
    ppo_curve = [point["return_mean"] for point in ppo["curve"]]
    found = [rounds_to_share_of_peak(ppo_curve, curve, share) for share in PEAK_SHARES]
    return [math.inf if index is None else float(rounds[index]) for index in found]


def comparison_table(spec: SweepSpec, task: str) -> Table:
    """Per arm over its finished seeds (mean ± sample sd): rounds until it first reaches
    50 %, 90 % and 99 % of PPO's peak on the same seed, SE_ave and SE_peak against PPO,
    AUC, final return and CPU seconds per round; the caption says what they mean."""
    results = load_results(spec).get(task, {})
    rows = [r for r in trial_rows({task: results}) if r["task"] == task] if results else []
    finals = [abs(r["final_return"]) for r in rows] or [0.0]
    digits = 3 if max(finals) < 10 else 1
    table = Table(title=f"{task}: evaluation return per round, mean ± sd over seeds")
    shares = [f"→{100 * share:g} %" for share in PEAK_SHARES]
    columns = ("arm", "n", *shares, "SE_ave", "SE_peak", "AUC", "final")
    for column in (*columns, "CPU s"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    ppo_runs = results.get("ppo", {})
    peaks = [r["ppo_peak"] for r in rows if r["arm"] == "ppo"]
    caption = f"PPO's peak evaluation return: {_cell(peaks, digits)}. " if peaks else ""
    table.caption = caption + MEANING
    for arm in spec.arms:
        group = [r for r in rows if r["arm"] == arm]
        if not group:
            table.add_row(arm, "0", *[""] * (len(columns) - 1))
            continue
        to_shares = [
            rounds_to_shares(payload, ppo_runs[seed])
            for seed, payload in sorted(results.get(arm, {}).items())
            if seed in ppo_runs
        ]
        budget = max(p["curve"][-1]["round"] for p in results[arm].values())
        share_cells = [
            _rounds_cell([row[i] for row in to_shares], budget) for i in range(len(PEAK_SHARES))
        ]
        table.add_row(
            arm,
            str(len(group)),
            *share_cells,
            "–" if arm == "ppo" else _cell([r["se_ave"] for r in group], 1),
            "–" if arm == "ppo" else _cell([r["se_peak"] for r in group], 1),
            _cell([r["auc"] for r in group], digits),
            _cell([r["final_return"] for r in group], digits),
            _cell([r["cpu_seconds_per_round"] for r in group], 2),
        )
    return table


def _rounds_cell(values: list[float], budget: int) -> str:
    """Mean ± sd of the rounds reached; ``>R`` where no seed reached it, and how many did
    when only some did."""
    reached = [v for v in values if math.isfinite(v)]
    if not values:
        return "n/a"
    if not reached:
        return f">{budget}"
    cell = _cell(reached, 1)
    return cell if len(reached) == len(values) else f"{cell} ({len(reached)}/{len(values)})"
