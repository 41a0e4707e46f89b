"""DelayedCredit: the planted advantage error sits exactly on the steps info flags."""

from __future__ import annotations

import numpy as np
import pytest
from rlattr.envs.delayed_credit import CASH_IN, INVEST, DelayedCreditEnv

DELAY, IMMEDIATE, DELAYED, GAMMA = 4, 0.1, 1.0, 0.9


def _episode(choice: int, reveal: bool = False) -> dict[str, list]:
    env = DelayedCreditEnv(delay=DELAY, immediate=IMMEDIATE, delayed=DELAYED, reveal_choice=reveal)
    obs, _ = env.reset(seed=0)
    out: dict[str, list] = {"obs": [], "reward": [], "info": []}
    terminated, action = False, choice
    while not terminated:
        out["obs"].append(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated
        out["reward"].append(reward)
        out["info"].append(info)
        action = 1 - choice  # later actions must not matter: play the other one
    return out


@pytest.mark.parametrize("choice", [CASH_IN, INVEST])
def test_rewards_flags_and_credit(choice: int) -> None:
    ep = _episode(choice)
    assert len(ep["reward"]) == DELAY + 1
    expected = [0.0] * (DELAY + 1)
    if choice == INVEST:
        expected[-1] = DELAYED
    else:
        expected[0] = IMMEDIATE
    assert ep["reward"] == expected
    infos = ep["info"]
    assert [i["rlattr_cause"] for i in infos] == [True] + [False] * DELAY
    assert [i["rlattr_payoff"] for i in infos] == [False] * DELAY + [True]
    assert [i["rlattr_fault"] for i in infos] == [True] + [False] * (DELAY - 1) + [True]
    # The credit goes to the decision and sums to the return.
    assert infos[0]["rlattr_credit"] == (DELAYED if choice == INVEST else IMMEDIATE)
    assert sum(i["rlattr_credit"] for i in infos) == pytest.approx(sum(ep["reward"]))


def test_the_choice_is_hidden_unless_revealed() -> None:
    hidden = [_episode(c)["obs"] for c in (CASH_IN, INVEST)]
    np.testing.assert_array_equal(hidden[0], hidden[1])
    shown = [_episode(c, reveal=True)["obs"] for c in (CASH_IN, INVEST)]
    assert not np.array_equal(shown[0][1:], shown[1][1:])


def _gae(rewards: np.ndarray, values: np.ndarray, lam: float) -> np.ndarray:
    """GAE of one terminated episode (the value after the last step is 0)."""
    next_values = np.append(values[1:], 0.0)
    deltas = rewards + GAMMA * next_values - values
    advantages = np.zeros_like(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        running = deltas[t] + GAMMA * lam * running
        advantages[t] = running
    return advantages


def test_one_step_gae_errs_exactly_on_the_flagged_steps() -> None:
    """With the best value function of the observation, TD(0) advantages are wrong only at
    the flagged steps, and they prefer cashing in although investing is worth more."""
    p = 0.5  # the policy invests with probability p; later actions do not matter
    steps = np.arange(1, DELAY + 1)
    # Exact values given the observation (time step only): the choice is unknown at t ≥ 1.
    values = np.concatenate(
        [[(1 - p) * IMMEDIATE + p * GAMMA**DELAY * DELAYED], p * GAMMA ** (DELAY - steps) * DELAYED]
    )
    q_decision = {CASH_IN: IMMEDIATE, INVEST: GAMMA**DELAY * DELAYED}
    td0, mc = {}, {}
    for choice in (CASH_IN, INVEST):
        ep = _episode(choice)
        rewards = np.asarray(ep["reward"])
        # True advantages: the decision's Q minus V; every later action changes nothing.
        true = np.zeros(DELAY + 1)
        true[0] = q_decision[choice] - values[0]
        td0[choice] = _gae(rewards, values, lam=0.0)
        mc[choice] = _gae(rewards, values, lam=1.0)
        wrong = ~np.isclose(td0[choice], true)
        np.testing.assert_array_equal(wrong, [i["rlattr_fault"] for i in ep["info"]])
        # Monte Carlo gives the decision its exact credit.
        assert mc[choice][0] == pytest.approx(true[0])
    assert GAMMA**DELAY * DELAYED > IMMEDIATE  # investing is right ...
    assert td0[CASH_IN][0] > td0[INVEST][0]  # ... but one-step GAE prefers cashing in
    assert mc[INVEST][0] > mc[CASH_IN][0]


def test_rendering() -> None:
    text = DelayedCreditEnv(delay=2, render_mode="ansi")
    text.reset()
    text.step(INVEST)
    assert text.render() == "t=1/3 (invested)\n"
    image = DelayedCreditEnv(delay=2, render_mode="rgb_array")
    image.reset()
    assert image.render().shape == (8, 24, 3)


def test_bad_arguments_and_stepping_past_the_end() -> None:
    with pytest.raises(ValueError, match="delay"):
        DelayedCreditEnv(delay=0)
    env = DelayedCreditEnv(delay=1)
    env.reset()
    env.step(INVEST)
    env.step(INVEST)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(INVEST)
