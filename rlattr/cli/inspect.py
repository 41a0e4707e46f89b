"""``rlattr inspect RUN``: summarise and verify a run directory (exit 1 on a problem)."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from rich.table import Table

from rlattr.cli import console as out
from rlattr.cli.args import HelpFormatter, add_allow_module, allowed_modules
from rlattr.cli.paths import run_directory
from rlattr.errors import RlattrError
from rlattr.record.runlog import RunLog
from rlattr.record.serialize import check_run_names
from rlattr.run import resume_command


def add(sub: Any) -> None:
    """The ``inspect`` subcommand."""
    inspect_ = sub.add_parser(
        "inspect",
        help="summarise and verify a run directory (exit status 1 if a problem is found)",
        formatter_class=HelpFormatter,
    )
    inspect_.add_argument("run", type=run_directory, help="run directory")
    add_allow_module(inspect_)
    inspect_.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the run's summary and verification; 1 if a problem was found."""
    log = RunLog(args.run, allow_modules=allowed_modules(args))
    if log.run_json_problem is None:  # else reported below (exit 1), and nothing is built
        check_run_names(log)  # a run naming modules not allowed is refused, as replay would
    meta = log.stored_meta  # as read: a run.json that fails its checksum is shown, and flagged
    config = meta.get("config", {})
    preset = config.get("preset", {})
    report = log.verify()
    iterations = report.iterations
    table = Table(title=f"run {log.path}", show_header=False)
    from rlattr.training.rundir import run_summary

    for label, text in run_summary(meta):  # the preset, or what a Python run knows
        table.add_row(label, text)
    table.add_row("seed", str(meta.get("seed")))
    minor = f".{log.format_minor}" if log.format_minor else ""
    table.add_row("format", f"{meta['format']} v{meta['format_version']}{minor}")
    versions = meta.get("versions", {})
    table.add_row("versions", ", ".join(f"{k} {v}" for k, v in versions.items()))
    table.add_row("IIF", _describe_iif(config.get("iif")))
    # What a NaN or inf reward, observation, advantage or loss does to this run.
    table.add_row("non-finite values", str(config.get("nonfinite", "not recorded (older run)")))
    if config.get("iif") is not None:
        table.add_row("dropped", dropped_share(log, iterations))
    span = f"{iterations[0]}..{iterations[-1]}" if iterations else "none"
    table.add_row("iterations committed", f"{len(iterations)} ({span})")
    if report.gaps:
        table.add_row("gaps", f"[red]{', '.join(map(str, report.gaps))} not committed[/]")
    table.add_row("checkpoints", str(len(report.checkpoints)))
    last_meta = _last_meta(log, iterations)
    if last_meta is not None:
        table.add_row(
            "records / iteration",
            f"{last_meta['n_envs'] * last_meta['n_steps']} ({last_meta['n_envs']} envs)",
        )
        from rlattr.record.plan import stored_optimizer_steps

        table.add_row("optimiser steps (last)", str(stored_optimizer_steps(last_meta["plan"])))
        table.add_row("timesteps (last)", str(last_meta["info"].get("num_timesteps")))
    table.add_row("stored scores", _describe_scores(log, iterations))
    size = sum(p.stat().st_size for p in log.path.rglob("*") if p.is_file())
    table.add_row("size on disk", f"{size / 2**20:.2f} MiB")
    table.add_row("state", _run_state(log, report, preset, last_meta))
    status = (
        "[green]all checksums match[/]"
        if report.ok
        else f"[red]{len(report.problems)} problem(s)[/]"
    )
    if not report.metadata_verified:
        status += (
            "\n[yellow]metadata unverified[/]: written before JSON files carried checksums "
            "(run.json, iteration.json and checkpoint JSON are parsed, not checked)"
        )
    table.add_row("verification", status)
    out.console.print(table)
    for problem in report.problems:
        out.console.print(f"  {problem}", style="red", soft_wrap=True, markup=False, emoji=False)
    resumable = log.run_json_problem is None  # resuming reads run.json
    if resumable and (report.leftovers or not _finished(preset, last_meta)):
        out.console.print(
            f"resume with: {resume_command(log)}", soft_wrap=True, markup=False, emoji=False
        )
    return 0 if report.ok else 1


def _last_meta(log: RunLog, iterations: list[int]) -> dict[str, Any] | None:
    """The newest readable ``iteration.json`` (a damaged one is a verify problem)."""
    for k in reversed(iterations):
        with contextlib.suppress(RlattrError):
            return log.iteration_meta(k)
    return None


def _finished(preset: dict[str, Any], last_meta: dict[str, Any] | None) -> bool:
    """Whether the run reached its preset's budget (True when it has no preset budget)."""
    total = preset.get("total_timesteps")
    if total is None:
        return True  # trained through the Python API: the budget is not recorded
    done = (last_meta or {}).get("info", {}).get("num_timesteps", 0)
    return done >= total


def _run_state(
    log: RunLog, report: Any, preset: dict[str, Any], last_meta: dict[str, Any] | None
) -> str:
    """``complete`` or why the run is not: interrupted mid-iteration, or short of budget."""
    total = preset.get("total_timesteps")
    done = (last_meta or {}).get("info", {}).get("num_timesteps", 0)
    if report.leftovers:
        return (
            f"[yellow]interrupted[/]: {len(report.leftovers)} uncommitted leftover(s) "
            f"({done} of {total or '?'} steps committed; resume discards them)"
        )
    if not _finished(preset, last_meta):
        return f"[yellow]stopped early[/]: {done} of {total} steps"
    return "complete" if total is not None else f"{done} steps (budget not recorded)"


def dropped_share(log: RunLog, iterations: list[int]) -> str:
    """The share of the *buffer* a filter dropped (p of ``neg_bottom`` is a share of the
    negatively scored records, so the two differ: p = 0.5 drops about a quarter on Acrobot)."""
    shares = []
    for k in iterations:
        try:
            keep = log.load_plan(k).keep_mask
        except RlattrError:  # a damaged iteration: inspect reports it elsewhere
            continue
        shares.append(float((~keep).double().mean()))
    if not shares:
        return "nothing yet (no committed iteration)"
    filtered = sum(share > 0 for share in shares)
    return (
        f"{sum(shares) / len(shares):.1%} of the buffer on average (max {max(shares):.1%}); "
        f"{filtered} of {len(shares)} iterations filtered"
    )


def _describe_iif(stored: dict[str, Any] | None) -> str:
    if stored is None:
        return "off (plain PPO updates)"
    shown = ("rule", "fraction", "scorer", "minibatching", "params", "warmup_iterations")
    return ", ".join(f"{key} {stored[key]}" for key in shown if key in stored)


def _describe_scores(log: RunLog, iterations: list[int]) -> str:
    """Each stored score name with the iterations it covers."""
    by_name: dict[str, list[int]] = {}
    for k in iterations:
        for name in log.score_names(k):
            by_name.setdefault(name, []).append(k)
    if not by_name:
        return "none (rlattr attribute stores them)"
    return "\n".join(
        f"{name}: {len(ks)} iteration(s) ({ks[0]}..{ks[-1]})" for name, ks in by_name.items()
    )
