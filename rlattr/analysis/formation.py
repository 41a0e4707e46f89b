"""Behaviour formation: which records, of which kind, built a behaviour, iteration by iteration.

docs/science.md §5 and the IIF paper's temporal analysis. For a behaviour target f (e.g. the
mean log π(a*|s*) of analyst-given state–action pairs) and every recorded iteration k:

- the behaviour's value f(θ_k), and its actual change over the update, f(θ_{k+1}) − f(θ_k)
  (both from the logged checkpoints: exact, no replay);
- each record's snapshot score on f, summed per group of records (by action, by the sign
  of its advantage, by its phase in the episode, or by any callable): the positive and the
  negative mass of each group;
- the roughness of the positive influence over a state-embedding graph (k-NN graph on the
  final network's features, Gaussian weights with the median-distance bandwidth;
  Ĩ = I⁺/‖I⁺‖∞, roughness = Σ w_ij (Ĩ_i − Ĩ_j)² / Σ w_ij): low when the records that build
  the behaviour cluster in state space (the paper's "semantic clustering" phase);
- a check against ground truth: across iterations, the correlation of the summed scores
  with the behaviour's actual change.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlattr.analysis.plots import pyplot, save_figure
from rlattr.record.checkpoint import restore_checkpoint
from rlattr.record.records import Records
from rlattr.record.replay import build_policy
from rlattr.record.runlog import RunLog
from rlattr.scoring.attribute import target_context
from rlattr.scoring.diagnosis import positions_in_episode, spearman
from rlattr.scoring.influence import snapshot_scores
from rlattr.scoring.targets import Target

GroupBy = str | Callable[[Records], list[str]]
GROUPINGS = ("action", "advantage_sign", "episode_phase")


@dataclass
class FormationConfig:
    """How ``formation`` groups records and builds the state graph.

    Attributes:
        group_by: ``action``, ``advantage_sign``, ``episode_phase`` or a callable
            ``fn(records) -> list[str]`` (one label per record).
        neighbours: k of the k-NN state graph.
        every: analyse every this many recorded iterations.
        top_k: the most positive records listed per iteration.
    """

    group_by: GroupBy = field(
        default="action", metadata={"help": f"one of {GROUPINGS} or a Python callable"}
    )
    neighbours: int = field(default=20, metadata={"help": "k of the k-NN state graph"})
    every: int = field(default=1, metadata={"help": "analyse every N-th recorded iteration"})
    top_k: int = field(default=5, metadata={"help": "top records listed per iteration"})

    def __post_init__(self) -> None:
        if isinstance(self.group_by, str) and self.group_by not in GROUPINGS:
            raise ValueError(f"group_by must be one of {GROUPINGS} or a callable")
        if self.neighbours < 1 or self.every < 1 or self.top_k < 1:
            raise ValueError("neighbours, every and top_k must be >= 1")


@dataclass
class FormationIteration:
    """One iteration of behaviour formation.

    Attributes:
        iteration: the iteration k.
        behavior: f(θ_k).
        change: f(θ_{k+1}) − f(θ_k), the actual change over the update (NaN if θ_{k+1}
            is not on disk).
        total_score: the sum of the records' scores (the first-order prediction of the
            change, up to the update's step size).
        positive, negative: per group, the sum of positive / negative scores.
        roughness: of the positive influence over the state graph (NaN without any).
        top: (record, group, score) of the most positive records.
    """

    iteration: int
    behavior: float
    change: float
    total_score: float
    positive: dict[str, float]
    negative: dict[str, float]
    roughness: float
    top: list[tuple[int, str, float]]


@dataclass
class Formation:
    """The result of ``formation``: per-iteration rows and the check against ground truth."""

    iterations: list[FormationIteration]
    groups: list[str]
    pearson_score_vs_change: float
    spearman_score_vs_change: float

    def write_csv(self, path: Path) -> Path:
        """One row per iteration and group (behaviour, change, roughness repeated)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                ["iteration", "behavior", "change", "total_score", "roughness", "group",
                 "positive", "negative"]
            )  # fmt: skip
            for row in self.iterations:
                for group in self.groups:
                    writer.writerow(
                        [row.iteration, row.behavior, row.change, row.total_score,
                         row.roughness, group, row.positive.get(group, 0.0),
                         row.negative.get(group, 0.0)]
                    )  # fmt: skip
        return path


