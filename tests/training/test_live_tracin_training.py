"""Live TracIn inside AttributedPPO's real update: it perturbs nothing, and what it stores
equals replay TracIn of the iteration it describes (float32 training, stated tolerance)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env

from rlattr import IIF, AttributedPPO, RunLog, ScoreHook
from rlattr.scoring.influence import tracin_scores
from rlattr.scoring.live_tracin import LiveTracIn
from rlattr.scoring.targets import ActionTarget, ReturnTarget, TargetContext
from rlattr.training import IterationResults
from tests.conftest import assert_same_parameters

# Float32 training: the live products contract gradients of the minibatch's mean loss,
# replay's those of the per-record losses; they round differently (measured ≤ 1.3e-7 of
# the largest score in tests/scoring/test_live_tracin.py).
FP32_RTOL = 2e-6


def _model(hooks: list[Any], **kwargs: Any) -> AttributedPPO:
    env = make_vec_env("Pendulum-v1", 2, seed=0)
    return AttributedPPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=24,
        n_epochs=3,
        seed=0,
        device="cpu",
        record_hooks=hooks,
        **kwargs,
    )


def _replayed(model: AttributedPPO, every: int) -> torch.Tensor:
    data = model.iteration_data(model.iteration - 1)
    context = TargetContext(data.records, model.gamma, model.gae_lambda)
    policy = model.workspace_policy()
    return tracin_scores(data, policy, ReturnTarget(), context, target_every=every)


def _assert_close(live: torch.Tensor, replayed: torch.Tensor) -> None:
    scale = float(replayed.abs().max())
    assert scale > 0
    assert float((live - replayed).abs().max()) <= FP32_RTOL * scale


def test_training_with_live_tracin_is_bit_identical_and_stores_replay_tracin(
    run_dir: Path,
) -> None:
    iif = IIF(rule="bottom", fraction=0.25)
    hook = ScoreHook(snapshot=False, live_tracin=LiveTracIn(refresh="epoch"))
    with_live = _model([hook], iif=iif, run_dir=run_dir)
    results = IterationResults()
    with_live.learn(128, callback=results)
    without = _model([], iif=IIF(rule="bottom", fraction=0.25))
    without.learn(128)
    assert_same_parameters(with_live.policy, without.policy)
    for a, b in zip(
        with_live.policy.optimizer.state.values(),
        without.policy.optimizer.state.values(),
        strict=True,
    ):
        assert all(torch.equal(a[key], b[key]) for key in a)

    plan = results.last.plan
    assert not bool(plan.keep_mask.all())
    steps_per_epoch = int((plan.step_epochs == 0).sum())
    assert hook.last_live_scores is not None
    _assert_close(hook.last_live_scores, _replayed(with_live, steps_per_epoch))

    log = RunLog(run_dir)
    k = with_live.iteration - 1
    stored, meta = log.load_scores(k, "tracin-live-epoch-return")
    assert torch.equal(stored, hook.last_live_scores.cpu())
    assert meta["method"] == "tracin-live" and meta["refresh"] == "epoch"
    # IIF's own scores (taken before the update) are stored beside the live ones.
    assert len(log.score_names(k)) >= 2, log.score_names(k)


def test_an_update_stopped_by_target_kl_is_scored_as_it_ran() -> None:
    hook = ScoreHook(snapshot=False, live_tracin=LiveTracIn(refresh=1))
    model = _model([hook], target_kl=1e-5, learning_rate=3e-3)
    results = IterationResults()
    model.learn(128, callback=results)
    assert results.last.plan.early_stopped
    assert hook.last_live_scores is not None
    _assert_close(hook.last_live_scores, _replayed(model, 1))


def test_snapshot_and_live_scores_are_stored_side_by_side() -> None:
    hook = ScoreHook(live_tracin=LiveTracIn(refresh=2))
    model = _model([hook])
    model.learn(64)
    assert hook.last_scores is not None and hook.last_live_scores is not None
    # Both describe the same records from different sides of the update; they correlate
    # but are not the same numbers.
    assert not torch.allclose(hook.last_scores.double(), hook.last_live_scores)
    _assert_close(hook.last_live_scores, _replayed(model, 2))


def test_live_tracin_takes_the_hooks_target_unless_it_names_its_own() -> None:
    records_model = _model([])
    results = IterationResults()
    records_model.learn(64, callback=results)
    records = results.last.records
    action = ActionTarget(records.observations[:8], records.actions[:8])
    inherits = ScoreHook(target=action, snapshot=False, live_tracin=LiveTracIn(refresh=2))
    own = ScoreHook(
        target=action, snapshot=False, live_tracin=LiveTracIn(refresh=2, target=ReturnTarget())
    )
    model = _model([inherits, own])
    model.learn(64)
    assert inherits.last_live_scores is not None and own.last_live_scores is not None
    data = model.iteration_data(0)
    context = TargetContext(data.records, model.gamma, model.gae_lambda)
    replayed = tracin_scores(data, model.workspace_policy(), action, context, target_every=2)
    _assert_close(inherits.last_live_scores, replayed)
    _assert_close(own.last_live_scores, _replayed(model, 2))


def test_a_bad_live_tracin_argument_is_refused() -> None:
    with pytest.raises(TypeError, match="LiveTracIn"):
        ScoreHook(live_tracin="epoch")  # type: ignore[arg-type]
