"""TracIn during training: the replay TracIn score taken inside the real PPO update.

Replay TracIn (``rlattr.scoring.influence.tracin_scores``) replays an update and, at every
step t, runs an extra forward and backward pass over the minibatch to get the products
⟨∇f(θ_t), u_t ⊙ ∇ℓ_i(θ_t)⟩. The update's own backward pass already holds what those
products need: for a ``Linear`` layer with input a_i and output gradient g_i the record's
weight gradient is g_i a_iᵀ, so ⟨V, g_i a_iᵀ⟩ = g_iᵀ V a_i (the "ghost" contraction of
``rlattr.scoring.ghost``; ``Conv2d`` likewise through a convolution with V).
``LiveTracInScorer`` keeps a_i and g_i of every step (forward hooks, and tensor hooks on the
layer outputs, which observe and change nothing) and contracts them once the update has
ended, when the optimiser's multipliers u_t are known: Adam's u_t spreads a step's gradient
over the *later* steps, Σ_{s≥t} η_s (1−β₁) β₁^{s−t} / D_s, so the products cannot be
finished at step t.

The multipliers are replay TracIn's, from the one optimiser model
(``OptimizerModel.stacked_displacement_multipliers``: the numbers of
``displacement_multipliers``, bit for bit), with Adam's v read from the optimiser state
after each real step, exactly where ``step_multipliers`` reads it in its replay.
``log_std`` (SB3's Gaussian policies) is a bare parameter outside any layer: its per-record
gradient is the gradient of the distribution's scale σ_i (one row per record) times σ_i,
read from the same backward pass.

∇f is refreshed every m optimiser steps or at the first step of every epoch, on the whole
target or on a fixed random subsample of it (``SubsampledTarget``); replay TracIn with the
same schedule (``target_every``) gives the same scores to float precision (tested).

The scores describe the update that just ran: they are post hoc for a filter that decides
before the update (IIF), and serve diagnostics and record hooks (``ScoreHook``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.errors import UnsupportedError
from rlattr.record.plan import UpdatePlan
from rlattr.record.records import Records
from rlattr.record.replay import IterationData, replay
from rlattr.scoring.ghost import layer_dots
from rlattr.scoring.grads import ParamSelection, ghost_layers, gradient_vector, parameter_names
from rlattr.scoring.optimizers import EXP_AVG_SQ, STEP, check_supported
from rlattr.scoring.targets import ActionTarget, ReturnTarget, Target, TargetContext

METHOD = "tracin-live"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


# --------------------------------------------------------------------------- targets
class SubsampledTarget(Target):
    """A target evaluated on a fixed random subsample of its records or pairs.

    The subsample is the first ``size`` positions of a permutation drawn from
    ``torch.Generator().manual_seed(seed)``, so every evaluation within an update (every
    ∇f refresh) uses the same records. Supported: ``ReturnTarget`` with GAE advantages
    (own buffer or a validation set) and ``ActionTarget``; a target with no more than
    ``size`` records is used whole.

    Args:
        target: the target to subsample.
        size: how many records (return target) or pairs (action target) to keep.
        seed: the seed of the subsample.
    """

    def __init__(self, target: Target, size: int, seed: int = 0):
        if size < 1:
            raise ValueError(f"a target subsample needs at least one record, got size={size}")
        supported = isinstance(target, ActionTarget) or (
            isinstance(target, ReturnTarget) and target.advantage == "gae"
        )
        if not supported:
            raise UnsupportedError(
                f"cannot subsample the {target.identity!r} target: only the return target "
                "with GAE advantages and action targets have records to subsample "
                "(Monte-Carlo returns need whole episodes); use the full target"
            )
        self.target = target
        self.size = int(size)
        self.seed = int(seed)
        self.name = target.name

    @property
    def identity(self) -> str:
        """The inner target's identity with ``-sub<size>s<seed>``."""
        return f"{self.target.identity}-sub{self.size}s{self.seed}"

    def _positions(self, n: int, device: torch.device) -> torch.Tensor | None:
        if n <= self.size:
            return None
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(n, generator=generator)[: self.size].sort().values.to(device)

    def value(self, policy: ActorCriticPolicy, context: TargetContext) -> torch.Tensor:
        inner = self.target
        if isinstance(inner, ActionTarget):
            keep = self._positions(len(inner.actions), inner.actions.device)
            if keep is None:
                return inner.value(policy, context)
            return ActionTarget(inner.observations[keep], inner.actions[keep]).value(
                policy, context
            )
        assert isinstance(inner, ReturnTarget)
        records = inner.validation if inner.validation is not None else context.records
        keep = self._positions(len(records), records.device)
        if keep is None:
            return inner.value(policy, context)
        return ReturnTarget(_subset(records, keep)).value(policy, context)


