"""``rlattr diagnose RUN``: a self-contained HTML report of what the scores say about learning.

The IIF paper's diagnosis of learning (docs/science.md §5), post hoc, on a recorded run:

- the learning curve with the per-iteration diagnostics aligned beneath it (share of
  negative scores, advantage error and sign mismatch of the bottom vs the top records,
  Spearman of the score with Ā·Â);
- a table per quarter of training;
- the paper's rank plots at chosen iterations: |Ā − Â| against score rank coloured by
  whether the signs of Ā and Â agree, and Ā·Â against rank;
- how far to trust the scores: a leave-subset-out fidelity check (LDS, with its noise
  ceiling) at a few iterations, printed next to the conclusions.

Scores are the ones stored in the run (IIF and ``ScoreHook`` store ``snapshot-return…``);
iterations without stored scores get snapshot scores on the return target, computed here.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlattr.analysis.fidelity import fidelity
from rlattr.analysis.plots import pyplot
from rlattr.record.runlog import RunLog
from rlattr.scoring.attribute import attribute
from rlattr.scoring.diagnosis import advantage_diagnostics, reference_advantages
from rlattr.scoring.targets import ReturnTarget

#: Per-iteration statistics shown beneath the learning curve, with their labels.
STATISTICS = {
    "fraction_negative": "share of negative scores",
    "abs_error_bottom": "|Ā − Â|, bottom 10 %",
    "abs_error_top": "|Ā − Â|, top 10 %",
    "sign_mismatch_bottom": "sign(Ā) ≠ sign(Â), bottom 10 %",
    "sign_mismatch_top": "sign(Ā) ≠ sign(Â), top 10 %",
    "spearman_score_vs_product": "Spearman(score, Ā·Â)",
}


@dataclass
class DiagnoseConfig:
    """What ``diagnose`` computes.

    Attributes:
        every: diagnose every this many recorded iterations (1: all).
        rank_plots: iterations that get the paper's rank plots (default: one per quarter).
        fidelity_iterations: how many iterations get a fidelity check (spread evenly).
        fidelity_subsets: leave-subset-out replays per fidelity check.
        bottom_fraction: the share of records counted as bottom / top.
    """

    every: int = field(default=1, metadata={"help": "diagnose every N-th recorded iteration"})
    rank_plots: tuple[int, ...] | None = field(
        default=None, metadata={"help": "iterations with rank plots (default: one per quarter)"}
    )
    # One check of 16 subsets under two orders is 34 replays of the update: about a minute
    # on FrozenLake's 320-step updates on one core (what "diagnose in under a minute" buys).
    fidelity_iterations: int = field(
        default=1, metadata={"help": "iterations that get a leave-subset-out fidelity check"}
    )
    fidelity_subsets: int = field(
        default=16, metadata={"help": "leave-subset-out replays per fidelity check"}
    )
    bottom_fraction: float = field(
        default=0.1, metadata={"help": "share of records counted as bottom / top"}
    )

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if self.fidelity_iterations < 0:
            raise ValueError("fidelity_iterations must be >= 0")
        if self.fidelity_subsets < 4:
            raise ValueError("fidelity_subsets must be >= 4 (a rank correlation needs points)")
        if not 0 < self.bottom_fraction <= 0.5:
            raise ValueError(f"bottom_fraction must be in (0, 0.5], got {self.bottom_fraction}")


@dataclass
class Diagnosis:
    """What ``diagnose`` found: per-iteration rows, fidelity checks and the report's path."""

    rows: list[dict[str, float]]
    fidelity: list[dict[str, float]]
    learning_curve: list[tuple[int, float]]
    report: Path | None = None


def iteration_scores(log: RunLog, iteration: int) -> tuple[torch.Tensor, str]:
    """The stored return-target scores of an iteration, or snapshot scores computed now."""
    stored = [name for name in log.score_names(iteration) if "return" in name]
    if stored:
        scores, _ = log.load_scores(iteration, stored[0])
        return scores.double(), stored[0]
    scores = attribute(log, iteration, ReturnTarget(), method="snapshot", store=False)
    return scores.double(), "snapshot-return (computed by diagnose)"


