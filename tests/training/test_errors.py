"""Unsupported input fails early with a message that names the problem and the way out."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr import AttributedPPO, UnsupportedError


class RecurrentActorCriticPolicy(ActorCriticPolicy):
    """Stands in for sb3_contrib's recurrent policy (same name, same base class)."""


def test_recurrent_policy_name() -> None:
    with pytest.raises(UnsupportedError, match="recurrent policies are not supported"):
        AttributedPPO("MlpLstmPolicy", "CartPole-v1")


def test_recurrent_policy_class() -> None:
    with pytest.raises(UnsupportedError, match="is recurrent"):
        AttributedPPO(RecurrentActorCriticPolicy, "CartPole-v1", device="cpu")


def test_dict_observations_need_a_wrapper() -> None:
    env = make_vec_env("rlattr.envs:rlattr/ToyDictObs-v0", n_envs=1)
    with pytest.raises(
        UnsupportedError, match=r"Dict observation spaces are not supported.*Flatten"
    ):
        AttributedPPO("MlpPolicy", env)


def test_multi_input_policy() -> None:
    with pytest.raises(UnsupportedError, match="Dict observations"):
        AttributedPPO("MultiInputPolicy", "CartPole-v1")


class _TupleActionEnv(gym.Env):
    observation_space = spaces.Box(-1, 1, (2,), np.float32)
    action_space = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(2)))


def test_unsupported_action_space() -> None:
    with pytest.raises(UnsupportedError, match=r"action space .* is not supported"):
        AttributedPPO("MlpPolicy", _TupleActionEnv())


def test_gsde_is_refused() -> None:
    with pytest.raises(UnsupportedError, match="use_sde"):
        AttributedPPO("MlpPolicy", "Pendulum-v1", use_sde=True)


def test_foreign_rollout_buffer_is_refused() -> None:
    from stable_baselines3.common.buffers import RolloutBuffer

    with pytest.raises(UnsupportedError, match="RecordingRolloutBuffer"):
        AttributedPPO("MlpPolicy", "CartPole-v1", rollout_buffer_class=RolloutBuffer)


def test_unstorable_policy_kwargs(tmp_path) -> None:
    with pytest.raises(UnsupportedError, match="policy_kwargs cannot be stored"):
        AttributedPPO(
            "MlpPolicy",
            "CartPole-v1",
            run_dir=tmp_path / "run",
            policy_kwargs={"activation_fn": lambda: torch.nn.ReLU()},
            device="cpu",
        )
