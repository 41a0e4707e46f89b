"""``rlattr replay RUN``: replay logged iterations and check that they are bit-identical."""

from __future__ import annotations

import argparse
from typing import Any

from rlattr.argtypes import at_least
from rlattr.cli import console as out
from rlattr.cli.args import HelpFormatter, add_allow_module, allowed_modules, compute_device
from rlattr.cli.paths import run_directory
from rlattr.record.runlog import RunLog


def add(sub: Any) -> None:
    """The ``replay`` subcommand."""
    replay = sub.add_parser(
        "replay", help="replay logged iterations and check bit-exactness",
        formatter_class=HelpFormatter,
    )  # fmt: skip
    replay.add_argument("run", type=run_directory, help="run directory")
    replay.add_argument(
        "--iteration", type=at_least(0), action="append",
        help="iteration to replay; repeatable (default: all)",
    )  # fmt: skip
    replay.add_argument("--device", type=compute_device, default="cpu", help="where to replay")
    add_allow_module(replay)
    replay.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Replay each asked iteration; 1 if any differs from its logged result."""
    from rlattr.record.checkpoint import capture_checkpoint
    from rlattr.record.replay import (
        IterationData,
        build_policy,
        load_iteration,
        replay,
        state_matches,
    )

    log = RunLog(args.run, allow_modules=allowed_modules(args))
    iterations = args.iteration or log.iterations()
    if not iterations:
        raise out.UsageError(f"{log.path} holds no committed iteration to replay")
    for k in iterations:
        log.iteration_meta(k)  # every requested iteration exists, before any replay
    policy = build_policy(log, args.device)
    failures = 0
    for k in iterations:
        data = load_iteration(log, k, args.device)
        replay(data, policy)
        # A sparse θ_{k+1} (format 2), or one rebuilt and cached, is itself made by this
        # very replay, so comparing with it would check nothing: replay on, on the logged
        # data, up to the next checkpoint training wrote, and compare there.
        end = k + 1
        while log.has_checkpoint(end) and not log.is_logged_checkpoint(end):
            tensors, _ = capture_checkpoint(policy)
            chained = IterationData(
                end,
                log.load_records(end, args.device),
                log.load_plan(end, args.device),
                tensors,
                log.checkpoint_meta(end),
            )
            replay(chained, policy)
            end += 1
        if not log.has_checkpoint(end):
            out.console.print(f"iteration {k}: replayed (no later checkpoint kept to compare with)")
            continue
        expected, _ = log.load_checkpoint(end)
        mismatched = state_matches(policy, expected)
        through = "" if end == k + 1 else f" (replayed on through iteration {end - 1})"
        if mismatched:
            failures += 1
            out.console.print(
                f"[red]iteration {k}: {len(mismatched)} tensors differ from the logged "
                f"θ_{end}{through}: {mismatched}[/]"
            )
        else:
            out.console.print(
                f"iteration {k}: [green]bit-identical[/] to the logged θ_{end}{through}"
            )
    return 1 if failures else 0
