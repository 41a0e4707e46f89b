"""Ground-truth helpers: rank correlation, subsets, reshuffled plans."""

from __future__ import annotations

import numpy as np
import torch

from rlattr.analysis.groundtruth import pearson, random_subsets, rank, reshuffled_plan, spearman
from tests.scoring.test_influence import _linear_problem


def test_rank_averages_ties() -> None:
    assert rank(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]


def test_spearman_against_definition() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    y[:10] = x[:10]
    ranks_x = np.argsort(np.argsort(x)).astype(float)
    ranks_y = np.argsort(np.argsort(y)).astype(float)
    assert abs(spearman(x, y) - np.corrcoef(ranks_x, ranks_y)[0, 1]) < 1e-12
    assert abs(spearman(x, 2 * x + 1) - 1.0) < 1e-12
    assert np.isnan(pearson(np.ones(5), x[:5]))


def test_random_subsets_respect_eligibility() -> None:
    eligible = torch.zeros(100, dtype=torch.bool)
    eligible[::2] = True
    subsets = random_subsets(100, 5, 0.1, seed=0, eligible=eligible)
    for mask in subsets:
        assert int(mask.sum()) == 5
        assert not bool((mask & ~eligible).any())
    assert not torch.equal(subsets[0], subsets[1])


def test_reshuffled_plan_keeps_the_update_shape() -> None:
    _, data, _ = _linear_problem("sgd")
    plan = data.plan
    other = reshuffled_plan(plan, torch.Generator().manual_seed(5))
    assert torch.equal(other.minibatch_sizes, plan.minibatch_sizes)
    assert torch.equal(other.step_epochs, plan.step_epochs)
    assert not torch.equal(other.minibatch_indices, plan.minibatch_indices)
    for epoch in range(plan.n_epochs):
        in_epoch = other.step_epochs.repeat_interleave(other.minibatch_sizes) == epoch
        assert sorted(other.minibatch_indices[in_epoch].tolist()) == list(range(len(data.records)))
