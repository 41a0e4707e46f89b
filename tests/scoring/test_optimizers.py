"""The one optimiser model, each form against an independent reference (fp64).

- (a) the functional step against ``torch.optim``'s own step, many steps, state included;
- (b) the linearised step against central finite differences of ``torch.optim``'s step;
- (c) the TracIn multipliers against finite differences of a real replay of logged
  iterations in which one step's gradient is perturbed;
- the guard refuses what the model does not represent, naming it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch

from rlattr.analysis.stages import estimate_stage_effects
from rlattr.errors import UnsupportedError
from rlattr.record.checkpoint import capture_checkpoint, restore_checkpoint
from rlattr.record.replay import IterationData, replay
from rlattr.scoring.influence import tracin_scores
from rlattr.scoring.metagrad import metagradient_scores
from rlattr.scoring.optimizers import (
    OptimizerModel,
    Tangent,
    check_supported,
    step_multipliers,
)
from rlattr.scoring.targets import ReturnTarget
from tests.scoring.test_influence import _linear_problem

Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]

CONFIGS: dict[str, Factory] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_l2": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.05),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam_l2": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adam_decoupled": lambda p: torch.optim.Adam(
        p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True
    ),
}

SHAPES = [(3, 4), (5,)]


def _gradient(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    grad = torch.randn(shape, generator=generator, dtype=torch.float64)
    # One coordinate never has a gradient: Adam's v stays exactly 0 there.
    grad.view(-1)[0] = 0.0
    return grad


# --------------------------------------------------------------------- (a) functional
@pytest.mark.parametrize("name", list(CONFIGS))
def test_functional_step_equals_torch_optim(name: str) -> None:
    """50 steps of random gradients and a varying learning rate: θ and every state slot
    of the functional step equal torch.optim's at every step (fp64)."""
    generator = torch.Generator().manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64)) for s in SHAPES
    ]
    optimizer = CONFIGS[name](params)
    model = check_supported(optimizer)
    base_lr = optimizer.param_groups[0]["lr"]
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    state = model.flat_state(optimizer, params)
    for t in range(50):
        lr = base_lr * (1 + 0.5 * math.sin(t))  # a schedule: the lr comes with each step
        grads = [_gradient(generator, s) for s in SHAPES]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.param_groups[0]["lr"] = lr
        optimizer.step()
        flat, state = model.step(flat, torch.cat([g.reshape(-1) for g in grads]), state, lr)
        expected = torch.cat([p.detach().reshape(-1) for p in params])
        torch.testing.assert_close(flat, expected, rtol=1e-13, atol=1e-15)
        for slot, value in state.items():
            stored = [optimizer.state[p][slot] for p in params]
            if isinstance(value, torch.Tensor):
                reference = torch.cat([s.reshape(-1) for s in stored])
                torch.testing.assert_close(value, reference, rtol=1e-13, atol=1e-15)
            else:
                assert all(value == float(s) for s in stored), (slot, value)
    # Torch's state has a slot exactly where the model's does (plain SGD: none).
    assert set(state) == set(optimizer.state[params[0]])


