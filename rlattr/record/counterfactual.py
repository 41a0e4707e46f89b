"""Counterfactual ground truth for scores: leave-subset-out replay, and agreement metrics.

docs/science.md §2. Remove a subset S of records from every minibatch of iteration k's logged
plan, replay, and compare Δ_S = f(θ_{k+1}) − f(θ_{k+1}^{−S}) with the predicted
Σ_{i∈S} I_i over many random subsets (the LDS: Spearman over subsets). The ground truth
depends on the minibatch order, so its own agreement under two independent orders (the
*ceiling*) is reported beside it.

This lives in the record layer, beside ``replay``, so that both post-hoc analysis
(``rlattr.analysis.fidelity``) and training (the board's optional ``fidelity_every``
check) use this one implementation. The behaviour f is anything with
``value(policy, context)`` (``rlattr.scoring.targets.Target``, one layer up).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.record.plan import UpdatePlan, cut_minibatches
from rlattr.record.replay import IterationData, replay


class Behaviour(Protocol):
    """A scalar function of the policy: f(θ) (``rlattr.scoring.targets.Target``)."""

    def value(self, policy: ActorCriticPolicy, context: Any) -> torch.Tensor:
        """f at ``policy``'s current parameters, on ``context``'s data."""
        ...


def rank(values: np.ndarray) -> np.ndarray:
    """0-based ranks with ties averaged (as Spearman's correlation needs)."""
    values = np.asarray(values)
    # One sort: runs of equal values in sorted order are the ties.
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    run_start = np.empty(values.size, dtype=bool)
    run_start[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=run_start[1:])
    starts = np.flatnonzero(run_start)
    ends = np.append(starts[1:], values.size) - 1
    run = np.cumsum(run_start) - 1
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = ((starts + ends) / 2.0)[run]
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN for fewer than 2 pairs or a constant input."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN as ``pearson``."""
    return pearson(rank(np.asarray(x)), rank(np.asarray(y)))


def reshuffled_plan(plan: UpdatePlan, generator: torch.Generator) -> UpdatePlan:
    """The same update (epochs, lr, clip coefficients, minibatching) with fresh permutations.

    A filtered update keeps its kind of minibatches (``plan.minibatching``): ``as_drawn``
    draws the new order over every record and takes the dropped ones out, ``recut`` cuts
    the kept records anew. Plans written before they recorded it are read by their step
    count (as many steps as PPO draws for the whole buffer: as drawn).
    """
    n_records = plan.n_records
    keep = plan.keep_mask.cpu()
    device = plan.minibatch_indices.device
    epochs = plan.step_epochs.tolist()
    minibatching = plan.minibatching
    if minibatching is None:  # a plan written before plans recorded it
        first_epoch = sum(1 for e in epochs if e == epochs[0]) if epochs else 0
        # PPO's minibatch count for the whole buffer: an as-drawn update takes that many.
        drawn = first_epoch == -(-n_records // plan.batch_size)
        minibatching = "as_drawn" if drawn else "recut"
    minibatches, step_epochs = [], []
    for epoch in sorted(set(epochs)):
        n_steps = sum(1 for e in epochs if e == epoch)
        order = torch.randperm(n_records, generator=generator)
        chunks = cut_minibatches(order, plan.batch_size, keep, minibatching)
        minibatches.extend(chunks[:n_steps])
        step_epochs.extend([epoch] * len(chunks[:n_steps]))
    return replace(
        plan,
        minibatch_indices=torch.cat(minibatches).to(device),
        minibatch_sizes=torch.tensor([len(m) for m in minibatches], device=device),
        step_epochs=torch.tensor(step_epochs, device=device),
    )


def subset_effects(
    data: IterationData,
    policy: ActorCriticPolicy,
    target: Behaviour,
    context: Any,
    removed: list[torch.Tensor],
    removal: str = "drop",
) -> np.ndarray:
    """Δ_S = f(θ_{k+1}) − f(θ_{k+1}^{−S}) for each removal mask S (True = removed).

    ``removal="drop"`` removes S's records from their minibatches (the ground truth);
    ``"zero_weight"`` keeps every minibatch's divisor |b| and zeroes S's loss terms (with
    advantage normalisation off, the counterfactual first-order scores describe exactly).
    """
    if removal not in ("drop", "zero_weight"):
        raise ValueError(f"removal must be 'drop' or 'zero_weight', got {removal!r}")
    replay(data, policy)
    with torch.no_grad():
        full = float(target.value(policy, context))
    effects = []
    for mask in removed:
        if removal == "drop":
            replay(data, policy, keep_mask=~mask)
        else:
            weights = (~mask).to(torch.float64)
            replay(data, policy, record_weights=weights, weight_normalization="count")
        with torch.no_grad():
            effects.append(full - float(target.value(policy, context)))
    return np.asarray(effects)


def random_subsets(
    n_records: int, n_subsets: int, fraction: float, seed: int, eligible: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """``n_subsets`` random removal masks of ``fraction`` of the (eligible) records."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.arange(n_records) if eligible is None else torch.nonzero(eligible.cpu()).flatten()
    size = max(1, round(fraction * len(pool)))
    masks = []
    for _ in range(n_subsets):
        chosen = pool[torch.randperm(len(pool), generator=generator)[:size]]
        mask = torch.zeros(n_records, dtype=torch.bool)
        mask[chosen] = True
        masks.append(mask)
    return masks


@dataclass
class FidelityReport:
    """Agreement of predicted with actual subset effects (all correlations over subsets).

    Attributes:
        lds: Spearman correlation of Σ_{i∈S} I_i with Δ_S (same order as logged).
        pearson: Pearson correlation of the same.
        sign_agreement: fraction of subsets where prediction and effect share a sign.
        ceiling: Spearman correlation of Δ_S under the logged order with Δ_S under an
            independent order (NaN if ``orders`` < 2): the best any order-blind score can do.
        lds_mean_order: Spearman of the prediction with Δ_S averaged over all orders.
        predicted, actual: per-subset values; ``actual_by_order`` holds the other orders.
    """

    n_subsets: int
    fraction: float
    lds: float
    pearson: float
    sign_agreement: float
    ceiling: float
    lds_mean_order: float
    predicted: list[float]
    actual: list[float]
    actual_by_order: list[list[float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("predicted", "actual", "actual_by_order"):
            data.pop(key)
        return data


def check_scores(
    data: IterationData,
    policy: ActorCriticPolicy,
    scores: torch.Tensor,
    target: Behaviour,
    context: Any,
    n_subsets: int = 64,
    fraction: float = 0.1,
    seed: int = 0,
    orders: int = 1,
) -> FidelityReport:
    """Compare ``scores`` with leave-subset-out replays of ``data`` (docs/science.md §2).

    Args:
        data: the logged iteration.
        policy: a policy built by ``rlattr.record.build_policy`` (overwritten).
        scores: ``[N]`` scores of the records (positive = helpful).
        target, context: the behaviour the scores explain.
        n_subsets, fraction: how many random subsets, and what fraction of the kept
            records each removes.
        seed: seed of the subsets and of the extra orders.
        orders: 1 replays only the logged order; R ≥ 2 also replays R − 1 independent
            orders, for the noise ceiling and the order-averaged ground truth.
    """
    if scores.shape != (len(data.records),):
        raise ValueError(
            f"scores must have shape ({len(data.records)},), got {tuple(scores.shape)}"
        )
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf; fidelity needs finite scores")
    removed = random_subsets(len(data.records), n_subsets, fraction, seed, data.plan.keep_mask)
    predicted = np.asarray([float(scores.cpu()[mask].sum()) for mask in removed])
    actual = subset_effects(data, policy, target, context, removed)
    by_order = []
    generator = torch.Generator().manual_seed(seed + 1)
    for _ in range(orders - 1):
        other = replace(data, plan=reshuffled_plan(data.plan, generator))
        by_order.append(subset_effects(other, policy, target, context, removed))
    ceiling = spearman(actual, by_order[0]) if by_order else float("nan")
    mean_actual = np.mean([actual, *by_order], axis=0)
    return FidelityReport(
        n_subsets=n_subsets,
        fraction=fraction,
        lds=spearman(predicted, actual),
        pearson=pearson(predicted, actual),
        sign_agreement=float(np.mean(np.sign(predicted) == np.sign(actual))),
        ceiling=ceiling,
        lds_mean_order=spearman(predicted, mean_actual) if by_order else float("nan"),
        predicted=predicted.tolist(),
        actual=actual.tolist(),
        actual_by_order=[a.tolist() for a in by_order],
    )
