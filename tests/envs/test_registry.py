"""Every planted-fault environment is registered and passes Gymnasium's own checker."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import rlattr.envs  # noqa: F401  (registers the ids)
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env

FAULT_ENV_IDS = (
    "rlattr/CartPoleCorruptRewards-v0",
    "rlattr/CartPoleCorruptRegion-v0",
    "rlattr/TrapGrid-v0",
    "rlattr/TrapGridNear-v0",
    "rlattr/DelayedCredit-v0",
)


@pytest.mark.parametrize("env_id", FAULT_ENV_IDS)
def test_check_env_passes(env_id: str) -> None:
    env = gym.make(env_id)
    # CartPole renders through pygame (an optional extra); our envs' renderers are checked.
    skip_render = "CartPole" in env_id
    with warnings.catch_warnings():
        # check_env warns that gym.make wrapped the env (we check the wrapper on purpose)
        # and about CartPole's unbounded Box; neither is a failure.
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=skip_render)
    env.close()


@pytest.mark.parametrize("env_id", FAULT_ENV_IDS)
def test_every_step_carries_the_fault_flag(env_id: str) -> None:
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(30):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert isinstance(info["rlattr_fault"], bool)
        if terminated or truncated:
            env.reset()
    env.close()


@pytest.mark.parametrize("env_id", FAULT_ENV_IDS)
def test_sb3_make_vec_env_builds_it(env_id: str) -> None:
    # make_vec_env (what every rlattr preset uses) passes render_mode="rgb_array".
    venv = make_vec_env(f"rlattr.envs:{env_id}", n_envs=2, seed=0)
    venv.reset()
    _, _, _, infos = venv.step(np.array([venv.action_space.sample() for _ in range(2)]))
    assert all("rlattr_fault" in info for info in infos)
    venv.close()


def test_the_module_prefix_form_makes_the_env() -> None:
    env = gym.make("rlattr.envs:rlattr/TrapGrid-v0")
    assert env.spec is not None and env.spec.max_episode_steps == 50
    env.close()