def _subset(records: Records, keep: torch.Tensor) -> Records:
    """The records at ``keep`` as one environment's steps (the return target with GAE
    advantages reads only per-record fields; the GAE bootstrap inputs are kept as they are)."""
    per_record = {
        f.name: getattr(records, f.name)[keep]
        for f in fields(records)
        if f.name not in ("last_values", "last_dones", "iteration", "n_envs", "n_steps")
    }
    return Records(
        **per_record,
        last_values=records.last_values[:1],
        last_dones=records.last_dones[:1],
        iteration=records.iteration,
        n_envs=1,
        n_steps=len(keep),
    )


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class LiveTracIn:
    """What TracIn during training computes (validated on construction).

    Attributes:
        refresh: when ∇f is recomputed at the current parameters θ_t.
        target: the behaviour to explain; None is the return target on the same buffer.
        target_subsample: evaluate ∇f on this many randomly chosen target records (fixed
            for the whole update); None uses the whole target.
        subsample_seed: the seed of that subsample.
        params: the parameters the products are taken over (see ``parameter_names``).
    """

    refresh: Literal["epoch"] | int = field(
        default="epoch",
        metadata=_help(
            "'epoch': recompute ∇f at the first step of every epoch; an integer m: at every "
            "m-th optimiser step (1 is replay TracIn's definition, ∇f at every θ_t)"
        ),
    )
    target: Target | None = field(
        default=None,
        metadata=_help("the target f to explain; None is the return target on the same buffer"),
    )
    target_subsample: int | None = field(
        default=None,
        metadata=_help(
            "evaluate ∇f on a fixed random subsample of this many target records (cheaper "
            "refreshes); None: the whole target"
        ),
    )
    subsample_seed: int = field(default=0, metadata=_help("seed of the target subsample"))
    params: ParamSelection = field(
        default="policy", metadata=_help("parameters scored: 'policy', 'value' or 'all'")
    )

    def __post_init__(self) -> None:
        refresh = self.refresh
        if refresh != "epoch" and (
            isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 1
        ):
            raise ValueError(f"refresh must be 'epoch' or an integer >= 1, got {refresh!r}")
        if self.target_subsample is not None and self.target_subsample < 1:
            raise ValueError(f"target_subsample must be >= 1 or None, got {self.target_subsample}")
        if self.params not in ("policy", "value", "all"):
            raise ValueError(f"params must be 'policy', 'value' or 'all', got {self.params!r}")
        if self.target is not None and not isinstance(self.target, Target):
            raise TypeError(f"target must be a rlattr Target, got {type(self.target).__name__}")

    def resolved_target(self) -> Target:
        """The target ∇f is taken of (subsampled when asked)."""
        target = self.target if self.target is not None else ReturnTarget()
        if self.target_subsample is None:
            return target
        return SubsampledTarget(target, self.target_subsample, self.subsample_seed)

    @property
    def method(self) -> str:
        """The method part of the stored score name: ``tracin-live-epoch``, ``tracin-live-m8``."""
        return f"{METHOD}-epoch" if self.refresh == "epoch" else f"{METHOD}-m{self.refresh}"

    def describe(self) -> dict[str, Any]:
        """JSON metadata stored beside the scores."""
        return {
            "method": METHOD,
            "refresh": self.refresh,
            "target": self.resolved_target().identity,
            "target_subsample": self.target_subsample,
            "params": self.params,
        }


