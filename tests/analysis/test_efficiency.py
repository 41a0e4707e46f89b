"""The IIF paper's efficiency metrics on hand-made curves with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlattr.analysis.efficiency import (
    auc,
    efficiency,
    final_return,
    first_reach,
    iqm,
    normalize_by_task,
    performance_profiles,
    probability_of_improvement,
    running_max_levels,
)

# Rounds 0..5. PPO's running maxima after round 0: 1 (round 1), 3 (round 3), 5 (round 5).
PPO = [0.0, 1.0, 1.0, 3.0, 2.0, 5.0]
PPO_SECONDS = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
# The filter reaches 1 at round 1, 3 at round 2, 5 at round 4.
FILTER = [0.0, 2.0, 4.0, 4.0, 5.0, 5.0]
FILTER_SECONDS = [0.0, 12.0, 24.0, 36.0, 48.0, 60.0]


def test_first_reach_counts_equal_as_reached() -> None:
    assert first_reach(FILTER, 4.0) == 2
    assert first_reach(FILTER, 2.0) == 1
    assert first_reach(FILTER, 5.5) is None


def test_running_max_levels_are_pppos_new_records_after_round_0() -> None:
    levels, rounds = running_max_levels(PPO)
    np.testing.assert_array_equal(levels, [1.0, 3.0, 5.0])
    np.testing.assert_array_equal(rounds, [1, 3, 5])


def test_efficiency_by_hand() -> None:
    result = efficiency(PPO, FILTER, PPO_SECONDS, FILTER_SECONDS)
    # reductions: 1 - 1/1 = 0, 1 - 2/3 = 1/3, 1 - 4/5 = 1/5
    assert result.reductions == pytest.approx((0.0, 1 / 3, 0.2))
    assert result.se_ave == pytest.approx((0 + 1 / 3 + 0.2) / 3)  # 8/45
    assert result.se_peak == pytest.approx(0.2)
    assert (result.peak, result.m_ppo_peak, result.m_filter_peak) == (5.0, 5, 4)
    # The filter reaches PPO's peak after 48 s; PPO's whole run took 50 s.
    assert result.rt_peak == pytest.approx(1 - 48 / 50)
    assert result.censored_levels == 0 and result.peak_reached


def test_unreached_levels_count_at_the_round_after_the_budget() -> None:
    slow = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    result = efficiency(PPO, slow, PPO_SECONDS, PPO_SECONDS)
    # m(1) = 1; 3 and 5 never reached: m = R + 1 = 6 → 1 - 6/3 = -1 and 1 - 6/5 = -0.2.
    assert result.reductions == pytest.approx((0.0, -1.0, -0.2))
    assert result.se_ave == pytest.approx(-0.4)
    assert result.se_peak == pytest.approx(-0.2)
    assert result.censored_levels == 2 and not result.peak_reached
    # Time to PPO's peak: at least the filter's whole run (50 s) → 1 - 50/50.
    assert result.rt_peak == pytest.approx(0.0)


def test_identical_curves_have_zero_efficiency_gain() -> None:
    result = efficiency(PPO, PPO, PPO_SECONDS, PPO_SECONDS)
    assert result.se_ave == 0.0 and result.se_peak == 0.0 and result.rt_peak == 0.0


def test_ppo_peaking_at_round_0_has_no_levels() -> None:
    result = efficiency([3.0, 1.0, 2.0], [3.0, 3.0, 3.0])
    assert result.levels == ()
    assert math.isnan(result.se_ave) and math.isnan(result.se_peak)
    assert math.isnan(result.rt_peak)  # no seconds given


def test_auc_and_final_return() -> None:
    assert auc(PPO) == pytest.approx(12 / 6)
    assert final_return(PPO) == 5.0


def test_bad_curves_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        auc([1.0, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        efficiency([], [1.0])
    with pytest.raises(ValueError, match="one entry per round"):
        efficiency(PPO, FILTER, PPO_SECONDS[:-1], FILTER_SECONDS)


def test_iqm_with_bootstrap_interval() -> None:
    pytest.importorskip("rliable")
    result = iqm({"a": [1.0, 2.0, 3.0, 10.0], "b": [5.0, 5.0, 5.0, 5.0]}, reps=200)
    # 4 runs: the middle half is {2, 3}.
    assert result["a"].estimate == pytest.approx(2.5)
    assert result["a"].low <= 2.5 <= result["a"].high
    assert (result["b"].estimate, result["b"].low, result["b"].high) == (5.0, 5.0, 5.0)


def test_probability_of_improvement_counts_ties_half() -> None:
    pytest.importorskip("rliable")
    # 9 pairs: 3 beats all three, 2 beats 0 and ties twice, 1 beats 0: (5 + 2 × 0.5) / 9.
    result = probability_of_improvement([1.0, 2.0, 3.0], [2.0, 2.0, 0.0], reps=200)
    assert result.estimate == pytest.approx(6 / 9)
    assert 0.0 <= result.low <= result.estimate <= result.high <= 1.0


def test_intervals_are_reproducible_and_leave_numpy_alone() -> None:
    pytest.importorskip("rliable")
    scores = {"a": [1.0, 5.0, 2.0, 8.0, 3.0]}
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first, second = iqm(scores, reps=300, seed=1), iqm(scores, reps=300, seed=1)
    assert first == second
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    pair = ([1.0, 2.0, 3.0], [2.0, 2.0, 0.0])
    assert probability_of_improvement(*pair, reps=300) == probability_of_improvement(
        *pair, reps=300
    )


def test_performance_profile_counts_runs_above_each_threshold() -> None:
    pytest.importorskip("rliable")
    # Two tasks of four runs: above τ = 0.3 are 2 of 4 runs on task 0 and 3 of 4 on task 1.
    scores = {"a": [[0.0, 0.4], [0.5, 0.6], [1.0, 0.2], [0.25, 0.9]]}
    (profile,) = performance_profiles(scores, [0.0, 0.3, 0.95], reps=200).values()
    np.testing.assert_allclose(profile.fraction, [(3 / 4 + 1) / 2, (2 / 4 + 3 / 4) / 2, 1 / 8])
    assert (profile.low <= profile.fraction + 1e-12).all()
    assert (profile.fraction <= profile.high + 1e-12).all()


def test_normalize_by_task_maps_each_tasks_worst_and_best_run_to_0_and_1() -> None:
    scores = {"ppo": [[0.0, -500.0], [1.0, -100.0]], "iif": [[0.5, -80.0], [0.5, -500.0]]}
    normalized = normalize_by_task(scores)
    np.testing.assert_allclose(normalized["ppo"], [[0.0, 0.0], [1.0, 400 / 420]])
    np.testing.assert_allclose(normalized["iif"], [[0.5, 1.0], [0.5, 0.0]])
    flat = normalize_by_task({"a": [[3.0], [3.0]]})["a"]
    np.testing.assert_array_equal(flat, [[0.0], [0.0]])


def test_rounds_to_a_share_of_ppos_peak_measure_from_its_initial_return() -> None:
    from rlattr.analysis.efficiency import rounds_to_share_of_peak, share_of_peak_level

    ppo = [0.0, 0.2, 0.6, 0.95, 1.0]
    other = [0.0, 0.55, 0.92, 0.99, 1.0]
    assert [rounds_to_share_of_peak(ppo, other, s) for s in (0.5, 0.9, 0.99)] == [1, 2, 3]
    assert [rounds_to_share_of_peak(ppo, ppo, s) for s in (0.5, 0.9, 0.99)] == [2, 3, 4]
    # Negative returns: halfway from -500 to -100 is -300, not half of -100.
    assert share_of_peak_level([-500.0, -300.0, -100.0], 0.5) == -300.0
    assert rounds_to_share_of_peak([-500.0, -100.0], [-500.0, -400.0], 0.5) is None
    with pytest.raises(ValueError, match="share must be in"):
        share_of_peak_level(ppo, 0.0)
