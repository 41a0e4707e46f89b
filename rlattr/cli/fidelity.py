"""``rlattr fidelity RUN --iteration k``: check scores against leave-subset-out replay."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from rlattr.argtypes import at_least
from rlattr.cli import console as out
from rlattr.cli.args import (
    HelpFormatter,
    add_allow_module,
    add_iteration_target,
    add_memory_budget,
    allowed_modules,
    compute_device,
    load_target,
    memory_budget,
    share,
)
from rlattr.record.runlog import RunLog


def add(sub: Any) -> None:
    """The ``fidelity`` subcommand."""
    fidelity = sub.add_parser(
        "fidelity", help="check scores against leave-subset-out replay",
        formatter_class=HelpFormatter,
    )  # fmt: skip
    add_iteration_target(fidelity)
    fidelity.add_argument(
        "--method", default="all", choices=["snapshot", "tracin", "metagrad", "all"],
        help="which scores to check",
    )  # fmt: skip
    fidelity.add_argument(
        "--subsets", type=at_least(2), default=64, help="random subsets left out, one each"
    )
    fidelity.add_argument(
        "--fraction", type=share(open_low=True), default=0.1,
        help="share of the records each subset leaves out",
    )  # fmt: skip
    fidelity.add_argument(
        "--orders", type=at_least(1), default=2,
        help="minibatch orders replayed; >= 2 also reports the noise ceiling",
    )  # fmt: skip
    fidelity.add_argument("--seed", type=at_least(0), default=0, help="seed of the subsets")
    fidelity.add_argument("--device", type=compute_device, default="cpu", help="where to replay")
    add_memory_budget(fidelity, "with --method metagrad or all")
    fidelity.add_argument("--no-progress", action="store_true", help="no progress display")
    add_allow_module(fidelity)
    fidelity.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """LDS, Pearson, sign agreement and the noise ceiling, per method."""
    from rlattr.analysis.fidelity import fidelity

    budget = memory_budget(
        args, args.method in ("metagrad", "all"), "with --method metagrad or all"
    )
    log = RunLog(args.run, allow_modules=allowed_modules(args))
    log.iteration_meta(args.iteration)
    target = load_target(args.target, log)
    methods = ["snapshot", "tracin", "metagrad"] if args.method == "all" else [args.method]
    table = Table(title=f"fidelity, iteration {args.iteration}, {target.name} target")
    for column in ("method", "subsets", "LDS", "Pearson", "sign", "ceiling", "LDS avg-order"):
        table.add_column(column, no_wrap=True)
    with out.progress(not args.no_progress) as progress:
        task = progress.add_task("fidelity", total=len(methods)) if progress else None
        for number, method in enumerate(methods, 1):
            if progress is not None:
                progress.update(
                    task,
                    description=f"[{number}/{len(methods)}] {method}: scoring, then "
                    f"{args.subsets} leave-subset-out replays × {args.orders} order(s)",
                )
            report = fidelity(
                log, args.iteration, target, method, n_subsets=args.subsets,
                fraction=args.fraction, orders=args.orders, seed=args.seed, device=args.device,
                memory_budget=budget,
            )  # fmt: skip
            table.add_row(
                method, f"{report.n_subsets} × {report.fraction:g}", f"{report.lds:.3f}",
                f"{report.pearson:.3f}", f"{report.sign_agreement:.2f}",
                f"{report.ceiling:.3f}", f"{report.lds_mean_order:.3f}",
            )  # fmt: skip
            if progress is not None:
                progress.advance(task)
    out.console.print(table)
    return 0
