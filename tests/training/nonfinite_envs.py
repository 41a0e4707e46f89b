"""Environments that plant a non-finite value, for the tests of ``nonfinite`` (also named
by dotted path from preset YAML files: ``tests.training.nonfinite_envs.NaNRewardAt``)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym


class NaNRewardAt(gym.Wrapper):
    """Returns NaN as the reward of its ``at_step``-th step (0-based, counted over all its
    episodes), and the environment's own reward everywhere else."""

    at_step = 5

    def __init__(self, env: gym.Env, at_step: int | None = None):
        super().__init__(env)
        self.at_step = type(self).at_step if at_step is None else at_step
        self.steps = 0

    def step(self, action: Any) -> Any:
        observation, reward, terminated, truncated, info = self.env.step(action)
        if self.steps == self.at_step:
            reward = float("nan")
        self.steps += 1
        return observation, reward, terminated, truncated, info


class InfObservationAt(gym.Wrapper):
    """Returns an observation whose first entry is +inf after its ``at_step``-th step."""

    at_step = 3

    def __init__(self, env: gym.Env, at_step: int | None = None):
        super().__init__(env)
        self.at_step = type(self).at_step if at_step is None else at_step
        self.steps = 0

    def step(self, action: Any) -> Any:
        observation, reward, terminated, truncated, info = self.env.step(action)
        if self.steps == self.at_step:
            observation = observation.copy()
            observation[0] = float("inf")
        self.steps += 1
        return observation, reward, terminated, truncated, info


class LateNaNReward(NaNRewardAt):
    """NaN as the reward of step 21: with one env and 16-step rollouts, iteration 1's
    rollout step 5 (iteration 0 is clean)."""

    at_step = 21
