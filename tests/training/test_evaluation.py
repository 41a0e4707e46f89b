"""EvalEveryRound evaluates after every round without touching the training run."""

from __future__ import annotations

import math
import random

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import KVWriter, Logger

from rlattr import IIF, AttributedPPO, IterationResults
from rlattr.training.evaluation import EvalEveryRound, evaluate_policy_batched
from tests.conftest import assert_same_parameters

SMALL = {"n_steps": 64, "batch_size": 16, "n_epochs": 2, "device": "cpu"}


def assert_same_optimizer(a: AttributedPPO, b: AttributedPPO) -> None:
    state_a = a.policy.optimizer.state_dict()["state"]
    state_b = b.policy.optimizer.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        for name, value in state_a[key].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b[key][name]))


def _model(env_id: str, iif: IIF | None = None, **kwargs) -> AttributedPPO:
    env = make_vec_env(env_id, n_envs=1, seed=3)
    return AttributedPPO("MlpPolicy", env, seed=3, iif=iif, **SMALL, **kwargs)


@pytest.mark.parametrize(
    ("env_id", "iif", "kwargs"),
    [
        ("CartPole-v1", None, {}),
        ("CartPole-v1", IIF(rule="neg_bottom", fraction=0.5), {}),
        ("FrozenLake-v1", IIF(rule="random_like", like="neg_bottom", like_fraction=0.5), {}),
        ("Pendulum-v1", None, {"max_grad_norm": math.inf}),
    ],
)
def test_training_is_identical_with_and_without_evaluation(env_id, iif, kwargs) -> None:
    plain = _model(env_id, iif, **kwargs)
    plain.learn(3 * 64)
    after_plain = (torch.rand(1), np.random.rand(), random.random())

    evaluated = _model(env_id, iif, **kwargs)
    callback = EvalEveryRound(lambda: gym.make(env_id), episodes=3, seed=7, n_envs=2)
    results = IterationResults()  # what each update did, to check the dropped shares
    evaluated.learn(3 * 64, callback=[callback, results])
    after_evaluated = (torch.rand(1), np.random.rand(), random.random())

    assert_same_parameters(plain.policy, evaluated.policy)
    assert (
        plain.policy.optimizer.state_dict().keys() == evaluated.policy.optimizer.state_dict().keys()
    )
    # The global RNGs end in the same state: evaluation drew nothing from them.
    assert torch.equal(after_plain[0], after_evaluated[0])
    assert after_plain[1:] == after_evaluated[1:]
    # Rounds 0..3: the initial policy and the policy after each of the three updates.
    curve = callback.result()
    assert [p.round for p in curve] == [0, 1, 2, 3]
    assert [p.timesteps for p in curve] == [0, 64, 128, 192]
    assert all(p.episodes == 3 for p in curve)
    assert curve[-1].train_seconds >= curve[1].train_seconds > 0
    assert curve[-1].train_cpu_seconds >= curve[1].train_cpu_seconds > 0
    if iif is None:
        assert all(p.fraction_dropped is None for p in curve)
    else:
        assert curve[0].fraction_dropped is None
        assert all(0 <= p.fraction_dropped < 1 for p in curve[1:])
        # Round r's share is the share update r - 1 left out of its buffer.
        dropped = [
            0.0 if r.keep_mask is None else float((~r.keep_mask).double().mean()) for r in results
        ]
        assert [p.fraction_dropped for p in curve[1:]] == dropped
        assert any(share > 0 for share in dropped)


def test_evaluation_is_logged_at_the_current_timesteps() -> None:
    model = _model("CartPole-v1")
    seen: list[tuple[int, float]] = []

    class Spy(KVWriter):
        def write(self, key_values, key_excluded, step=0):
            if "eval/return_mean" in key_values:
                seen.append((step, key_values["eval/return_mean"]))

        def close(self):
            pass

    model.set_logger(Logger(folder=None, output_formats=[Spy()]))
    callback = EvalEveryRound(lambda: gym.make("CartPole-v1"), episodes=2, seed=0, n_envs=2)
    model.learn(2 * 64, callback=callback)
    points = callback.result()
    assert [step for step, _ in seen] == [p.timesteps for p in points] == [0, 64, 128]
    assert [value for _, value in seen] == [p.return_mean for p in points]


def test_batched_evaluation_is_reproducible_and_seeded_per_episode() -> None:
    model = _model("CartPole-v1")
    make = lambda: gym.make("CartPole-v1")  # noqa: E731
    first = evaluate_policy_batched(model.policy, make, episodes=7, seed=5, n_envs=3)
    again = evaluate_policy_batched(model.policy, make, episodes=7, seed=5, n_envs=3)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (7,) and (first >= 1).all()
    other_seed = evaluate_policy_batched(model.policy, make, episodes=7, seed=6, n_envs=3)
    assert not np.array_equal(first, other_seed)


def test_episodes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="episodes"):
        EvalEveryRound(lambda: gym.make("CartPole-v1"), episodes=0)
