"""Metagradient memory under a budget: the meter, the segment choice, the scores unchanged.

Memory is measured as the bytes of tensors autograd graphs hold for the backward pass
(``SavedTensorMeter``): torch's CPU allocator has no peak counter, and RSS moves with the
allocator's caching, so saved-tensor bytes are the honest proxy the budget is about.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlattr import AttributedPPO, ReturnTarget, RunLog
from rlattr.record import build_policy, load_iteration
from rlattr.scoring.attribute import target_context
from rlattr.scoring.graph_memory import (
    DEFAULT_MEMORY_BUDGET,
    ReplayMemory,
    SavedTensorMeter,
    budget_bytes,
    choose_segments,
)
from rlattr.scoring.metagrad import metagradient_scores
from tests.helpers import fp64_observations


# ---------------------------------------------------------------------- the meter
def test_meter_counts_what_a_graph_saves_until_it_is_freed() -> None:
    a = torch.randn(1000, requires_grad=True)
    b = torch.randn(1000, requires_grad=True)
    with SavedTensorMeter() as meter:
        product = a * b  # mul saves both factors: 2 × 1000 float32
        assert meter.live == 8000
        square = a * a  # saves a twice: one storage, already held
        assert meter.live == 8000
        del product
        assert meter.live == 4000  # a is still held by the square's graph
        del square
        assert meter.live == 0
    assert meter.peak == 8000 and meter.total == 8000


def test_meter_sees_the_graph_of_a_backward_pass_and_frees_after_it() -> None:
    w = torch.randn(50, 50, requires_grad=True)
    x = torch.randn(20, 50)
    with SavedTensorMeter() as meter:
        value = torch.tanh(x @ w).sum()
        assert meter.live >= 8000  # x and tanh's output, 20 × 50 float32 each
        (grad,) = torch.autograd.grad(value, w, create_graph=True)
        before = meter.live
        loss = (grad * grad).sum()  # saves the gradient (a backward's output) twice: once
        assert meter.live == before + 50 * 50 * 4
        (second,) = torch.autograd.grad(loss, w)
        del value, grad, loss
        assert meter.live == 0 and second.shape == w.shape


# ---------------------------------------------------------------------- the choice
# Costs in bytes, chosen by hand so the answers can be worked out on paper.
STEPS16 = ReplayMemory(steps=16, step_bytes=10, state_bytes=1, target_bytes=0)


def test_the_whole_graph_when_it_fits() -> None:
    # 16 steps × 10 bytes = 160: a budget of 160 holds it, no recomputation.
    choice = choose_segments(STEPS16, 160)
    assert choice.segment_steps is None and choice.estimated_peak == 160 and choice.fits
    assert choose_segments(STEPS16, None).segment_steps is None


def test_the_longest_segment_that_fits() -> None:
    # Budget 50: S = 5 needs ⌈16/5⌉ = 4 starts + 5 × 10 = 54 > 50; S = 4 needs 4 + 40 = 44.
    choice = choose_segments(STEPS16, 50)
    assert (choice.segment_steps, choice.estimated_peak, choice.fits) == (4, 44, True)
    # Budget 37: S = 4 (44) and S = 3 (6 starts + 30 = 36 ≤ 37) → 3.
    assert choose_segments(STEPS16, 37).segment_steps == 3


def test_the_target_graph_counts_against_the_budget() -> None:
    # A 45-byte target graph: S = 4 needs 4 + max(45, 40) = 49; S = 3: 6 + 45 = 51.
    memory = ReplayMemory(steps=16, step_bytes=10, state_bytes=1, target_bytes=45)
    assert choose_segments(memory, 50).segment_steps == 4
    # Budget 48: nothing fits (S = 4's 49 is the smallest); that one, flagged.
    choice = choose_segments(memory, 48)
    assert (choice.segment_steps, choice.estimated_peak, choice.fits) == (4, 49, False)


def test_a_chains_fixed_part_and_a_steps_transient_count_once() -> None:
    # a = 6, h = 3 on top of g = 10 per step, t = 0: the whole graph needs 6 + 160 + 3 = 169.
    memory = ReplayMemory(16, 10, 1, 0, base_bytes=6, transient_bytes=3)
    assert choose_segments(memory, 169).segment_steps is None
    # Budget 168: S = 15 needs 2 + 6 + 150 + 3 = 161, the longest that fits.
    assert choose_segments(memory, 168).segment_steps == 15
    # Budget 50: S = 4 needs 4 + 6 + 40 + 3 = 53; S = 3: 6 + 6 + 30 + 3 = 45.
    assert (choose_segments(memory, 50).segment_steps, choose_segments(memory, 50).fits) == (
        3,
        True,
    )


def test_bad_budgets_are_refused() -> None:
    assert budget_bytes("1KiB") == 1024 and budget_bytes(None) is None
    assert budget_bytes("none") is None and budget_bytes(DEFAULT_MEMORY_BUDGET) == 256 * 2**20
    for bad in (0, -3, 1.5, True, "lots"):
        with pytest.raises(ValueError):
            budget_bytes(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- on a real update
def _iteration(run_dir: Path):
    # 4 minibatches × 3 epochs: 12 Adam steps, with gradient-norm clipping.
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, n_steps=64, batch_size=16, n_epochs=3,
        device="cpu", seed=3,
    ).learn(128)  # fmt: skip
    log = RunLog(run_dir)
    data = load_iteration(log, 1)
    return log, data


def test_the_budget_changes_memory_not_scores(run_dir: Path) -> None:
    """fp64: every budget gives the whole graph's scores to rtol 1e-10 (float rounding
    of a different summation order; measured ≤ 1e-12)."""
    log, data = _iteration(run_dir)
    policy = build_policy(log).double()
    context = target_context(log, data.records)
    with fp64_observations():
        whole = metagradient_scores(data, policy, ReturnTarget(), context, memory_budget=None)
        assert whole.segment_steps is None and whole.memory is None
        assert whole.scores.abs().max() > 0
        memory = metagradient_scores(data, policy, ReturnTarget(), context).memory
        assert memory is not None and memory.steps == 12
        seen = set()
        for budget in (memory.peak(None), memory.peak(6), memory.peak(3), memory.peak(2)):
            result = metagradient_scores(
                data, policy, ReturnTarget(), context, memory_budget=budget
            )
            seen.add(result.segment_steps)
            if result.segment_steps is None:  # measuring first leaves the replay untouched
                assert torch.equal(result.scores, whole.scores)
            np.testing.assert_allclose(
                result.scores.numpy(), whole.scores.numpy(), rtol=1e-10, atol=1e-15
            )
        # Each budget is exactly the estimate of one choice, and Adam's step graph here is
        # over twice a stored start, so each picks that choice: the segments were used.
        assert seen == {None, 6, 3, 2}, seen
        with pytest.warns(RuntimeWarning, match="no segment length fits the memory budget"):
            tight = metagradient_scores(data, policy, ReturnTarget(), context, memory_budget=1)
        np.testing.assert_allclose(
            tight.scores.numpy(), whole.scores.numpy(), rtol=1e-10, atol=1e-15
        )


def test_the_measured_graph_memory_stays_within_the_budget(run_dir: Path) -> None:
    log, data = _iteration(run_dir)
    policy = build_policy(log)
    context = target_context(log, data.records)
    with SavedTensorMeter() as meter:
        whole = metagradient_scores(data, policy, ReturnTarget(), context, memory_budget=None)
    memory = metagradient_scores(data, policy, ReturnTarget(), context).memory
    assert memory is not None
    # The estimate of the whole graph bounds the measurement, closely (measured: equal).
    assert meter.peak <= memory.peak(None) <= 1.05 * meter.peak
    budget = meter.peak // 2  # the whole graph does not fit
    with SavedTensorMeter() as meter:
        result = metagradient_scores(data, policy, ReturnTarget(), context, memory_budget=budget)
    assert result.segment_steps is not None and result.memory is not None
    assert meter.peak <= result.memory.peak(result.segment_steps) <= budget
    # fp32: float rounding of a different summation order (measured ≤ 2e-9 of the largest;
    # the bound is fp32's epsilon, 1.2e-7, of the largest score).
    scale = float(whole.scores.abs().max())
    np.testing.assert_allclose(
        result.scores.numpy(), whole.scores.numpy(), rtol=0, atol=1.2e-7 * scale
    )
