"""How well a per-record score finds planted records: average precision and precision@k.

Environments with planted faults (``rlattr.envs``) flag the records they corrupted
(``info["rlattr_fault"]``, stored per record in the run directory). A score *detects* them
when ranking the records by it puts the flagged ones first. Every function here takes a
**suspicion**: a ``[N]`` vector where *higher means "more likely planted"*. Turn a score
into a suspicion in the direction that should flag the planted records:

- return-target scores (snapshot, TracIn, metagradient): a harmful record has a
  *negative* score (docs/science.md §2), so the suspicion is ``-score``;
- a behaviour target the planted records work *against* (the behaviour they corrupt):
  also ``-score``;
- baselines that need no attribution: ``-advantage`` (the most negative advantages first),
  ``|advantage|`` and the per-record PPO loss at θ_k (the highest loss first).

Metrics, per iteration:

- ``average_precision``: the area under the precision–recall curve as a step function
  (AUPRC), with tied suspicions forming one threshold, as scikit-learn's
  ``average_precision_score`` computes it. A random ranking scores about the base rate
  (exactly ``expected_random_average_precision``).
- ``precision_at_k``: the share of planted records among the k most suspicious (k = the
  number planted by default); ties at the cut are shared out in expectation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.record.loss import PolicyOutputs, PPOLossConfig, per_record_ppo_losses
from rlattr.record.records import Records


def _check(suspicion: torch.Tensor, planted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    suspicion = torch.as_tensor(suspicion).detach().to("cpu", torch.float64).flatten()
    planted = torch.as_tensor(planted).detach().to("cpu").flatten()
    if planted.dtype != torch.bool:
        if not bool(((planted == 0) | (planted == 1)).all()):
            raise ValueError("planted flags must be booleans (or 0/1)")
        planted = planted.bool()
    if suspicion.shape != planted.shape:
        raise ValueError(
            f"suspicion has {suspicion.numel()} entries but planted has {planted.numel()}"
        )
    if not bool(torch.isfinite(suspicion).all()):
        raise ValueError("suspicion contains NaN or inf")
    if not bool(planted.any()):
        raise ValueError("no record is planted: precision is undefined")
    return suspicion, planted


def average_precision(suspicion: torch.Tensor, planted: torch.Tensor) -> float:
    """AUPRC of ranking by ``suspicion`` (higher first) for the ``planted`` records.

    AP = Σ_n (R_n − R_{n−1}) P_n over the distinct suspicion values taken as thresholds in
    decreasing order (P_n, R_n: precision and recall of "suspicion ≥ threshold n"), so
    records with equal suspicion enter together and their order does not matter.

    Args:
        suspicion: ``[N]`` finite values, higher = more likely planted.
        planted: ``[N]`` bool (or 0/1), True for the planted records (at least one).
    """
    suspicion, planted = _check(suspicion, planted)
    order = torch.argsort(suspicion, descending=True, stable=True)
    sorted_values = suspicion[order]
    hits = torch.cumsum(planted[order].to(torch.float64), 0)
    # The last position of every group of equal values: a threshold's cut.
    last = torch.ones_like(sorted_values, dtype=torch.bool)
    last[:-1] = sorted_values[1:] != sorted_values[:-1]
    cut = torch.nonzero(last).flatten()
    tp = hits[cut]
    precision = tp / (cut + 1).to(torch.float64)
    recall = tp / tp[-1]
    recall_gain = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((recall_gain * precision).sum())


def precision_at_k(suspicion: torch.Tensor, planted: torch.Tensor, k: int | None = None) -> float:
    """The share of planted records among the ``k`` most suspicious (default: k = the
    number planted, where precision@k equals recall@k).

    Records tied with the k-th are shared out in expectation: if m of the tied group's g
    records are planted and j of its places fall inside the top k, they contribute
    j · m / g (the mean over every order of the tied records).
    """
    suspicion, planted = _check(suspicion, planted)
    k = int(planted.sum()) if k is None else int(k)
    if not 1 <= k <= suspicion.numel():
        raise ValueError(f"k must lie in [1, {suspicion.numel()}], got {k}")
    threshold = torch.sort(suspicion, descending=True).values[k - 1]
    above = suspicion > threshold
    tied = suspicion == threshold
    places_left = k - int(above.sum())
    planted_above = float(planted[above].sum())
    planted_tied = float(planted[tied].sum())
    return (planted_above + places_left * planted_tied / int(tied.sum())) / k


def expected_random_average_precision(n_records: int, n_planted: int) -> float:
    """The expected AP of a uniformly random ranking of ``n_records`` with ``n_planted``.

    A planted record at rank r has on average (r−1)(P−1)/(N−1) planted records before it,
    so E[AP] = (1/N) Σ_r [1 + (r−1)(P−1)/(N−1)] / r = H_N/N + (P−1)/(N−1) · (1 − H_N/N),
    which tends to the base rate P/N for large N (and is slightly above it).
    """
    if not 1 <= n_planted <= n_records:
        raise ValueError(f"need 1 <= n_planted <= n_records, got {n_planted}, {n_records}")
    if n_records == 1:
        return 1.0
    harmonic = sum(1.0 / r for r in range(1, n_records + 1))
    share = (n_planted - 1) / (n_records - 1)
    return harmonic / n_records + share * (1.0 - harmonic / n_records)


def per_record_losses(
    policy: ActorCriticPolicy, records: Records, loss_config: PPOLossConfig
) -> torch.Tensor:
    """ℓ_i(θ_k) of docs/science.md §1 for every record, at the policy's current parameters.

    Evaluate it with the policy at θ_k (the parameters that collected ``records``): the
    ratio is then 1. Advantages are normalised over the whole buffer, as the snapshot
    score does (no minibatch exists yet). An attribution-free baseline: the records PPO
    finds hardest to fit.
    """
    actions = records.actions
    if loss_config.discrete_actions:
        actions = actions.long().flatten()
    with torch.no_grad():
        values, log_prob, entropy = policy.evaluate_actions(records.observations, actions)
        advantages = records.advantages
        if loss_config.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        outputs = PolicyOutputs(values.flatten(), log_prob, entropy)
        dtype = log_prob.dtype
        return per_record_ppo_losses(
            outputs,
            records.log_probs.to(dtype),
            records.values.to(dtype),
            records.returns.to(dtype),
            advantages.to(dtype),
            loss_config,
        ).to(torch.float64)


def baseline_suspicions(
    records: Records, losses: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The attribution-free suspicions: ``-advantage``, ``|advantage|`` and, when
    ``losses`` (``per_record_losses``) are given, ``ppo_loss``."""
    advantages = records.advantages.detach().to("cpu", torch.float64).flatten()
    result = {"-advantage": -advantages, "|advantage|": advantages.abs()}
    if losses is not None:
        result["ppo_loss"] = losses.detach().to("cpu", torch.float64).flatten()
    return result


