"""``rlattr attribute RUN --iteration k``: score the records of a logged iteration."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

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
)
from rlattr.cli.paths import output_file, require_writable
from rlattr.record.runlog import RunLog


def add(sub: Any) -> None:
    """The ``attribute`` subcommand."""
    attribute = sub.add_parser(
        "attribute", help="score the records of a logged iteration",
        formatter_class=HelpFormatter,
    )  # fmt: skip
    add_iteration_target(attribute)
    attribute.add_argument(
        "--method", default="snapshot", choices=["snapshot", "tracin", "metagrad"],
        help="snapshot (θ_k only), tracin (over the replayed update), metagrad (exact)",
    )  # fmt: skip
    attribute.add_argument(
        "--params", default="policy", choices=["policy", "value", "all"],
        help="parameters whose gradients score the records",
    )  # fmt: skip
    attribute.add_argument(
        "--backend", default="auto", choices=["auto", "hooks", "jvp", "vmap", "naive"],
        help="how per-record gradient products are computed",
    )  # fmt: skip
    attribute.add_argument("--top", type=at_least(0), default=5, help="records shown at each end")
    attribute.add_argument(
        "--no-store", action="store_true", help="do not store the scores in the run"
    )
    attribute.add_argument("--device", type=compute_device, default="cpu", help="where to score")
    add_memory_budget(attribute, "with --method metagrad")
    attribute.add_argument(
        "--out", type=output_file(".csv", ".parquet"), metavar="FILE.csv|FILE.parquet",
        help="also write one row per record (env, step, episode, observation, action, reward, "
        "advantages, scores, kept)",
    )  # fmt: skip
    add_allow_module(attribute)
    attribute.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Score, store unless asked not to, and show the records at both ends."""
    from rlattr.scoring.attribute import attribute, score_name

    budget = memory_budget(args, args.method == "metagrad", "with --method metagrad")
    log = RunLog(args.run, allow_modules=allowed_modules(args))
    if not args.no_store:  # the scores go into the run (and its writer lock): refuse now
        for folder in (log.path, log.iteration_dir(args.iteration) / "scores"):
            require_writable(
                folder, str(log.path), "add --no-store (--out still writes the table), or "
                "score a writable copy of the run",
            )  # fmt: skip
        log.acquire_writer()  # another writer (a training run) is refused before the work
    log.iteration_meta(args.iteration)  # the iteration exists, before the target is read
    target = load_target(args.target, log)
    start = time.perf_counter()
    scores = attribute(
        log, args.iteration, target, args.method, args.params, args.backend, args.device,
        store=not args.no_store,
        memory_budget=budget,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    records = log.load_records(args.iteration)
    name = score_name(args.method, target, args.params)
    stored = (
        "not stored (--no-store)"
        if args.no_store
        else f"stored as {name!r} in {log.iteration_dir(args.iteration) / 'scores'}"
    )
    out.console.print(
        f"{args.method} scores of iteration {args.iteration} on the {target.name} target: "
        f"{len(scores)} records in {seconds:.2f} s, {float((scores < 0).float().mean()):.1%} "
        f"negative; {stored}",
        soft_wrap=True,
    )
    if args.out is not None:
        from rlattr.analysis.tables import scores_table, write_table

        table = scores_table(log, [args.iteration])
        table[f"score:{name}"] = scores.cpu().numpy()  # also when --no-store
        args.out.parent.mkdir(parents=True, exist_ok=True)  # as every other --out does
        out.console.print(f"wrote {write_table(table, args.out)}", soft_wrap=True)
    order = torch.argsort(scores, descending=True)
    for title, picks in (
        ("most helpful", order[: args.top]),
        ("most harmful", order.flip(0)[: args.top]),
    ):
        out.print_records(
            f"{title} records",
            [(args.iteration, records, i, float(scores[i])) for i in picks.tolist()],
        )
    return 0
