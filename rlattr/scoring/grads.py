"""Per-record gradient dot products ⟨v, ∇ℓ_i⟩ for all records, without N gradients.

Every quantity rlattr scores is a per-record scalar ``fn(outputs, index)`` of the policy's
``evaluate_actions`` outputs (values, log-probabilities, entropies): the per-record PPO
loss, a log-probability, ... ``per_record_dots`` returns, for a vector ``v`` over a subset
of the policy's parameters, the N directional derivatives ⟨v, ∇_θ fn_i⟩. Backends:

- ``"jvp"``: one forward-mode pass (``torch.func.jvp``) gives all N derivatives at once.
- ``"hooks"``: "ghost" products (``rlattr.scoring.ghost``). For a ``Linear`` layer with
  input a_i and output gradient g_i, ⟨V, g_i a_iᵀ⟩ = g_iᵀ V a_i, so one forward pass
  (capturing a_i) and one backward pass (capturing g_i) suffice; ``Conv2d`` likewise via a
  convolution with V. Parameters outside such layers (SB3's ``log_std``) go through
  forward mode.
- ``"vmap"``: per-record gradients with ``torch.func.vmap(grad(...))``, then dot products.
- ``"naive"``: a Python loop over records, one backward pass each (the reference).

Records must be independent given θ (no batch norm), which holds for SB3's
actor-critic policies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from torch.func import grad, jvp, vmap

from rlattr.record.loss import PolicyOutputs
from rlattr.scoring import ghost

PerRecordFn = Callable[[PolicyOutputs, torch.Tensor], torch.Tensor]
"""``fn(outputs, index) -> [n]``: per-record scalars for the records at positions ``index``."""

Backend = Literal["auto", "jvp", "hooks", "vmap", "naive"]
ParamSelection = Literal["policy", "value", "all"]
BACKENDS = ("jvp", "hooks", "vmap", "naive")

_VALUE_PREFIXES = ("mlp_extractor.value_net.", "value_net.", "vf_features_extractor.")
_POLICY_PREFIXES = ("mlp_extractor.policy_net.", "action_net.", "log_std", "pi_features_extractor.")
_SHARED_PREFIXES = ("features_extractor.",)


def parameter_names(policy: ActorCriticPolicy, params: ParamSelection = "policy") -> list[str]:
    """Names of the parameters a score is taken over.

    ``"policy"``: everything log π depends on (policy head, ``log_std``, and a shared
    feature extractor); ``"value"``: everything V depends on; ``"all"``: every parameter.
    """
    names = [name for name, p in policy.named_parameters() if p.requires_grad]
    if params == "all":
        return names
    if params not in ("policy", "value"):
        raise ValueError(f"params must be 'policy', 'value' or 'all', got {params!r}")
    own = _POLICY_PREFIXES if params == "policy" else _VALUE_PREFIXES
    selected = [n for n in names if n.startswith(own) or n.startswith(_SHARED_PREFIXES)]
    unknown = [
        n for n in names if not n.startswith(_POLICY_PREFIXES + _VALUE_PREFIXES + _SHARED_PREFIXES)
    ]
    if unknown:
        raise ValueError(
            f"cannot tell whether parameters {unknown} belong to the policy or the value "
            "function; use params='all'"
        )
    return selected


def policy_actions(actions: torch.Tensor, action_space: spaces.Space) -> torch.Tensor:
    """Stored (float) actions in the form ``evaluate_actions`` expects."""
    if isinstance(action_space, spaces.Discrete):
        return actions.long().flatten()
    return actions


@contextlib.contextmanager
def _no_distribution_validation() -> Iterator[None]:
    # torch.distributions checks arguments with data-dependent Python branches, which
    # vmap cannot trace; the values are the policy's own outputs, so skipping is safe.
    previous = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(previous)


def _outputs(raw: tuple) -> PolicyOutputs:
    return PolicyOutputs(*raw)


@contextlib.contextmanager
def substituted_parameters(
    policy: ActorCriticPolicy, values: dict[str, torch.Tensor]
) -> Iterator[None]:
    """Temporarily make the named parameters ``values`` (dual or batched tensors).

    The tensor is put on the module that owns the parameter, so every name the module
    is registered under sees it (SB3 registers a non-shared policy extractor twice, as
    ``features_extractor`` and ``pi_features_extractor``; ``torch.func.functional_call``
    leaves such a module holding plain tensors afterwards). The originals always return.
    """
    saved = []
    try:
        for name, value in values.items():
            owner_name, _, attribute = name.rpartition(".")
            owner = policy.get_submodule(owner_name) if owner_name else policy
            saved.append((owner, attribute, owner._parameters[attribute]))
            owner._parameters[attribute] = value
        yield
    finally:
        for owner, attribute, original in reversed(saved):
            owner._parameters[attribute] = original


def _dots_naive(policy, observations, actions, fn, vector) -> torch.Tensor:
    named = dict(policy.named_parameters())
    names = list(vector)
    params = [named[n] for n in names]
    dots = []
    for i in range(len(observations)):
        index = torch.tensor([i], device=observations.device)
        one = slice(i, i + 1)
        outputs = _outputs(tuple(policy.evaluate_actions(observations[one], actions[one])))
        value = fn(outputs, index).sum()
        grads = torch.autograd.grad(value, params, allow_unused=True)
        total = sum(
            ((g * vector[n]).sum() for g, n in zip(grads, names, strict=True) if g is not None),
            torch.zeros((), dtype=observations.dtype, device=observations.device),
        )
        dots.append(total)
    return torch.stack(dots)


def _dots_jvp(policy, observations, actions, fn, vector) -> torch.Tensor:
    names = list(vector)
    named = dict(policy.named_parameters())
    primals = tuple(named[n].detach() for n in names)
    tangents = tuple(vector[n].to(primals[i].dtype) for i, n in enumerate(names))
    index = torch.arange(len(observations), device=observations.device)

    def f(*flat: torch.Tensor) -> torch.Tensor:
        with substituted_parameters(policy, dict(zip(names, flat, strict=True))):
            return fn(_outputs(tuple(policy.evaluate_actions(observations, actions))), index)

    with _no_distribution_validation():
        _, tangent_out = jvp(f, primals, tangents)
    return tangent_out


def _dots_vmap(policy, observations, actions, fn, vector, chunk_size: int | None = 256):
    names = list(vector)
    named = dict(policy.named_parameters())
    params = {n: named[n].detach() for n in names}
    index = torch.arange(len(observations), device=observations.device)

    def single(p, obs, act, idx):
        with substituted_parameters(policy, p):
            raw = tuple(policy.evaluate_actions(obs.unsqueeze(0), act.unsqueeze(0)))
        return fn(_outputs(raw), idx.unsqueeze(0)).sum()

    with _no_distribution_validation():
        grads = vmap(grad(single), in_dims=(None, 0, 0, 0), chunk_size=chunk_size)(
            params, observations, actions, index
        )
    return sum((grads[n].flatten(1) * vector[n].flatten()).sum(1) for n in names)


def ghost_layers(policy, names: list[str]) -> tuple[dict[str, torch.nn.Module], list[str]]:
    """Linear/Conv2d modules holding selected parameters (those whose per-record gradient
    is a contraction of the layer's input and output gradient, ``rlattr.scoring.ghost``),
    and the parameters left over."""
    modules: dict[str, torch.nn.Module] = {}
    covered: set[str] = set()
    for module_name, module in policy.named_modules():
        # SB3 policies take float observations: an Embedding there is not expected, and
        # its parameters go through forward mode with the other leftovers.
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d) or not ghost.supports(module):
            continue
        own = [f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False)]
        if any(n in names for n in own):
            modules[module_name] = module
            covered.update(n for n in own if n in names)
    return modules, [n for n in names if n not in covered]


def _dots_hooks(policy, observations, actions, fn, vector) -> torch.Tensor:
    names = list(vector)
    modules, leftover = ghost_layers(policy, names)
    layers = [
        (module, vector.get(f"{name}.weight"), vector.get(f"{name}.bias"))
        for name, module in modules.items()
    ]
    index = torch.arange(len(observations), device=observations.device)

    def run() -> torch.Tensor:
        return fn(_outputs(tuple(policy.evaluate_actions(observations, actions))), index)

    _, dots = ghost.hooked_dots(layers, run, len(observations))
    if leftover:
        dots = dots + _dots_jvp(policy, observations, actions, fn, {n: vector[n] for n in leftover})
    return dots


def per_record_dots(
    policy: ActorCriticPolicy,
    observations: torch.Tensor,
    actions: torch.Tensor,
    fn: PerRecordFn,
    vector: dict[str, torch.Tensor],
    backend: Backend = "auto",
) -> torch.Tensor:
    """⟨vector, ∇_θ fn_i(θ)⟩ for every record i, at the policy's current parameters.

    Args:
        policy: an SB3 actor-critic policy (its parameters are not modified).
        observations, actions: the records' inputs (actions as ``policy_actions`` gives).
        fn: per-record scalar of the policy outputs, ``fn(outputs, index) -> [n]``.
        vector: a tensor per parameter name; parameters not named are held fixed.
        backend: ``"auto"`` (``"hooks"``), ``"jvp"``, ``"hooks"``, ``"vmap"`` or ``"naive"``.

    Returns:
        ``[n]`` tensor of dot products, on the observations' device.
    """
    if not vector:
        raise ValueError("vector is empty: select at least one parameter")
    known = dict(policy.named_parameters())
    unknown = [n for n in vector if n not in known]
    if unknown:
        raise KeyError(f"vector names parameters the policy does not have: {unknown}")
    chosen = "hooks" if backend == "auto" else backend
    if chosen == "naive":
        return _dots_naive(policy, observations, actions, fn, vector)
    if chosen == "jvp":
        return _dots_jvp(policy, observations, actions, fn, vector)
    if chosen == "vmap":
        return _dots_vmap(policy, observations, actions, fn, vector)
    if chosen == "hooks":
        return _dots_hooks(policy, observations, actions, fn, vector)
    raise ValueError(f"unknown backend {backend!r}; choose one of {('auto', *BACKENDS)}")


def gradient_vector(
    scalar: torch.Tensor, policy: ActorCriticPolicy, names: list[str]
) -> dict[str, torch.Tensor]:
    """∇ of a scalar w.r.t. the named parameters, as a name → tensor dict (zeros if unused)."""
    named = dict(policy.named_parameters())
    params = [named[n] for n in names]
    grads = torch.autograd.grad(scalar, params, allow_unused=True)
    return {
        n: (g.detach() if g is not None else torch.zeros_like(p))
        for n, g, p in zip(names, grads, params, strict=True)
    }
