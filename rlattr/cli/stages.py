"""``rlattr stages RUN``: which training stages account for a behaviour of the final policy."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.table import Table

from rlattr.argtypes import at_least
from rlattr.cli import console as out
from rlattr.cli.args import (
    HelpFormatter,
    add_allow_module,
    allowed_modules,
    compute_device,
    load_target,
    stage_span,
    stage_spec,
    target_spec,
)
from rlattr.cli.paths import run_directory
from rlattr.record.runlog import RunLog


def add(sub: Any) -> None:
    """The ``stages`` subcommand."""
    stages = sub.add_parser(
        "stages", help="which training stages account for a behaviour",
        formatter_class=HelpFormatter,
    )  # fmt: skip
    stages.add_argument("run", type=run_directory, help="run directory (every iteration recorded)")
    stages.add_argument(
        "--stages", type=stage_spec, default="4",
        help="K equal spans, or a:b,c:d (iterations a to b-1)",
    )  # fmt: skip
    stages.add_argument(
        "--behavior", type=target_spec, default="return",
        help="return (the return target on the last buffer), return:mc or action:FILE",
    )  # fmt: skip
    stages.add_argument(
        "--first-order-only", action="store_true", help="skip the second-order estimate"
    )
    stages.add_argument(
        "--ground-truth", action="store_true", help="also replay without each stage"
    )
    stages.add_argument(
        "--optimizer-state", default="rollback", choices=["rollback", "carry"],
        help="optimiser state after a removed stage: rolled back, or carried on",
    )  # fmt: skip
    stages.add_argument(
        "--records", type=stage_span, metavar="A:B",
        help="split stage A:B's first-order effect over its records instead",
    )  # fmt: skip
    stages.add_argument("--top", type=at_least(0), default=10, help="records shown with --records")
    stages.add_argument("--device", type=compute_device, default="cpu", help="where to compute")
    stages.add_argument("--no-progress", action="store_true", help="no progress display")
    add_allow_module(stages)
    stages.set_defaults(func=run)


# Above this ‖e_T‖/‖δ‖ the CLI flags an SO estimate as unreliable.
SO_GROWTH_WARNING = 100.0


def _check_stages(log: RunLog, spec: str, option: str) -> None:
    """The run records every iteration from 0 and the stages lie within it.

    Listing the run's iterations is cheap; loading them (what ``stage_effects`` does
    first) is not, so the spec is checked here.
    """
    from rlattr.analysis.stages import parse_stages

    recorded = log.iterations()
    if not recorded or recorded != list(range(len(recorded))):
        raise out.UsageError(
            f"stage effects need every iteration recorded from 0; {log.path} holds "
            f"{len(recorded)} iteration(s) ({', '.join(map(str, recorded[:4]))}"
            f"{'…' if len(recorded) > 4 else ''}): train with record_every=1 and no keep_last"
        )
    n = len(recorded)
    try:
        parse_stages(spec, n)
    except ValueError as err:
        raise out.UsageError(
            f"{option} {spec}: {err}; this run has iterations 0..{n - 1}, so stages a:b "
            f"need 0 <= a < b <= {n} (or give a count from 1 to {n})"
        ) from err


def run(args: argparse.Namespace) -> int:
    """Stage effects (FO, SO, ground truth), or one stage split over its records."""
    from rlattr.analysis.stages import stage_effects

    log = RunLog(args.run, allow_modules=allowed_modules(args))
    _check_stages(log, args.records or args.stages, "--records" if args.records else "--stages")
    if not args.records:  # the chart goes into the run: one writer at a time
        log.acquire_writer()
    plain_return = args.behavior.text == "return"
    behavior = None if plain_return else load_target(args.behavior, log)
    start = time.perf_counter()
    if args.records:
        return _stage_records(log, args, behavior)
    with out.progress(not args.no_progress) as progress:
        if progress is not None:
            progress.add_task(
                f"stage effects over {len(log.iterations())} iterations"
                + (" (with ground-truth replays)" if args.ground_truth else ""),
                total=None,
            )
        effects = stage_effects(
            log, args.stages, behavior, second_order=not args.first_order_only,
            ground_truth=args.ground_truth, optimizer_state=args.optimizer_state,
            device=args.device,
        )  # fmt: skip
    table = Table(title=f"stage effects on the {args.behavior.text} behaviour of the final policy")
    for column in ("stage", "FO", "SO", "SO ‖e_T‖/‖δ‖", "ground truth"):
        table.add_column(column, no_wrap=True)
    for effect in effects:
        so = "–" if effect.so is None else f"{effect.so:+.4e}"
        growth = "–" if effect.so_growth is None else f"{effect.so_growth:.3g}"
        truth = "–" if effect.ground_truth is None else f"{effect.ground_truth:+.4e}"
        table.add_row(str(effect.stage), f"{effect.fo:+.4e}", so, growth, truth)
    out.console.print(table)
    if any((e.so_growth or 0.0) > SO_GROWTH_WARNING for e in effects):
        out.console.print(
            f"[yellow]SO stretched a stage's displacement more than {SO_GROWTH_WARNING:g}×: "
            "the linearised update map is expanding there and that SO value is unreliable "
            "(see rlattr.analysis.stages.StageEffect).[/yellow]"
        )
    from rlattr.analysis.plots import save_figure, stage_effects_figure

    png = log.path / "reports" / "stage_effects.png"
    figure = stage_effects_figure(effects, f"stage effects on the {args.behavior.text} behaviour")
    save_figure(figure, png, log.tb_dir / "reports", tag="stage_effects")
    out.console.print(f"{time.perf_counter() - start:.1f} s; chart: {png} (and in TensorBoard)")
    return 0


def _stage_records(log: RunLog, args: argparse.Namespace, behavior: Any) -> int:
    from rlattr.analysis.stages import stage_record_scores

    with out.progress(not args.no_progress) as progress:
        if progress is not None:
            progress.add_task(f"splitting stage {args.records} over its records", total=None)
        split = stage_record_scores(
            log, args.records, behavior, optimizer_state=args.optimizer_state,
            device=args.device,
        )  # fmt: skip
    shares = [(k, i, float(v)) for k, values in split.scores.items() for i, v in enumerate(values)]
    total = sum(v for _, _, v in shares)
    out.console.print(
        f"stage {split.stage}: FO effect {split.estimate:+.4e} on the {args.behavior.text} "
        f"behaviour = {len(shares)} record shares (sum {total:+.4e}) + remainder "
        f"{split.remainder:+.4e} (weight decay, inherited momentum)"
    )
    records = {k: log.load_records(k) for k in split.scores}
    shares.sort(key=lambda row: row[2], reverse=True)
    for title, picked in (
        ("records that raised the behaviour most", shares[: args.top]),
        ("records that lowered it most", shares[::-1][: args.top]),
    ):
        out.print_records(title, [(k, records[k], i, v) for k, i, v in picked])
    return 0
