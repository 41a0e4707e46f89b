"""Targeted intervention: it takes exactly the records its rule names, the update trains on
the kept (or re-weighted) records only, weight 0 is removal and weight 1 plain PPO bit for
bit, and fractional weights replay exactly from the run directory."""

from __future__ import annotations

from dataclasses import replace as dc_replace
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env

from rlattr import (
    IIF,
    ActionTarget,
    AttributedPPO,
    FilterDecision,
    Intervention,
    IterationContext,
    IterationResults,
    ReturnTarget,
    RunLog,
)
from rlattr.errors import RunLogError
from rlattr.record import build_policy, load_iteration, replay
from rlattr.record.replay import state_matches
from rlattr.training.intervention import (
    LOG_AS,
    InterventionFilter,
    choose_records,
    intervention_from_spec,
)
from rlattr.training.ppo import _checked_weights
from tests.conftest import assert_same_parameters

TRAP = "rlattr.envs:rlattr/TrapGrid-v0"
SMALL = {"n_steps": 64, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}
# Positives, most positive first: idx 3 (2.0), 8 (1.0), 0 (0.5), 6 (0.1).
SCORES = torch.tensor([0.5, -3.0, -1.0, 2.0, -0.5, -2.0, 0.1, -4.0, 1.0, -0.25])


def _trap_target() -> ActionTarget:
    env = make_vec_env(TRAP, n_envs=1, seed=0)
    observations, actions = env.envs[0].unwrapped.trap_state_actions()
    return ActionTarget(torch.as_tensor(observations), torch.as_tensor(actions))


def _taken(rule: str = "top", budget=0.3, limit=None, seed: int = 0) -> list[int]:
    config = Intervention(target=ReturnTarget(), rule=rule, budget=budget)
    generator = torch.Generator().manual_seed(seed)
    return sorted(
        torch.nonzero(choose_records(SCORES, config, generator, limit)).flatten().tolist()
    )


def test_top_takes_the_most_positive_records_under_the_budget() -> None:
    assert _taken(budget=0.3) == [0, 3, 8]  # floor(0.3 × 10) = 3
    assert _taken(budget=2) == [3, 8]  # a count
    assert _taken(budget=0.05) == []  # floor(0.5) = 0
    assert _taken(budget=9) == [0, 3, 6, 8]  # only the 4 positive records qualify
    assert _taken(budget=None) == [0, 3, 6, 8]  # no budget: every positive record
    assert _taken(budget=9, limit=1) == [3]


