"""Metagradient scores: finite differences in the record weights, and TracIn on a linear model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from rlattr import AttributedPPO, ReturnTarget, RunLog
from rlattr.record import build_policy, load_iteration, replay
from rlattr.record.loss import normalize_advantages
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


def ratio_recorder(data, policy, weights: torch.Tensor | None = None):
    """A ``before_step`` callback for ``replay`` that records, at every replayed step, the
    ratio ρ = π_θt/π_θk and the normalised advantage Ã of each record of the minibatch
    (as the loss sees them: w-weighted statistics when ``weights`` is given)."""
    config = data.plan.loss_config
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before_step(step: int, indices: torch.Tensor) -> None:
        with torch.no_grad():
            batch = data.records.minibatch(indices)
            actions = batch.actions.long().flatten() if config.discrete_actions else batch.actions
            _, log_prob, _ = policy.evaluate_actions(batch.observations, actions)
            ratio = torch.exp(log_prob - batch.old_log_prob)
            part = None if weights is None else weights[indices]
            steps.append((ratio, normalize_advantages(batch.advantages, config, part)))

    return before_step, steps


def assert_ratio_clipping_active_and_no_kink_crossed(
    base: list, perturbed: list[list], clip_range: float, safety: float = 10.0
) -> tuple[int, float, float]:
    """PPO's −min(ρÃ, clip(ρ, 1−ε, 1+ε)Ã) is smooth except where ρ = 1 ± ε, or where Ã
    changes sign while ρ is outside [1−ε, 1+ε]. ``base`` holds (ρ, Ã) per step at the
    expansion point, ``perturbed`` the same for every replay a finite difference takes.
    Asserts that some records take the clipped branch (so the test is not the smooth
    case), and that every record stays ``safety`` times farther from a kink than it moves
    between the replays (so they all lie on one smooth piece). Returns the number of
    clipped record-steps and the two margins in units of the largest move."""
    move_rho = max(
        float((p[0] - b[0]).abs().max())
        for run in perturbed
        for p, b in zip(run, base, strict=True)
    )
    move_adv = max(
        float((p[1] - b[1]).abs().max())
        for run in perturbed
        for p, b in zip(run, base, strict=True)
    )
    clipped, margin_rho, margin_adv = 0, float("inf"), float("inf")
    for rho, adv in base:
        margin_rho = min(margin_rho, float((rho - 1).abs().sub(clip_range).abs().min()))
        outside = (rho - 1).abs() > clip_range
        if outside.any():
            margin_adv = min(margin_adv, float(adv[outside].abs().min()))
        clipped += int(
            ((adv > 0) & (rho > 1 + clip_range) | (adv < 0) & (rho < 1 - clip_range)).sum()
        )
    assert len(perturbed) > 0 and all(len(run) == len(base) for run in perturbed)
    assert clipped > 0, "ratio clipping must be active on some records"
    assert margin_rho > safety * move_rho, (margin_rho, move_rho)
    assert margin_adv > safety * move_adv, (margin_adv, move_adv)
    return (
        clipped,
        margin_rho / move_rho if move_rho > 0 else float("inf"),
        margin_adv / move_adv if move_adv > 0 else float("inf"),
    )


# clip_range 1e6: no ratio clipping (the smooth case). 2e-3: the runs trained with it
# (lr 3e-4, 6 Adam steps an iteration) move ratios by up to ~5e-3, so some records leave
# [1 − ε, 1 + ε] in iteration 1's update; the nearest ratio sits over 350× farther from a
# kink than the finite-difference steps move it (asserted, not assumed: at 8e-4 without
# gradient clipping a ratio sits 5.5× its move from a kink, and the check refuses it).
@pytest.mark.parametrize("clip_range", [1e6, 2e-3])
@pytest.mark.parametrize("max_grad_norm", [float("inf"), 0.5])
def test_metagradient_matches_finite_differences_fp64(
    run_dir: Path, max_grad_norm: float, clip_range: float
) -> None:
    # A ratio-clipped case trains with its clip range, so the plan is the one replayed.
    trained_with = clip_range if clip_range < 1 else 0.2
    log, data = _logged_iteration(run_dir, max_grad_norm=max_grad_norm, clip_range=trained_with)
    # The smooth case: ratios moved ≤ 5e-3 in training, far inside 0.2, so the plan holds.
    data.plan = dataclasses.replace(
        data.plan, loss_config=dataclasses.replace(data.plan.loss_config, clip_range=clip_range)
    )
    policy = build_policy(log).double()
    context = target_context(log, data.records)
    target = ReturnTarget()
    indices, eps = (0, 7, 30, 47), 1e-4
    with fp64_observations():
        result = metagradient_scores(data, policy, target, context)
        fds = [_finite_difference(data, policy, target, context, i, eps=eps) for i in indices]
        for index, fd in zip(indices, fds, strict=True):
            exact = float(result.scores[index])
            assert abs(exact - fd) <= 1e-6 * max(
                abs(fd), 1e-3 * float(result.scores.abs().max())
            ), (index, exact, fd)  # measured ≤ 4.1e-7 in every case
        if clip_range < 1:
            ones = torch.ones(len(data.records), dtype=torch.float64)
            record, base = ratio_recorder(data, policy, ones)
            replay(data, policy, record_weights=ones, before_step=record)
            perturbed = []
            for index in indices:
                for step in (eps, -eps, eps / 2, -eps / 2):
                    weights = ones.clone()
                    weights[index] += step
                    record, steps = ratio_recorder(data, policy, weights)
                    replay(data, policy, record_weights=weights, before_step=record)
                    perturbed.append(steps)
            # measured: 14 / 18 clipped record-steps; margins 528× / 359× (ρ), ≥ 521× (Ã)
            assert_ratio_clipping_active_and_no_kink_crossed(base, perturbed, clip_range)
            # The clipped branch matters: without it the derivative is far from these.
            smooth_plan = dataclasses.replace(
                data.plan, loss_config=dataclasses.replace(data.plan.loss_config, clip_range=1e6)
            )
            smooth = metagradient_scores(
                dataclasses.replace(data, plan=smooth_plan), policy, target, context
            ).scores
            gaps = [
                abs(float(smooth[i]) - fd) / abs(fd) for i, fd in zip(indices, fds, strict=True)
            ]
            assert max(gaps) > 0.1, gaps  # measured 0.19 / 0.37


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
