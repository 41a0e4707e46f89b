"""RecordRun: a plain SB3 PPO run recorded by a callback replays bit for bit, and scores
the same as an AttributedPPO run with the same seed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from rlattr import (
    AttributedPPO,
    RecordRun,
    Retention,
    ReturnTarget,
    RunLog,
    attribute,
    replay_iteration,
)
from rlattr.cli.main import main
from rlattr.errors import RunLogError, UnsupportedError
from rlattr.extractors import SmallImageCNN
from rlattr.record.replay import state_matches
from tests.helpers import _minigrid

SMALL = {"n_steps": 64, "batch_size": 16, "n_epochs": 3, "device": "cpu"}

CASES: dict[str, dict[str, Any]] = {
    "discrete_cartpole": {"env": "CartPole-v1"},
    "box_log_std_pendulum": {"env": "Pendulum-v1", "kwargs": {"max_grad_norm": math.inf}},
    "cnn_minigrid": {
        "env": "minigrid",
        "policy": "CnnPolicy",
        "kwargs": {"policy_kwargs": {"features_extractor_class": SmallImageCNN}},
    },
    "schedules_target_kl_two_envs": {
        "env": "CartPole-v1",
        "n_envs": 2,
        "kwargs": {
            "learning_rate": lambda p: 1e-2 * p,
            "clip_range": lambda p: 0.1 + 0.1 * p,
            "target_kl": 1e-3,
            "max_grad_norm": 0.1,
        },
    },
}


def _env(case: dict[str, Any], seed: int) -> Any:
    n_envs = case.get("n_envs", 1)
    if case["env"] == "minigrid":
        return _minigrid(n_envs, seed)
    return make_vec_env(case["env"], n_envs=n_envs, seed=seed)


def _train(case: dict[str, Any], cls: type, seed: int, **extra: Any) -> Any:
    kwargs = {**SMALL, **case.get("kwargs", {}), "seed": seed}
    return cls(case.get("policy", "MlpPolicy"), _env(case, seed), **kwargs, **extra)


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_sb3_run_replays_exactly_and_scores_like_attributed_ppo(
    name: str, tmp_path: Path
) -> None:
    case = CASES[name]
    timesteps = 3 * SMALL["n_steps"] * case.get("n_envs", 1)
    model = _train(case, PPO, seed=3)
    model.learn(timesteps, callback=RecordRun(tmp_path / "sb3"))
    log = RunLog(tmp_path / "sb3")
    assert log.iterations() == [0, 1, 2] and log.verify().ok
    for k in log.iterations():
        assert state_matches(replay_iteration(log, k), log.load_checkpoint(k + 1)[0]) == [], k
    assert state_matches(model.policy, log.load_checkpoint(3)[0]) == []

    attributed = _train(case, AttributedPPO, seed=3, run_dir=tmp_path / "rlattr")
    attributed.learn(timesteps)
    reference = RunLog(tmp_path / "rlattr")
    for k in log.iterations():
        plan, expected = log.load_plan(k), reference.load_plan(k)
        for field in expected.tensor_names():
            assert torch.equal(getattr(plan, field), getattr(expected, field)), (k, field)
        assert plan.early_stopped == expected.early_stopped
        scores = attribute(log, k, ReturnTarget(), "snapshot", store=False)
        assert torch.equal(scores, attribute(reference, k, ReturnTarget(), store=False)), k
    if name.startswith("schedules"):
        assert any(log.load_plan(k).early_stopped for k in log.iterations())


def test_recorded_run_has_tensorboard_and_inspect_describes_it(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    PPO("MlpPolicy", "CartPole-v1", seed=0, **SMALL).learn(128, callback=RecordRun(run_dir))
    assert list((run_dir / "tb").rglob("events.out.tfevents.*"))
    assert main(["inspect", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "CartPole-v1" in out and "PPO: 64 steps" in out and "preset" not in out


def test_a_second_learn_continues_the_run(tmp_path: Path) -> None:
    model = PPO("MlpPolicy", "CartPole-v1", seed=0, **SMALL)
    callback = RecordRun(tmp_path / "run")
    model.learn(128, callback=callback)
    model.learn(64, callback=callback, reset_num_timesteps=False)
    log = RunLog(tmp_path / "run")
    assert log.iterations() == [0, 1, 2]
    assert state_matches(replay_iteration(log, 2), log.load_checkpoint(3)[0]) == []


def test_unsupported_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="records itself"):
        AttributedPPO("MlpPolicy", "CartPole-v1", **SMALL).learn(
            64, callback=RecordRun(tmp_path / "a")
        )
    PPO("MlpPolicy", "CartPole-v1", **SMALL).learn(64, callback=RecordRun(tmp_path / "c"))
    with pytest.raises(RunLogError, match="already holds a run"):
        PPO("MlpPolicy", "CartPole-v1", **SMALL).learn(64, callback=RecordRun(tmp_path / "c"))
    with pytest.raises(UnsupportedError, match="use_sde"):
        PPO("MlpPolicy", "Pendulum-v1", use_sde=True, **SMALL).learn(
            64, callback=RecordRun(tmp_path / "b")
        )


def test_retention_applies_to_recorded_runs(tmp_path: Path) -> None:
    callback = RecordRun(tmp_path / "run", retention=Retention(record_every=2))
    PPO("MlpPolicy", "CartPole-v1", seed=1, **SMALL).learn(4 * 64, callback=callback)
    log = RunLog(tmp_path / "run")
    assert log.iterations() == [0, 2] and log.verify().ok
    for k in log.iterations():
        assert state_matches(replay_iteration(log, k), log.load_checkpoint(k + 1)[0]) == []