def test_random_like_takes_as_many_at_random_reproducibly() -> None:
    drawn = _taken("random_like", budget=0.3)
    assert len(drawn) == 3
    assert drawn == _taken("random_like", budget=0.3)
    assert any(_taken("random_like", budget=0.3, seed=s) != drawn for s in range(1, 5))
    assert _taken("random_like", budget=9) != [] and len(_taken("random_like", budget=9)) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "pairs.npz"}, "must be a Target"),
        ({"rule": "bottom"}, "rule must be one of"),
        ({"budget": 1.5}, r"fraction must be in \[0, 1\)"),
        ({"budget": -1}, "count must be >= 0"),
        ({"budget": True}, "budget must be"),
        ({"weight": 1.5}, r"weight must be a number in \[0, 1\]"),
        ({"with_iif": "neg_bottom"}, "with_iif must be an IIF"),
        ({"min_kept": 0}, "min_kept"),
        ({"params": "critic"}, "params must be"),
    ],
)
def test_config_is_validated(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        Intervention(**{"target": ReturnTarget(), **kwargs})


def test_a_callable_target_is_accepted() -> None:
    config = Intervention(target=lambda policy, context: torch.zeros(()))
    assert config.behavior.name == "unwanted"


def test_intervention_is_exclusive_with_other_filters() -> None:
    config = Intervention(target=ReturnTarget())
    with pytest.raises(ValueError, match="with_iif"):
        AttributedPPO("MlpPolicy", "CartPole-v1", intervention=config, iif=IIF())
    with pytest.raises(ValueError, match="intervention alone"):
        AttributedPPO("MlpPolicy", "CartPole-v1", intervention=config, keep_mask_fn=lambda c: None)


def _injected(monkeypatch: pytest.MonkeyPatch, scores: torch.Tensor) -> None:
    """Make every intervention score the buffer with ``scores`` (a hand-made vector)."""
    monkeypatch.setattr(InterventionFilter, "unwanted_scores", lambda self, context: scores)


def _hand_scores(n: int) -> torch.Tensor:
    # Distinct scores, half positive, in a scrambled order.
    generator = torch.Generator().manual_seed(7)
    return torch.linspace(-1.0, 1.0, n)[torch.randperm(n, generator=generator)]


def test_the_update_drops_exactly_the_records_the_rule_names(
    monkeypatch: pytest.MonkeyPatch, run_dir: Path
) -> None:
    scores = _hand_scores(64)
    _injected(monkeypatch, scores)
    config = Intervention(target=_trap_target(), budget=0.125)
    model = AttributedPPO("MlpPolicy", TRAP, run_dir=run_dir, intervention=config, **SMALL)
    model.learn(128)
    expected = torch.argsort(scores, descending=True)[:8]  # floor(0.125 × 64) = 8
    log = RunLog(run_dir)
    policy = build_policy(log)
    for k in log.iterations():
        data = load_iteration(log, k)
        dropped = torch.nonzero(~data.plan.keep_mask).flatten()
        assert sorted(dropped.tolist()) == sorted(expected.tolist())
        assert data.plan.record_weights is None  # weight 0 is a keep mask
        stored, meta = log.load_scores(k, f"snapshot-{config.behavior.identity}")
        assert torch.equal(stored, scores.double()) and meta["during"] == "intervention"
        # Poison the dropped records: the logged update must not notice.
        for name in ("advantages", "returns", "log_probs", "values"):
            getattr(data.records, name)[dropped] = float("nan")
        data.records.observations[dropped] = 1e6
        replay(data, policy)
        assert state_matches(policy, log.load_checkpoint(k + 1)[0]) == []


def test_real_scores_drop_the_most_positive_and_replay_exactly(run_dir: Path) -> None:
    config = Intervention(target=_trap_target(), budget=6)
    AttributedPPO("MlpPolicy", TRAP, run_dir=run_dir, intervention=config, **SMALL).learn(128)
    log = RunLog(run_dir)
    policy = build_policy(log)
    for k in log.iterations():
        data = load_iteration(log, k)
        scores, _ = log.load_scores(k, f"snapshot-{config.behavior.identity}")
        dropped = ~data.plan.keep_mask
        assert 0 < int(dropped.sum()) <= 6
        assert bool((scores[dropped] > 0).all())
        if bool((~dropped).any()):
            assert float(scores[dropped].min()) >= float(scores[~dropped].max())
        replay(data, policy)
        assert state_matches(policy, log.load_checkpoint(k + 1)[0]) == []


def test_weight_zero_is_removal_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = _hand_scores(64)
    _injected(monkeypatch, scores)
    config = Intervention(target=_trap_target(), budget=10, weight=0.0)
    intervened = AttributedPPO("MlpPolicy", TRAP, intervention=config, **SMALL).learn(128)
    keep = torch.ones(64, dtype=torch.bool)
    keep[torch.argsort(scores, descending=True)[:10]] = False
    masked = AttributedPPO("MlpPolicy", TRAP, keep_mask_fn=lambda context: keep, **SMALL)
    masked.learn(128)
    assert_same_parameters(intervened.policy, masked.policy)


def test_weight_one_is_plain_ppo_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    _injected(monkeypatch, _hand_scores(64))
    config = Intervention(target=_trap_target(), budget=10, weight=1.0)
    results = IterationResults()
    intervened = AttributedPPO("MlpPolicy", TRAP, intervention=config, **SMALL)
    intervened.learn(128, callback=results)
    plain = AttributedPPO("MlpPolicy", TRAP, **SMALL).learn(128)
    assert len(results) == 2 and all(r.plan.record_weights is None for r in results)
    assert_same_parameters(intervened.policy, plain.policy)


def test_fractional_weights_replay_exactly_and_change_the_update(
    monkeypatch: pytest.MonkeyPatch, run_dir: Path
) -> None:
    scores = _hand_scores(64)
    _injected(monkeypatch, scores)
    config = Intervention(target=_trap_target(), budget=10, weight=0.25)
    AttributedPPO("MlpPolicy", TRAP, run_dir=run_dir, intervention=config, **SMALL).learn(128)
    log = RunLog(run_dir)
    policy = build_policy(log)
    top = torch.argsort(scores, descending=True)[:10]
    for k in log.iterations():
        data = load_iteration(log, k)
        weights = data.plan.record_weights
        assert weights is not None and weights.dtype == torch.float32
        expected = torch.ones(64)
        expected[top] = 0.25
        assert torch.equal(weights, expected)
        assert bool(data.plan.keep_mask.all())  # down-weighted records stay in the update
        after, _ = log.load_checkpoint(k + 1)
        replay(data, policy)
        assert state_matches(policy, after) == []
        # Weights of 1 given to replay compose with the logged ones: still exact.
        replay(data, policy, record_weights=torch.ones(64, dtype=torch.float64))
        assert state_matches(policy, after) == []
        # Without the logged weights the update is PPO's, which differs.
        replay(dc_replace(data, plan=dc_replace(data.plan, record_weights=None)), policy)
        assert state_matches(policy, after) != []


def test_with_iif_drops_the_union(run_dir: Path) -> None:
    iif = IIF(rule="bottom", fraction=0.125)
    config = Intervention(target=_trap_target(), budget=4, with_iif=iif)
    AttributedPPO("MlpPolicy", TRAP, run_dir=run_dir, intervention=config, **SMALL).learn(128)
    log = RunLog(run_dir)
    assert log.meta["config"]["intervention"]["with_iif"]["rule"] == "bottom"
    only_one_side = 0
    for k in log.iterations():
        plan = log.load_plan(k)
        unwanted = log.load_scores(k, f"snapshot-{config.behavior.identity}")[0].tolist()
        returns = log.load_scores(k, "snapshot-return")[0].tolist()
        records = range(len(returns))
        # The rules' definitions, from the logged scores: IIF's bottom 12.5 % drops the 8 of
        # 64 records lowest on the return target; the intervention's top rule with budget 4
        # takes the 4 highest strictly positive scores on the unwanted behaviour (ties by
        # record index; 55 records are left to keep, so min_kept never binds).
        iif_dropped = set(sorted(records, key=lambda i: (returns[i], i))[:8])
        positive = [i for i in records if unwanted[i] > 0]
        taken = set(sorted(positive, key=lambda i: (-unwanted[i], i))[:4])
        assert set(torch.nonzero(~plan.keep_mask).flatten().tolist()) == iif_dropped | taken
        only_one_side += bool(taken - iif_dropped) and bool(iif_dropped - taken)
    # Records dropped by one rule only: an intersection (or either rule alone) would fail.
    assert only_one_side > 0


def test_scalars_report_behaviour_drops_and_planted_overlap(run_dir: Path) -> None:
    # One iteration trained to get a policy and a buffer; then the filter is asked directly.
    target = _trap_target()
    results = IterationResults()
    model = AttributedPPO("MlpPolicy", TRAP, **SMALL).learn(64, callback=results)
    records = results.last.records
    assert results.last.ground_truth is not None
    scores = _hand_scores(64)
    planted = torch.zeros(64, dtype=torch.bool)
    top = torch.argsort(scores, descending=True)[:8]
    planted[top[:6]] = True  # 6 of the 8 taken records are planted faults
    filter_ = InterventionFilter(Intervention(target=target, budget=8, weight=0.5))
    filter_.unwanted_scores = lambda context: scores  # type: ignore[method-assign]
    context = IterationContext(
        iteration=3,
        records=records,
        policy=model.policy,
        loss_config=model.loss_config(),
        gamma=model.gamma,
        gae_lambda=model.gae_lambda,
        generator=torch.Generator().manual_seed(0),
        ground_truth={"rlattr_fault": planted},
    )
    decision = filter_(context)
    assert isinstance(decision, FilterDecision) and decision.keep_mask is None
    assert decision.weights is not None
    assert sorted(torch.nonzero(decision.weights == 0.5).flatten().tolist()) == sorted(top.tolist())
    assert int((decision.weights == 1).sum()) == 56
    with torch.no_grad():
        value = float(target.value(model.policy, context.target_context()))
    assert decision.scalars["intervention/behavior_value"] == value
    assert decision.scalars["intervention/dropped"] == 8
    assert decision.scalars["intervention/dropped_planted_overlap"] == 0.75
    (stored,) = decision.scores.values()
    assert stored.log_as == LOG_AS
    without_truth = filter_(dc_replace(context, ground_truth=None))
    assert "intervention/dropped_planted_overlap" not in without_truth.scalars


def test_a_weighted_minibatch_with_too_little_weight_is_refused() -> None:
    model = AttributedPPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=8, device="cpu")
    weights = torch.full((4,), 0.2)
    batches = [torch.tensor([0, 1]), torch.tensor([2])]
    with pytest.raises(ValueError, match=r"summing to 0\.4 <= 1"):
        _checked_weights(batches, weights, model.loss_config())
    assert _checked_weights([torch.tensor([2])], weights, model.loss_config())


