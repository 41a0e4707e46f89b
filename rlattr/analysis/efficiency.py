"""Sample- and time-efficiency metrics of the IIF paper, and their aggregation over seeds.

Definitions (docs/science.md §6, arXiv 2505.19281 §5), with rounds as the unit. A *curve* is
one evaluation return per round: ``curve[r]`` is the return of the policy after ``r``
updates (``curve[0]`` the initial policy), as ``rlattr.training.evaluation`` records it.

- ``m(v)`` is the first round at which an arm's curve reaches the level ``v``
  (``curve[r] >= v``).
- ``reduction(v) = 1 − m_filter(v) / m_ppo(v)``.
- **SE_peak** is the reduction at PPO's peak (the maximum of PPO's curve).
- **SE_ave** is the mean reduction over an increasing list of levels that PPO reaches. The
  paper does not list its levels; here they are **PPO's successive running maxima**: the
  values of PPO's curve at every round (after round 0) where it exceeds all earlier rounds.
- **RT_peak** = 1 − (the filter's wall-clock time until it first reaches PPO's peak) /
  (PPO's wall-clock time for its whole run).

Two conventions the paper leaves open, fixed here and reported with every result:

- A level the filter never reaches within its budget of R rounds counts as reached at
  round R + 1 (and, for RT_peak, at the filter's whole-run time): the earliest it could
  be, so the reduction is an *upper bound* (in the filter's favour). ``EfficiencyResult``
  says how many levels were censored this way.
- Levels PPO reaches at round 0 (the initial policy) are left out: m_ppo = 0 has no ratio.

Also: AUC (the mean of the curve over its rounds, i.e. the area under the curve divided
by its length) and the final return (the last round's evaluation).

Aggregation over seeds (``aggregate``) uses rliable (the optional extra ``stats``):
interquartile mean (IQM) with a stratified-bootstrap 95 % confidence interval, and the
probability of improvement of one arm over another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


def _curve(values: ArrayLike, name: str) -> np.ndarray:
    curve = np.asarray(values, dtype=float)
    if curve.ndim != 1 or curve.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d sequence of returns, one per round")
    if not np.isfinite(curve).all():
        raise ValueError(f"{name} holds NaN or inf returns")
    return curve


def first_reach(curve: ArrayLike, level: float) -> int | None:
    """``m(v)``: the first round whose return is ``>= level``; None if never reached."""
    reached = np.nonzero(_curve(curve, "curve") >= level)[0]
    return int(reached[0]) if reached.size else None


def running_max_levels(curve: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """PPO's successive running maxima after round 0: (levels, the rounds that set them).

    Round r contributes ``curve[r]`` when it is strictly greater than every earlier round
    (round 0 included), so the levels increase and PPO reaches each first at its round.
    """
    curve = _curve(curve, "curve")
    earlier_max = np.maximum.accumulate(curve)[:-1]
    rounds = np.nonzero(curve[1:] > earlier_max)[0] + 1
    return curve[rounds], rounds


def reduction(m_filter: float, m_ppo: float) -> float:
    """``1 − m_filter / m_ppo`` (positive: the filter needs fewer rounds)."""
    if m_ppo <= 0:
        raise ValueError("m_ppo must be > 0")
    return 1.0 - m_filter / m_ppo


@dataclass(frozen=True)
class EfficiencyResult:
    """The paper's efficiency metrics of one filter run against one PPO run.

    Attributes:
        se_ave: mean reduction over PPO's running-maximum levels (NaN without levels).
        se_peak: reduction at PPO's peak (NaN if PPO peaks at round 0).
        rt_peak: 1 − filter time to PPO's peak / PPO's whole-run time (NaN without times).
        levels: the levels of SE_ave.
        reductions: the reduction at each level.
        peak: PPO's peak return; ``m_ppo_peak``/``m_filter_peak`` the rounds reaching it.
        censored_levels: levels of SE_ave the filter never reached (counted at R + 1).
        peak_reached: whether the filter reached PPO's peak within its budget.
    """

    se_ave: float
    se_peak: float
    rt_peak: float
    levels: tuple[float, ...]
    reductions: tuple[float, ...]
    peak: float
    m_ppo_peak: int
    m_filter_peak: int
    censored_levels: int
    peak_reached: bool


def _m_censored(curve: np.ndarray, level: float) -> tuple[int, bool]:
    m = first_reach(curve, level)
    return (len(curve), False) if m is None else (m, True)  # R + 1 = len(curve)


def efficiency(
    ppo_curve: ArrayLike,
    filter_curve: ArrayLike,
    ppo_seconds: ArrayLike | None = None,
    filter_seconds: ArrayLike | None = None,
) -> EfficiencyResult:
    """SE_ave, SE_peak and RT_peak of ``filter_curve`` against ``ppo_curve``.

    Args:
        ppo_curve: PPO's evaluation return per round (round 0 first).
        filter_curve: the filtered arm's, same rounds.
        ppo_seconds: PPO's cumulative wall-clock training time at each round (the last
            entry is its whole-run time); needed for RT_peak.
        filter_seconds: the filter's, at each of its rounds.

    Returns:
        The metrics as fractions (multiply by 100 for the paper's percentages).
    """
    ppo = _curve(ppo_curve, "ppo_curve")
    filt = _curve(filter_curve, "filter_curve")
    levels, ppo_rounds = running_max_levels(ppo)
    reductions, censored = [], 0
    for level, m_ppo in zip(levels, ppo_rounds, strict=True):
        m_filter, reached = _m_censored(filt, float(level))
        censored += not reached
        reductions.append(reduction(m_filter, int(m_ppo)))
    se_ave = float(np.mean(reductions)) if reductions else float("nan")

    peak = float(ppo.max())
    m_ppo_peak = int(np.argmax(ppo))
    m_filter_peak, peak_reached = _m_censored(filt, peak)
    se_peak = reduction(m_filter_peak, m_ppo_peak) if m_ppo_peak > 0 else float("nan")

    rt_peak = float("nan")
    if ppo_seconds is not None and filter_seconds is not None:
        ppo_t = np.asarray(ppo_seconds, dtype=float)
        filt_t = np.asarray(filter_seconds, dtype=float)
        if len(ppo_t) != len(ppo) or len(filt_t) != len(filt):
            raise ValueError("the seconds must have one entry per round of their curve")
        time_to_peak = filt_t[m_filter_peak] if peak_reached else filt_t[-1]
        if ppo_t[-1] > 0:
            rt_peak = 1.0 - float(time_to_peak) / float(ppo_t[-1])
    return EfficiencyResult(
        se_ave=se_ave,
        se_peak=float(se_peak),
        rt_peak=rt_peak,
        levels=tuple(float(v) for v in levels),
        reductions=tuple(float(r) for r in reductions),
        peak=peak,
        m_ppo_peak=m_ppo_peak,
        m_filter_peak=m_filter_peak,
        censored_levels=censored,
        peak_reached=peak_reached,
    )


def share_of_peak_level(ppo_curve: ArrayLike, share: float) -> float:
    """The return ``share`` of the way from PPO's initial return to its peak:
    ``c_0 + share · (max c − c_0)`` (``share · peak`` when the initial return is 0), so
    that shares mean the same on tasks whose returns are negative."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    curve = _curve(ppo_curve, "ppo_curve")
    return float(curve[0] + share * (curve.max() - curve[0]))


def rounds_to_share_of_peak(ppo_curve: ArrayLike, curve: ArrayLike, share: float) -> int | None:
    """The first round at which ``curve`` reaches ``share_of_peak_level(ppo_curve, share)``;
    None if it never does (PPO itself reaches every share by its peak round)."""
    return first_reach(curve, share_of_peak_level(ppo_curve, share))


def auc(curve: ArrayLike) -> float:
    """Mean evaluation return over the rounds (area under the curve / its length)."""
    return float(np.mean(_curve(curve, "curve")))


def final_return(curve: ArrayLike) -> float:
    """The last round's evaluation return."""
    return float(_curve(curve, "curve")[-1])


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % confidence interval."""

    estimate: float
    low: float
    high: float


@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    """rliable draws its bootstrap indices from numpy's *global* RNG (``np.random.choice``),
    whatever ``random_state`` it is given: seed it for reproducible intervals, and put the
    caller's state back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _rliable():
    try:
        from rliable import library, metrics
    except ImportError as err:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "aggregation needs rliable: pip install 'rlattr[stats]' (rliable and pandas<3)"
        ) from err
    return library, metrics


