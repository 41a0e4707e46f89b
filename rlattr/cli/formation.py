"""``rlattr formation RUN --behavior action:FILE``: which records, of which kind, built a
behaviour, iteration by iteration. Options and their help come from ``FormationConfig``."""

from __future__ import annotations

import argparse
import functools
import importlib
import time
from collections.abc import Callable
from typing import Any

from rlattr.analysis.formation import GROUPINGS, FormationConfig, formation, write_formation_report
from rlattr.argtypes import at_least
from rlattr.cli import console as out
from rlattr.cli.args import (
    HelpFormatter,
    add_allow_module,
    allowed_modules,
    config_help,
    load_target,
    target_spec,
)
from rlattr.cli.paths import output_folder, require_writable, run_directory, writable
from rlattr.record.io import RunLockedError
from rlattr.record.runlog import RunLog


def add(sub: Any) -> None:
    """The ``formation`` subcommand."""
    count = at_least(1)
    parser = sub.add_parser(
        "formation",
        help="which records, of which kind, built a behaviour, iteration by iteration",
        formatter_class=HelpFormatter,
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
        help=config_help(FormationConfig, "group_by")
        + "; MODULE:FUNCTION takes the records and returns one label per record",
    )  # fmt: skip
    parser.add_argument(
        "--neighbours", type=count, default=defaults.neighbours,
        help=config_help(FormationConfig, "neighbours"),
    )  # fmt: skip
    parser.add_argument(
        "--every", type=count, default=defaults.every, help=config_help(FormationConfig, "every")
    )
    parser.add_argument(
        "--out", type=output_folder, help="folder for CSV and figures (default: RUN/reports)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress messages")
    add_allow_module(parser)
    parser.set_defaults(func=run)


def group_by_option(text: str) -> Any:
    """A named grouping, or ``module:function`` imported (the callable labels records)."""
    if text in GROUPINGS:
        return text
    module_name, sep, name = text.partition(":")
    if not sep or not module_name or not name:
        raise out.UsageError(
            f"--group-by {text!r}: use one of {', '.join(GROUPINGS)} or MODULE:FUNCTION"
        )
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise out.UsageError(f"--group-by {text!r}: cannot import it ({err})") from err
    if not callable(function):
        raise out.UsageError(f"--group-by {text!r} is not callable")
    return functools.partial(_labels_of, function, text)


def _labels_of(function: Callable[[Any], Any], text: str, records: Any) -> list[Any]:
    """``function(records)``, one label per record, or a ``out.UsageError`` saying what
    a ``--group-by`` function must do (the person's own code, called with rlattr's input)."""
    what = "it must take the records (rlattr Records) and return one label per record"
    try:
        labels = list(function(records))
    except Exception as err:
        raise out.UsageError(
            f"--group-by {text!r} failed ({type(err).__name__}: {err}): {what}"
        ) from err
    if len(labels) != len(records):
        raise out.UsageError(
            f"--group-by {text!r} returned {len(labels)} labels for {len(records)} records: {what}"
        )
    return labels


def run(args: argparse.Namespace) -> int:
    """Behaviour formation over the run: CSV, figures and the score-vs-change check."""
    log = RunLog(args.run, allow_modules=allowed_modules(args))
    if args.out is None:  # CSV and figures go into the run: refuse a read-only one now
        require_writable(log.path / "reports", str(log.path), "choose --out (a folder elsewhere)")
        log.acquire_writer()  # one writer at a time: refused now if another holds the run
    if not log.iterations():
        raise out.UsageError(f"{log.path} holds no committed iteration")
    behavior = load_target(args.behavior, log)
    config = FormationConfig(
        group_by=group_by_option(args.group_by), neighbours=args.neighbours, every=args.every
    )
    say = out.say(not args.no_progress)
    start = time.perf_counter()
    result = formation(log, behavior, config, progress=say)
    folder = args.out or log.path / "reports"
    # The figures also go to the run's TensorBoard where the run can be written and no
    # other process writes it.
    tensorboard = log.tb_dir / "reports" if writable(log.tb_dir / "reports") else None
    if tensorboard is not None and args.out is not None:
        try:
            log.acquire_writer()
        except RunLockedError:
            tensorboard = None
    written = write_formation_report(result, folder, tensorboard)
    first, last = result.iterations[0], result.iterations[-1]
    out.console.print(
        f"behaviour {first.behavior:.3f} at iteration {first.iteration} → {last.behavior:.3f} "
        f"at iteration {last.iteration}; Σ scores against the actual change per iteration: "
        f"Pearson {result.pearson_score_vs_change:.2f}, Spearman "
        f"{result.spearman_score_vs_change:.2f} ({len(result.iterations)} iterations, "
        f"{time.perf_counter() - start:.1f} s)",
        soft_wrap=True,
    )
    for path in written:
        out.console.print(f"wrote {path}", soft_wrap=True)
    return 0
