"""``rlattr diagnose RUN``: the HTML diagnosis report (learning curve, advantage
diagnosis, rank plots, fidelity). Options and their help come from ``DiagnoseConfig``."""

from __future__ import annotations

import argparse
from typing import Any

from rlattr.analysis.diagnose import DiagnoseConfig, diagnose
from rlattr.argtypes import at_least
from rlattr.cli import console as out
from rlattr.cli.args import HelpFormatter, add_allow_module, allowed_modules, config_help
from rlattr.cli.paths import output_file, require_writable, run_directory
from rlattr.record.runlog import RunLog


def add(sub: Any) -> None:
    """The ``diagnose`` subcommand."""
    count = at_least(1)
    parser = sub.add_parser(
        "diagnose",
        help="an HTML report: learning curve, advantage diagnosis, rank plots, fidelity",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run", type=run_directory, help="run directory")
    parser.add_argument(
        "--out", type=output_file(), help="report file (default: RUN/reports/diagnosis.html)"
    )
    defaults = DiagnoseConfig()
    parser.add_argument(
        "--every", type=count, default=defaults.every, help=config_help(DiagnoseConfig, "every")
    )
    parser.add_argument(
        "--fidelity-iterations", type=at_least(0), default=defaults.fidelity_iterations,
        help=config_help(DiagnoseConfig, "fidelity_iterations"),
    )  # fmt: skip
    parser.add_argument(
        "--fidelity-subsets", type=at_least(4), default=defaults.fidelity_subsets,
        help=config_help(DiagnoseConfig, "fidelity_subsets"),
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress messages")
    add_allow_module(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the HTML diagnosis report and print its fidelity checks."""
    log = RunLog(args.run, allow_modules=allowed_modules(args))
    if args.out is None:  # the report goes into the run: refuse a read-only one now
        require_writable(
            log.path / "reports", str(log.path), "choose --out (a report file elsewhere)"
        )
        log.acquire_writer()  # one writer at a time: refused now if another holds the run
    try:
        config = DiagnoseConfig(
            every=args.every,
            fidelity_iterations=args.fidelity_iterations,
            fidelity_subsets=args.fidelity_subsets,
        )
    except ValueError as err:
        raise out.UsageError(str(err)) from err
    if not log.iterations():
        raise out.UsageError(f"{log.path} holds no committed iteration to diagnose")
    result = diagnose(log, args.out, config, progress=out.say(not args.no_progress))
    for check in result.fidelity:
        out.console.print(
            f"fidelity at iteration {int(check['iteration'])}: LDS {check['lds']:.2f} "
            f"(noise ceiling {check['ceiling']:.2f})"
        )
    out.console.print(f"report: {result.report}", soft_wrap=True)
    return 0
