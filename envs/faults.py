"""Reward corruption with per-step ground truth, as a wrapper usable on any environment.

``CorruptRewards`` corrupts the reward of a known fraction of transitions, at random or only
inside a region of the state space, and writes what it did into every step's ``info``:

* ``info["rlattr_fault"]``: True exactly when the reward the agent receives differs from the
  true reward (a sign flip of a zero reward changes nothing and is therefore not a fault);
* ``info["rlattr_true_reward"]``: the reward the wrapped environment returned.

The draws come from the wrapper's own ``numpy`` generator, never from the global RNG or the
wrapped environment's ``np_random``: corrupting rewards must not change the environment's
dynamics, and the same seed must give the same faults. ``reset(seed=s)`` reseeds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, SupportsFloat

import gymnasium as gym
import numpy as np

FAULT_KEY = "rlattr_fault"
TRUE_REWARD_KEY = "rlattr_true_reward"

# Mixed into every seed so the fault stream differs from the wrapped environment's own
# stream for the same seed (both would otherwise be PCG64(SeedSequence(seed))): correlated
# streams would tie the faults to, e.g., CartPole's initial state.
_SALT = 0x52_4C_41_54  # "RLAT"

Mode = Literal["sign_flip", "bonus"]
Region = Callable[[Any], bool]


class CorruptRewards(gym.Wrapper):
    """Corrupt the reward of a random ``fraction`` of transitions (optionally in a region).

    Each step draws one uniform number from the wrapper's generator (whether or not the
    transition is eligible, so the fault pattern depends only on the step count and the
    seed). A transition is selected when the draw falls below ``fraction`` and, if
    ``region`` is given, ``region(obs)`` is true for the observation the action was taken
    from. A selected transition's reward becomes ``-reward`` (``"sign_flip"``) or
    ``reward + bonus`` (``"bonus"``).

    Args:
        env: any Gymnasium environment.
        fraction: probability that an eligible transition is selected, in [0, 1].
        mode: ``"sign_flip"`` or ``"bonus"``.
        bonus: amount added in ``"bonus"`` mode (must be non-zero there).
        region: None (every transition is eligible) or a predicate on the observation the
            action was taken from; only transitions starting in the region are eligible,
            so ``fraction`` is then the fraction *of in-region transitions*.
        seed: seeds the generator now; also mixed into every later ``reset(seed=s)``, so
            two wrappers with different ``seed`` give different faults on the same
            environment seed. None: fresh entropy until the first seeded reset.
    """

    def __init__(
        self,
        env: gym.Env,
        fraction: float = 0.1,
        mode: Mode = "sign_flip",
        bonus: float = 1.0,
        region: Region | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(env)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
        if mode not in ("sign_flip", "bonus"):
            raise ValueError(f"mode must be 'sign_flip' or 'bonus', got {mode!r}")
        if mode == "bonus" and bonus == 0.0:
            raise ValueError("mode 'bonus' needs a non-zero bonus")
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.fraction = float(fraction)
        self.mode: Mode = mode
        self.bonus = float(bonus)
        self.region = region
        self.fault_seed = seed
        self._rng = np.random.default_rng(None if seed is None else [_SALT, seed])
        self._last_obs: Any = None

    def _reseed(self, seed: int) -> None:
        entropy = [_SALT, seed] if self.fault_seed is None else [_SALT, seed, self.fault_seed]
        self._rng = np.random.default_rng(entropy)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self._reseed(seed)
        obs, info = self.env.reset(seed=seed, options=options)
        self._last_obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        draw = self._rng.random()  # drawn every step: see the class docstring
        eligible = self.region is None or bool(self.region(self._last_obs))
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._last_obs = obs
        true_reward = float(reward)
        given = true_reward
        if eligible and draw < self.fraction:
            given = -true_reward if self.mode == "sign_flip" else true_reward + self.bonus
        info = dict(info)  # never mutate a dict the wrapped environment may keep
        info[FAULT_KEY] = given != true_reward
        info[TRUE_REWARD_KEY] = true_reward
        return obs, given, terminated, truncated, info


# ------------------------------------------------------------------ registered variants
def cart_right_half(obs: np.ndarray) -> bool:
    """CartPole region: the cart stands right of the centre (observation[0] > 0)."""
    return bool(obs[0] > 0.0)


def cartpole_corrupt_rewards(
    fraction: float = 0.2,
    mode: Mode = "sign_flip",
    bonus: float = 1.0,
    seed: int | None = None,
    render_mode: str | None = None,
) -> gym.Env:
    """CartPole-v1 whose rewards are corrupted on a random ``fraction`` of transitions.

    CartPole pays +1 every step, so with ``"sign_flip"`` every selected transition is a
    fault and the fault rate equals ``fraction``.
    """
    env = gym.make("CartPole-v1", render_mode=render_mode, disable_env_checker=True)
    return CorruptRewards(env, fraction=fraction, mode=mode, bonus=bonus, seed=seed)


def cartpole_corrupt_region(
    fraction: float = 0.5,
    mode: Mode = "sign_flip",
    bonus: float = 1.0,
    seed: int | None = None,
    render_mode: str | None = None,
) -> gym.Env:
    """CartPole-v1 whose rewards are corrupted only right of the centre (``cart_right_half``).

    A fraction ``fraction`` of the transitions that start with the cart at x > 0 is
    corrupted; none elsewhere. The corruption is learnable: the right half pays less, so
    an agent may learn to keep the cart left (a behaviour the fault causes).
    """
    env = gym.make("CartPole-v1", render_mode=render_mode, disable_env_checker=True)
    return CorruptRewards(
        env, fraction=fraction, mode=mode, bonus=bonus, region=cart_right_half, seed=seed
    )
