"""Builders shared by the attribution tests: small policies with filled rollout buffers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import stable_baselines3.common.policies as sb3_policies
import torch
from gymnasium import spaces
from minigrid.wrappers import ImgObsWrapper
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from rlattr import AttributedPPO
from rlattr.extractors import SmallImageCNN
from rlattr.record import Records
from rlattr.training import IterationResults


@contextlib.contextmanager
def fp64_observations() -> Iterator[None]:
    """SB3 casts observations to float32 before the network; for fp64 checks, cast to fp64.

    Test-only: it patches the name ``policies.preprocess_obs`` for the duration.
    """
    original = sb3_policies.preprocess_obs

    def preprocess(obs, space, normalize_images=True):
        return original(obs, space, normalize_images=normalize_images).double()

    sb3_policies.preprocess_obs = preprocess
    try:
        yield
    finally:
        sb3_policies.preprocess_obs = original


class LinearFeatures(BaseFeaturesExtractor):
    """A features extractor with parameters (SB3's default Flatten has none), so that a
    policy with ``share_features_extractor=False`` has two distinct ones to train."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 8):
        super().__init__(observation_space, features_dim)
        self.linear = torch.nn.Linear(int(observation_space.shape[0]), features_dim)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(observations))


def _minigrid(n_envs: int, seed: int) -> Any:
    import minigrid  # noqa: F401

    return make_vec_env(
        "MiniGrid-Empty-5x5-v0", n_envs=n_envs, seed=seed, wrapper_class=ImgObsWrapper
    )


MODEL_CASES: dict[str, dict[str, Any]] = {
    "cartpole": {"env": "CartPole-v1"},
    "pendulum_log_std": {"env": "Pendulum-v1"},
    "hopper_log_std": {
        "env": "Hopper-v5",
        "policy_kwargs": {"net_arch": {"pi": [32, 32], "vf": [32, 32]}, "log_std_init": -1.0},
    },
    "multidiscrete": {"env": "rlattr.envs:rlattr/ToyMultiDiscrete-v0"},
    "bernoulli": {"env": "rlattr.envs:rlattr/ToyMultiBinary-v0"},
    "n_envs_2": {"env": "CartPole-v1", "n_envs": 2},
    "separate_extractors_mlp": {
        "env": "CartPole-v1",
        "policy_kwargs": {"share_features_extractor": False},
    },
    "cnn_minigrid_shared": {
        "env": "minigrid",
        "policy": "CnnPolicy",
        "policy_kwargs": {"features_extractor_class": SmallImageCNN},
    },
    "cnn_minigrid_separate": {
        "env": "minigrid",
        "policy": "CnnPolicy",
        "policy_kwargs": {
            "features_extractor_class": SmallImageCNN,
            "share_features_extractor": False,
        },
    },
}


def trained_model(name: str, n_steps: int = 16, seed: int = 0) -> tuple[AttributedPPO, Records]:
    """A model at θ_k, and the records θ_k collected (one short PPO iteration, undone)."""
    case = MODEL_CASES[name]
    n_envs = case.get("n_envs", 1)
    env = (
        _minigrid(n_envs, seed)
        if case["env"] == "minigrid"
        else make_vec_env(case["env"], n_envs=n_envs, seed=seed)
    )
    model = AttributedPPO(
        case.get("policy", "MlpPolicy"),
        env,
        n_steps=n_steps,
        batch_size=8,
        n_epochs=1,
        seed=seed,
        device="cpu",
        policy_kwargs=case.get("policy_kwargs"),
    )
    start_state: dict[str, torch.Tensor] = {}

    def remember_theta_k(model: AttributedPPO, records: Records) -> None:
        start_state.update({k: v.clone() for k, v in model.policy.state_dict().items()})

    model.record_hooks.append(remember_theta_k)
    results = IterationResults()
    model.learn(n_steps * n_envs, callback=results)
    model.policy.load_state_dict(start_state)
    return model, results.last.records
