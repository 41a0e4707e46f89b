"""The paper's what-if intervention, post hoc (issue 13.4; docs/science.md §6 "What-if").

For a recorded iteration k: choose records by their stored scores (``drop_negative``: every
record with a negative return-target score), retrain iteration k from θ_k without them —
exact replay of the logged update with a keep mask: the same plan, the removed records
taken out of their minibatches, as IIF's default ``as_drawn`` minibatching does — and
evaluate the logged θ_{k+1} and the counterfactual θ'_{k+1} on the *same* fresh episodes
(the evaluator is called with the same seed for every policy: common random numbers).
Δreturn = mean over episodes of (return under θ'_{k+1} − return under θ_{k+1}), with the
standard error of that paired difference. A control drops as many records at random
(same eligible records, seeded), so a rule's Δ is read against what removing that many
records does anyway.

Only the records the logged update trained on are eligible (an IIF or intervention run
already removed some; down-weighted records count as trained on).

The evaluator is passed in (this layer does not build environments): any
``evaluate(policy, episodes, seed) -> returns`` that plays ``episodes`` episodes of the
stochastic policy, deterministic given ``seed``. ``rlattr intervene`` uses
``rlattr.training.evaluation.evaluate_policy_batched`` on the run's own environment.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.analysis.markup import markdown_text
from rlattr.errors import RlattrError, RunLogError
from rlattr.record.replay import IterationData, build_policy, load_iteration, replay
from rlattr.record.runlog import RunLog

WhatIfRule = Literal["drop_negative", "bottom", "random"]
WHATIF_RULES: tuple[str, ...] = ("drop_negative", "bottom", "random")
#: Scores the what-if reads by default: snapshot scores on the same-buffer return target.
DEFAULT_SCORES = "snapshot-return"


class WhatIfError(RlattrError, ValueError):
    """A what-if that cannot run as asked (no scores, bad iteration, bad setting)."""


class Evaluator(Protocol):
    """Plays ``episodes`` episodes of ``policy`` (stochastic), episode j on ``seed + j``."""

    def __call__(self, policy: ActorCriticPolicy, episodes: int, seed: int) -> np.ndarray: ...


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class WhatIfConfig:
    """How a what-if chooses records and evaluates the two policies."""

    rule: WhatIfRule = field(
        default="drop_negative",
        metadata=_help(
            "drop_negative: every record with a negative score; bottom: the lowest-scored "
            "FRACTION; random: FRACTION at random"
        ),
    )
    fraction: float = field(
        default=0.1,
        metadata=_help("bottom and random: the share of the trained-on records dropped"),
    )
    episodes: int = field(
        default=100, metadata=_help("evaluation episodes per policy (the same for all)")
    )
    eval_seed: int = field(
        default=10_000,
        metadata=_help("episode j of every evaluation resets with EVAL_SEED + j"),
    )
    control: bool = field(
        default=True, metadata=_help("also drop as many records at random (the control)")
    )
    control_seed: int = field(
        default=0, metadata=_help("seed of the random draws (plus the iteration)")
    )
    scores: str = field(
        default=DEFAULT_SCORES,
        metadata=_help("name of the stored scores the rule reads (rlattr attribute names)"),
    )

    def __post_init__(self) -> None:
        if self.rule not in WHATIF_RULES:
            raise WhatIfError(f"unknown what-if rule {self.rule!r}: use one of {WHATIF_RULES}")
        if not (isinstance(self.fraction, int | float) and 0 < self.fraction < 1):
            raise WhatIfError(f"fraction must be in (0, 1), got {self.fraction!r}")
        if isinstance(self.episodes, bool) or not isinstance(self.episodes, int):
            raise WhatIfError(f"episodes must be a whole number, got {self.episodes!r}")
        if self.episodes < 2:
            raise WhatIfError(
                f"episodes must be >= 2 (a standard error needs two), got {self.episodes}"
            )


@dataclass(frozen=True)
class WhatIfResult:
    """One iteration's what-if.

    Attributes:
        iteration: k; the policies compared are θ_{k+1} (logged) and θ'_{k+1} (retrained).
        rule: the rule that chose the records.
        n_records, n_eligible, n_dropped: buffer size, records the update trained on,
            records the rule removed.
        return_logged, return_counterfactual: mean evaluation return of θ_{k+1}, θ'_{k+1}.
        delta, delta_se: mean paired difference (counterfactual − logged) and its
            standard error over the episodes.
        control_delta, control_delta_se: the same for a random drop of ``n_dropped``
            eligible records (NaN without a control).
        episodes, eval_seed: the evaluation both policies shared.
        seconds: wall-clock time of this what-if.
    """

    iteration: int
    rule: str
    n_records: int
    n_eligible: int
    n_dropped: int
    return_logged: float
    return_counterfactual: float
    delta: float
    delta_se: float
    control_delta: float
    control_delta_se: float
    episodes: int
    eval_seed: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------- choosing records
def eligible_records(data: IterationData) -> torch.Tensor:
    """``[N]`` bool: the records the logged update trained on (kept, nonzero weight)."""
    eligible = data.plan.keep_mask.detach().cpu().clone()
    if data.plan.record_weights is not None:
        eligible &= data.plan.record_weights.detach().cpu() != 0
    return eligible


def removal_mask(
    scores: torch.Tensor,
    rule: str,
    fraction: float,
    eligible: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """``[N]`` bool, True = removed: the eligible records ``rule`` names.

    ``drop_negative``: every eligible record whose score is < 0; ``bottom``: the
    floor(fraction × eligible) lowest-scored eligible records (ties by index); ``random``:
    as many eligible records drawn from ``generator``.
    """
    scores = scores.detach().cpu()
    eligible = eligible.detach().cpu()
    if rule == "drop_negative":
        return eligible & (scores < 0)
    count = math.floor(fraction * int(eligible.sum()))
    if rule == "bottom":
        pool = torch.nonzero(eligible).flatten()
        chosen = pool[torch.sort(scores[pool], stable=True).indices[:count]]
        mask = torch.zeros_like(eligible)
        mask[chosen] = True
        return mask
    if rule == "random":
        return random_like(count, eligible, generator)
    raise WhatIfError(f"unknown what-if rule {rule!r}: use one of {WHATIF_RULES}")


def random_like(count: int, eligible: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[N]`` bool: ``count`` eligible records drawn at random (the control)."""
    pool = torch.nonzero(eligible.detach().cpu()).flatten()
    chosen = pool[torch.randperm(len(pool), generator=generator)[:count]]
    mask = torch.zeros(len(eligible), dtype=torch.bool)
    mask[chosen] = True
    return mask


