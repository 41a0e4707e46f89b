"""Metagradient scores: finite differences in the record weights, and TracIn on a linear model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from rlattr import AttributedPPO, ReturnTarget, RunLog, build_policy, load_iteration, replay
from rlattr.scoring.attribute import target_context
from rlattr.scoring.influence import tracin_scores
from rlattr.scoring.metagrad import metagradient_scores
from tests.helpers import fp64_observations
from tests.scoring.test_influence import _linear_problem


def _logged_iteration(run_dir: Path, **ppo):
    kwargs = {"n_steps": 48, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 3, **ppo}
    AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=run_dir, **kwargs).learn(96)
    log = RunLog(run_dir)
    return log, load_iteration(log, 1)


def _central_difference(data, policy, target, context, index: int, eps: float) -> float:
    values = []
    for sign in (1.0, -1.0):
        weights = torch.ones(len(data.records), dtype=torch.float64)
        weights[index] += sign * eps
        replay(data, policy, record_weights=weights, weight_normalization="weights")
        with torch.no_grad():
            values.append(float(target.value(policy, context)))
    return (values[0] - values[1]) / (2 * eps)


def _finite_difference(data, policy, target, context, index: int, eps: float) -> float:
    """Richardson-extrapolated central difference: error O(eps⁴) instead of O(eps²), so the
    reference stays below the 1e-6 bound where gradient-norm clipping curves the map."""
    coarse = _central_difference(data, policy, target, context, index, eps)
    fine = _central_difference(data, policy, target, context, index, eps / 2)
    return (4 * fine - coarse) / 3


@pytest.mark.parametrize("max_grad_norm", [float("inf"), 0.5])
def test_metagradient_matches_finite_differences_fp64(run_dir: Path, max_grad_norm: float) -> None:
    log, data = _logged_iteration(run_dir, max_grad_norm=max_grad_norm)
    # Smooth configuration: no ratio clipping kinks within the finite-difference steps.
    data.plan = dataclasses.replace(
        data.plan, loss_config=dataclasses.replace(data.plan.loss_config, clip_range=1e6)
    )
    policy = build_policy(log).double()
    context = target_context(log, data.records)
    target = ReturnTarget()
    with fp64_observations():
        result = metagradient_scores(data, policy, target, context)
        for index in (0, 7, 30, 47):
            fd = _finite_difference(data, policy, target, context, index, eps=1e-4)
            exact = float(result.scores[index])
            assert abs(exact - fd) <= 1e-6 * max(
                abs(fd), 1e-3 * float(result.scores.abs().max())
            ), (
                index,
                exact,
                fd,
            )


def test_functional_replay_reaches_the_logged_parameters(run_dir: Path) -> None:
    log, data = _logged_iteration(run_dir)
    policy = build_policy(log)
    end_state, _ = log.load_checkpoint(2)
    result = metagradient_scores(
        data, policy, ReturnTarget(), target_context(log, data.records), end_state=end_state
    )
    assert result.max_abs_param_error is not None and result.max_abs_param_error < 1e-5
    assert torch.isfinite(result.scores).all() and result.scores.abs().max() > 0


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov"])
def test_metagradient_equals_tracin_on_a_linear_model(optimizer: str) -> None:
    policy, data, context = _linear_problem(optimizer)
    target = ReturnTarget()
    tracin = tracin_scores(data, policy, target, context, params="all")
    exact = metagradient_scores(data, policy, target, context, normalization="count").scores
    np.testing.assert_allclose(exact.numpy(), tracin.numpy(), rtol=1e-9, atol=1e-13)


def test_parameters_without_gradient_do_not_poison_the_scores(run_dir: Path) -> None:
    """fp32, vf_coef = 0: the value head never gets a gradient, so Adam's v is exactly 0."""
    log, data = _logged_iteration(run_dir, vf_coef=0.0)
    policy = build_policy(log)
    named = dict(policy.named_parameters())
    assert (
        float(
            data.start_tensors[
                "optim." + str(list(named).index("value_net.weight")) + ".exp_avg_sq"
            ]
            .abs()
            .max()
        )
        == 0.0
    )
    result = metagradient_scores(data, policy, ReturnTarget(), target_context(log, data.records))
    assert torch.isfinite(result.scores).all() and result.scores.abs().max() > 0


@pytest.mark.parametrize(
    ("ppo", "segments"),
    [
        ({"max_grad_norm": 0.5}, (1, 2, 5, 100)),  # Adam + clipping: 6 steps
        ({"policy_kwargs": {"optimizer_class": torch.optim.SGD,
                            "optimizer_kwargs": {"momentum": 0.9}}}, (1, 4)),
    ],
)  # fmt: skip
def test_recomputed_segments_give_the_full_graph_scores(
    run_dir: Path, ppo: dict, segments: tuple[int, ...]
) -> None:
    """Checkpointing changes memory, not the answer: fp64, every segment length."""
    log, data = _logged_iteration(run_dir, **ppo)
    policy = build_policy(log).double()
    context = target_context(log, data.records)
    with fp64_observations():
        full = metagradient_scores(data, policy, ReturnTarget(), context)
        assert full.scores.abs().max() > 0
        for length in segments:
            segmented = metagradient_scores(
                data, policy, ReturnTarget(), context, segment_steps=length
            )
            assert segmented.target_value == pytest.approx(full.target_value, rel=1e-13)
            np.testing.assert_allclose(
                segmented.scores.numpy(), full.scores.numpy(), rtol=1e-10, atol=1e-15
            )
    with pytest.raises(ValueError, match="segment_steps"):
        metagradient_scores(data, policy, ReturnTarget(), context, segment_steps=0)
