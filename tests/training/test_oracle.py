"""The ground-truth filter drops exactly the flagged records, and its runs replay exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from rlattr.envs.faults import CorruptRewards
from stable_baselines3.common.env_util import make_vec_env

from rlattr import AttributedPPO, IterationContext, RunLog
from rlattr.record import build_policy, load_iteration, replay
from rlattr.record.replay import state_matches
from rlattr.training.oracle import GroundTruthDrop, GroundTruthFilter, flagged

SMALL = {"n_steps": 64, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}


def _corrupt_cartpole(fraction: float = 0.2) -> object:
    return make_vec_env(
        "CartPole-v1",
        n_envs=2,
        seed=0,
        wrapper_class=lambda env: CorruptRewards(env, fraction=fraction, mode="sign_flip"),
    )


def test_drops_exactly_the_flagged_records_and_replays_exactly(run_dir: Path) -> None:
    seen: list[IterationContext] = []

    class Spy(GroundTruthFilter):
        def __call__(self, context: IterationContext):  # type: ignore[no-untyped-def]
            seen.append(context)
            return super().__call__(context)

    model = AttributedPPO(
        "MlpPolicy", _corrupt_cartpole(), run_dir=run_dir, keep_mask_fn=Spy(), **SMALL
    )
    model.learn(3 * 128)
    log = RunLog(run_dir)
    policy = build_policy(log)
    assert len(seen) == 3
    total_dropped = 0
    for k in log.iterations():
        data = load_iteration(log, k)
        fault = log.load_ground_truth(k)["rlattr_fault"]
        # CartPole pays +1 every step: a flipped step's reward is -1, so the stored rewards
        # tell the flagged records apart independently of the flags themselves.
        assert torch.equal(fault, data.records.rewards.flatten() < 0)
        assert torch.equal(data.plan.keep_mask, ~fault)
        total_dropped += int(fault.sum())
        # Poison the dropped records: the logged update must not read them.
        for name in ("advantages", "returns", "log_probs", "values"):
            getattr(data.records, name)[fault] = float("nan")
        data.records.observations[fault] = 1e6
        replay(data, policy)
        assert state_matches(policy, log.load_checkpoint(k + 1)[0]) == []
    assert total_dropped > 0  # 20 % of 384 steps are flipped


def _context(values: dict[str, torch.Tensor] | None, n: int) -> IterationContext:
    model = AttributedPPO("MlpPolicy", "CartPole-v1", n_steps=n, batch_size=n, **{
        k: v for k, v in SMALL.items() if k not in ("n_steps", "batch_size")
    })  # fmt: skip
    records = type("R", (), {"__len__": lambda self: n, "device": torch.device("cpu")})()
    return IterationContext(
        iteration=0,
        records=records,  # type: ignore[arg-type]
        policy=model.policy,
        loss_config=model.loss_config(),
        gamma=0.99,
        gae_lambda=0.95,
        ground_truth=values,
    )


def test_numeric_keys_min_kept_and_scalars() -> None:
    values = torch.tensor([0.0, 2.0, math.nan, -1.0, 0.0], dtype=torch.float64)
    assert flagged(values).tolist() == [False, True, False, True, False]
    decision = GroundTruthFilter(GroundTruthDrop(key="rlattr_credit"))(
        _context({"rlattr_credit": values}, 5)
    )
    assert decision.keep_mask is not None
    assert decision.keep_mask.tolist() == [True, False, True, False, True]
    assert decision.scalars["oracle/count_dropped"] == 2.0
    assert decision.scalars["oracle/fraction_dropped"] == pytest.approx(0.4)
    # Everything flagged: min_kept keeps the last flagged records.
    everything = torch.ones(4, dtype=torch.bool)
    decision = GroundTruthFilter(GroundTruthDrop(min_kept=2))(
        _context({"rlattr_fault": everything}, 4)
    )
    assert decision.keep_mask is not None
    assert decision.keep_mask.tolist() == [False, False, True, True]


def test_a_missing_key_and_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="reported no 'rlattr_fault'"):
        GroundTruthFilter()(_context(None, 4))
    with pytest.raises(ValueError, match="reported: rlattr_other"):
        GroundTruthFilter()(_context({"rlattr_other": torch.ones(4, dtype=torch.bool)}, 4))
    with pytest.raises(ValueError, match="starting with"):
        GroundTruthDrop(key="fault")
    with pytest.raises(ValueError, match="min_kept"):
        GroundTruthDrop(min_kept=0)
    with pytest.raises(ValueError, match="minibatching"):
        GroundTruthDrop(minibatching="shuffled")  # type: ignore[arg-type]
