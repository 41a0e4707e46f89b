"""The vectorised diagnosis helpers against naive per-step loops, on random buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlattr.record.records import Records
from rlattr.scoring.diagnosis import episode_ends_in_buffer, positions_in_episode, spearman


def _buffer(rng: np.random.Generator, n_envs: int, n_steps: int) -> Records:
    n = n_envs * n_steps
    starts = (rng.random(n) < 0.2).astype(np.float32)
    zeros = torch.zeros(n)
    return Records(
        observations=torch.zeros(n, 1), actions=torch.zeros(n, 1), rewards=zeros,
        episode_starts=torch.from_numpy(starts), values=zeros, log_probs=zeros,
        advantages=zeros, returns=zeros, last_values=torch.zeros(n_envs),
        last_dones=torch.from_numpy((rng.random(n_envs) < 0.3).astype(np.float32)),
        iteration=0, n_envs=n_envs, n_steps=n_steps,
    )  # fmt: skip


def _naive_ends(records: Records) -> list[bool]:
    starts = records.episode_starts.view(records.n_envs, records.n_steps).tolist()
    out = []
    for env in range(records.n_envs):
        for step in range(records.n_steps):
            later = any(starts[env][t] > 0 for t in range(step + 1, records.n_steps))
            out.append(later or float(records.last_dones[env]) == 1.0)
    return out


def _naive_positions(records: Records) -> list[int]:
    starts = records.episode_starts.view(records.n_envs, records.n_steps).tolist()
    out = []
    for env in range(records.n_envs):
        position = 0
        for step in range(records.n_steps):
            position = 0 if step == 0 or starts[env][step] > 0 else position + 1
            out.append(position)
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 1), (8, 32), (4, 50)])
def test_episode_ends_and_positions_match_the_loops(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        records = _buffer(rng, *shape)
        assert episode_ends_in_buffer(records).tolist() == _naive_ends(records)
        assert positions_in_episode(records).tolist() == _naive_positions(records)


def _naive_spearman(x: np.ndarray, y: np.ndarray) -> float:
    # Average rank by definition: the number of smaller values plus half the other ties.
    def ranks(v: np.ndarray) -> np.ndarray:
        return np.array([(v < a).sum() + ((v == a).sum() - 1) / 2 for a in v])

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def test_spearman_matches_the_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    for size in (3, 10, 257):
        for _ in range(20):
            x = rng.integers(0, 6, size).astype(np.float64)  # many ties
            x[:2] = (0.0, 1.0)  # never constant
            y = x + rng.normal(0.0, 2.0, size)
            ours = spearman(torch.from_numpy(x), torch.from_numpy(y))
            assert ours == pytest.approx(_naive_spearman(x, y), abs=1e-12)