# --------------------------------------------------------------------- (b) linearised
def _torch_step(
    factory: Factory, theta, grad, slots: dict[str, torch.Tensor | float], lr: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One torch.optim step from the given θ, gradient and state."""
    param = torch.nn.Parameter(theta.clone())
    optimizer = factory([param])
    optimizer.param_groups[0]["lr"] = lr
    if slots:
        optimizer.state[param] = {
            k: (v.clone() if isinstance(v, torch.Tensor) else torch.tensor(v))
            for k, v in slots.items()
        }
    param.grad = grad.clone()
    optimizer.step()
    state = optimizer.state[param]
    return param.detach().clone(), {k: v.clone() for k, v in state.items()}


# First order holds v̂ as the run had it while L2 decay moves v with θ: first order with
# Adam + L2 is not the derivative of a torch step (second order covers that optimiser).
LINEARISED_CASES = [
    (name, second_order)
    for name in CONFIGS
    for second_order in (False, True)
    if (name, second_order) != ("adam_l2", False)
]


@pytest.mark.parametrize(("name", "second_order"), LINEARISED_CASES)
def test_linearised_step_is_the_derivative_of_torch_optim_step(
    name: str, second_order: bool
) -> None:
    """The tangent of one step equals the central finite difference of torch.optim's step
    with θ, the state slots and (second order) the gradient moved along the tangent.
    First order is the case δg = 0, δv = 0."""
    factory = CONFIGS[name]
    generator = torch.Generator().manual_seed(1)
    shape = (20,)
    param = torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64))
    optimizer = factory([param])
    model = check_supported(optimizer)
    for _ in range(5):  # a state that is not the initial one
        param.grad = torch.randn(shape, generator=generator, dtype=torch.float64)
        optimizer.step()
    lr = 0.7 * optimizer.param_groups[0]["lr"]
    theta = param.detach().clone()
    grad = torch.randn(shape, generator=generator, dtype=torch.float64)
    slots = {k: (v.clone() if v.ndim else float(v)) for k, v in optimizer.state[param].items()}

    def randn() -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    zeros = torch.zeros(shape, dtype=torch.float64)
    # δv small against v: v ± h δv stays well inside v > 0.
    tangent = Tangent(randn(), randn(), 1e-2 * randn() if second_order else zeros)
    change = randn() if second_order else zeros

    def moved(h: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        state = dict(slots)
        if model.first_slot in state:
            state[model.first_slot] = state[model.first_slot] + h * tangent.slot
        if model.second_slot is not None:
            state[model.second_slot] = state[model.second_slot] + h * tangent.second
        return _torch_step(factory, theta + h * tangent.theta, grad + h * change, state, lr)

    h = 1e-5
    (plus, plus_state), (minus, minus_state) = moved(h), moved(-h)
    _, after = _torch_step(factory, theta, grad, slots, lr)
    result = model.linearised_step(
        tangent,
        lr,
        after,
        gradient_change=change if second_order else None,
        gradient=grad,
        param=theta,
    )
    torch.testing.assert_close(result.theta, (plus - minus) / (2 * h), rtol=1e-9, atol=2e-10)
    if model.first_slot in after:
        difference = (plus_state[model.first_slot] - minus_state[model.first_slot]) / (2 * h)
        torch.testing.assert_close(result.slot, difference, rtol=1e-9, atol=2e-10)
    if model.second_slot is not None and second_order:
        difference = (plus_state[model.second_slot] - minus_state[model.second_slot]) / (2 * h)
        torch.testing.assert_close(result.second, difference, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------- (c) multipliers
def _two_iterations(optimizer: str) -> tuple[torch.nn.Module, list[IterationData]]:
    """Two logged iterations of the linear model (the loss is linear in θ, so later
    gradients do not depend on earlier steps), the second at half the learning rate."""
    policy, first, _ = _linear_problem(optimizer)
    replay(first, policy)
    tensors, meta = capture_checkpoint(policy)
    plan = dataclasses.replace(first.plan, learning_rates=first.plan.learning_rates * 0.5)
    second = IterationData(1, first.records, plan, tensors, meta)
    return policy, [first, second]


Perturb = Callable[[str, torch.Tensor], torch.Tensor]


def _replay_span(
    policy, span: list[IterationData], step: int | None = None, perturb: Perturb | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Replay the span with torch's optimiser; at global step ``step`` replace every
    parameter's gradient g by ``perturb(name, g)`` (a backward hook).

    Returns the final parameters, the final first slots and the gradient change made.
    """
    named = dict(policy.named_parameters())
    slot_name = check_supported(policy.optimizer).first_slot
    restore_checkpoint(policy, span[0].start_tensors, span[0].start_meta)
    change: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def perturbed(grad: torch.Tensor) -> torch.Tensor:
            assert perturb is not None
            new = perturb(name, grad)
            change[name] = new - grad
            return new

        return perturbed

    offset = 0
    for data in span:

        def before(t: int, indices, _offset=offset) -> None:
            if perturb is not None and _offset + t == step:
                handles.extend(p.register_hook(hook(n)) for n, p in named.items())

        def after(t: int, indices, _offset=offset) -> None:
            if _offset + t == step:
                for handle in handles:
                    handle.remove()

        replay(data, policy, before_step=before, after_step=after, from_checkpoint=False)
        offset += len(data.plan.learning_rates)
    params = {n: p.detach().clone() for n, p in named.items()}
    slots = {
        n: policy.optimizer.state[p].get(slot_name, torch.zeros_like(p)).clone()
        for n, p in named.items()
    }
    return params, slots, change


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_multipliers_are_the_replayed_response_to_a_gradient_change(optimizer: str) -> None:
    """Change step t's gradient by δg in a real replay of two logged iterations: θ_T moves
    by −u_t ⊙ δg and the first slot by u_slot,t δg (fp64; the loss is linear in θ, so
    later gradients stay as they were).

    SGD: δg = 1e-3 · e, e random. Adam: the multipliers hold v̂ at the replay's value
    (docs/science.md §2), and a sign flip of g on a random half of the coordinates is a
    change δg = −2g there that leaves g ⊙ g, hence v, exactly as it was; the response is
    then exactly linear in δg, and m, bias corrections, ε and the step count running
    across the two iterations are torch.optim.Adam's own.
    """
    policy, span = _two_iterations(optimizer)
    names = [n for n, _ in policy.named_parameters()]
    multipliers = step_multipliers(span, policy, names)
    model = check_supported(policy.optimizer)
    total = sum(len(d.plan.learning_rates) for d in span)
    assert len(multipliers) == total == 18
    slot_multipliers = model.slot_multipliers(total)
    clean, clean_slots, _ = _replay_span(policy, span)
    generator = torch.Generator().manual_seed(5)

    def perturb(name: str, grad: torch.Tensor) -> torch.Tensor:
        if model.preconditioned:
            flip = torch.rand(grad.shape, generator=generator, dtype=grad.dtype) < 0.5
            return torch.where(flip, -grad, grad)
        return grad + 1e-3 * torch.randn(grad.shape, generator=generator, dtype=grad.dtype)

    has_slot = model.first_slot in policy.optimizer.state[next(policy.parameters())]
    for t in (0, 4, 8, 9, 13, 17):  # both iterations, their first and last steps
        moved, moved_slots, change = _replay_span(policy, span, t, perturb)
        assert set(change) == set(names)
        assert (moved["action_net.weight"] != clean["action_net.weight"]).any()
        for n in names:
            u = multipliers[t] if isinstance(multipliers[t], float) else multipliers[t][n]
            measured = moved[n] - clean[n]
            torch.testing.assert_close(measured, -u * change[n], rtol=1e-10, atol=1e-15)
            if has_slot:
                slot_change = moved_slots[n] - clean_slots[n]
                torch.testing.assert_close(
                    slot_change, slot_multipliers[t] * change[n], rtol=1e-10, atol=1e-15
                )


def test_adam_reference_would_see_a_moved_second_moment() -> None:
    """A change that moves v (g + δg instead of a sign flip) gives a replayed response
    the v̂-held multipliers do not describe: the reference above is not blind to v."""
    policy, span = _two_iterations("adam")
    names = [n for n, _ in policy.named_parameters()]
    multipliers = step_multipliers(span, policy, names)
    clean, _, _ = _replay_span(policy, span)
    moved, _, change = _replay_span(policy, span, 4, lambda n, g: g + 1e-6 * g.sign())
    n = "action_net.weight"
    measured = moved[n] - clean[n]
    relative = float((measured + multipliers[4][n] * change[n]).norm() / measured.norm())
    assert relative > 1e-2, relative


# --------------------------------------------------------------------- the guard
def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]


