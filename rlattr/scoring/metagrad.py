"""Metagradient scores: the exact derivative of the target after the update w.r.t. record weights.

docs/science.md §2. Every record gets a weight w_i in the replayed update of iteration k (the
minibatch loss Σ w_i ℓ_i / Σ w_i with w-weighted advantage normalisation, so w_i = 0 is
removal). With the plan fixed, w ↦ θ_{k+1}(w) is a deterministic, piecewise-smooth map,
and the score is +∂f(θ_{k+1}(w))/∂w_i at w = 1, obtained here by reverse-mode
differentiation through the replayed optimiser steps: gradient-norm clipping, Adam's
moments, bias correction and ε (or SGD momentum), ratio clipping and value loss included.

The replay is functional (parameters are graph tensors, the optimiser is torch's formulas
as tensor arithmetic: ``rlattr.scoring.optimizers``), so it reproduces the logged θ_{k+1}
to float rounding, not bit for bit; ``metagradient_scores`` reports that difference.

Memory: the graph of every step grows with the number of steps, so by default the replay
is differentiated within ``DEFAULT_MEMORY_BUDGET`` (256 MiB) of graph memory: one graph
when it fits, else segments recomputed during the backward pass, as long as the budget
allows (``rlattr.scoring.graph_memory``). Segmenting changes memory and time, not the
scores (beyond float rounding).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.record.checkpoint import restore_checkpoint
from rlattr.record.loss import weighted_minibatch_loss
from rlattr.record.replay import IterationData, refuse_weighted
from rlattr.scoring.grads import substituted_parameters
from rlattr.scoring.graph_memory import (
    DEFAULT_MEMORY_BUDGET,
    MemoryBudget,
    ReplayMemory,
    SavedTensorMeter,
    budget_bytes,
    choose_segments,
    describe,
    tensor_bytes,
)
from rlattr.scoring.optimizers import check_supported
from rlattr.scoring.targets import Target, TargetContext


@dataclass
class MetagradResult:
    """Scores and diagnostics of one metagradient computation.

    Attributes:
        scores: ``[N]`` ∂f/∂w_i at w = 1 (positive = the record's presence raises f).
        target_value: f(θ_{k+1}) of the functional replay.
        max_abs_param_error: largest |θ_{k+1} (functional) − θ_{k+1} (logged replay)|
            over all parameters, if the logged end state was given.
        segment_steps: the segment length used (None: one graph of every step).
        memory: the measured pieces of the graph memory, when the memory budget chose
            the segment length (None when it was given or there was no budget).
    """

    scores: torch.Tensor
    target_value: float
    max_abs_param_error: float | None = None
    segment_steps: int | None = None
    memory: ReplayMemory | None = None


FLAT = "θ"  # the key of the flat parameter vector in the functional replay


class _FunctionalOptimizer:
    """The run's optimiser as differentiable arithmetic over one flat parameter vector.

    The arithmetic is ``OptimizerModel.step`` (``rlattr.scoring.optimizers``); this class
    holds the state between steps and lets segments of the replay be recomputed.
    """

    def __init__(self, policy: ActorCriticPolicy, names: list[str]):
        self.model = check_supported(policy.optimizer, "metagradients")
        # One flat vector for all parameters: the optimiser's arithmetic then costs a
        # handful of tensor operations per step instead of a handful per parameter,
        # which dominates the functional replay of small networks.
        named = dict(policy.named_parameters())
        params = [named[name] for name in names]
        self.state = {FLAT: self.model.flat_state(policy.optimizer, params)}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state tensors that carry information between steps, keyed name/slot."""
        return {
            f"{name}/{slot}": value
            for name, slots in self.state.items()
            for slot, value in slots.items()
            if isinstance(value, torch.Tensor)
        }

    def snapshot(self) -> dict[str, dict[str, torch.Tensor | float | None]]:
        """A detached copy of the state (the start of a recomputed segment)."""
        return {
            name: {
                slot: value.detach().clone() if isinstance(value, torch.Tensor) else value
                for slot, value in slots.items()
            }
            for name, slots in self.state.items()
        }

    def load(self, snapshot: dict[str, dict[str, torch.Tensor | float | None]]) -> None:
        """Continue from ``snapshot``; its tensors become differentiable leaves."""
        self.state = {
            name: {
                slot: value.detach().clone().requires_grad_(True)
                if isinstance(value, torch.Tensor)
                else value
                for slot, value in slots.items()
            }
            for name, slots in snapshot.items()
        }

    def step(
        self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], lr: float
    ) -> dict[str, torch.Tensor]:
        """One step of every parameter vector; the state moves on with it."""
        updated = {}
        for name, param in params.items():
            updated[name], self.state[name] = self.model.step(
                param, grads[name], self.state[name], lr
            )
        return updated


