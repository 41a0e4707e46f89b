"""CorruptRewards: the configured fraction, the region, seeding, and truthful ground truth."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from rlattr.envs.delayed_credit import DelayedCreditEnv
from rlattr.envs.faults import CorruptRewards, cart_right_half
from rlattr.envs.trap_grid import TrapGridEnv


def _roll(env: gym.Env, n_steps: int, seed: int) -> dict[str, np.ndarray]:
    """Random actions (own generator) for ``n_steps``, resetting at episode ends."""
    actions = np.random.default_rng(seed + 1000)
    obs, _ = env.reset(seed=seed)
    prev_obs, rewards, true_rewards, faults = [], [], [], []
    for _ in range(n_steps):
        prev_obs.append(obs)
        obs, reward, terminated, truncated, info = env.step(int(actions.integers(2)))
        rewards.append(float(reward))
        # .get: the same loop rolls the plain, unwrapped environment for comparison
        true_rewards.append(info.get("rlattr_true_reward", float(reward)))
        faults.append(info.get("rlattr_fault", False))
        if terminated or truncated:
            obs, _ = env.reset()
    return {
        "prev_obs": np.asarray(prev_obs),
        "reward": np.asarray(rewards),
        "true_reward": np.asarray(true_rewards),
        "fault": np.asarray(faults),
    }


def _tolerance(p: float, n: int, sigmas: float = 5.0) -> float:
    """``sigmas`` binomial standard deviations: a false failure has probability < 1e-6."""
    return sigmas * math.sqrt(p * (1 - p) / n)


def test_fault_fraction_is_as_configured() -> None:
    env = gym.make("rlattr/CartPoleCorruptRewards-v0", fraction=0.2)
    roll = _roll(env, 10_000, seed=0)
    # CartPole pays +1 every step, so every selected transition is a fault.
    assert abs(roll["fault"].mean() - 0.2) < _tolerance(0.2, 10_000)  # 0.02


def test_region_variant_corrupts_only_inside_the_region() -> None:
    env = gym.make("rlattr/CartPoleCorruptRegion-v0", fraction=0.5)
    roll = _roll(env, 10_000, seed=1)
    inside = np.array([cart_right_half(o) for o in roll["prev_obs"]])
    assert 1_000 < inside.sum() < 9_000  # both halves visited: the test means something
    assert not roll["fault"][~inside].any()
    rate = roll["fault"][inside].mean()
    assert abs(rate - 0.5) < _tolerance(0.5, int(inside.sum()))


@pytest.mark.parametrize("mode", ["sign_flip", "bonus"])
def test_ground_truth_matches_the_given_reward(mode: str) -> None:
    env = gym.make("rlattr/CartPoleCorruptRewards-v0", fraction=0.3, mode=mode, bonus=-2.5)
    roll = _roll(env, 2_000, seed=2)
    fault, given, true = roll["fault"], roll["reward"], roll["true_reward"]
    assert np.all(true == 1.0)  # the wrapped CartPole's reward, untouched
    assert np.all(given[~fault] == true[~fault])
    expected = -true[fault] if mode == "sign_flip" else true[fault] - 2.5
    np.testing.assert_array_equal(given[fault], expected)


def test_sign_flip_of_a_zero_reward_is_not_a_fault() -> None:
    # DelayedCredit pays 0 on most steps: selecting those changes nothing, so no fault.
    env = CorruptRewards(DelayedCreditEnv(delay=3), fraction=1.0, seed=0)
    env.reset(seed=0)
    faults, rewards = [], []
    for action in (1, 0, 0, 0):  # invest: rewards 0, 0, 0, 1
        _, reward, *_, info = env.step(action)
        faults.append(info["rlattr_fault"])
        rewards.append(reward)
    assert faults == [False, False, False, True]
    assert rewards == [0.0, 0.0, 0.0, -1.0]


def test_bonus_mode_in_a_region_on_another_env() -> None:
    # The wrapper works on any env: TrapGrid, bonus on steps taken from the top row.
    env = CorruptRewards(
        TrapGridEnv(), fraction=1.0, mode="bonus", bonus=0.5, region=lambda o: o[:6].any()
    )
    env.reset(seed=0)
    _, reward, *_, info = env.step(2)  # right, from the start (0, 1): in the region
    assert info["rlattr_fault"] and reward == pytest.approx(info["rlattr_true_reward"] + 0.5)
    env.step(1)  # down to (1, 2): taken from the top row, corrupted
    _, reward, *_, info = env.step(1)  # taken from (1, 2): outside the region
    assert not info["rlattr_fault"] and reward == info["rlattr_true_reward"]


def _faults(env: gym.Env, seed: int, n_steps: int = 500) -> np.ndarray:
    return _roll(env, n_steps, seed)["fault"]


def test_seeding_reproduces_the_faults() -> None:
    make = lambda: gym.make("rlattr/CartPoleCorruptRewards-v0", fraction=0.3)  # noqa: E731
    first, second = _faults(make(), seed=5), _faults(make(), seed=5)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, _faults(make(), seed=6))
    # reset(seed=...) reseeds mid-stream: a used env replays a fresh one.
    used = make()
    _faults(used, seed=9, n_steps=123)
    np.testing.assert_array_equal(_faults(used, seed=5), first)
    # The constructor seed is mixed in: another fault seed, other faults, same env seed.
    other = gym.make("rlattr/CartPoleCorruptRewards-v0", fraction=0.3, seed=1)
    assert not np.array_equal(_faults(other, seed=5), first)


def test_the_global_rng_and_the_dynamics_are_untouched() -> None:
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    wrapped = _roll(gym.make("rlattr/CartPoleCorruptRewards-v0", fraction=0.5), 300, seed=4)
    assert np.array_equal(np.random.get_state()[1], state)
    plain = _roll(gym.make("CartPole-v1"), 300, seed=4)
    np.testing.assert_array_equal(wrapped["prev_obs"], plain["prev_obs"])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="fraction"):
        CorruptRewards(TrapGridEnv(), fraction=1.5)
    with pytest.raises(ValueError, match="mode"):
        CorruptRewards(TrapGridEnv(), mode="scale")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-zero bonus"):
        CorruptRewards(TrapGridEnv(), mode="bonus", bonus=0.0)