def iqm(scores: Mapping[str, ArrayLike], reps: int = 2000, seed: int = 0) -> dict[str, Interval]:
    """Interquartile mean per arm with a stratified-bootstrap 95 % CI (rliable).

    Args:
        scores: arm → scores of shape (runs,) or (runs, tasks); tasks are the strata.
        reps: bootstrap repetitions.
        seed: seed of the bootstrap.
    """
    library, metrics = _rliable()
    matrices = {arm: _runs_by_tasks(values) for arm, values in scores.items()}
    with _seeded_global_numpy(seed):
        point, ci = library.get_interval_estimates(
            matrices, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps
        )
    return {
        arm: Interval(float(point[arm][0]), float(ci[arm][0, 0]), float(ci[arm][1, 0]))
        for arm in matrices
    }


def probability_of_improvement(
    first: ArrayLike, second: ArrayLike, reps: int = 2000, seed: int = 0
) -> Interval:
    """P(a run of ``first`` scores higher than a run of ``second``), ties counting half,
    averaged over tasks, with a stratified-bootstrap 95 % CI (rliable)."""
    library, metrics = _rliable()
    pair = (_runs_by_tasks(first), _runs_by_tasks(second))
    with _seeded_global_numpy(seed):
        point, ci = library.get_interval_estimates(
            {"pair": pair}, metrics.probability_of_improvement, reps=reps
        )
    low, high = np.asarray(ci["pair"], dtype=float).ravel()
    return Interval(float(point["pair"]), float(low), float(high))