def diagnose_iteration(
    log: RunLog, iteration: int, gamma: float, discrete: bool, bottom_fraction: float
) -> dict[str, float]:
    """The ``STATISTICS`` of one iteration (plus its step and the dropped/kept split)."""
    records = log.load_records(iteration)
    plan = log.load_plan(iteration)
    scores, _ = iteration_scores(log, iteration)
    reference = reference_advantages(records, gamma, discrete).best
    keep = plan.keep_mask.cpu()
    filtered = not bool(keep.all())
    row = advantage_diagnostics(
        scores, records.advantages, reference, bottom_fraction, keep if filtered else None
    )
    finite = torch.isfinite(scores)
    row["fraction_negative"] = float((scores[finite] < 0).double().mean())
    row["fraction_dropped"] = float((~keep).double().mean())
    row["iteration"] = iteration
    row["num_timesteps"] = int(log.iteration_meta(iteration)["info"]["num_timesteps"])
    return row


def learning_curve(log: RunLog) -> list[tuple[int, float]]:
    """(step, mean episode return) from the run's TensorBoard (``eval/return_mean`` if the
    run evaluated, else ``rollout/ep_rew_mean``); empty when it has no TensorBoard logs."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    if not log.tb_dir.exists():
        return []
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(log.tb_dir))
    multiplexer.Reload()
    for tag in ("eval/return_mean", "rollout/ep_rew_mean"):
        points: dict[int, float] = {}
        for run, tags in multiplexer.Runs().items():
            if tag in tags.get("scalars", []):
                points.update({e.step: e.value for e in multiplexer.Scalars(run, tag)})
        if points:
            return sorted(points.items())
    return []


def diagnose(
    log: RunLog | str | Path,
    out: str | Path | None = None,
    config: DiagnoseConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> Diagnosis:
    """Diagnose a recorded run and (with ``out``) write the HTML report.

    Args:
        log: the run (a ``RunLog`` or its directory).
        out: the report's path (default: ``<run>/reports/diagnosis.html``).
        config: see ``DiagnoseConfig``.
        progress: called with a short message as each part finishes (the CLI prints it).
    """
    config = config or DiagnoseConfig()
    log = log if isinstance(log, RunLog) else RunLog(log)
    say = progress or (lambda _: None)
    gamma = float(log.meta["algorithm"]["gamma"])
    discrete = log.meta["policy"]["observation_space"].get("type") == "Discrete"
    iterations = log.iterations()[:: config.every]
    rows = []
    for k in iterations:
        rows.append(diagnose_iteration(log, k, gamma, discrete, config.bottom_fraction))
    say(f"diagnosed {len(rows)} iterations")
    checks = []
    for k in _spread(iterations, config.fidelity_iterations):
        start = time.perf_counter()
        report = fidelity(log, k, ReturnTarget(), n_subsets=config.fidelity_subsets, orders=2)
        checks.append(
            {
                "iteration": k,
                "lds": report.lds,
                "ceiling": report.ceiling,
                "sign_agreement": report.sign_agreement,
                "subsets": config.fidelity_subsets,
                "seconds": time.perf_counter() - start,
            }
        )
        say(f"fidelity at iteration {k}: LDS {report.lds:.2f} (ceiling {report.ceiling:.2f})")
    curve = learning_curve(log)
    diagnosis = Diagnosis(rows, checks, curve)
    path = Path(out) if out is not None else log.path / "reports" / "diagnosis.html"
    rank_iterations = (
        list(config.rank_plots) if config.rank_plots is not None else _spread(iterations, 4)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_html(log, diagnosis, rank_iterations, gamma, discrete))
    diagnosis.report = path
    say(f"wrote {path}")
    return diagnosis


def _spread(items: list[int], count: int) -> list[int]:
    """``count`` items spread evenly over the interior of ``items`` (all when fewer)."""
    if count <= 0 or not items:
        return []
    if count >= len(items):
        return list(items)
    positions = np.linspace(0, len(items) - 1, count + 2)[1:-1]
    return sorted({items[round(float(p))] for p in positions})


# --------------------------------------------------------------------------- report
def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    pyplot().close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _curve_figure(diagnosis: Diagnosis) -> Any:
    plt = pyplot()
    shown = [s for s in STATISTICS if any(s in row for row in diagnosis.rows)]
    figure, axes = plt.subplots(1 + len(shown), 1, figsize=(8, 1.6 * (1 + len(shown))), sharex=True)
    axes = np.atleast_1d(axes)
    if diagnosis.learning_curve:
        steps, values = zip(*diagnosis.learning_curve, strict=True)
        axes[0].plot(steps, values, color="black")
    axes[0].set_ylabel("return")
    axes[0].set_title("learning curve, with what the scores say beneath it", fontsize=10)
    for axis, statistic in zip(axes[1:], shown, strict=True):
        points = [(r["num_timesteps"], r[statistic]) for r in diagnosis.rows if statistic in r]
        axis.plot(*zip(*points, strict=True), marker=".", markersize=3)
        axis.set_ylabel(STATISTICS[statistic], fontsize=7)
        if statistic.startswith("spearman"):
            axis.axhline(0.0, color="0.5", linewidth=0.5)
    axes[-1].set_xlabel("environment steps (the rollout of each iteration)")
    figure.tight_layout()
    return figure


def _rank_figure(log: RunLog, iteration: int, gamma: float, discrete: bool) -> Any:
    plt = pyplot()
    records = log.load_records(iteration)
    scores, name = iteration_scores(log, iteration)
    reference = reference_advantages(records, gamma, discrete).best
    known = torch.isfinite(reference) & torch.isfinite(scores)
    order = torch.argsort(scores[known], stable=True)
    advantages = records.advantages.double()[known][order].numpy()
    truth = reference[known][order].numpy()
    ranks = np.arange(len(order))
    match = np.sign(truth) == np.sign(advantages)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.scatter(
        ranks[match], np.abs(truth - advantages)[match], s=5, c="tab:blue", label="signs agree"
    )
    left.scatter(
        ranks[~match], np.abs(truth - advantages)[~match], s=5, c="tab:red", label="signs differ"
    )
    left.set_xlabel("score rank (0 = most harmful)")
    left.set_ylabel("|Ā − Â|")
    left.legend(fontsize=7)
    right.scatter(ranks, truth * advantages, s=5, c="0.3")
    right.axhline(0.0, color="0.5", linewidth=0.5)
    right.set_xlabel("score rank (0 = most harmful)")
    right.set_ylabel("Ā · Â")
    figure.suptitle(f"iteration {iteration} ({name})", fontsize=9)
    figure.tight_layout()
    return figure  # fmt: skip


def _quarter_table(rows: list[dict[str, float]]) -> str:
    if not rows:
        return "<p>No iterations.</p>"
    columns = ["fraction_dropped", *STATISTICS]
    quarters = np.array_split(np.arange(len(rows)), min(4, len(rows)))
    head = "".join(f"<th>{html.escape(STATISTICS.get(c, c))}</th>" for c in columns)
    body = []
    for number, members in enumerate(quarters, start=1):
        chosen = [rows[i] for i in members]
        span = f"{int(chosen[0]['iteration'])}–{int(chosen[-1]['iteration'])}"
        cells = "".join(f"<td>{_mean(chosen, c)}</td>" for c in columns)
        body.append(f"<tr><td>Q{number} (iterations {span})</td>{cells}</tr>")
    return f"<table><tr><th>quarter</th>{head}</tr>{''.join(body)}</table>"


def _mean(rows: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in rows if key in r and math.isfinite(r[key])]
    return f"{np.mean(values):.3g}" if values else "–"


def order_noise(subsets: int) -> float:
    """About one standard error of a Spearman correlation over ``subsets`` points when
    the truth is 0, 1/√(n − 1): a ceiling below it is indistinguishable from none."""
    return 1.0 / math.sqrt(subsets - 1)


def _order_dominated(ceiling: float, subsets: int) -> bool:
    # The ground truth barely agrees with itself across two minibatch orders: what
    # removing records does is mostly the order's doing.
    return bool(np.isfinite(ceiling)) and ceiling < order_noise(subsets)


def _verdict(lds: float, ceiling: float, subsets: int) -> str:
    """What an LDS over ``subsets`` subsets means, next to the ground truth's own
    agreement across orders."""
    if _order_dominated(ceiling, subsets):
        return (
            "what removing records does here depends on the minibatch order more than on "
            "the records (the ground truth agrees with itself across two orders only at "
            f"{ceiling:.2f}, within noise of 0 over {subsets} subsets), so no score that "
            "ignores the order can predict it and this LDS is <b>not</b> evidence either "
            "way; read the tables as descriptions of the scores"
        )
    reachable = max(ceiling, 0.0) if np.isfinite(ceiling) else 1.0
    if lds > 0.3 and lds >= 0.8 * reachable:
        return "the scores rank subsets of records about as well as the ground truth allows"
    if lds > 0.3 and lds >= 0.5 * reachable:
        return (
            "the scores rank subsets of records usefully, but below what the ground truth "
            "allows; read the tables as indications"
        )
    return (
        "the scores do <b>not</b> predict what removing records does here; read the "
        "tables above as descriptions of the scores, not of their effect"
    )


def _trust(checks: list[dict[str, float]]) -> str:
    if not checks:
        return "<p>No fidelity check was run (<code>--fidelity-iterations 0</code>).</p>"
    items = []
    for check in checks:
        lds, ceiling, signs = check["lds"], check["ceiling"], check["sign_agreement"]
        subsets = int(check["subsets"])
        verdict = _verdict(lds, ceiling, subsets)
        if lds > 0.3 and signs < 0.5 and not _order_dominated(ceiling, subsets):
            # Dropping records also rescales the rest of the update (the minibatch mean
            # divides by fewer records), which shifts every subset's effect alike.
            verdict += (
                f"; but the predicted sign of a subset's effect is right in only {signs:.0%} "
                "of subsets: trust the ranking of records, not the sign of their sum"
            )
        items.append(
            f"<li>iteration {int(check['iteration'])}: LDS {lds:.2f} against a noise ceiling "
            f"of {ceiling:.2f} (sign agreement {check['sign_agreement']:.2f}; "
            f"{check['seconds']:.0f} s): {verdict}.</li>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def _html(
    log: RunLog, diagnosis: Diagnosis, rank_iterations: list[int], gamma: float, discrete: bool
) -> str:
    preset = (log.meta.get("config") or {}).get("preset") or {}
    title = f"rlattr diagnosis — {html.escape(str(preset.get('name', log.path.name)))}"
    curve = _png(_curve_figure(diagnosis))
    ranks = "".join(
        f'<img src="data:image/png;base64,{_png(_rank_figure(log, k, gamma, discrete))}">'
        for k in rank_iterations
    )
    reference = "within-buffer empirical Q̄(s,a) − V̄(s)" if discrete else "Monte-Carlo"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;line-height:1.45}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px}}
img{{max-width:100%}}</style></head><body>
<h1>{title}</h1>
<p>Run <code>{html.escape(str(log.path))}</code>. Scores: influence on the return target
(positive = helpful). Â: the GAE advantage the update used. Ā: the {reference} advantage
where the episode ends inside the buffer. The IIF paper found that the most harmful records
carry wrong advantage estimates (sign mismatch, large |Ā − Â|; Spearman(score, Ā·Â) ≈ −0.67
on FrozenLake).</p>
<h2>How far to trust these scores</h2>{_trust(diagnosis.fidelity)}
<h2>Learning curve and diagnostics</h2><img src="data:image/png;base64,{curve}">
<h2>By quarter of training</h2>{_quarter_table(diagnosis.rows)}
<h2>Rank plots</h2>{ranks}
</body></html>
"""
