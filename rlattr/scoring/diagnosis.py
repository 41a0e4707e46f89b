"""Diagnosis of learning: do the most harmful records carry wrong advantage estimates?

docs/science.md §5 and the IIF paper's "diagnosis of learning": the bottom-scored records tend to
have an advantage estimate Â whose sign disagrees with a better estimate Ā, or that is far
from it. These statistics are cheap (a few tensor operations on one buffer), so training
logs them live and ``rlattr diagnose`` reports them post hoc.

Two reference advantages Ā, both defined only where they are exact:

- ``monte_carlo``: the discounted return-to-go minus V(s_i), for records whose episode ends
  inside the buffer (no bootstrap from a value estimate).
- ``empirical`` (discrete observations and actions only): the within-buffer average over the
  records with the same (s, a) of their return-to-go, minus the average over the records
  with the same s — Q̄(s, a) − V̄(s) estimated from this buffer alone, with no value network
  (our reading of the paper's "within-buffer empirical average"; the paper does not give
  a formula). Records whose episode does not end in the buffer are left out of both
  averages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rlattr.record.counterfactual import rank
from rlattr.record.records import Records
from rlattr.scoring.targets import gae_advantages

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


def episode_ends_in_buffer(records: Records) -> torch.Tensor:
    """``[N]`` bool: records whose episode ends inside the buffer (exact return-to-go)."""
    starts = _host(records.episode_starts).reshape(records.n_envs, records.n_steps) > 0
    steps = np.arange(records.n_steps)
    # Per env, the last episode start after step 0 (0: none): every step before it belongs
    # to an episode that ended in the buffer.
    last_start = np.where(starts[:, 1:], steps[1:], 0).max(axis=1, initial=0)
    ends = steps[None, :] < last_start[:, None]
    ends |= (_host(records.last_dones).reshape(-1) == 1.0)[:, None]
    return torch.from_numpy(ends.reshape(-1)).to(records.device)


def positions_in_episode(records: Records) -> torch.Tensor:
    """``[N]`` int64: each record's step within its episode (0 where an episode starts, or
    where the buffer starts mid-episode)."""
    starts = _host(records.episode_starts).reshape(records.n_envs, records.n_steps) > 0
    steps = np.arange(records.n_steps)
    # The step minus the latest episode start at or before it (step 0 counts as a start).
    latest_start = np.maximum.accumulate(np.where(starts, steps, 0), axis=1)
    return torch.from_numpy((steps - latest_start).reshape(-1).astype(np.int64))


def _host(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def returns_to_go(records: Records, gamma: float) -> torch.Tensor:
    """``[N]`` discounted return-to-go (bootstrapped past the buffer's end, as SB3's GAE)."""
    return gae_advantages(records, gamma, 1.0) + records.values


@dataclass(frozen=True)
class ReferenceAdvantages:
    """Better estimates Ā of each record's advantage, NaN where not exact.

    Attributes:
        monte_carlo: ``[N]`` return-to-go − V(s) where the episode ends in the buffer.
        empirical: ``[N]`` Q̄(s, a) − V̄(s) from this buffer (discrete spaces), else None.
    """

    monte_carlo: torch.Tensor
    empirical: torch.Tensor | None

    @property
    def best(self) -> torch.Tensor:
        """The empirical estimate where defined (it does not depend on V), else Monte Carlo."""
        if self.empirical is None:
            return self.monte_carlo
        return torch.where(torch.isnan(self.empirical), self.monte_carlo, self.empirical)


def reference_advantages(
    records: Records, gamma: float, discrete_observations: bool = False
) -> ReferenceAdvantages:
    """Ā for every record (see the module docstring).

    Args:
        records: one iteration's buffer.
        gamma: the discount of the run.
        discrete_observations: compute the within-buffer empirical estimate too (the
            observations are one-hot or integer codes, so equal states compare equal).
    """
    exact = episode_ends_in_buffer(records)
    to_go = returns_to_go(records, gamma).double()
    nan = torch.full_like(to_go, float("nan"))
    monte_carlo = torch.where(exact, to_go - records.values.double(), nan)
    empirical = None
    if discrete_observations:
        empirical = _empirical_advantages(records, to_go, exact)
    return ReferenceAdvantages(monte_carlo, empirical)


def _empirical_advantages(
    records: Records, to_go: torch.Tensor, exact: torch.Tensor
) -> torch.Tensor:
    n = len(records)
    state_ids = _row_ids(records.observations.reshape(n, -1))
    action_ids = _row_ids(records.actions.reshape(n, -1))
    # One id per (state, action) pair, from the two ids (both < n).
    _, pair_ids = torch.unique(state_ids * n + action_ids, return_inverse=True)

    def group_mean(ids: torch.Tensor) -> torch.Tensor:
        size = int(ids.max()) + 1
        weight = exact.double()
        total = torch.zeros(size, dtype=torch.float64, device=ids.device)
        count = torch.zeros(size, dtype=torch.float64, device=ids.device)
        total.index_add_(0, ids, torch.where(exact, to_go, torch.zeros_like(to_go)))
        count.index_add_(0, ids, weight)
        return (total / count)[ids]  # NaN (0/0) for groups with no exact record

    empirical = group_mean(pair_ids) - group_mean(state_ids)
    return torch.where(exact, empirical, torch.full_like(empirical, float("nan")))


def _row_ids(rows: torch.Tensor) -> torch.Tensor:
    """An integer id per distinct row (equal rows, equal ids)."""
    if rows.shape[1] == 1:  # a Discrete observation or action: 1-D unique is ~10× faster
        return torch.unique(rows[:, 0], return_inverse=True)[1]
    return torch.unique(rows, dim=0, return_inverse=True)[1]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for fewer than 3 pairs or a
    constant input."""
    # NumPy on the host: the board calls this every iteration on a few hundred values,
    # where torch's per-operation overhead is most of the cost.
    xs = x.detach().cpu().double().numpy().reshape(-1)
    ys = y.detach().cpu().double().numpy().reshape(-1)
    if xs.size < 3:
        return float("nan")
    rx, ry = rank(xs), rank(ys)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt(np.dot(rx, rx) * np.dot(ry, ry))
    if denominator == 0.0:
        return float("nan")
    return float(np.dot(rx, ry) / denominator)


