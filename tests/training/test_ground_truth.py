"""Per-record ground truth: AttributedPPO records the environments' ``info["rlattr_*"]`` in
the records' order, hands it to filters and stores it with each iteration, without
changing training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from rlattr import AttributedPPO, IterationContext, IterationResults, RunLog
from tests.conftest import assert_same_parameters

TRAP = "rlattr.envs:rlattr/TrapGrid-v0"
SMALL = {"n_steps": 32, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}


def _entered_trap(observations: torch.Tensor, actions: torch.Tensor, env: Any) -> list[bool]:
    """Whether each (one-hot cell, action) steps onto the trap from another cell."""
    grid = env.unwrapped
    flags = []
    for obs, action in zip(observations, actions.flatten(), strict=True):
        index = int(obs.argmax())
        cell = (index // grid.size, index % grid.size)
        flags.append(cell != grid.trap and grid._next_cell(cell, int(action)) == grid.trap)
    return flags


def test_trap_flags_are_exactly_the_records_that_step_onto_the_trap(run_dir: Path) -> None:
    seen: list[dict[str, torch.Tensor] | None] = []

    def spy(context: IterationContext) -> None:
        seen.append(None if context.ground_truth is None else dict(context.ground_truth))

    env = make_vec_env(TRAP, n_envs=2, seed=0)
    model = AttributedPPO("MlpPolicy", env, run_dir=run_dir, keep_mask_fn=spy, **SMALL)
    results = IterationResults()
    model.learn(192, callback=results)  # 3 iterations of 2 × 32 records
    log = RunLog(run_dir)
    flagged = 0
    for k in log.iterations():
        records = log.load_records(k)
        truth = log.load_ground_truth(k)
        assert set(truth) == {"rlattr_fault", "rlattr_trap_visits"}
        fault = truth["rlattr_fault"]
        assert fault.dtype == torch.bool and fault.shape == (64,)
        assert fault.tolist() == _entered_trap(records.observations, records.actions, env.envs[0])
        flagged += int(fault.sum())
        # The filter saw the same values, in the same order.
        assert seen[k] is not None and torch.equal(seen[k]["rlattr_fault"], fault)
        visits = truth["rlattr_trap_visits"]
        assert visits.dtype == torch.float64 and not bool(visits.isnan().any())
        assert "ground_truth.safetensors" in log.iteration_meta(k)["files"]
    assert flagged > 0  # a random policy enters the trap a few times per episode
    assert log.verify().ok
    assert results.last.ground_truth is not None
    assert torch.equal(results.last.ground_truth["rlattr_fault"], fault)


class _Counting(gym.Wrapper):
    """Reports ``rlattr_count`` (steps since the env was made, from 1) except on every third
    step, and a non-numeric ``rlattr_name`` (ignored)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.count = 0

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.count += 1
        info = dict(info, rlattr_name="x")
        if self.count % 3:
            info["rlattr_count"] = self.count
        return obs, reward, terminated, truncated, info


def test_numbers_are_stored_env_major_with_nan_where_missing(run_dir: Path) -> None:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0, wrapper_class=_Counting)
    AttributedPPO("MlpPolicy", env, run_dir=run_dir, **SMALL).learn(64)
    truth = RunLog(run_dir).load_ground_truth(0)
    assert set(truth) == {"rlattr_count"}  # the string is not ground truth
    count = truth["rlattr_count"].view(2, 32)  # record i = env · n_steps + step
    expected = torch.arange(1, 33, dtype=torch.float64)
    expected[expected % 3 == 0] = float("nan")
    for env_index in range(2):
        assert torch.equal(count[env_index].isnan(), expected.isnan())
        assert torch.equal(count[env_index].nan_to_num(), expected.nan_to_num())


def test_runs_without_ground_truth_store_none(run_dir: Path) -> None:
    results = IterationResults()
    AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=run_dir, **SMALL).learn(32, callback=results)
    assert len(results) == 1 and results.last.ground_truth is None
    log = RunLog(run_dir)
    assert log.load_ground_truth(0) == {}
    assert "ground_truth.safetensors" not in log.iteration_meta(0)["files"]


def test_recording_ground_truth_does_not_change_training() -> None:
    kwargs = {**SMALL, "n_steps": 64}
    results = IterationResults()
    ours = AttributedPPO("MlpPolicy", make_vec_env(TRAP, n_envs=2, seed=0), **kwargs).learn(
        256, callback=results
    )
    sb3 = PPO("MlpPolicy", make_vec_env(TRAP, n_envs=2, seed=0), **kwargs).learn(256)
    assert results.last.ground_truth is not None
    assert_same_parameters(ours.policy, sb3.policy)
