"""Per-sequence gradient products ⟨v, ∇ℓ_i⟩ for all sequences, without per-sequence gradients.

For a ``Linear`` layer applied to every token of sequence i, with inputs a_{i,t} and output
gradients g_{i,t}, ∇_W ℓ_i = Σ_t g_{i,t} a_{i,t}ᵀ, so ⟨V, ∇_W ℓ_i⟩ = Σ_t g_{i,t}ᵀ V a_{i,t}:
one forward pass (capturing a) and one backward pass (capturing g) give every sequence's
product ("ghost" products, as ``rlattr.scoring.grads`` does for one-step records, here
summed over tokens). An ``Embedding`` contributes Σ_t ⟨V[x_{i,t}], g_{i,t}⟩. LoRA adapters
are ``Linear`` layers inside PEFT's wrappers and are covered the same way; a parameter
shared by two layers (tied embeddings) gets both layers' contributions.

Sequences must be independent given θ (no batch norm; causal LMs with an attention mask
are). ``"naive"`` loops over sequences, one backward pass each: the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F

from rlattr.errors import UnsupportedError

SequenceFn = Callable[[torch.Tensor | None], torch.Tensor]
"""``fn(rows)``: per-sequence scalars ``[k]`` for the sequences ``rows`` (all when None)."""

_SUPPORTED = (torch.nn.Linear, torch.nn.Embedding)


def _owners(model: torch.nn.Module) -> dict[int, list[torch.nn.Module]]:
    """Parameter id → the supported layers that own it directly (two when tied)."""
    owners: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        if isinstance(module, _SUPPORTED):
            for param in module.parameters(recurse=False):
                owners.setdefault(id(param), []).append(module)
    return owners


def score_parameters(
    model: torch.nn.Module, names: tuple[str, ...] | None = None
) -> dict[str, torch.nn.Parameter]:
    """The parameters scores are taken over, by name.

    Args:
        model: the causal LM (a PEFT model is fine).
        names: explicit names; None selects every trainable parameter of a ``Linear`` or
            ``Embedding`` layer (all of LoRA's adapters; all weights but norms otherwise).

    Raises:
        UnsupportedError: a named parameter is frozen, unknown or in an unsupported layer.
    """
    owners = _owners(model)
    named = dict(model.named_parameters())
    if names is None:
        selected = {n: p for n, p in named.items() if p.requires_grad and id(p) in owners}
        if not selected:
            raise UnsupportedError("the model has no trainable Linear or Embedding parameters")
        return selected
    unknown = [n for n in names if n not in named]
    frozen = [n for n in names if n in named and not named[n].requires_grad]
    unsupported = [n for n in names if n in named and id(named[n]) not in owners]
    if unknown or frozen or unsupported:
        raise UnsupportedError(
            f"cannot score over parameters: unknown {unknown}, frozen {frozen}, not in a "
            f"Linear or Embedding layer {unsupported}"
        )
    return {n: named[n] for n in names}


def _ghost_dot(
    module: torch.nn.Module,
    inputs: torch.Tensor,
    out_grad: torch.Tensor,
    weight_v: torch.Tensor | None,
    bias_v: torch.Tensor | None,
) -> torch.Tensor:
    n = out_grad.shape[0]
    # Under mixed precision (autocast) activations and their gradients are low precision;
    # the products are taken in the parameters' dtype.
    reference = weight_v if weight_v is not None else bias_v
    dtype = out_grad.dtype if reference is None else reference.dtype
    out_grad = out_grad.to(dtype)
    if inputs.is_floating_point():
        inputs = inputs.to(dtype)
    total = torch.zeros(n, dtype=dtype, device=out_grad.device)
    if isinstance(module, torch.nn.Embedding):
        if module.scale_grad_by_freq or module.max_norm is not None:
            raise UnsupportedError("Embedding with scale_grad_by_freq or max_norm is not supported")
        if weight_v is not None:
            rows = (weight_v[inputs] * out_grad).sum(-1)
            if module.padding_idx is not None:
                # The padding row gets no gradient in nn.Embedding.
                rows = rows * (inputs != module.padding_idx).to(rows.dtype)
            total = total + rows.reshape(n, -1).sum(1)
        return total
    if weight_v is not None:
        total = total + (F.linear(inputs, weight_v) * out_grad).reshape(n, -1).sum(1)
    if bias_v is not None:
        total = total + (out_grad * bias_v).reshape(n, -1).sum(1)
    return total


def _dots_ghost(
    model: torch.nn.Module,
    params: Mapping[str, torch.nn.Parameter],
    vector: Mapping[str, torch.Tensor],
    fn: SequenceFn,
    n: int,
) -> torch.Tensor:
    by_id = {id(params[name]): vector[name] for name in vector}
    owners = _owners(model)
    modules = {id(m): m for pid in by_id for m in owners.get(pid, [])}
    leftover = [name for name in vector if id(params[name]) not in owners]
    if leftover:
        raise UnsupportedError(f"ghost products need Linear/Embedding parameters, not {leftover}")
    calls: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        calls.append((module, inputs[0].detach(), output))

    handles = [m.register_forward_hook(hook) for m in modules.values()]
    try:
        values = fn(None)
    finally:
        for handle in handles:
            handle.remove()
    if values.shape != (n,):
        raise ValueError(
            f"the per-sequence function returned shape {tuple(values.shape)}, not ({n},)"
        )
    dots = torch.zeros(n, dtype=values.dtype, device=values.device)
    outputs = [out for _, _, out in calls if out.requires_grad]
    if not outputs:
        return dots
    # Sequences are independent, so d(Σ_j ℓ_j)/d(output of sequence i) = dℓ_i/d(output_i).
    grads = iter(torch.autograd.grad(values.sum(), outputs, allow_unused=True))
    for module, inputs, out in calls:
        if not out.requires_grad:
            continue
        grad = next(grads)
        if grad is None:
            continue
        if grad.shape[0] != n:
            raise UnsupportedError(
                f"{type(module).__name__} saw {grad.shape[0]} rows, not one per sequence ({n})"
            )
        weight_v = by_id.get(id(module.weight))
        bias = getattr(module, "bias", None)
        bias_v = by_id.get(id(bias)) if bias is not None else None
        dots = dots + _ghost_dot(module, inputs, grad, weight_v, bias_v).to(dots.dtype)
    return dots


def _dots_naive(
    params: Mapping[str, torch.nn.Parameter],
    vector: Mapping[str, torch.Tensor],
    fn: SequenceFn,
    n: int,
) -> torch.Tensor:
    names = list(vector)
    tensors = [params[name] for name in names]
    dots = []
    for i in range(n):
        value = fn(torch.tensor([i])).sum()
        grads = torch.autograd.grad(value, tensors, allow_unused=True)
        total = torch.zeros((), dtype=value.dtype, device=value.device)
        for grad, name in zip(grads, names, strict=True):
            if grad is not None:
                total = total + (grad * vector[name]).sum()
        dots.append(total)
    return torch.stack(dots)


def sequence_dots(
    model: torch.nn.Module,
    params: Mapping[str, torch.nn.Parameter],
    vector: Mapping[str, torch.Tensor],
    fn: SequenceFn,
    n: int,
    backend: Literal["ghost", "naive"] = "ghost",
) -> torch.Tensor:
    """⟨vector, ∇_θ fn_i(θ)⟩ for every sequence i at the model's current parameters.

    Args:
        model: the model ``fn`` runs (its parameters are not modified, nor their ``.grad``).
        params: the parameters by name (``score_parameters``).
        vector: a tensor per parameter name (a subset of ``params``).
        fn: per-sequence scalars, ``fn(rows) -> [len(rows)]``, ``fn(None) -> [n]``.
        n: number of sequences.
        backend: ``"ghost"`` (one forward and one backward pass) or ``"naive"``.

    Returns:
        ``[n]`` dot products on the model's device.
    """
    if backend == "ghost":
        return _dots_ghost(model, params, vector, fn, n)
    if backend == "naive":
        return _dots_naive(params, vector, fn, n)
    raise ValueError(f"backend must be 'ghost' or 'naive', got {backend!r}")
