"""``rlattr diagnose`` and ``rlattr formation``: reports on a recorded run.

The parsers' options come from the config dataclasses' field metadata, so the help text is
written once (``DiagnoseConfig``, ``FormationConfig``).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from rlattr.analysis.diagnose import DiagnoseConfig, diagnose
from rlattr.analysis.formation import GROUPINGS, FormationConfig, formation, write_formation_report
from rlattr.argtypes import at_least
from rlattr.cli.paths import output_file, output_folder, run_directory
from rlattr.errors import RlattrError
from rlattr.record.runlog import RunLog

console = Console()
error_console = Console(stderr=True)


class ReportUsageError(RlattrError):
    """Bad input to a report command: one ``error:`` line, exit status 2."""


def _help(config: type, name: str) -> str:
    field = config.__dataclass_fields__[name]
    return str(field.metadata.get("help", ""))


def _say(enabled: bool) -> Callable[[str], None]:
    start = time.perf_counter()

    def say(message: str) -> None:
        if enabled:
            error_console.print(f"[{time.perf_counter() - start:5.1f} s] {message}", markup=False)

    return say


# ---------------------------------------------------------------------- diagnose
def add_diagnose(sub: Any, formatter: type, count: Callable[[str], int]) -> None:
    """``rlattr diagnose RUN``: the HTML diagnosis report."""
    parser = sub.add_parser(
        "diagnose",
        help="an HTML report: learning curve, advantage diagnosis, rank plots, fidelity",
        formatter_class=formatter,
    )
    parser.add_argument("run", type=run_directory, help="run directory")
    parser.add_argument(
        "--out", type=output_file(), help="report file (default: RUN/reports/diagnosis.html)"
    )
    defaults = DiagnoseConfig()
    parser.add_argument(
        "--every", type=count, default=defaults.every, help=_help(DiagnoseConfig, "every")
    )
    parser.add_argument(
        "--fidelity-iterations", type=at_least(0), default=defaults.fidelity_iterations,
        help=_help(DiagnoseConfig, "fidelity_iterations"),
    )  # fmt: skip
    parser.add_argument(
        "--fidelity-subsets", type=at_least(4), default=defaults.fidelity_subsets,
        help=_help(DiagnoseConfig, "fidelity_subsets"),
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress messages")
    parser.set_defaults(func=run_diagnose)


def run_diagnose(args: argparse.Namespace) -> int:
    log = RunLog(args.run)
    try:
        config = DiagnoseConfig(
            every=args.every,
            fidelity_iterations=args.fidelity_iterations,
            fidelity_subsets=args.fidelity_subsets,
        )
    except ValueError as err:
        raise ReportUsageError(str(err)) from err
    if not log.iterations():
        raise ReportUsageError(f"{log.path} holds no committed iteration to diagnose")
    result = diagnose(log, args.out, config, progress=_say(not args.no_progress))
    for check in result.fidelity:
        console.print(
            f"fidelity at iteration {int(check['iteration'])}: LDS {check['lds']:.2f} "
            f"(noise ceiling {check['ceiling']:.2f})"
        )
    console.print(f"report: {result.report}", soft_wrap=True)
    return 0


# ---------------------------------------------------------------------- formation
def add_formation(
    sub: Any,
    formatter: type,
    count: Callable[[str], int],
    target_spec: Callable[[str], Any],
    load_target: Callable[[Any, RunLog], Any],
) -> None:
    """``rlattr formation RUN --behavior action:FILE``: behaviour formation over the run."""
    parser = sub.add_parser(
        "formation",
        help="which records, of which kind, built a behaviour, iteration by iteration",
        formatter_class=formatter,
    )
    parser.add_argument(
        "run", type=run_directory, help="run directory (every analysed iteration recorded)"
    )
    parser.add_argument(
        "--behavior", type=target_spec, required=True,
        help="the behaviour: action:FILE (observations and actions, .npz or .safetensors)",
    )  # fmt: skip
    defaults = FormationConfig()
    parser.add_argument(
        "--group-by", default="action", metavar="|".join((*GROUPINGS, "MODULE:FUNCTION")),
        help=_help(FormationConfig, "group_by")
        + "; MODULE:FUNCTION takes the records and returns one label per record",
    )  # fmt: skip
    parser.add_argument(
        "--neighbours", type=count, default=defaults.neighbours,
        help=_help(FormationConfig, "neighbours"),
    )  # fmt: skip
    parser.add_argument(
        "--every", type=count, default=defaults.every, help=_help(FormationConfig, "every")
    )
    parser.add_argument(
        "--out", type=output_folder, help="folder for CSV and figures (default: RUN/reports)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress messages")
    parser.set_defaults(func=functools.partial(run_formation, load_target=load_target))


def group_by_option(text: str) -> Any:
    """A named grouping, or ``module:function`` imported (the callable labels records)."""
    if text in GROUPINGS:
        return text
    module_name, sep, name = text.partition(":")
    if not sep or not module_name or not name:
        raise ReportUsageError(
            f"--group-by {text!r}: use one of {', '.join(GROUPINGS)} or MODULE:FUNCTION"
        )
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ReportUsageError(f"--group-by {text!r}: cannot import it ({err})") from err
    if not callable(function):
        raise ReportUsageError(f"--group-by {text!r} is not callable")
    return functools.partial(_labels_of, function, text)


def _labels_of(function: Callable[[Any], Any], text: str, records: Any) -> list[Any]:
    """``function(records)``, one label per record, or a ``ReportUsageError`` saying what
    a ``--group-by`` function must do (the person's own code, called with rlattr's input)."""
    what = "it must take the records (rlattr Records) and return one label per record"
    try:
        labels = list(function(records))
    except Exception as err:
        raise ReportUsageError(
            f"--group-by {text!r} failed ({type(err).__name__}: {err}): {what}"
        ) from err
    if len(labels) != len(records):
        raise ReportUsageError(
            f"--group-by {text!r} returned {len(labels)} labels for {len(records)} records: {what}"
        )
    return labels


def run_formation(args: argparse.Namespace, load_target: Callable[[Any, RunLog], Any]) -> int:
    log = RunLog(args.run)
    if not log.iterations():
        raise ReportUsageError(f"{log.path} holds no committed iteration")
    behavior = load_target(args.behavior, log)
    config = FormationConfig(
        group_by=group_by_option(args.group_by), neighbours=args.neighbours, every=args.every
    )
    say = _say(not args.no_progress)
    start = time.perf_counter()
    result = formation(log, behavior, config, progress=say)
    out = args.out or log.path / "reports"
    written = write_formation_report(result, out, log.tb_dir / "reports")
    first, last = result.iterations[0], result.iterations[-1]
    console.print(
        f"behaviour {first.behavior:.3f} at iteration {first.iteration} → {last.behavior:.3f} "
        f"at iteration {last.iteration}; Σ scores against the actual change per iteration: "
        f"Pearson {result.pearson_score_vs_change:.2f}, Spearman "
        f"{result.spearman_score_vs_change:.2f} ({len(result.iterations)} iterations, "
        f"{time.perf_counter() - start:.1f} s)",
        soft_wrap=True,
    )
    for path in written:
        console.print(f"wrote {path}", soft_wrap=True)
    return 0
