"""The one optimiser model: every supported optimiser's step, in the three forms rlattr uses.

Supported: ``torch.optim.SGD`` (momentum without dampening, Nesterov, L2 weight decay),
``torch.optim.Adam`` (L2 weight decay) and ``torch.optim.AdamW`` (decoupled weight decay;
also ``Adam(decoupled_weight_decay=True)``), one parameter group, no ``amsgrad`` and no
``maximize``. ``check_supported`` is the single guard: it refuses everything else with a
message naming it, and returns the ``OptimizerModel`` that the three forms hang on:

(a) ``OptimizerModel.step``: the functional, differentiable step (metagradients). It is
    torch's update as tensor arithmetic, returning new tensors instead of updating in place.
(b) ``OptimizerModel.linearised_step``: the tangent of one step (stage effects, docs/science.md
    §4). A parameter difference e, a first-slot difference (momentum buffer / Adam's m) and,
    at second order, a second-moment difference are carried through the step. First order
    keeps only what does not depend on the data (learning rate, weight decay, momentum,
    Adam's 1/D with v̂ from the run); second order adds a gradient perturbation δg (a
    Hessian-vector product) and, for Adam, its effect on v (δv = 2 g ⊙ δg) and on √v̂.
(c) ``OptimizerModel.displacement_multipliers`` / ``slot_multipliers``: how a unit gradient
    at step t moves θ (and the first slot) by the end of a span of steps, v̂ held fixed
    (replay TracIn, docs/science.md §2, and the per-record split of a stage).

All three are built from the same primitives (weight decay, the first moment, Adam's
second moment and denominator), so each formula is written once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.errors import UnsupportedError
from rlattr.record.replay import IterationData, replay

Kind = Literal["sgd", "adam", "adamw"]

# torch's names of the optimiser state slots (also the keys of checkpoints' ``optim.*``).
MOMENTUM_BUFFER = "momentum_buffer"
EXP_AVG = "exp_avg"
EXP_AVG_SQ = "exp_avg_sq"
STEP = "step"

SUPPORTED = (
    "SGD (momentum without dampening, Nesterov, weight decay), Adam (L2 weight decay) and "
    "AdamW, with one parameter group and neither amsgrad nor maximize"
)

# Exact classes: a subclass may override ``step`` with arithmetic this model does not know.
_KINDS: dict[type, Kind] = {
    torch.optim.SGD: "sgd",
    torch.optim.Adam: "adam",
    torch.optim.AdamW: "adamw",
}

Multiplier = float | dict[str, torch.Tensor]
"""A step's gradient → displacement map: a scalar (SGD) or per-parameter tensors (Adam)."""


@dataclass(frozen=True)
class Tangent:
    """A perturbation of one parameter tensor's trajectory, carried from step to step.

    Attributes:
        theta: the parameter difference e.
        slot: the first-slot difference (SGD's momentum buffer, Adam's m).
        second: Adam's second-moment difference δv (moved by second order only).
    """

    theta: torch.Tensor
    slot: torch.Tensor
    second: torch.Tensor