def group_labels(records: Records, group_by: GroupBy) -> list[str]:
    """One group label per record."""
    if callable(group_by):
        labels = [str(label) for label in group_by(records)]
        if len(labels) != len(records):
            raise ValueError(f"group_by returned {len(labels)} labels for {len(records)} records")
        return labels
    if group_by == "action":
        actions = records.actions.reshape(len(records), -1).cpu()
        if actions.shape[1] == 1:
            return [f"a={v:g}" for v in actions[:, 0].tolist()]
        return [f"a[0]{'>' if v > 0 else '≤'}0" for v in actions[:, 0].tolist()]
    if group_by == "advantage_sign":
        return ["Â>0" if a > 0 else "Â≤0" for a in records.advantages.cpu().tolist()]
    if group_by == "episode_phase":
        return [_phase(t) for t in positions_in_episode(records).tolist()]
    raise ValueError(f"group_by must be one of {GROUPINGS} or a callable, got {group_by!r}")


def _phase(t: int) -> str:
    # Fixed boundaries, so that a group means the same thing in every iteration.
    return "t<10" if t < 10 else "10≤t<50" if t < 50 else "t≥50"


def roughness(influence: torch.Tensor, embeddings: torch.Tensor, neighbours: int) -> float:
    """Roughness of the positive part of ``influence`` over a k-NN graph of ``embeddings``.

    Weights w_ij = exp(−‖e_i − e_j‖² / σ²) on the k nearest neighbours of each record
    (symmetrised), σ² the median squared neighbour distance; Ĩ = I⁺ / max I⁺;
    roughness = Σ w_ij (Ĩ_i − Ĩ_j)² / Σ w_ij. NaN when no record has positive influence.
    """
    positive = influence.double().clamp(min=0)
    peak = float(positive.max()) if positive.numel() else 0.0
    if peak <= 0:
        return float("nan")
    scaled = positive / peak
    points = embeddings.double().reshape(len(embeddings), -1)
    k = min(neighbours, len(points) - 1)
    if k < 1:
        return float("nan")
    distances = torch.cdist(points, points).square()
    distances.fill_diagonal_(float("inf"))
    nearest, index = torch.topk(distances, k, largest=False)
    sigma2 = float(nearest.median())
    if sigma2 <= 0:
        sigma2 = float(nearest[nearest > 0].median()) if bool((nearest > 0).any()) else 1.0
    weights = torch.zeros_like(distances)
    weights.scatter_(1, index, torch.exp(-nearest / sigma2))
    weights = torch.maximum(weights, weights.T)  # an undirected graph
    differences = (scaled[:, None] - scaled[None, :]).square()
    return float((weights * differences).sum() / weights.sum())


def _embeddings(policy: Any, records: Records) -> torch.Tensor:
    """The final network's policy features of each record's observation."""
    with torch.no_grad():
        features = policy.extract_features(records.observations, policy.pi_features_extractor)
        latent_pi, _ = policy.mlp_extractor(features)
    return latent_pi