# --------------------------------------------------------------------------- capture
class _Call:
    """One forward call of a captured layer: its input, and its output gradient once the
    update's backward pass has produced it."""

    __slots__ = ("grad", "inputs", "output_shape")

    def __init__(self, inputs: torch.Tensor, output_shape: torch.Size):
        self.inputs = inputs
        self.output_shape = output_shape
        self.grad: torch.Tensor | None = None

    def output_grad(self) -> torch.Tensor:
        """The output gradient; zeros where the output did not reach the loss."""
        if self.grad is not None:
            return self.grad
        return self.inputs.new_zeros(self.output_shape)

    def keep_grad(self, grad: torch.Tensor) -> None:
        self.grad = grad


@dataclass
class _Step:
    indices: torch.Tensor
    calls: dict[str, list[_Call]]
    scale: _Call | None  # log_std: σ (as "inputs") and dL/dσ
    gradient: int  # which ∇f refresh this step uses


def _capture_layers(
    policy: ActorCriticPolicy, names: list[str]
) -> tuple[dict[str, torch.nn.Module], bool]:
    """The Linear/Conv2d layers holding the selected parameters, and whether ``log_std``
    is selected; any other parameter outside such layers is refused."""
    layers, leftover = ghost_layers(policy, names)
    log_std = "log_std" in leftover
    if log_std and not isinstance(policy.action_dist, DiagGaussianDistribution):
        raise UnsupportedError(
            f"live TracIn: log_std with {type(policy.action_dist).__name__} is not supported "
            "(only the diagonal Gaussian's); use replay TracIn (method='tracin')"
        )
    others = [n for n in leftover if n != "log_std"]
    if others:
        raise UnsupportedError(
            f"live TracIn: parameters {others} are neither in Linear/Conv2d layers nor "
            "log_std, so the update's backward pass does not give their per-record "
            "gradients; use replay TracIn (method='tracin')"
        )
    return layers, log_std


