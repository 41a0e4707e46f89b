"""Behaviour formation: values from the logged checkpoints, group masses, roughness by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rlattr import ActionTarget, AttributedPPO, RunLog, replay_iteration
from rlattr.analysis.formation import (
    FormationConfig,
    formation,
    roughness,
    write_formation_report,
)
from rlattr.record import build_policy
from rlattr.record.checkpoint import restore_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("formation") / "run"
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, n_steps=64, batch_size=32, n_epochs=2,
        seed=1, device="cpu",
    ).learn(192)  # fmt: skip
    return run_dir


def _log_prob(policy, states: torch.Tensor, actions: torch.Tensor) -> float:
    with torch.no_grad():
        distribution = policy.get_distribution(states)
        return float(distribution.log_prob(actions).mean())


def test_values_and_changes_come_from_the_logged_parameters(run: Path) -> None:
    log = RunLog(run)
    records = log.load_records(0)
    states, actions = records.observations[:6], records.actions[:6, 0].long()
    result = formation(run, ActionTarget(states, actions), FormationConfig(neighbours=5))
    assert [r.iteration for r in result.iterations] == [0, 1, 2]
    policy = build_policy(log)
    for row in result.iterations:
        tensors, meta = log.load_checkpoint(row.iteration)
        restore_checkpoint(policy, tensors, meta)
        before = _log_prob(policy, states, actions)
        after = _log_prob(replay_iteration(log, row.iteration), states, actions)
        assert row.behavior == pytest.approx(before, abs=1e-6)
        assert row.change == pytest.approx(after - before, abs=1e-6)
        # Groups split every record's score: positive + negative masses add up to the total.
        total = sum(row.positive.values()) + sum(row.negative.values())
        assert total == pytest.approx(row.total_score, rel=1e-9, abs=1e-12)
        assert all(v > 0 for v in row.positive.values())
        assert all(v <= 0 for v in row.negative.values())
        assert row.top == sorted(row.top, key=lambda item: -item[2])
    assert set(result.groups) == {"a=0", "a=1"}
    written = write_formation_report(result, run / "reports", None)
    assert [p.name for p in written] == [
        "formation.csv", "formation_heatmap.png", "formation_curves.png",
    ]  # fmt: skip
    assert len((run / "reports" / "formation.csv").read_text().splitlines()) == 1 + 3 * 2


def test_roughness_by_hand() -> None:
    # Points 0, 1, 10 on a line, k = 1: edges 0–1 (d² = 1) and 1–2 (d² = 81); σ² = median
    # of the neighbour distances (1, 1, 81) = 1. Ĩ = (1, 0, 0.5).
    embeddings = torch.tensor([[0.0], [1.0], [10.0]])
    influence = torch.tensor([2.0, -3.0, 1.0])  # the negative part does not count
    w01, w12 = math.exp(-1), math.exp(-81)
    expected = (w01 * 1.0 + w12 * 0.25) / (w01 + w12)
    assert roughness(influence, embeddings, neighbours=1) == pytest.approx(expected, rel=1e-12)
    # Influence that is constant over a cluster is smooth there.
    assert roughness(torch.tensor([1.0, 1.0, 0.0]), embeddings, 1) < 1e-30
    assert math.isnan(roughness(torch.tensor([-1.0, -2.0, 0.0]), embeddings, 1))


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="group_by"):
        FormationConfig(group_by="colour")