# ---------------------------------------------------------------------- retraining
def retrain_without(data: IterationData, policy: ActorCriticPolicy, removed: torch.Tensor) -> None:
    """Retrain iteration ``data`` from θ_k into ``policy`` with ``removed`` records taken
    out of every minibatch of the logged plan (exact replay with a keep mask)."""
    device = next(policy.parameters()).device
    keep = None if not bool(removed.any()) else ~removed.to(device)
    replay(data, policy, keep_mask=keep)


def paired_delta(counterfactual: np.ndarray, logged: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-episode difference ``counterfactual − logged``."""
    counterfactual = np.asarray(counterfactual, np.float64)
    logged = np.asarray(logged, np.float64)
    if counterfactual.shape != logged.shape or logged.ndim != 1 or len(logged) < 2:
        raise WhatIfError("paired returns need the same number (>= 2) of episodes per policy")
    diff = counterfactual - logged
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(len(diff)))


# ---------------------------------------------------------------------- the what-if
def load_scores(log: RunLog, iteration: int, name: str, n_records: int) -> torch.Tensor:
    """The stored ``[N]`` scores ``name`` of ``iteration``, checked finite and aligned."""
    try:
        scores, _ = log.load_scores(iteration, name)
    except RunLogError as err:
        stored = log.score_names(iteration)
        raise WhatIfError(
            f"iteration {iteration} of {log.path} has no scores {name!r} (stored: "
            f"{', '.join(stored) or 'none'}); compute them with `rlattr attribute {log.path} "
            f"--iteration {iteration} --target return`, or pass --compute-scores"
        ) from err
    if scores.shape != (n_records,):
        raise WhatIfError(
            f"scores {name!r} of iteration {iteration} have shape {tuple(scores.shape)}, the "
            f"iteration has {n_records} records"
        )
    if not bool(torch.isfinite(scores).all()):
        raise WhatIfError(f"scores {name!r} of iteration {iteration} hold NaN or inf")
    return scores


def check_scores(log: RunLog, iterations: Sequence[int], name: str) -> None:
    """Every iteration holds finite scores ``name``, one per record (``WhatIfError`` if not)."""
    for k in iterations:
        meta = log.iteration_meta(k)
        load_scores(log, k, name, int(meta["n_envs"]) * int(meta["n_steps"]))


def check_iterations(log: RunLog, iterations: Sequence[int]) -> None:
    """Every iteration is recorded and replayable (its start checkpoint kept)."""
    recorded = log.iterations()
    if not recorded:
        raise WhatIfError(f"{log.path} holds no recorded iteration")
    for k in iterations:
        if k not in recorded:
            raise WhatIfError(
                f"iteration {k} is not recorded in {log.path}: use one of "
                f"{recorded[0]}..{recorded[-1]} ({len(recorded)} recorded)"
            )
        if not log.has_checkpoint(k):
            raise WhatIfError(
                f"iteration {k} of {log.path} has no start checkpoint (retention removed "
                "it), so it cannot be retrained; choose a recorded iteration with one"
            )


def whatif(
    log: RunLog,
    iteration: int,
    config: WhatIfConfig,
    evaluate: Evaluator,
    scores: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    policy: ActorCriticPolicy | None = None,
) -> WhatIfResult:
    """Retrain ``iteration`` without the records ``config.rule`` names and compare returns.

    Args:
        log: the run.
        iteration: k (recorded, with its start checkpoint).
        config: the rule and the evaluation.
        evaluate: ``evaluate(policy, episodes, seed) -> returns``; called with
            ``config.episodes`` and ``config.eval_seed`` for every policy.
        scores: ``[N]`` scores to use instead of the stored ``config.scores``.
        device: where to replay.
        policy: a workspace policy of the run (``build_policy``) to reuse; overwritten.
    """
    start = time.perf_counter()
    check_iterations(log, [iteration])
    data = load_iteration(log, iteration, device)
    n = len(data.records)
    if scores is None:
        scores = load_scores(log, iteration, config.scores, n)
    elif scores.shape != (n,) or not bool(torch.isfinite(scores).all()):
        raise WhatIfError(f"scores must be {n} finite numbers, got shape {tuple(scores.shape)}")
    eligible = eligible_records(data)
    generator = torch.Generator().manual_seed(config.control_seed + iteration)
    removed = removal_mask(scores, config.rule, config.fraction, eligible, generator)
    policy = policy if policy is not None else build_policy(log, device)

    def returns_without(mask: torch.Tensor) -> np.ndarray:
        retrain_without(data, policy, mask)
        return np.asarray(evaluate(policy, config.episodes, config.eval_seed), np.float64)

    logged = returns_without(torch.zeros(n, dtype=torch.bool))
    counterfactual = returns_without(removed)
    delta, delta_se = paired_delta(counterfactual, logged)
    control_delta = control_se = float("nan")
    if config.control:
        control = returns_without(random_like(int(removed.sum()), eligible, generator))
        control_delta, control_se = paired_delta(control, logged)
    return WhatIfResult(
        iteration=iteration,
        rule=config.rule,
        n_records=n,
        n_eligible=int(eligible.sum()),
        n_dropped=int(removed.sum()),
        return_logged=float(logged.mean()),
        return_counterfactual=float(counterfactual.mean()),
        delta=delta,
        delta_se=delta_se,
        control_delta=control_delta,
        control_delta_se=control_se,
        episodes=config.episodes,
        eval_seed=config.eval_seed,
        seconds=time.perf_counter() - start,
    )


def whatif_iterations(
    log: RunLog,
    iterations: Sequence[int],
    config: WhatIfConfig,
    evaluate: Evaluator,
    device: torch.device | str = "cpu",
    progress: Callable[[WhatIfResult], None] | None = None,
) -> list[WhatIfResult]:
    """``whatif`` at each of ``iterations`` (all checked, scores included, before any runs)."""
    check_iterations(log, iterations)
    check_scores(log, iterations, config.scores)
    policy = build_policy(log, device)
    results = []
    for k in iterations:
        result = whatif(log, k, config, evaluate, device=device, policy=policy)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


# ---------------------------------------------------------------------- report
def write_whatif_report(
    results: dict[str, list[WhatIfResult]], out: Path, title: str = "What-if"
) -> list[Path]:
    """CSV (one row per run and iteration), Markdown and the box plot of Δreturn per
    iteration over runs, rule beside the random control. ``results``: run name → results."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"run": run, **r.to_dict()} for run, items in results.items() for r in items]
    if not rows:
        raise WhatIfError("no what-if results to report")
    csv_path = out / "whatif.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md_path = out / "whatif.md"
    md_path.write_text(whatif_markdown(results, title))
    png_path = out / "whatif.png"
    whatif_figure(results, png_path, title)
    return [csv_path, md_path, png_path]


def _summary(values: list[float]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "–"
    mean = float(np.mean(finite))
    return f"{mean:+.3f}" if len(finite) == 1 else f"{mean:+.3f} (median {np.median(finite):+.3f})"


def whatif_markdown(results: dict[str, list[WhatIfResult]], title: str) -> str:
    """A table per iteration: Δ of the rule and of the control over the runs."""
    by_iteration: dict[int, list[WhatIfResult]] = {}
    for items in results.values():
        for r in items:
            by_iteration.setdefault(r.iteration, []).append(r)
    first = next(r for items in results.values() for r in items)
    # Run paths, the rule and the title are the user's text: escaped (rlattr.analysis.markup).
    lines = [
        f"# {markdown_text(title)}",
        "",
        f"Rule {markdown_text(first.rule)}; {first.episodes} evaluation episodes per policy "
        f"from seed {first.eval_seed} (the same episodes for every policy); Δ = return of the "
        "retrained θ'_{k+1} − return of the logged θ_{k+1}; runs: "
        + ", ".join(markdown_text(run) for run in results)
        + ".",
        "",
        "| iteration | runs | dropped (mean) | Δ rule, mean | Δ random control, mean | "
        "rule > control (runs) | rule Δ > 2 SE (runs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in sorted(by_iteration):
        items = by_iteration[k]
        with_control = [r for r in items if not math.isnan(r.control_delta)]
        better = sum(r.delta > r.control_delta for r in with_control)
        significant = sum(r.delta > 2 * r.delta_se for r in items)
        lines.append(
            f"| {k} | {len(items)} | {np.mean([r.n_dropped for r in items]):.0f} | "
            f"{_summary([r.delta for r in items])} | "
            f"{_summary([r.control_delta for r in with_control])} | "
            f"{f'{better}/{len(with_control)}' if with_control else '–'} | "
            f"{significant}/{len(items)} |"
        )
    every = [r for items in results.values() for r in items]
    controlled = [r for r in every if not math.isnan(r.control_delta)]
    control = (
        f"random control mean {np.mean([r.control_delta for r in controlled]):+.4f}; rule "
        f"above control in {sum(r.delta > r.control_delta for r in controlled)} of "
        f"{len(controlled)}"
        if controlled
        else "no random control was run"
    )
    lines += [
        "",
        f"Over all {len(every)} (run, iteration) pairs: Δ rule mean "
        f"{np.mean([r.delta for r in every]):+.4f}, {control}.",
        "",
        "![box plot](whatif.png)",
        "",
    ]
    return "\n".join(lines)


def whatif_figure(results: dict[str, list[WhatIfResult]], path: Path, title: str) -> None:
    """Box plot of Δreturn per iteration over runs: the rule beside the random control."""
    from rlattr.analysis.plots import pyplot, save_figure

    plt = pyplot()
    iterations = sorted({r.iteration for items in results.values() for r in items})
    rule = next(r.rule for items in results.values() for r in items)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(iterations) + 2), 3.8))
    for offset, (attribute, label, colour) in zip(
        (-0.2, 0.2),
        (("delta", rule, "C3"), ("control_delta", "random, same count", "C7")),
        strict=True,
    ):
        data = [
            [getattr(r, attribute) for items in results.values() for r in items if r.iteration == k]
            for k in iterations
        ]
        data = [[v for v in values if not math.isnan(v)] for values in data]
        positions = [i + offset for i in range(len(iterations))]
        shown = [(p, d) for p, d in zip(positions, data, strict=True) if d]
        if not shown:
            continue
        box = ax.boxplot(
            [d for _, d in shown], positions=[p for p, _ in shown], widths=0.35,
            patch_artist=True, showfliers=False,
        )  # fmt: skip
        for patch in box["boxes"]:
            patch.set_facecolor(colour)
            patch.set_alpha(0.5)
        for p, d in shown:
            ax.scatter([p] * len(d), d, color=colour, s=10, zorder=3)
        ax.plot([], [], color=colour, lw=6, alpha=0.5, label=label)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(iterations)), [str(k) for k in iterations])
    ax.set_xlabel("iteration k (retrained from θ_k)")
    ax.set_ylabel("Δ return (retrained − logged)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