class _MyAdam(torch.optim.Adam):
    """A subclass may change the arithmetic: the model cannot vouch for it."""


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: torch.optim.RMSprop(p), r"torch\.optim\.rmsprop\.RMSprop"),
        (lambda p: _MyAdam(p), r"_MyAdam"),
        (lambda p: torch.optim.Adam(p, amsgrad=True), r"Adam with amsgrad=True"),
        (lambda p: torch.optim.AdamW(p, amsgrad=True), r"AdamW with amsgrad=True"),
        (lambda p: torch.optim.Adam(p, maximize=True), r"Adam with maximize=True"),
        (lambda p: torch.optim.SGD(p, lr=0.1, maximize=True), r"SGD with maximize=True"),
        (
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1),
            r"SGD momentum=0\.9 with dampening=0\.1",
        ),
        (
            lambda p: torch.optim.SGD(
                [{"params": p}, {"params": [torch.nn.Parameter(torch.zeros(2))]}], lr=0.1
            ),
            r"SGD with 2 parameter groups",
        ),
    ],
)
def test_the_guard_refuses_what_the_model_does_not_represent(make, message: str) -> None:
    with pytest.raises(UnsupportedError, match=message) as error:
        check_supported(make(_params()), "metagradients")
    assert str(error.value).startswith("metagradients: ")
    assert "supported" in str(error.value)