def formation(
    log: RunLog | str | Path,
    behavior: Target,
    config: FormationConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> Formation:
    """Behaviour formation over a recorded run (see the module docstring).

    Args:
        log: the run (every analysed iteration must be recorded with its checkpoint).
        behavior: the behaviour target f (e.g. ``ActionTarget(states, actions)``).
        config: see ``FormationConfig``.
        progress: called with a short message now and then (the CLI prints it).
    """
    config = config or FormationConfig()
    log = log if isinstance(log, RunLog) else RunLog(log)
    say = progress or (lambda _: None)
    checkpoints = set(log.checkpoints())
    policy = build_policy(log)
    final = max(checkpoints)
    final_state, final_meta = log.load_checkpoint(final)
    restore_checkpoint(policy, final_state, final_meta)
    rows: list[FormationIteration] = []
    groups: set[str] = set()
    chosen = log.iterations()[:: config.every]
    embed_policy = build_policy(log)
    restore_checkpoint(embed_policy, final_state, final_meta)
    for number, k in enumerate(chosen):
        records = log.load_records(k)
        plan = log.load_plan(k)
        context = target_context(log, records)
        tensors, meta = log.load_checkpoint(k)
        restore_checkpoint(policy, tensors, meta)
        with torch.no_grad():
            value = float(behavior.value(policy, context))
        scores = snapshot_scores(policy, records, behavior, plan.loss_config, context)
        scores = scores.detach().double().cpu()
        change = float("nan")
        if k + 1 in checkpoints:
            after, after_meta = log.load_checkpoint(k + 1)
            restore_checkpoint(policy, after, after_meta)
            with torch.no_grad():
                change = float(behavior.value(policy, context)) - value
        labels = group_labels(records, config.group_by)
        groups.update(labels)
        positive: dict[str, float] = {}
        negative: dict[str, float] = {}
        for label, score in zip(labels, scores.tolist(), strict=True):
            side = positive if score > 0 else negative
            side[label] = side.get(label, 0.0) + score
        order = torch.argsort(scores, descending=True, stable=True)[: config.top_k]
        rows.append(
            FormationIteration(
                iteration=k,
                behavior=value,
                change=change,
                total_score=float(scores.sum()),
                positive=positive,
                negative=negative,
                roughness=roughness(scores, _embeddings(embed_policy, records), config.neighbours),
                top=[(int(i), labels[int(i)], float(scores[i])) for i in order],
            )
        )
        if (number + 1) % 25 == 0:
            say(f"formation: {number + 1} of {len(chosen)} iterations")
    known = [(r.total_score, r.change) for r in rows if math.isfinite(r.change)]
    pearson = spearman_value = float("nan")
    if len(known) >= 3:
        predicted, actual = (torch.tensor(v, dtype=torch.float64) for v in zip(*known, strict=True))
        pearson = float(torch.corrcoef(torch.stack([predicted, actual]))[0, 1])
        spearman_value = spearman(predicted, actual)
    return Formation(rows, sorted(groups), pearson, spearman_value)


def formation_figures(result: Formation, title: str) -> tuple[Any, Any]:
    """(heatmap of the net score per iteration × group, behaviour and roughness curves)."""
    plt = pyplot()
    iterations = [r.iteration for r in result.iterations]
    net = np.array(
        [[r.positive.get(g, 0.0) + r.negative.get(g, 0.0) for g in result.groups]
         for r in result.iterations]
    )  # fmt: skip
    # Scores shrink by orders of magnitude over training: each iteration is scaled by its
    # own largest group, so the heatmap shows which groups build the behaviour when.
    scale = np.abs(net).max(axis=1, keepdims=True)
    net = np.divide(net, scale, out=np.zeros_like(net), where=scale > 0)
    heat, axis = plt.subplots(figsize=(7, 0.5 * len(result.groups) + 2))
    image = axis.imshow(
        net.T, aspect="auto", cmap="RdBu", vmin=-1.0, vmax=1.0, interpolation="nearest",
        extent=(iterations[0] - 0.5, iterations[-1] + 0.5, len(result.groups) - 0.5, -0.5),
    )  # fmt: skip
    axis.set_yticks(range(len(result.groups)), result.groups)
    axis.set_xlabel("iteration")
    axis.set_title(
        f"{title}: net score per group ÷ the iteration's largest (blue builds it)", fontsize=9
    )
    heat.colorbar(image, ax=axis)
    heat.tight_layout()
    curves, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    top.plot(iterations, [r.behavior for r in result.iterations], color="black")
    top.set_ylabel("behaviour f(θ_k)")
    top.set_title(
        f"{title}: Σ scores vs actual change — Pearson {result.pearson_score_vs_change:.2f}, "
        f"Spearman {result.spearman_score_vs_change:.2f}",
        fontsize=9,
    )
    bottom.plot(iterations, [r.roughness for r in result.iterations], marker=".", markersize=3)
    bottom.set_ylabel("roughness of positive influence")
    bottom.set_xlabel("iteration")
    curves.tight_layout()
    return heat, curves


def write_formation_report(
    result: Formation, out_dir: Path, tensorboard_dir: Path | None
) -> list[Path]:
    """CSV, the two figures as PNG (and as TensorBoard images if ``tensorboard_dir``)."""
    written = [result.write_csv(out_dir / "formation.csv")]
    heat, curves = formation_figures(result, "behaviour formation")
    for figure, name in ((heat, "formation_heatmap"), (curves, "formation_curves")):
        path = out_dir / f"{name}.png"
        save_figure(figure, path, tensorboard_dir, tag=f"reports/{name}")
        written.append(path)
    return written
