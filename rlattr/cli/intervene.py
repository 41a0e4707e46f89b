"""``rlattr intervene RUN --iteration k``: the paper's what-if, post hoc (issue 13.4).

Retrains iteration k from θ_k without the records a rule names (default: every record with a
negative return-target score), evaluates the logged θ_{k+1} and the retrained θ'_{k+1} on
the same fresh episodes of the run's own environment, and reports Δreturn with its standard
error, beside a random drop of the same count. With several iterations or runs it writes
the box plots (PNG), a CSV and a Markdown table (``rlattr.analysis.whatif``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
from rich.console import Console

from rlattr.analysis.whatif import (
    DEFAULT_SCORES,
    WHATIF_RULES,
    WhatIfConfig,
    WhatIfError,
    WhatIfResult,
    check_iterations,
    check_scores,
    whatif_iterations,
    write_whatif_report,
)
from rlattr.argtypes import at_least
from rlattr.cli.args import HelpFormatter, add_allow_module, allowed_modules, compute_device, share
from rlattr.cli.paths import output_folder, run_directory
from rlattr.record.runlog import RunLog
from rlattr.run import RunOptionsError, run_env_factory

console = Console()


def _help(name: str) -> str:
    return str(WhatIfConfig.__dataclass_fields__[name].metadata.get("help", ""))


def add(sub: Any) -> None:
    """The ``intervene`` subcommand."""
    count, device, fraction = at_least(1), compute_device, share(open_low=True)
    parser = sub.add_parser(
        "intervene",
        help="what-if: retrain an iteration without chosen records, compare the returns",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "run", nargs="+", type=run_directory,
        help="run directory (several: one box per iteration)",
    )  # fmt: skip
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--iteration", type=int, nargs="+", metavar="K",
        help="the iteration(s) k to retrain from θ_k",
    )  # fmt: skip
    which.add_argument(
        "--every", type=count, metavar="N", help="every N-th recorded iteration, from the first"
    )
    defaults = WhatIfConfig()
    parser.add_argument("--rule", default=defaults.rule, choices=WHATIF_RULES, help=_help("rule"))
    parser.add_argument(
        "--fraction", type=fraction, default=defaults.fraction, help=_help("fraction")
    )
    parser.add_argument(
        "--episodes", type=at_least(2), default=defaults.episodes, help=_help("episodes")
    )
    parser.add_argument(
        "--eval-seed", type=at_least(0), default=defaults.eval_seed, help=_help("eval_seed")
    )
    parser.add_argument(
        "--no-control", action="store_true", help="skip the random drop of the same count"
    )
    parser.add_argument("--scores", default=defaults.scores, help=_help("scores"))
    parser.add_argument(
        "--compute-scores", action="store_true",
        help=f"compute and store missing {DEFAULT_SCORES!r} scores (snapshot, return target)",
    )  # fmt: skip
    parser.add_argument(
        "--out",
        type=output_folder,
        help="folder for whatif.csv/.md/.png (default: RUN/reports/whatif)",
    )
    parser.add_argument("--device", type=device, default="cpu", help="where to replay")
    add_allow_module(parser)
    parser.set_defaults(func=run)


def _iterations(log: RunLog, args: argparse.Namespace) -> list[int]:
    recorded = [k for k in log.iterations() if log.has_checkpoint(k)]
    if args.iteration is not None:
        check_iterations(log, args.iteration)
        return list(args.iteration)
    if not recorded:
        raise WhatIfError(f"{log.path} holds no recorded iteration with a start checkpoint")
    return recorded[:: args.every]


def _ensure_scores(log: RunLog, iterations: list[int], name: str, compute: bool) -> None:
    """Compute the default scores where missing, if asked (only those can be computed)."""
    if not compute:
        return
    if name != DEFAULT_SCORES:
        raise WhatIfError(
            f"--compute-scores computes {DEFAULT_SCORES!r} only, not {name!r}: drop --scores "
            f"to use {DEFAULT_SCORES!r}, or drop --compute-scores and store {name!r} first "
            "(rlattr attribute)"
        )
    from rlattr.scoring.attribute import attribute
    from rlattr.scoring.targets import ReturnTarget

    for k in iterations:
        if name not in log.score_names(k):
            attribute(log, k, ReturnTarget(), "snapshot", store=True)


def run_evaluator(log: RunLog) -> Callable[[Any, int, int], np.ndarray]:
    """``evaluate(policy, episodes, seed)`` on the run's own environment
    (``rlattr.run.run_env_factory``), stochastic actions seeded by ``seed``."""
    from rlattr.training.evaluation import evaluate_policy_batched

    try:
        make_env = run_env_factory(log)
    except RunOptionsError as err:
        raise WhatIfError(
            f"{err}; or call rlattr.analysis.whatif.whatif with your own evaluator"
        ) from err

    def evaluate(policy: Any, episodes: int, seed: int) -> np.ndarray:
        return evaluate_policy_batched(policy, make_env, episodes, seed)

    return evaluate


def run(args: argparse.Namespace) -> int:
    """Retrain each asked iteration without the rule's records; report Δreturn."""
    try:
        config = WhatIfConfig(
            rule=args.rule,
            fraction=args.fraction,
            episodes=args.episodes,
            eval_seed=args.eval_seed,
            control=not args.no_control,
            scores=args.scores,
        )
    except ValueError as err:
        raise WhatIfError(str(err)) from err
    # every run opens before any work
    logs = [RunLog(path, allow_modules=allowed_modules(args)) for path in args.run]
    plans = {str(log.path): (log, _iterations(log, args)) for log in logs}
    for log, iterations in plans.values():
        _ensure_scores(log, iterations, config.scores, args.compute_scores)
        check_scores(log, iterations, config.scores)  # all present before any retraining
    results: dict[str, list[WhatIfResult]] = {}
    for name, (log, iterations) in plans.items():

        def show(result: WhatIfResult, name: str = name) -> None:
            control = ""
            if not np.isnan(result.control_delta):
                control = (
                    f"; random control Δ {result.control_delta:+.4f} ± "
                    f"{result.control_delta_se:.4f}"
                )
            console.print(
                f"{name} iteration {result.iteration}: dropped {result.n_dropped} of "
                f"{result.n_eligible}; return {result.return_logged:+.4f} → "
                f"{result.return_counterfactual:+.4f}, Δ {result.delta:+.4f} ± "
                f"{result.delta_se:.4f} (SE, {result.episodes} paired episodes){control}",
                soft_wrap=True,
            )

        evaluate = run_evaluator(log)
        results[name] = whatif_iterations(
            log, iterations, config, evaluate, args.device, progress=show
        )
    if sum(len(r) for r in results.values()) > 1 or args.out is not None:
        out = args.out or logs[0].path / "reports" / "whatif"
        title = f"What-if: {config.rule} vs a random drop of the same count"
        for path in write_whatif_report(results, out, title):
            console.print(f"wrote {path}", soft_wrap=True)
    return 0