@dataclass(frozen=True)
class Detection:
    """How well one suspicion finds the planted records of one iteration.

    Attributes:
        name: the suspicion's name (``"-snapshot-return"``, ``"|advantage|"``, ...).
        average_precision: AUPRC (``average_precision``).
        precision_at_k: precision at k = the number planted (``precision_at_k``).
        base_rate: planted / records, the precision of a random pick.
        random_average_precision: the expected AUPRC of a random ranking.
        n_planted, n_records: the counts.
    """

    name: str
    average_precision: float
    precision_at_k: float
    base_rate: float
    random_average_precision: float
    n_planted: int
    n_records: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect(suspicions: Mapping[str, torch.Tensor], planted: torch.Tensor) -> list[Detection]:
    """AUPRC and precision@k of every suspicion (higher = more likely planted), in order.

    Raises:
        ValueError: when no record is planted (precision is undefined) or a suspicion
            is not finite or not aligned with ``planted``.
    """
    planted = torch.as_tensor(planted).detach().to("cpu").flatten().bool()
    n, n_planted = planted.numel(), int(planted.sum())
    if n_planted == 0:
        raise ValueError("no record is planted: precision is undefined")
    random_ap = expected_random_average_precision(n, n_planted)
    return [
        Detection(
            name=name,
            average_precision=average_precision(suspicion, planted),
            precision_at_k=precision_at_k(suspicion, planted),
            base_rate=n_planted / n,
            random_average_precision=random_ap,
            n_planted=n_planted,
            n_records=n,
        )
        for name, suspicion in suspicions.items()
    ]
