"""Per-record loss weights in the update plan: stored when an update trained with them,
absent (and still loadable) otherwise; replay uses them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlattr import AttributedPPO, FilterDecision, RunLog
from rlattr.record import build_policy, load_iteration, replay
from rlattr.record.plan import UpdatePlan
from rlattr.record.replay import state_matches

SMALL = {"n_steps": 32, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}


def _weight_vector(n: int) -> torch.Tensor:
    weights = torch.ones(n)
    weights[::4] = 0.5
    weights[1::8] = 0.0
    return weights


def _weights(context) -> FilterDecision:
    return FilterDecision(keep_mask=None, weights=_weight_vector(len(context.records)))


def test_plan_stores_weights_only_when_an_update_used_them(run_dir: Path) -> None:
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, keep_mask_fn=_weights, **SMALL
    ).learn(64)
    log = RunLog(run_dir)
    plan = log.load_plan(0)
    assert plan.record_weights is not None
    expected = _weight_vector(32)
    assert torch.equal(plan.record_weights, expected)
    assert torch.equal(plan.keep_mask, expected > 0)  # weight 0 leaves the minibatches
    assert not set(plan.minibatch_indices.tolist()) & set(range(1, 32, 8))
    # A plan without weights (as every plan written before them) round-trips as None.
    tensors = replace(plan, record_weights=None).tensor_dict()
    assert "record_weights" not in tensors
    meta = log.iteration_meta(0)["plan"]
    assert UpdatePlan.from_stored(meta, tensors).record_weights is None
    assert torch.equal(UpdatePlan.from_stored(meta, plan.tensor_dict()).record_weights, expected)


def test_replay_composes_given_weights_with_the_logged_ones(run_dir: Path) -> None:
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, keep_mask_fn=_weights, **SMALL
    ).learn(64)
    log = RunLog(run_dir)
    data = load_iteration(log, 0)
    policy = build_policy(log)
    after, _ = log.load_checkpoint(1)
    replay(data, policy)
    assert state_matches(policy, after) == []
    halved = torch.ones(32, dtype=torch.float64)
    halved[5] = 0.5
    replay(data, policy, record_weights=halved)
    assert state_matches(policy, after) != []
    with pytest.raises(ValueError, match="use 'weights'"):
        replay(data, policy, record_weights=halved, weight_normalization="count")


def test_bad_weights_are_refused() -> None:
    for weights, message in (
        (torch.full((32,), 1.5), r"must lie in \[0, 1\]"),
        (torch.full((32,), float("nan")), r"must lie in \[0, 1\]"),
        (torch.ones(31), "shape"),
        (torch.ones(32, dtype=torch.int64), "float tensor"),
    ):
        model = AttributedPPO(
            "MlpPolicy",
            "CartPole-v1",
            keep_mask_fn=lambda context, w=weights: FilterDecision(None, weights=w),
            **SMALL,
        )
        with pytest.raises(ValueError, match=message):
            model.learn(32)


@pytest.mark.parametrize("method", ["tracin", "metagrad"])
def test_scorers_that_assume_unit_weights_refuse_a_weighted_update(run_dir: Path, method) -> None:
    # Their arithmetic would describe an update with every weight 1, which did not happen.
    from rlattr import ReturnTarget, attribute
    from rlattr.errors import UnsupportedError

    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, keep_mask_fn=_weights, **SMALL
    ).learn(32)
    with pytest.raises(UnsupportedError, match="down-weighted records"):
        attribute(run_dir, 0, ReturnTarget(), method=method, store=False)
    assert attribute(run_dir, 0, ReturnTarget(), method="snapshot", store=False).shape == (32,)