@dataclass(frozen=True)
class OptimizerModel:
    """The hyperparameters of a supported optimiser and its step in three forms.

    Build it with ``check_supported`` (which refuses what the model cannot represent).
    Learning rates are not part of the model: the update plan logs one per step.

    Attributes:
        kind: ``"sgd"``, ``"adam"`` (L2 weight decay) or ``"adamw"`` (decoupled decay).
        weight_decay: λ.
        momentum: SGD's μ (0: plain SGD).
        nesterov: SGD's Nesterov momentum.
        betas: Adam's (β₁, β₂).
        eps: Adam's ε.
    """

    kind: Kind
    weight_decay: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    # ------------------------------------------------------------------ what the state is
    @property
    def preconditioned(self) -> bool:
        """Adam and AdamW scale each coordinate by 1/D from the second moment; SGD does not."""
        return self.kind != "sgd"

    @property
    def first_slot(self) -> str:
        """torch's name of the state the gradient accumulates in: momentum buffer or m."""
        return MOMENTUM_BUFFER if self.kind == "sgd" else EXP_AVG

    @property
    def second_slot(self) -> str | None:
        """torch's name of Adam's second moment v (None for SGD)."""
        return EXP_AVG_SQ if self.preconditioned else None

    def flat_state(
        self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor | float]:
        """``optimizer``'s current state of ``params`` as one flat vector per slot.

        The state ``step`` takes and returns. A missing slot (a fresh optimiser) is zero,
        which is what torch's first step makes of it. Plain SGD has no state.

        Raises:
            UnsupportedError: Adam parameters at different step counts (one flat state
                has one bias correction).
        """
        stored = [optimizer.state.get(param, {}) for param in params]

        def flat(slot: str) -> torch.Tensor:
            return torch.cat(
                [
                    (state[slot] if state.get(slot) is not None else torch.zeros_like(param))
                    .detach()
                    .reshape(-1)
                    for param, state in zip(params, stored, strict=True)
                ]
            )

        if not self.preconditioned:
            return {MOMENTUM_BUFFER: flat(MOMENTUM_BUFFER)} if self.momentum else {}
        steps = {float(state.get(STEP, 0.0)) for state in stored}
        if len(steps) != 1:
            raise UnsupportedError(
                f"Adam parameters at different step counts {sorted(steps)} are not supported"
            )
        return {STEP: steps.pop(), EXP_AVG: flat(EXP_AVG), EXP_AVG_SQ: flat(EXP_AVG_SQ)}

    # ------------------------------------------------------------------ shared primitives
    def _moment_coefficients(self) -> tuple[float, float]:
        """(decay, gain) of the first slot: slot ← decay · slot + gain · g."""
        if self.preconditioned:
            beta1 = self.betas[0]
            return beta1, 1 - beta1
        return self.momentum, 1.0

    def _weight_decay(
        self, param: torch.Tensor, grad: torch.Tensor, lr: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(θ, g) after weight decay: AdamW shrinks θ, the others add λθ to the gradient.

        Linear in (θ, g), so it maps tangents (e, δg) exactly as it maps values.
        """
        if not self.weight_decay:
            return param, grad
        if self.kind == "adamw":
            return param * (1 - lr * self.weight_decay), grad
        return param, grad + self.weight_decay * param

    def _first_moment(
        self, slot: torch.Tensor | None, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(first slot after the step, the step's direction before Adam's 1/D).

        Linear in (slot, g): the same map for values and tangents. Plain SGD has no slot.
        """
        if not self.preconditioned and not self.momentum:
            return slot, grad
        decay, gain = self._moment_coefficients()
        moment = decay * slot + gain * grad
        # Nesterov: θ −= η (g + μ b), the gradient itself plus the buffer.
        return moment, (grad + decay * moment if self.nesterov else moment)

    def _second_moment(self, second: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
        """v ← β₂ v + (1 − β₂) · square (g ⊙ g for values, 2 g ⊙ δg for tangents)."""
        beta2 = self.betas[1]
        return beta2 * second + (1 - beta2) * square

    def _root(self, exp_avg_sq: torch.Tensor, step: float) -> torch.Tensor:
        """√v̂ = √(v / (1 − β₂ⁿ)) after n steps."""
        # sqrt has an infinite derivative at 0: a parameter that never had a gradient
        # (a dead ReLU unit, an unused head) has v = 0 exactly, and 0 × inf is NaN in a
        # backward pass. The smallest normal number of the dtype keeps the chain rule
        # finite and changes no value that is not already 0 (ε dwarfs its square root).
        # The mask is cast to v's dtype before the multiplication: a bool tensor times a
        # Python float is float32, where fp64's tiny rounds to 0 (no guard at all).
        tiny = torch.finfo(exp_avg_sq.dtype).tiny
        guarded = exp_avg_sq + (exp_avg_sq == 0).to(exp_avg_sq.dtype) * tiny
        return torch.sqrt(guarded) / math.sqrt(1 - self.betas[1] ** step)

    def _denominator(self, exp_avg_sq: torch.Tensor, step: float) -> torch.Tensor:
        """D = (1 − β₁ⁿ)(√v̂ + ε): Adam's step n moves θ by −η m / D."""
        return (1 - self.betas[0] ** step) * (self._root(exp_avg_sq, step) + self.eps)

    def _denominator_tangent(
        self, exp_avg_sq: torch.Tensor, second: torch.Tensor, step: float
    ) -> torch.Tensor:
        """δD for a second-moment change δv: (1 − β₁ⁿ) δv / (2 (1 − β₂ⁿ) √v̂)."""
        # Where v = 0 its gradient was 0 and so is δv; the guarded root keeps 0/0 away.
        bias2 = 1 - self.betas[1] ** step
        root = self._root(exp_avg_sq, step)
        return (1 - self.betas[0] ** step) * second / (2 * bias2 * root)

    # ------------------------------------------------------------------ (a) functional
    def step(
        self,
        param: torch.Tensor,
        grad: torch.Tensor,
        state: Mapping[str, torch.Tensor | float],
        lr: float,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """One optimiser step as differentiable arithmetic (torch's formulas, not in place).

        Args:
            param: θ_t.
            grad: the gradient the step uses (after gradient-norm clipping).
            state: the state before the step, as ``flat_state`` makes it (torch's slots).
            lr: η_t.

        Returns:
            θ_{t+1} and the state after the step (a new dict; ``state`` is not changed).
        """
        param, grad = self._weight_decay(param, grad, lr)
        new_state = dict(state)
        slot, direction = self._first_moment(state.get(self.first_slot), grad)
        if slot is not None:
            new_state[self.first_slot] = slot
        if self.preconditioned:
            step = float(state[STEP]) + 1
            exp_avg_sq = self._second_moment(state[EXP_AVG_SQ], grad * grad)
            new_state[STEP], new_state[EXP_AVG_SQ] = step, exp_avg_sq
            direction = direction / self._denominator(exp_avg_sq, step)
        return param - lr * direction, new_state

    # ------------------------------------------------------------------ (b) linearised
    def linearised_step(
        self,
        tangent: Tangent,
        lr: float,
        state: Mapping[str, Any],
        gradient_change: torch.Tensor | None = None,
        gradient: torch.Tensor | None = None,
        param: torch.Tensor | None = None,
    ) -> Tangent:
        """Carry a perturbation of one parameter tensor through one step: e ← A_t e.

        First order (``gradient_change`` None) is docs/science.md §4's recursion: the data's
        gradient is held fixed, only weight decay, momentum / m and Adam's 1/D (with v̂
        from the run) act. Second order is the exact tangent of the step for a gradient
        change δg: Adam's second moment moves too, δv = 2 g ⊙ δg with g the decayed
        gradient the step used, and δ√v̂ changes the denominator.

        Args:
            tangent: the perturbation before the step.
            lr: η_t.
            state: torch's optimiser state of this parameter *after* the step (Adam's m,
                v and step count; unused for SGD).
            gradient_change: δg, the data's gradient change at this step (a Hessian-vector
                product, after gradient-norm clipping's derivative); None for first order.
            gradient, param: second order with Adam: the clipped gradient the step used
                (before weight decay) and θ_t, for δv.

        Returns:
            The perturbation after the step (a new ``Tangent``; differentiable).
        """
        second_order = gradient_change is not None
        if gradient_change is None:
            gradient_change = torch.zeros_like(tangent.theta)
        theta, change = self._weight_decay(tangent.theta, gradient_change, lr)
        slot, direction = self._first_moment(tangent.slot, change)
        second = tangent.second
        if self.preconditioned:
            step = float(state[STEP])
            exp_avg_sq = state[EXP_AVG_SQ]
            denominator = self._denominator(exp_avg_sq, step)
            direction = direction / denominator
            if second_order:
                if gradient is None or param is None:
                    raise ValueError("second order with Adam needs the gradient and θ_t")
                _, used = self._weight_decay(param, gradient, lr)
                second = self._second_moment(second, 2 * used * change)
                d_denominator = self._denominator_tangent(exp_avg_sq, second, step)
                direction = direction - state[EXP_AVG] * d_denominator / denominator**2
        return Tangent(theta - lr * direction, slot, second)

    # ------------------------------------------------------------------ (c) multipliers
    def step_denominator(self, state: Mapping[str, Any]) -> torch.Tensor:
        """Adam's D = (1 − β₁ⁿ)(√v̂ + ε) from torch's state after a step (the
        per-coordinate divisor of that step's move)."""
        if not self.preconditioned:
            raise ValueError("SGD has no denominator")
        return self._denominator(state[EXP_AVG_SQ], float(state[STEP]))

    def displacement_multipliers(
        self,
        learning_rates: Sequence[float],
        denominators: Sequence[Mapping[str, torch.Tensor]] | None = None,
    ) -> list[Multiplier]:
        """u_t: how far a unit gradient at step t moves θ by the end of the steps.

        θ_T changes by −u_t ⊙ δg_t for a gradient change δg_t at step t, with later
        gradients and Adam's v̂ held fixed (docs/science.md §2): η_t for plain SGD,
        Σ_{s≥t} η_s μ^{s−t} with momentum (Nesterov adds the step's own η_t),
        (1 − β₁) Σ_{s≥t} η_s β₁^{s−t} / D_s for Adam. Weight decay is not included: a
        record's gradient contribution is counted as it enters.

        Args:
            learning_rates: η_t of every step.
            denominators: Adam: each step's ``step_denominator`` per parameter name.

        Returns:
            One multiplier per step: floats (SGD) or per-parameter tensors (Adam).
        """
        if not self.preconditioned:
            return list(self._impulse_response(list(learning_rates)))
        if denominators is None or len(denominators) != len(learning_rates):
            raise ValueError("Adam's multipliers need one denominator per step")
        names = list(denominators[0]) if denominators else []
        per_name = {
            name: self._impulse_response(
                [lr / d[name] for lr, d in zip(learning_rates, denominators, strict=True)]
            )
            for name in names
        }
        return [{name: per_name[name][t] for name in names} for t in range(len(learning_rates))]

    def stacked_displacement_multipliers(
        self,
        learning_rates: Sequence[float],
        exp_avg_sqs: Sequence[torch.Tensor],
        step_counts: Sequence[float],
    ) -> torch.Tensor:
        """Adam's ``displacement_multipliers`` from each step's state, as one ``[T, ...]``
        tensor: the same numbers bit for bit (tested), computed in place.

        ``displacement_multipliers(lrs, [{n: step_denominator(state_t)}])`` allocates a
        fresh tensor for every operation of every step; for a wide network that memory
        traffic costs as much as the optimiser steps themselves (live TracIn needs all T
        multipliers of every coordinate after each update). Here every operation is the
        one ``_denominator`` and ``_impulse_response`` apply, in the same order, written
        into preallocated memory.

        Args:
            learning_rates: η_t of every step.
            exp_avg_sqs: Adam's v after each step (one tensor per step, same shape).
            step_counts: Adam's step count after each step.
        """
        if not self.preconditioned:
            raise ValueError("SGD's multipliers are numbers: use displacement_multipliers")
        n_steps = len(learning_rates)
        if len(exp_avg_sqs) != n_steps or len(step_counts) != n_steps:
            raise ValueError("one second moment and one step count per step")
        if n_steps == 0:
            return torch.zeros(0)
        beta1, beta2 = self.betas
        decay, gain = self._moment_coefficients()
        first = exp_avg_sqs[0]
        out = torch.empty((n_steps, *first.shape), dtype=first.dtype, device=first.device)
        tail = torch.zeros_like(first)
        step_size = torch.empty_like(first)
        # _root's guard: v = 0 becomes the dtype's smallest normal number.
        guard = torch.finfo(first.dtype).tiny
        for t in reversed(range(n_steps)):
            n = float(step_counts[t])
            # _root: v + guard where v = 0, √, ÷ √(1 − β₂ⁿ).
            step_size.copy_(exp_avg_sqs[t]).masked_fill_(exp_avg_sqs[t] == 0, guard)
            step_size.sqrt_().div_(math.sqrt(1 - beta2**n))
            # _denominator: (1 − β₁ⁿ)(√v̂ + ε); then η_t / D_t (torch's rdiv: 1/D · η).
            step_size.add_(self.eps).mul_(1 - beta1**n).reciprocal_().mul_(learning_rates[t])
            # _impulse_response: tail_t = η_t/D_t + decay · tail_{t+1}; u_t = gain · tail_t.
            tail.mul_(decay).add_(step_size)
            torch.mul(tail, gain, out=out[t])
        return out

    def _impulse_response(self, step_sizes: list[Any]) -> list[Any]:
        """u_t for per-step step sizes η_t (SGD) or η_t / D_t (Adam), by the backward
        recursion tail_t = step_t + decay · tail_{t+1} of the first slot."""
        decay, gain = self._moment_coefficients()
        tail: Any = 0.0
        response: list[Any] = [0.0] * len(step_sizes)
        for t in reversed(range(len(step_sizes))):
            tail = step_sizes[t] + decay * tail
            response[t] = step_sizes[t] + decay * gain * tail if self.nesterov else gain * tail
        return response

    def slot_multipliers(self, n_steps: int) -> list[float]:
        """How much a unit gradient at step t adds to the first slot (momentum buffer or
        m) by the end of ``n_steps`` steps: gain · decay^{T−1−t} (0 for plain SGD)."""
        if not self.preconditioned and not self.momentum:
            return [0.0] * n_steps
        decay, gain = self._moment_coefficients()
        return [gain * decay ** (n_steps - 1 - t) for t in range(n_steps)]


def check_supported(
    optimizer: torch.optim.Optimizer, purpose: str = "rlattr's optimiser model", hint: str = ""
) -> OptimizerModel:
    """The one guard: the model of ``optimizer``, or an error naming what is not supported.

    Args:
        optimizer: the run's torch optimiser (its hyperparameters are read, not changed).
        purpose: who asks, for the message (e.g. ``"metagradients"``).
        hint: appended to the message (e.g. a method that works without the model).

    Raises:
        UnsupportedError: an optimiser class other than SGD, Adam and AdamW (subclasses
            included), several parameter groups, ``amsgrad``, ``maximize``, or SGD
            momentum with dampening.
    """

    def refuse(problem: str) -> UnsupportedError:
        return UnsupportedError(f"{purpose}: {problem} is not supported; {SUPPORTED}{hint}")

    cls = type(optimizer)
    kind = _KINDS.get(cls)
    if kind is None:
        raise refuse(f"the optimiser {cls.__module__}.{cls.__qualname__}")
    groups = optimizer.param_groups
    if len(groups) != 1:
        raise refuse(f"{cls.__name__} with {len(groups)} parameter groups")
    group = groups[0]
    for flag in ("amsgrad", "maximize"):
        if group.get(flag):
            raise refuse(f"{cls.__name__} with {flag}=True")
    weight_decay = float(group.get("weight_decay", 0.0))
    if kind == "sgd":
        momentum, dampening = float(group["momentum"]), float(group["dampening"])
        if momentum and dampening:
            raise refuse(f"SGD momentum={momentum} with dampening={dampening}")
        return OptimizerModel(
            "sgd", weight_decay=weight_decay, momentum=momentum, nesterov=bool(group["nesterov"])
        )
    if group.get("decoupled_weight_decay"):
        kind = "adamw"  # Adam(decoupled_weight_decay=True) is AdamW
    beta1, beta2 = (float(beta) for beta in group["betas"])
    return OptimizerModel(
        kind, weight_decay=weight_decay, betas=(beta1, beta2), eps=float(group["eps"])
    )


def step_multipliers(
    data: IterationData | Sequence[IterationData], policy: ActorCriticPolicy, names: list[str]
) -> list[Multiplier]:
    """The optimiser's per-step map u_t from a gradient to the parameter change it causes
    by the end of the iteration (or of a span of consecutive iterations: a stage).

    Adam's denominators come from one replay of the span (``policy`` is overwritten and
    ends after the span); SGD's multipliers need only the logged learning rates.
    """
    span = [data] if isinstance(data, IterationData) else list(data)
    model = check_supported(
        policy.optimizer, "TracIn and stage scores", hint="; use method='snapshot'"
    )
    learning_rates = [lr for d in span for lr in d.plan.learning_rates.tolist()]
    if not model.preconditioned:
        return model.displacement_multipliers(learning_rates)
    named = dict(policy.named_parameters())
    denominators: list[dict[str, torch.Tensor]] = []

    def record(step: int, indices: torch.Tensor) -> None:
        state = policy.optimizer.state
        denominators.append({n: model.step_denominator(state[named[n]]) for n in names})

    for d in span:
        replay(d, policy, after_step=record)
    return model.displacement_multipliers(learning_rates, denominators)
