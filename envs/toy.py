"""Tiny environments that exercise action and observation spaces CartPole does not."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class _TargetEnv(gym.Env):
    """The agent sees a random target vector and is rewarded for matching its signs.

    Subclasses choose the action space; the reward is the fraction of action components
    that agree with the target. Cheap, deterministic given the seed, learnable.
    """

    n_components = 3
    # SB3's make_vec_env asks for rgb_array rendering; there is nothing to draw.
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self._target = np.zeros(self.n_components, dtype=np.int64)

    def _observe(self) -> np.ndarray:
        obs = np.zeros(4, dtype=np.float32)
        obs[: self.n_components] = 2.0 * self._target - 1.0
        obs[3] = self.np_random.uniform(-1, 1)
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._target = self.np_random.integers(0, 2, size=self.n_components)
        return self._observe(), {}

    def step(self, action: np.ndarray):
        matches = np.asarray(action).reshape(-1)[: self.n_components] % 2 == self._target
        reward = float(matches.mean())
        self._target = self.np_random.integers(0, 2, size=self.n_components)
        return self._observe(), reward, False, False, {}


class ToyMultiDiscreteEnv(_TargetEnv):
    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode)
        self.action_space = spaces.MultiDiscrete([2, 3, 2])


class ToyMultiBinaryEnv(_TargetEnv):
    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode)
        self.action_space = spaces.MultiBinary(3)


class ToyDictObsEnv(ToyMultiBinaryEnv):
    """Same task with a Dict observation: rlattr must refuse it with a clear message."""

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode)
        self.observation_space = spaces.Dict(
            {"target": spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)}
        )

    def _observe(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        return {"target": super()._observe()}