def test_intervention_from_a_command_line_spec(tmp_path: Path) -> None:
    env = make_vec_env(TRAP, n_envs=1, seed=0)
    observations, actions = env.envs[0].unwrapped.trap_state_actions()
    path = tmp_path / "trap.npz"
    np.savez(path, observations=observations, actions=actions)
    config = intervention_from_spec(
        f"action:{path}", 0.05, env.observation_space, env.action_space, weight=0.5
    )
    assert isinstance(config.target, ActionTarget) and config.budget == 0.05
    assert config.weight == 0.5
    assert config.behavior.identity == _trap_target().identity
    assert isinstance(intervention_from_spec("return:mc").target, ReturnTarget)
    with pytest.raises(ValueError, match="unknown intervention target"):
        intervention_from_spec("behaviour")
    with pytest.raises(ValueError, match="does not exist"):
        intervention_from_spec(f"action:{tmp_path / 'missing.npz'}")
    np.savez(tmp_path / "half.npz", observations=observations)
    with pytest.raises(ValueError, match="lacks"):
        intervention_from_spec(f"action:{tmp_path / 'half.npz'}")
    with pytest.raises(ValueError, match="observations have shape"):
        intervention_from_spec(
            f"action:{path}", 0.05, make_vec_env("CartPole-v1").observation_space,
            env.action_space,
        )  # fmt: skip


