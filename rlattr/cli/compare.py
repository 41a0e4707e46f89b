"""``rlattr compare PRESET``: train arms of one preset on N seeds, compare their curves."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from rich.console import Console

from rlattr.argtypes import at_least
from rlattr.cli.args import HelpFormatter
from rlattr.cli.sweep import add_backend_options, arm, comparison_table, finish, run_spec
from rlattr.sweep.spec import SweepError, SweepSpec, TaskSpec


def add(sub: Any) -> None:
    """The ``compare`` subcommand."""
    parser = sub.add_parser(
        "compare",
        help="train arms of one preset on N seeds and compare their evaluation curves",
        description="Train each arm of one preset on seeds 0..N-1 (the sweep engine), then "
        "print rounds to PPO's peak, AUC, final return and seconds per round (mean ± sd "
        "over seeds) and the TensorBoard command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("preset", help="a shipped preset's name or a preset YAML file")
    parser.add_argument(
        "--arms",
        nargs="+",
        type=arm,
        default=["ppo", "iif"],
        help="arms to train: ppo, iif, random_like, advantage_like, iif_metagrad; any but ppo "
        "may end in _p<percent> for its drop fraction (iif_p25)",
    )
    parser.add_argument("--seeds", type=at_least(1), default=3, help="seeds 0..N-1")
    parser.add_argument(
        "--rounds", type=at_least(1), help="rounds per run (default: the preset's budget)"
    )
    parser.add_argument(
        "--episodes", type=at_least(1), default=100, help="evaluation episodes after every round"
    )
    parser.add_argument("--out", default="runs/compare", help="results folder")
    parser.add_argument("--device", default="cpu", help="torch device of every run")
    add_backend_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    """``rlattr compare``: one preset, several arms, N seeds; a comparison table."""
    console = console or Console()
    if "ppo" not in args.arms:
        raise SweepError("compare measures every arm against PPO: add ppo to --arms")
    spec = SweepSpec(
        tasks=(TaskSpec(preset=args.preset),),
        arms=tuple(args.arms),
        seeds=args.seeds,
        rounds=args.rounds,
        eval_episodes=args.episodes,
        out=args.out,
        device=args.device,
    )
    outcome = run_spec(spec, args, console)
    task = spec.tasks[0].name
    console.print(comparison_table(spec, task))
    console.print(f"table: {outcome.report['markdown']}", soft_wrap=True, highlight=False)
    logdir = shlex.quote(str(spec.runs_dir / task))
    console.print(
        f"curves (eval/return_mean per arm and seed): tensorboard --logdir {logdir}",
        soft_wrap=True,
        highlight=False,
    )
    return finish(outcome, console)