class LiveTracInScorer:
    """Collects one update's per-record factors and turns them into TracIn scores.

    Use: ``attach()`` before the update's first loss forward pass; pass ``epochs`` (a
    wrapper of the update's epoch iterable), ``before_step`` and ``after_step`` to
    ``rlattr.record.update.run_update`` (or ``replay``); ``detach()`` when the update
    ends (also on error); ``finish(plan)`` with the executed plan returns the scores.
    The policy's parameters, gradients and optimiser are only read: training with the
    scorer attached is bit-identical to training without it.

    ``before_step`` is ``collect`` then ``refresh``; several scorers on one update must all
    ``collect`` before any ``refresh`` (``rlattr.training.hooks.UpdateObservers`` does).
    Each captured layer must run once per loss forward pass on the minibatch (SB3's
    actor-critic policies do), and nothing else may run the policy between an optimiser
    step and the next minibatch's loss.

    Memory: every step's layer inputs and output gradients are kept until ``finish``,
    O(epochs × N × Σ layer widths): for LunarLander's 2×64 policy about 1 KB per record
    and epoch in float32 (22 MB for 2048 records × 10 epochs); with Adam also v and then
    the multipliers of every step, O(steps × policy parameters) (6.5 MB there).

    Args:
        policy: the policy being trained (with its optimiser).
        context: what the target needs (the iteration's buffer, γ, λ).
        config: refresh schedule, target and parameters.
    """

    def __init__(self, policy: ActorCriticPolicy, context: TargetContext, config: LiveTracIn):
        self.policy = policy
        self.context = context
        self.config = config
        self.target = config.resolved_target()
        self.model = check_supported(
            policy.optimizer, "live TracIn", hint="; use replay TracIn (method='tracin')"
        )
        self.names = parameter_names(policy, config.params)
        self.layers, self.log_std = _capture_layers(policy, self.names)
        named = dict(policy.named_parameters())
        self._params = [named[n] for n in self.names]
        self._handles: list[Any] = []
        self._capturing = False
        self._pending: dict[str, list[_Call]] = {}
        self._steps: list[_Step] = []
        # ∇f refreshes, each flattened over the selected parameters (in ``names`` order).
        self._gradients: list[torch.Tensor] = []
        self._epoch: int | None = None
        self._gradient_epoch: int | None = None
        # Adam: v (flattened like ∇f) and the step count after each step; D_s is computed
        # from them at the end, for all parameters at once (elementwise: the same numbers).
        self._second_moments: list[torch.Tensor] = []
        self._step_counts: list[float] = []
        # Where the scorer's own time goes (seconds), for benchmarks and curious users.
        self.seconds = {"gradient_refresh": 0.0, "finish": 0.0}

    # ------------------------------------------------------------------ the update's seams
    def attach(self) -> None:
        """Start capturing the layers' forward calls (the next loss forward pass)."""
        if self._handles:
            return
        for module_name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(module_name)))
        self._capturing = True

    def detach(self) -> None:
        """Stop capturing and remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._capturing = False

    def _forward_hook(self, module_name: str):
        def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not self._capturing or not output.requires_grad:
                return
            call = _Call(inputs[0].detach(), output.shape)
            output.register_hook(call.keep_grad)
            self._pending.setdefault(module_name, []).append(call)

        return hook

    def epochs(
        self, epochs: Iterable[tuple[int, Iterable[torch.Tensor]]]
    ) -> Iterator[tuple[int, Iterable[torch.Tensor]]]:
        """The update's epochs, passed through; tells the scorer when an epoch starts."""
        for epoch, minibatches in epochs:
            self._epoch = epoch
            yield epoch, minibatches

    def start_epoch(self, epoch: int) -> None:
        """Say that the next step belongs to ``epoch`` (when ``epochs`` cannot wrap them)."""
        self._epoch = epoch

    def before_step(self, step: int, indices: torch.Tensor) -> None:
        """At θ_t, after the minibatch's loss forward pass and before its backward pass:
        ``collect`` then ``refresh``."""
        self.collect(step, indices)
        self.refresh(step)

    def collect(self, step: int, indices: torch.Tensor) -> None:
        """Take what the minibatch's loss forward pass left (layer calls, the Gaussian's
        scale) and stop capturing. With several scorers on one update, every scorer must
        collect before any refreshes (a refresh runs the policy on the target)."""
        self._capturing = False
        calls, self._pending = self._pending, {}
        n = len(indices)
        for module_name, layer_calls in calls.items():
            if any(call.inputs.shape[0] != n for call in layer_calls):
                raise RuntimeError(
                    f"live TracIn: layer {module_name} ran on a batch other than step {step}'s "
                    f"{n} records since the last optimiser step; nothing but the minibatch's "
                    "loss may run the policy between steps"
                )
        scale = None
        if self.log_std:
            sigma = self.policy.action_dist.distribution.scale
            if sigma.shape[0] != n or not sigma.requires_grad:
                raise RuntimeError("live TracIn: the action distribution is not the loss's")
            scale = _Call(sigma.detach(), sigma.shape)
            sigma.register_hook(scale.keep_grad)
        self._steps.append(_Step(indices, calls, scale, -1))

    def refresh(self, step: int) -> None:
        """Recompute ∇f at θ_t if the schedule says so; the step uses the latest ∇f."""
        if self._refresh_due(step):
            # ∇f at θ_t: its forward pass is not captured (capturing is off until after_step).
            began = time.perf_counter()
            value = self.target.value(self.policy, self.context)
            gradient = gradient_vector(value, self.policy, self.names)
            self._gradients.append(torch.cat([gradient[n].reshape(-1) for n in self.names]))
            self.seconds["gradient_refresh"] += time.perf_counter() - began
            self._gradient_epoch = self._epoch
        self._steps[-1].gradient = len(self._gradients) - 1

    def _refresh_due(self, step: int) -> bool:
        if not self._gradients:
            return True
        if self.config.refresh == "epoch":
            return self._epoch != self._gradient_epoch
        return step % int(self.config.refresh) == 0

    def after_step(self, step: int, indices: torch.Tensor) -> None:
        """After the optimiser step: keep what Adam's multiplier of this step needs."""
        if self.model.preconditioned:
            state = self.policy.optimizer.state
            moments = [state[p][EXP_AVG_SQ].reshape(-1) for p in self._params]
            self._second_moments.append(torch.cat(moments))
            self._step_counts.append(float(state[self._params[0]][STEP]))
        self._capturing = True

    # ------------------------------------------------------------------ the scores
    def finish(self, plan: UpdatePlan, n_records: int | None = None) -> torch.Tensor:
        """The TracIn scores of the update that ran (positive = helpful), ``[N]`` float64.

        Args:
            plan: the executed update plan (learning rates and clip coefficients per step).
            n_records: N (default: the target context's buffer size).

        Raises:
            UnsupportedError: the update trained with fractional per-record loss weights
                (replay TracIn does not model them either).
        """
        began = time.perf_counter()
        self.detach()
        self._pending = {}
        if plan.record_weights is not None:
            raise UnsupportedError(
                "live TracIn does not model per-record loss weights yet, and this update "
                "trained with down-weighted records; use snapshot scores"
            )
        n_steps = len(self._steps)
        if n_steps != plan.n_optimizer_steps:
            raise RuntimeError(
                f"live TracIn saw {n_steps} optimiser steps, the plan has "
                f"{plan.n_optimizer_steps}: attach it for the whole update"
            )
        n = len(self.context.records) if n_records is None else n_records
        device = self._params[0].device
        scores = torch.zeros(n, dtype=torch.float64, device=device)
        if n_steps == 0:
            return scores
        vectors = self._step_vectors(plan)
        indices = _pad([step.indices for step in self._steps], fill=0)
        valid = _pad([torch.ones_like(s.indices, dtype=torch.bool) for s in self._steps], False)
        dots = torch.zeros(valid.shape, dtype=self._params[0].dtype, device=device)
        for module_name, module in self.layers.items():
            dots = dots + self._layer_dots(module_name, module, vectors)
        if self.log_std:
            dots = dots + self._log_std_dots(vectors["log_std"])
        scores.index_add_(0, indices[valid], -dots[valid].to(torch.float64))
        self._steps, self._gradients = [], []
        self._second_moments, self._step_counts = [], []
        self.seconds["finish"] += time.perf_counter() - began
        return scores

    def _step_vectors(self, plan: UpdatePlan) -> dict[str, torch.Tensor]:
        """Per parameter, ``[T, *shape]``: c_t · u_t ⊙ ∇f of each step.

        Replay TracIn weights the product with the mean-loss gradient ∇ℓ_i by c_t / |b_t|;
        the factors captured here are gradients of the minibatch's *mean* loss, which
        already carry the 1 / |b_t|. All parameters are handled as one flat vector per
        step: the optimiser model's arithmetic is elementwise, so its stacked multipliers
        are the numbers ``step_multipliers`` gives per parameter, at a fraction of the cost.
        """
        learning_rates = plan.learning_rates.tolist()
        clip_coefs = plan.clip_coefs.tolist()
        gradient_of_step = [step.gradient for step in self._steps]
        if self.model.preconditioned:
            flat = self.model.stacked_displacement_multipliers(
                learning_rates, self._second_moments, self._step_counts
            )
            # (∇f ⊙ u_t) · c_t as replay forms it, in place: steps of one ∇f refresh at once.
            for first, last in _runs(gradient_of_step):
                flat[first:last].mul_(self._gradients[gradient_of_step[first]])
            coefs = torch.tensor(clip_coefs, dtype=flat.dtype, device=flat.device)
            flat.mul_(coefs.unsqueeze(1))
        else:
            # SGD: u_t is a number, and replay scales ∇f by (u_t · weight) in one product.
            u = self.model.displacement_multipliers(learning_rates)
            scaled = [float(m) * c for m, c in zip(u, clip_coefs, strict=True)]
            gradients = torch.stack(self._gradients)
            which = torch.tensor(gradient_of_step, device=gradients.device)
            factor = torch.tensor(scaled, dtype=gradients.dtype, device=gradients.device)
            flat = gradients[which] * factor.unsqueeze(1)
        vectors = {}
        offset = 0
        for n, param in zip(self.names, self._params, strict=True):
            size = param.numel()
            vectors[n] = flat[:, offset : offset + size].reshape(-1, *param.shape)
            offset += size
        return vectors

    def _layer_dots(
        self, module_name: str, module: torch.nn.Module, vectors: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``[T, B_max]``: Σ over the layer's calls of ⟨V_t, per-record gradient⟩."""
        weight = vectors.get(f"{module_name}.weight")
        bias = vectors.get(f"{module_name}.bias")
        counts = {len(step.calls.get(module_name, [])) for step in self._steps}
        if len(counts) != 1:
            raise RuntimeError(f"live TracIn: layer {module_name} ran a varying number of times")
        total = torch.zeros((), dtype=self._params[0].dtype, device=self._params[0].device)
        for occurrence in range(counts.pop()):
            calls = [step.calls[module_name][occurrence] for step in self._steps]
            if all(call.grad is None for call in calls):
                continue  # the layer's output did not reach the loss
            inputs = _pad([call.inputs for call in calls], 0)
            grads = _pad([call.output_grad() for call in calls], 0.0)
            # Steps are the kernel's stacked blocks: step t's records with its own V_t.
            total = total + layer_dots(module, inputs, grads, weight, bias, stacked=True)
        return total

    def _log_std_dots(self, vector: torch.Tensor) -> torch.Tensor:
        """``[T, B_max]``: ⟨V_t, ∂ℓ/∂log σ⟩ with ∂ℓ/∂log σ_j = (∂ℓ/∂σ_j) σ_j per record."""
        per_record = []
        for step in self._steps:
            scale = step.scale
            assert scale is not None
            per_record.append(scale.output_grad() * scale.inputs)
        return (_pad(per_record, 0.0) * vector.unsqueeze(1)).sum(-1)


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    """[first, last) of each run of equal consecutive labels (0, 0, 1, 1, 1 → (0, 2), (2, 5))."""
    bounds = [0] + [t for t in range(1, len(labels)) if labels[t] != labels[t - 1]] + [len(labels)]
    return list(itertools.pairwise(bounds))


def _pad(tensors: list[torch.Tensor], fill: Any) -> torch.Tensor:
    """Stack per-step ``[B_t, ...]`` tensors into ``[T, B_max, ...]``, padded with ``fill``."""
    width = max(t.shape[0] for t in tensors)
    if all(t.shape[0] == width for t in tensors):
        return torch.stack(tensors)
    out = torch.full(
        (len(tensors), width, *tensors[0].shape[1:]),
        fill,
        dtype=tensors[0].dtype,
        device=tensors[0].device,
    )
    for t, tensor in enumerate(tensors):
        out[t, : tensor.shape[0]] = tensor
    return out


# --------------------------------------------------------------------------- logged updates
def replay_live_tracin(
    data: IterationData,
    policy: ActorCriticPolicy,
    context: TargetContext,
    config: LiveTracIn,
) -> torch.Tensor:
    """Live TracIn of a logged iteration: its update replayed with the scorer attached.

    ``policy`` (a workspace from ``rlattr.record.build_policy``) is overwritten and ends at
    θ_{k+1}. The epochs come from the plan's ``step_epochs``. Equals the scores the
    scorer would have stored had it been attached during training.
    """
    scorer = LiveTracInScorer(policy, context, config)
    step_epochs = data.plan.step_epochs.tolist()

    def before_step(step: int, indices: torch.Tensor) -> None:
        scorer.start_epoch(step_epochs[step])
        scorer.before_step(step, indices)

    scorer.attach()
    try:
        replay(data, policy, before_step=before_step, after_step=scorer.after_step)
    finally:
        scorer.detach()
    return scorer.finish(data.plan, len(data.records))
