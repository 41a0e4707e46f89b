"""Detection metrics: against hand-computed cases, naive reference loops and exhaustive
enumeration of random rankings."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rlattr.analysis.detection import (
    average_precision,
    baseline_suspicions,
    detect,
    expected_random_average_precision,
    per_record_losses,
    precision_at_k,
)
from rlattr.record.loss import ppo_minibatch_loss
from rlattr.record.records import Minibatch
from tests.helpers import trained_model


def naive_average_precision(suspicion: list[float], planted: list[bool]) -> float:
    """Σ (R_n − R_{n−1}) P_n over the distinct values as thresholds, by counting."""
    total = sum(planted)
    ap, previous_recall = 0.0, 0.0
    for threshold in sorted(set(suspicion), reverse=True):
        chosen = [p for s, p in zip(suspicion, planted, strict=True) if s >= threshold]
        precision = sum(chosen) / len(chosen)
        recall = sum(chosen) / total
        ap += (recall - previous_recall) * precision
        previous_recall = recall
    return ap


def naive_precision_at_k(suspicion: list[float], planted: list[bool], k: int) -> float:
    """The mean over every order of the records (ties broken every possible way)."""
    values = []
    for order in itertools.permutations(range(len(suspicion))):
        ranked = sorted(order, key=lambda i: -suspicion[i])  # stable: ties keep `order`
        values.append(sum(planted[i] for i in ranked[:k]) / k)
    return sum(values) / len(values)


# --------------------------------------------------------------------- hand-computed
def test_average_precision_hand_computed_without_ties() -> None:
    # Planted at ranks 1 and 3: AP = (1/1 + 2/3) / 2.
    ap = average_precision(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0]))
    assert ap == pytest.approx(5 / 6, abs=1e-12)


def test_average_precision_hand_computed_with_a_tie() -> None:
    # Threshold 1 takes records 0 and 1 (precision 1/2, recall 1/2); threshold 0 takes all
    # three (precision 2/3, recall 1): AP = 1/2 · 1/2 + 1/2 · 2/3.
    ap = average_precision(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([True, False, True]))
    assert ap == pytest.approx(7 / 12, abs=1e-12)


def test_average_precision_of_perfect_and_worst_rankings() -> None:
    planted = torch.tensor([False, True, False, False, True])
    assert average_precision(planted.double(), planted) == pytest.approx(1.0, abs=1e-12)
    # Planted last (ranks 4 and 5): AP = (1/4 + 2/5) / 2.
    assert average_precision(-planted.double() + torch.arange(5) * 1e-3, planted) == (
        pytest.approx((1 / 4 + 2 / 5) / 2, abs=1e-12)
    )


def test_precision_at_k_hand_computed() -> None:
    suspicion = torch.tensor([0.9, 0.8, 0.7, 0.6])
    planted = torch.tensor([True, False, True, False])
    assert precision_at_k(suspicion, planted) == pytest.approx(0.5, abs=1e-12)  # k = 2
    assert precision_at_k(suspicion, planted, k=1) == pytest.approx(1.0, abs=1e-12)
    assert precision_at_k(suspicion, planted, k=3) == pytest.approx(2 / 3, abs=1e-12)
    # Three tied at the top with one planted, two places: 2 · 1/3 planted expected → 1/3.
    tied = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert precision_at_k(tied, torch.tensor([True, False, False, True])) == pytest.approx(
        1 / 3, abs=1e-12
    )


# --------------------------------------------------------------------- naive references
@pytest.mark.parametrize("seed", range(20))
def test_average_precision_matches_the_naive_threshold_loop(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 40, (1,), generator=generator))
    # Few distinct values, so ties are common.
    suspicion = torch.randint(0, 6, (n,), generator=generator).double()
    planted = torch.rand(n, generator=generator) < 0.3
    planted[int(torch.randint(0, n, (1,), generator=generator))] = True
    expected = naive_average_precision(suspicion.tolist(), planted.tolist())
    assert average_precision(suspicion, planted) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_precision_at_k_matches_every_tie_break(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    n = 6
    suspicion = torch.randint(0, 3, (n,), generator=generator).double()
    planted = torch.rand(n, generator=generator) < 0.4
    planted[0] = True
    for k in range(1, n + 1):
        expected = naive_precision_at_k(suspicion.tolist(), planted.tolist(), k)
        assert precision_at_k(suspicion, planted, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "p"), [(1, 1), (5, 1), (6, 2), (7, 3), (8, 8)])
def test_expected_random_average_precision_is_the_mean_over_all_placements(n: int, p: int) -> None:
    # Every placement of the p planted records among n ranks is equally likely.
    values = []
    for positions in itertools.combinations(range(n), p):
        planted = torch.zeros(n, dtype=torch.bool)
        planted[list(positions)] = True
        values.append(average_precision(-torch.arange(n).double(), planted))
    assert expected_random_average_precision(n, p) == pytest.approx(
        sum(values) / len(values), abs=1e-12
    )
    assert expected_random_average_precision(n, p) >= p / n - 1e-12


def test_expected_random_average_precision_tends_to_the_base_rate() -> None:
    assert expected_random_average_precision(100_000, 10_000) == pytest.approx(0.1, abs=1e-3)


# --------------------------------------------------------------------- errors
def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="no record is planted"):
        average_precision(torch.ones(3), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="entries"):
        average_precision(torch.ones(3), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        precision_at_k(torch.tensor([math.nan, 1.0]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="booleans"):
        average_precision(torch.ones(2), torch.tensor([2, 0]))
    with pytest.raises(ValueError, match="k must"):
        precision_at_k(torch.ones(2), torch.tensor([True, False]), k=3)
    with pytest.raises(ValueError, match="no record is planted"):
        detect({"a": torch.ones(2)}, torch.zeros(2, dtype=torch.bool))


# --------------------------------------------------------------------- baselines
@pytest.mark.parametrize("case", ["cartpole", "pendulum_log_std"])
def test_per_record_losses_average_to_the_ppo_loss_of_the_whole_buffer(case: str) -> None:
    model, records = trained_model(case, n_steps=32)
    config = model.loss_config()
    losses = per_record_losses(model.policy, records, config)
    batch = Minibatch(
        records.observations,
        records.actions,
        records.values,
        records.log_probs,
        records.advantages,
        records.returns,
    )
    with torch.no_grad():
        expected = ppo_minibatch_loss(model.policy, batch, config).loss
    assert losses.shape == (len(records),)
    assert float(losses.mean()) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("case", ["cartpole", "pendulum_log_std"])
def test_each_per_record_loss_is_its_single_record_ppo_loss(case: str) -> None:
    # ℓ_i is PPO's loss on a minibatch of record i alone, its advantage normalised over
    # the whole buffer (a one-record minibatch is not normalised again: SB3 GH #325).
    model, records = trained_model(case, n_steps=32)
    config = model.loss_config()
    assert config.normalize_advantage
    losses = per_record_losses(model.policy, records, config)
    advantages = records.advantages.detach().to(torch.float64)
    normalised = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    assert float(normalised.abs().max()) > 0.5  # the normalisation changes the advantages
    for i in range(len(records)):
        one = slice(i, i + 1)
        batch = Minibatch(
            records.observations[one],
            records.actions[one],
            records.values[one],
            records.log_probs[one],
            normalised[one].to(records.advantages.dtype),
            records.returns[one],
        )
        with torch.no_grad():
            expected = ppo_minibatch_loss(model.policy, batch, config).loss
        assert float(losses[i]) == pytest.approx(float(expected), rel=1e-5, abs=1e-6), i


def test_detect_rows_and_baselines() -> None:
    model, records = trained_model("cartpole", n_steps=32)
    # Plant the records with the lowest advantages: -advantage must then rank them first.
    planted = torch.zeros(len(records), dtype=torch.bool)
    planted[torch.argsort(records.advantages)[:4]] = True
    suspicions = baseline_suspicions(
        records, per_record_losses(model.policy, records, model.loss_config())
    )
    rows = {row.name: row for row in detect(suspicions, planted)}
    assert set(rows) == {"-advantage", "|advantage|", "ppo_loss"}
    assert rows["-advantage"].average_precision == pytest.approx(1.0, abs=1e-12)
    assert rows["-advantage"].precision_at_k == pytest.approx(1.0, abs=1e-12)
    assert rows["ppo_loss"].n_planted == 4 and rows["ppo_loss"].base_rate == 4 / len(records)
