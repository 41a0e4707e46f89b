"""Unsupported input fails early with a message that names the problem and the way out."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from rlattr import AttributedPPO, UnsupportedError


class LstmFeatures(BaseFeaturesExtractor):
    """An LSTM over the sequence of calls: each call's output depends on every earlier
    observation through a hidden state carried from call to call (as a recurrent policy's
    does across the steps of a rollout). Records are then not independent given θ."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 16):
        super().__init__(observation_space, features_dim)
        self.lstm = torch.nn.LSTM(int(np.prod(observation_space.shape)), features_dim)
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        batch = observations.flatten(1).unsqueeze(0)  # one time step, a batch of envs
        if self.state is None or self.state[0].shape[1] != batch.shape[1]:
            self.state = (batch.new_zeros(1, batch.shape[1], self.features_dim),) * 2
        output, state = self.lstm(batch, self.state)
        self.state = (state[0].detach(), state[1].detach())
        return output.squeeze(0)


class LstmPolicy(ActorCriticPolicy):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs, features_extractor_class=LstmFeatures)


class RecurrentActorCriticPolicy(LstmPolicy):
    """Named as sb3_contrib's recurrent policy (sb3_contrib is not a dependency)."""


def _assert_carries_state(policy_class: type) -> None:
    """The stand-in really is recurrent: the same observation twice, two different values."""
    env = gym.make("CartPole-v1")
    policy = policy_class(env.observation_space, env.action_space, lambda _: 1e-3)
    observation = torch.as_tensor(env.reset(seed=0)[0]).unsqueeze(0)
    with torch.no_grad():
        first, second = policy.predict_values(observation), policy.predict_values(observation)
    assert not torch.equal(first, second)


def test_recurrent_policy_name() -> None:
    with pytest.raises(UnsupportedError, match="recurrent policies are not supported"):
        AttributedPPO("MlpLstmPolicy", "CartPole-v1")


def test_recurrent_policy_class(tmp_path) -> None:
    _assert_carries_state(RecurrentActorCriticPolicy)
    with pytest.raises(UnsupportedError, match="is recurrent"):
        AttributedPPO(
            RecurrentActorCriticPolicy, "CartPole-v1", device="cpu", run_dir=tmp_path / "run"
        )
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_a_policy_that_carries_state_is_refused_whatever_its_name(tmp_path) -> None:
    _assert_carries_state(LstmPolicy)
    try:
        model = AttributedPPO(
            LstmPolicy, "CartPole-v1", device="cpu", n_steps=32, batch_size=16, n_epochs=1
        )
        model.learn(32)
    except UnsupportedError as error:
        assert "recurrent" in str(error) or "state" in str(error)
    else:
        raise AssertionError("a policy whose outputs depend on earlier calls was accepted")


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
