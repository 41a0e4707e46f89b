"""Per-sequence gradient products ⟨v, ∇ℓ_i⟩ for all sequences, without per-sequence gradients.

For a ``Linear`` layer applied to every token of sequence i, with inputs a_{i,t} and output
gradients g_{i,t}, ∇_W ℓ_i = Σ_t g_{i,t} a_{i,t}ᵀ, so ⟨V, ∇_W ℓ_i⟩ = Σ_t g_{i,t}ᵀ V a_{i,t}:
one forward pass (capturing a) and one backward pass (capturing g) give every sequence's
product ("ghost" products: ``rlattr.scoring.ghost``, shared with the one-step records of
``rlattr.scoring.grads``; a sequence is a record whose token rows are summed). An
``Embedding`` contributes Σ_t ⟨V[x_{i,t}], g_{i,t}⟩. LoRA adapters are ``Linear`` layers
inside PEFT's wrappers and are covered the same way; a parameter shared by two layers
(tied embeddings) gets both layers' contributions.

Sequences must be independent given θ (no batch norm; causal LMs with an attention mask
are). ``"naive"`` loops over sequences, one backward pass each: the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch

from rlattr.errors import UnsupportedError
from rlattr.scoring.ghost import hooked_dots

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
    layers = []
    for module in modules.values():
        bias = getattr(module, "bias", None)
        layers.append(
            (
                module,
                by_id.get(id(module.weight)),
                by_id.get(id(bias)) if bias is not None else None,
            )
        )
    # A sequence is one record whose token rows the kernel sums (rlattr.scoring.ghost).
    _, dots = hooked_dots(layers, lambda: fn(None), n, unit="sequence")
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