@dataclass(frozen=True)
class Profile:
    """A performance profile: at each threshold τ, the fraction of runs (pooled over tasks)
    scoring above τ, with its stratified-bootstrap 95 % band."""

    taus: np.ndarray
    fraction: np.ndarray
    low: np.ndarray
    high: np.ndarray


def performance_profiles(
    scores: Mapping[str, ArrayLike], taus: ArrayLike, reps: int = 2000, seed: int = 0
) -> dict[str, Profile]:
    """Performance profiles per arm (rliable's run-score distributions, Agarwal et al. 2021).

    Args:
        scores: arm → scores of shape (runs,) or (runs, tasks), on one scale across tasks
            (normalise each task first, e.g. ``normalize_by_task``).
        taus: thresholds.
        reps: bootstrap repetitions; seed: seed of the bootstrap.
    """
    library, _ = _rliable()
    matrices = {arm: _runs_by_tasks(values) for arm, values in scores.items()}
    taus = np.asarray(taus, dtype=float)
    with _seeded_global_numpy(seed):
        fractions, bands = library.create_performance_profile(matrices, taus, reps=reps)
    return {
        arm: Profile(
            taus,
            np.asarray(fractions[arm], dtype=float),
            np.asarray(bands[arm][0], dtype=float),
            np.asarray(bands[arm][1], dtype=float),
        )
        for arm in matrices
    }


def normalize_by_task(scores: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    """Scores min–max normalised per task over every arm's runs, so tasks with different
    return scales share one profile: 0 = the worst run of any arm on that task, 1 = the
    best. ``scores``: arm → (runs, tasks); a task where every run is equal maps to 0."""
    matrices = {arm: _runs_by_tasks(values) for arm, values in scores.items()}
    stacked = np.concatenate(list(matrices.values()), axis=0)
    low, high = stacked.min(axis=0), stacked.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return {arm: (matrix - low) / span for arm, matrix in matrices.items()}


def _runs_by_tasks(values: ArrayLike) -> np.ndarray:
    matrix = np.asarray(values, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError("scores must have shape (runs,) or (runs, tasks)")
    if not np.isfinite(matrix).all():
        raise ValueError("scores hold NaN or inf")
    return matrix