def metagradient_scores(
    data: IterationData,
    policy: ActorCriticPolicy,
    target: Target,
    context: TargetContext,
    normalization: str = "weights",
    end_state: dict[str, torch.Tensor] | None = None,
    at: torch.Tensor | None = None,
    segment_steps: int | None = None,
    memory_budget: MemoryBudget = DEFAULT_MEMORY_BUDGET,
) -> MetagradResult:
    """+∂f(θ_{k+1}(w))/∂w_i at w = 1 for every record of a logged iteration.

    Args:
        data: the logged iteration (records, plan, start checkpoint).
        policy: a policy built by ``rlattr.record.build_policy`` (its state is overwritten with
            the start checkpoint; its parameters are not updated).
        target, context: the behaviour f and what it needs.
        normalization: ``"weights"`` (minibatch loss Σwℓ/Σw: w_i = 0 is removal) or
            ``"count"`` (Σwℓ/|b|: the counterfactual first-order scores describe).
        end_state: the logged θ_{k+1} (a checkpoint's tensors), to report the replay error.
        at: the weights to differentiate at (default: all ones, the logged update).
        segment_steps: an integer S keeps only the parameters and optimiser state at
            every S-th step and recomputes each segment's graph during the backward pass:
            memory ~ one segment's graph plus the stored states, for about one more
            forward pass. Same scores up to float rounding. ``None`` (default): chosen
            from ``memory_budget``.
        memory_budget: with ``segment_steps=None``, the graph memory to stay within:
            bytes, a size such as ``"256MiB"`` or ``"1GiB"``, or ``None``/``"none"``:
            no limit, the graph of every step kept (fastest, memory grows with the
            steps). The graphs of two optimiser steps (on the largest minibatch) and of
            the target are measured first (``SavedTensorMeter``; ``result.memory``),
            then the whole graph is kept if it fits, else the longest segment whose
            estimated peak fits is used (``choose_segments``); if none fits, the
            smallest estimate is used with a ``RuntimeWarning``. The budget bounds the
            bytes graphs hold (saved tensors), not the process's resident memory.
    """
    refuse_weighted(data, "metagradient")
    if segment_steps is not None and segment_steps < 1:
        raise ValueError(f"segment_steps must be >= 1 or None, got {segment_steps}")
    budget = budget_bytes(memory_budget)
    restore_checkpoint(policy, data.start_tensors, data.start_meta)
    policy.set_training_mode(True)
    device = next(policy.parameters()).device
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    named = dict(policy.named_parameters())
    optimizer = _FunctionalOptimizer(policy, names)
    records = data.records.to(device)
    dtype = named[names[0]].dtype
    if at is None:
        weights = torch.ones(len(records), dtype=dtype, device=device, requires_grad=True)
    else:
        weights = at.to(device=device, dtype=dtype).detach().clone().requires_grad_(True)
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]

    def unflatten(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = torch.split(flat, sizes)
        return {n: v.view(shape) for n, v, shape in zip(names, pieces, shapes, strict=True)}

    params = {FLAT: torch.cat([named[n].detach().reshape(-1) for n in names]).requires_grad_(True)}
    config = data.plan.loss_config
    learning_rates = data.plan.learning_rates.tolist()
    steps = [indices.to(device) for indices in data.plan.minibatches()]

    def run(params: dict[str, torch.Tensor], first: int, last: int, graph: bool):
        """Optimiser steps [first, last) from ``params`` and ``optimizer``'s state."""
        for step in range(first, last):
            indices = steps[step]
            batch = records.minibatch(indices)
            step_weights = weights[indices] if graph else weights[indices].detach()
            with substituted_parameters(policy, unflatten(params[FLAT])):
                terms = weighted_minibatch_loss(policy, batch, config, step_weights, normalization)
            grads = torch.autograd.grad(
                terms.loss, list(params.values()), create_graph=graph, allow_unused=True
            )
            grads = {
                n: (g if g is not None else torch.zeros_like(params[n]))
                for n, g in zip(params, grads, strict=True)
            }
            if math.isfinite(config.max_grad_norm):
                norm = torch.sqrt(sum((g * g).sum() for g in grads.values()))
                coef = torch.clamp(config.max_grad_norm / (norm + 1e-6), max=1.0)
                grads = {n: g * coef for n, g in grads.items()}
            if graph:
                params = optimizer.step(params, grads, learning_rates[step])
            else:
                with torch.no_grad():
                    params = optimizer.step(params, grads, learning_rates[step])
                params = {n: v.requires_grad_(True) for n, v in params.items()}
        return params

    memory = None
    if segment_steps is None and budget is not None and len(steps) > 1:
        memory = _measure(
            policy, optimizer, params, unflatten, run, steps, lambda: target.value(policy, context)
        )
        choice = choose_segments(memory, budget)
        if not choice.fits:
            warnings.warn(
                f"metagradient: no segment length fits the memory budget; using "
                f"{describe(choice, budget)}",
                RuntimeWarning,
                stacklevel=2,
            )
        segment_steps = choice.segment_steps
    if segment_steps is None:
        params = run(params, 0, len(steps), graph=True)
        with substituted_parameters(policy, unflatten(params[FLAT])):
            value = target.value(policy, context)
        (scores,) = torch.autograd.grad(value, weights)
    else:
        # Forward without graphs, keeping each segment's starting state; then, segment by
        # segment from the last, rebuild its graph and pull the adjoint of (θ, optimiser
        # state) back through it, collecting ∂f/∂w on the way.
        segments = list(itertools.pairwise([*range(0, len(steps), segment_steps), len(steps)]))
        starts = []
        for first, last in segments:
            starts.append(
                ({n: v.detach().clone() for n, v in params.items()}, optimizer.snapshot())
            )
            params = run(params, first, last, graph=False)
        params = {n: v.detach().requires_grad_(True) for n, v in params.items()}
        with substituted_parameters(policy, unflatten(params[FLAT])):
            value = target.value(policy, context)
        grads = torch.autograd.grad(value, list(params.values()), allow_unused=True)
        adjoint = {
            n: g if g is not None else torch.zeros_like(params[n])
            for n, g in zip(params, grads, strict=True)
        }
        scores = torch.zeros_like(weights)
        while segments:  # from the last; each start is dropped once its segment is done
            first, last = segments.pop()
            start_params, start_state = starts.pop()
            leaves = {n: v.requires_grad_(True) for n, v in start_params.items()}
            optimizer.load(start_state)
            state_in = optimizer.tensors()
            out = run(dict(leaves), first, last, graph=True)
            state_out = optimizer.tensors()
            outputs = [*out.values(), *state_out.values()]
            upstream = [adjoint[n] for n in out] + [
                adjoint.get(key, torch.zeros_like(v)) for key, v in state_out.items()
            ]
            inputs = [*leaves.values(), *state_in.values()]
            grads = torch.autograd.grad(outputs, [*inputs, weights], upstream, allow_unused=True)
            adjoint = {
                key: g if g is not None else torch.zeros_like(v)
                for key, g, v in zip([*leaves, *state_in], grads[:-1], inputs, strict=True)
            }
            if grads[-1] is not None:
                scores = scores + grads[-1]
    error = None
    if end_state is not None:
        final = unflatten(params[FLAT].detach().cpu())
        error = max(
            float((final[n] - end_state["policy." + n].to(dtype)).abs().max()) for n in names
        )
    return MetagradResult(scores.detach(), float(value.detach()), error, segment_steps, memory)


def _measure(
    policy: ActorCriticPolicy,
    optimizer: _FunctionalOptimizer,
    params: dict[str, torch.Tensor],
    unflatten: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    run: Callable[..., dict[str, torch.Tensor]],
    steps: list[torch.Tensor],
    target_value: Callable[[], torch.Tensor],
) -> ReplayMemory:
    """Measure a two-step chain's graph and the target's, then throw them away.

    Both steps use the largest minibatch (a step's graph grows with its minibatch, so
    this bounds every step), from the start state. What the chain holds after one step
    and after two gives the bytes each further step adds and the chain's fixed part; the
    meter's peak above the two-step chain is what a step holds only while it is built.
    The target is evaluated at the start parameters (its graph depends on shapes, not
    values). Costs two steps and one target forward more than the replay itself.
    """
    largest = max(range(len(steps)), key=lambda step: len(steps[step]))
    state = dict(optimizer.state)  # step() replaces the entries, never changes them
    with SavedTensorMeter() as meter:
        first = run(dict(params), largest, largest + 1, graph=True)
        one = meter.live
        second = run(first, largest, largest + 1, graph=True)
        two = meter.live
        del first, second
    optimizer.state = state  # also lets go of the chain's graph, which the state held
    step_bytes = max(two - one, 0)
    base_bytes = max(one - step_bytes, 0)
    transient_bytes = max(meter.peak - two, 0)
    with SavedTensorMeter() as meter, substituted_parameters(policy, unflatten(params[FLAT])):
        target_value()
    stored = tensor_bytes(params.values()) + tensor_bytes(optimizer.tensors().values())
    return ReplayMemory(len(steps), step_bytes, stored, meter.peak, base_bytes, transient_bytes)