def test_the_guard_accepts_and_reads_the_supported_configurations() -> None:
    assert check_supported(torch.optim.SGD(_params(), lr=0.1)) == OptimizerModel("sgd")
    # Dampening without momentum is never used by torch.
    assert check_supported(torch.optim.SGD(_params(), lr=0.1, dampening=0.5)).momentum == 0
    nesterov = check_supported(
        torch.optim.SGD(_params(), lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.1)
    )
    assert (nesterov.momentum, nesterov.nesterov, nesterov.weight_decay) == (0.8, True, 0.1)
    adam = check_supported(torch.optim.Adam(_params(), betas=(0.8, 0.99), eps=1e-6))
    assert (adam.kind, adam.betas, adam.eps) == ("adam", (0.8, 0.99), 1e-6)
    assert check_supported(torch.optim.AdamW(_params())).kind == "adamw"
    decoupled = torch.optim.Adam(_params(), weight_decay=0.1, decoupled_weight_decay=True)
    assert check_supported(decoupled).kind == "adamw"


def test_a_flat_state_needs_one_adam_step_count() -> None:
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.Adam(params)
    params[0].grad = torch.ones(3)
    optimizer.step()  # params[1] has no gradient: torch leaves its state empty
    with pytest.raises(UnsupportedError, match=r"different step counts \[0\.0, 1\.0\]"):
        check_supported(optimizer).flat_state(optimizer, params)


def test_every_user_of_the_model_goes_through_the_guard() -> None:
    """TracIn, metagradients and stage effects refuse an unsupported optimiser alike,
    each saying who refused."""
    policy, data, context = _linear_problem("sgd")
    policy.optimizer = torch.optim.RMSprop(policy.parameters(), lr=0.01)
    tensors, meta = capture_checkpoint(policy)
    data = IterationData(0, data.records, data.plan, tensors, meta)
    target = ReturnTarget()
    with pytest.raises(UnsupportedError, match=r"^TracIn.*RMSprop.*method='snapshot'"):
        tracin_scores(data, policy, target, context, params="all")
    with pytest.raises(UnsupportedError, match=r"^metagradients: .*RMSprop"):
        metagradient_scores(data, policy, target, context)
    final, _ = capture_checkpoint(policy)
    with pytest.raises(UnsupportedError, match=r"^stage effects: .*RMSprop"):
        estimate_stage_effects([data], final, policy, target, context, [], ground_truth=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adams_denominator_has_a_finite_derivative_where_v_is_zero(dtype: torch.dtype) -> None:
    """A parameter that never had a gradient has v = 0 exactly; √ has an infinite slope
    there, and 0 × inf poisons a metagradient with NaN, in fp64 as much as in fp32."""
    model = OptimizerModel("adam")
    v = torch.tensor([0.0, 1e-6, 4.0], dtype=dtype, requires_grad=True)
    denominator = model._denominator(v, step=3.0)
    (torch.zeros(3, dtype=dtype) * denominator).sum().backward()  # the chain rule's 0 × slope
    assert torch.isfinite(v.grad).all()
    # The guard touches only v = 0: the other entries are what they are without a zero
    # beside them, bit for bit.
    alone = model._denominator(v.detach()[1:], step=3.0)
    assert torch.equal(denominator.detach()[1:], alone)