def score_quantiles(scores: torch.Tensor) -> dict[str, float]:
    """p01 … p99 of the finite scores, raw and divided by their spread (standard deviation):
    the scale-free form stays readable when early scores are orders of magnitude larger."""
    finite = scores[torch.isfinite(scores)].double()
    if finite.numel() == 0:
        return {}
    levels = torch.tensor(QUANTILES, dtype=torch.float64, device=finite.device)
    values = torch.quantile(finite, levels)
    spread = float(finite.std()) if finite.numel() > 1 else 0.0
    out = {}
    for level, value in zip(QUANTILES, values.tolist(), strict=True):
        name = f"p{round(level * 100):02d}"
        out[name] = value
        if spread > 0:
            out[f"{name}_normalized"] = value / spread
    return out


def advantage_diagnostics(
    scores: torch.Tensor,
    advantages: torch.Tensor,
    reference: torch.Tensor,
    fraction: float = 0.1,
    keep_mask: torch.Tensor | None = None,
) -> dict[str, float]:
    """How the estimated advantages Â of the bottom- and top-scored records compare with Ā.

    Args:
        scores: ``[N]`` influence scores (positive = helpful).
        advantages: ``[N]`` the advantages the update used (raw GAE Â).
        reference: ``[N]`` Ā (NaN where unknown; those records are left out).
        fraction: the share of records with a known Ā that counts as bottom / top.
        keep_mask: when filtering, also compare the dropped with the kept records.

    Returns:
        ``abs_error_{bottom,top}`` (mean |Ā − Â|), ``sign_mismatch_{bottom,top}`` (share with
        sign(Ā) ≠ sign(Â)), the same with ``_{dropped,kept}`` when ``keep_mask`` is given,
        ``spearman_score_vs_product`` (Spearman of score with Ā·Â over known records; the
        paper found −0.67 on FrozenLake) and ``known_fraction``. Groups with no record
        with a known Ā are left out.
    """
    scores_np = scores.detach().cpu().double().numpy().reshape(-1)
    advantages_np = advantages.detach().cpu().double().numpy().reshape(-1)
    reference_np = reference.detach().cpu().double().numpy().reshape(-1)
    known = np.isfinite(reference_np) & np.isfinite(scores_np)
    out: dict[str, float] = {"known_fraction": float(known.mean())}
    if not known.any():
        return out
    error = np.abs(reference_np - advantages_np)
    mismatch = (np.sign(reference_np) != np.sign(advantages_np)).astype(np.float64)
    known_ids = np.flatnonzero(known)
    ranked = known_ids[np.argsort(scores_np[known_ids], kind="stable")]
    k = max(1, round(fraction * ranked.size))
    groups = {"bottom": ranked[:k], "top": ranked[-k:]}
    if keep_mask is not None:
        keep = keep_mask.detach().cpu().bool().numpy().reshape(-1)
        groups["dropped"] = np.flatnonzero(known & ~keep)
        groups["kept"] = np.flatnonzero(known & keep)
    for name, members in groups.items():
        if members.size:
            out[f"abs_error_{name}"] = float(error[members].mean())
            out[f"sign_mismatch_{name}"] = float(mismatch[members].mean())
    out["spearman_score_vs_product"] = spearman(
        torch.from_numpy(scores_np[known]),
        torch.from_numpy((reference_np * advantages_np)[known]),
    )
    return out