def test_resume_needs_the_same_intervention(run_dir: Path) -> None:
    config = Intervention(target=_trap_target(), budget=4)
    AttributedPPO("MlpPolicy", TRAP, run_dir=run_dir, intervention=config, **SMALL).learn(64)
    for changed in (None, dc_replace(config, budget=5)):
        with pytest.raises(RunLogError, match="resume it with the same Intervention"):
            AttributedPPO(
                "MlpPolicy", TRAP, run_dir=run_dir, resume=True, intervention=changed, **SMALL
            )
    resumed = AttributedPPO(
        "MlpPolicy", TRAP, run_dir=run_dir, resume=True, intervention=config, **SMALL
    )
    resumed.learn(64, reset_num_timesteps=False)
    assert RunLog(run_dir).iterations() == [0, 1]


def test_save_and_load_keep_the_intervention(tmp_path: Path) -> None:
    config = Intervention(target=_trap_target(), budget=4, rule="random_like")
    model = AttributedPPO("MlpPolicy", TRAP, intervention=config, **SMALL).learn(64)
    model.save(tmp_path / "model.zip")
    loaded = AttributedPPO.load(tmp_path / "model.zip", env=model.get_env())
    assert isinstance(loaded.keep_mask_fn, InterventionFilter)
    assert loaded.intervention.budget == 4
    # The random_like generator continues where it was.
    assert torch.equal(loaded._filter_generator.get_state(), model._filter_generator.get_state())
    results = IterationResults()
    loaded.learn(64, callback=results)
    assert results.last.keep_mask is not None and int((~results.last.keep_mask).sum()) == 4
