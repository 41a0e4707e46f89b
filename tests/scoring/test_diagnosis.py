"""Diagnosis statistics on tiny buffers whose answers are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlattr.record.records import Records
from rlattr.scoring.diagnosis import (
    advantage_diagnostics,
    episode_ends_in_buffer,
    reference_advantages,
    score_quantiles,
    spearman,
)


def _records(
    rewards: list[float],
    starts: list[float],
    values: list[float],
    last_done: float,
    states: list[int] | None = None,
    actions: list[int] | None = None,
) -> Records:
    n = len(rewards)
    states = states or list(range(n))
    observations = torch.nn.functional.one_hot(torch.tensor(states), 4).float()
    tensor = lambda xs: torch.tensor(xs, dtype=torch.float32)  # noqa: E731
    return Records(
        observations=observations,
        actions=tensor(actions or [0] * n).reshape(n, 1),
        rewards=tensor(rewards),
        episode_starts=tensor(starts),
        values=tensor(values),
        log_probs=torch.zeros(n),
        advantages=torch.zeros(n),
        returns=torch.zeros(n),
        last_values=tensor([0.0]),
        last_dones=tensor([last_done]),
        iteration=0,
        n_envs=1,
        n_steps=n,
    )


def test_monte_carlo_advantage_only_where_the_episode_ends_in_the_buffer() -> None:
    # Episode 1 = steps 0–2 (ends when step 3 starts a new one); episode 2 runs past the end.
    records = _records(
        rewards=[0, 0, 1, 0, 1, 0],
        starts=[1, 0, 0, 1, 0, 0],
        values=[0.5, 0.5, 0.5, 0.2, 0.2, 0.2],
        last_done=0.0,
        states=[0, 1, 2, 0, 1, 2],
    )
    assert episode_ends_in_buffer(records).tolist() == [True] * 3 + [False] * 3
    reference = reference_advantages(records, gamma=0.5)
    # Returns-to-go with γ = 0.5: 0 + 0.5·0 + 0.25·1 = 0.25, 0.5, 1; minus V = 0.5.
    assert reference.monte_carlo[:3].tolist() == pytest.approx([-0.25, 0.0, 0.5])
    assert torch.isnan(reference.monte_carlo[3:]).all()
    assert reference.empirical is None


def test_empirical_advantage_is_the_within_buffer_q_minus_v() -> None:
    # State 0 visited four times: action 0 twice (returns 1, 3), action 1 twice (0, 0).
    # Every step is its own one-step episode (γ irrelevant); the buffer ends with a done.
    records = _records(
        rewards=[1, 3, 0, 0, 5],
        starts=[1, 1, 1, 1, 1],
        values=[9, 9, 9, 9, 9],
        last_done=1.0,
        states=[0, 0, 0, 0, 1],
        actions=[0, 0, 1, 1, 0],
    )
    reference = reference_advantages(records, gamma=0.9, discrete_observations=True)
    # V̄(0) = (1 + 3 + 0 + 0)/4 = 1; Q̄(0, 0) = 2, Q̄(0, 1) = 0; state 1 alone: 5 − 5 = 0.
    assert reference.empirical.tolist() == pytest.approx([1.0, 1.0, -1.0, -1.0, 0.0])
    # The value network does not enter the empirical estimate; it does enter Monte Carlo.
    assert reference.monte_carlo.tolist() == pytest.approx([-8.0, -6.0, -9.0, -9.0, -4.0])
    assert reference.best.tolist() == pytest.approx([1.0, 1.0, -1.0, -1.0, 0.0])


def test_spearman_by_hand_with_and_without_ties() -> None:
    # Σd² = 2 over 4 items: 1 − 6·2 / (4·15) = 0.8.
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 3, 2, 4])) == 0.8
    # Average ranks for ties: x → (0.5, 0.5, 2), y → (0, 1, 2): 1.5 / √3.
    value = spearman(torch.tensor([1.0, 1, 2]), torch.tensor([1.0, 2, 3]))
    assert value == pytest.approx(1.5 / math.sqrt(3), abs=1e-15)
    assert math.isnan(spearman(torch.tensor([1.0, 1, 1]), torch.tensor([1.0, 2, 3])))


def test_advantage_diagnostics_by_hand() -> None:
    scores = torch.tensor([-2.0, -1.0, 1.0, 2.0, 0.5])
    advantages = torch.tensor([1.0, -1.0, 1.0, 1.0, 3.0])
    reference = torch.tensor([-1.0, -1.0, 2.0, 1.0, float("nan")])  # record 4: unknown Ā
    keep = torch.tensor([False, False, True, True, True])
    out = advantage_diagnostics(scores, advantages, reference, fraction=0.25, keep_mask=keep)
    assert out["known_fraction"] == 0.8
    # Bottom: record 0 (Â = 1, Ā = −1): error 2, sign mismatch. Top: record 3: exact.
    assert (out["abs_error_bottom"], out["sign_mismatch_bottom"]) == (2.0, 1.0)
    assert (out["abs_error_top"], out["sign_mismatch_top"]) == (0.0, 0.0)
    # Dropped: records 0, 1 (errors 2, 0; one mismatch); kept with known Ā: 2, 3.
    assert (out["abs_error_dropped"], out["sign_mismatch_dropped"]) == (1.0, 0.5)
    assert (out["abs_error_kept"], out["sign_mismatch_kept"]) == (0.5, 0.0)
    # Ā·Â = (−1, 1, 2, 1): ranks (0, 1.5, 3, 1.5) against (0, 1, 2, 3): 3 / √22.5.
    assert out["spearman_score_vs_product"] == pytest.approx(3 / math.sqrt(22.5), abs=1e-15)


def test_score_quantiles_are_scale_free_when_normalized() -> None:
    scores = torch.linspace(-1.0, 1.0, 101, dtype=torch.float64)
    small = score_quantiles(scores)
    large = score_quantiles(1000.0 * scores)
    assert small["p50"] == pytest.approx(0.0, abs=1e-12)
    assert small["p90"] == pytest.approx(0.8)
    assert large["p90"] == pytest.approx(800.0)
    for name in ("p01", "p10", "p50", "p90", "p99"):
        assert large[f"{name}_normalized"] == pytest.approx(small[f"{name}_normalized"])
