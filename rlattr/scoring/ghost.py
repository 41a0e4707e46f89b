"""Ghost products: ⟨V, ∇_θ ℓ_r⟩ for every record r, from layer inputs and output gradients.

For a layer applied to the rows of record r (one row for a one-step PPO record, one per token
for a sequence, one per output position for a convolution), with inputs a_{r,t} and output
gradients g_{r,t} = ∂ℓ_r/∂y_{r,t}, the record's weight gradient is Σ_t g_{r,t} a_{r,t}ᵀ, so

- ``Linear``: ⟨V, ∇_W ℓ_r⟩ = Σ_t g_{r,t}ᵀ V a_{r,t}, and ⟨v, ∇_b ℓ_r⟩ = Σ_t ⟨v, g_{r,t}⟩;
- ``Conv2d``: ⟨V, ∇_W ℓ_r⟩ = ⟨conv(a_r, V), g_r⟩ (the layer's convolution with V as its
  weight), and the bias as for ``Linear``, summed over output positions;
- ``Embedding`` with indices x: ⟨V, ∇_W ℓ_r⟩ = Σ_t ⟨V[x_{r,t}], g_{r,t}⟩ (the padding row,
  which gets no gradient, excluded).

One forward pass (capturing a) and one backward pass (capturing g) thus give every record's
product, without N gradients. This module holds the one implementation, used by
``rlattr.scoring.grads`` (per-record products, ``hooked_dots``), ``rlattr.scoring.live_tracin``
(products of every optimiser step of an update, ``stacked=True``) and ``rlattr.llm.ghost``
(per-sequence products, ``hooked_dots``).

Layout, the grouping: a layer call's inputs and output gradient are ``[*groups, *rows,
*features]``. The leading dim indexes the records (the groups whose products are returned);
every dim between it and the layer's features holds rows of one record, which are summed.
A one-step record is a group of one row (``[N, in]``); a sequence is a group of its T token
rows (``[N, T, in]``). With ``stacked=True`` one more leading dim indexes K vectors, one per
block of records: inputs ``[K, N, *rows, *features]``, vectors ``[K, *parameter shape]``,
products ``[K, N]``, computed as one batched product (live TracIn's K steps, each with its
own V_t; padded record slots with zero output gradients contribute 0).

Records must be independent given θ (no batch norm) for ``hooked_dots``: then the gradient of
the sum of all records' values with respect to record r's layer outputs is ∂ℓ_r/∂y_r.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from rlattr.errors import UnsupportedError

LAYERS: tuple[type[torch.nn.Module], ...] = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)
"""The layer types ghost products exist for (see ``supports`` for their options)."""

Layer = tuple[torch.nn.Module, torch.Tensor | None, torch.Tensor | None]
"""A layer and the vectors of its weight and bias (None: that parameter is not scored)."""


def supports(module: torch.nn.Module) -> bool:
    """Whether ``module``'s per-record gradients are the contraction above: ``Linear``,
    ``Conv2d`` with zero padding, ``Embedding`` without ``max_norm`` or
    ``scale_grad_by_freq`` (both make the gradient depend on the whole batch or change
    the weights during the forward pass)."""
    if isinstance(module, torch.nn.Linear):
        return True
    if isinstance(module, torch.nn.Conv2d):
        return module.padding_mode == "zeros"
    if isinstance(module, torch.nn.Embedding):
        return not module.scale_grad_by_freq and module.max_norm is None
    return False


def _blocks(vector: torch.Tensor, dims: int, trailing: int) -> torch.Tensor:
    """A stacked vector ``[K, *trailing shape]`` viewed with singleton dims after K, so that
    it broadcasts over a tensor of ``dims`` dims whose last ``trailing`` dims it matches."""
    return vector.reshape(vector.shape[0], *([1] * (dims - 1 - trailing)), *vector.shape[1:])


def _group_sum(products: torch.Tensor, groups: torch.Size) -> torch.Tensor:
    """Sum everything after the group dims (rows and features)."""
    return products.reshape(*groups, -1).sum(-1)


def linear_dots(
    inputs: torch.Tensor,
    out_grad: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    stacked: bool = False,
) -> torch.Tensor:
    """Σ_t g_{r,t}ᵀ V a_{r,t} + Σ_t ⟨v, g_{r,t}⟩ for every record r of a ``Linear`` layer.

    Args:
        inputs: ``[(K,) N, *rows, in]`` layer inputs.
        out_grad: ``[(K,) N, *rows, out]`` gradients of the layer's outputs.
        weight, bias: V ``[(K,) out, in]`` and v ``[(K,) out]``; None skips the parameter.
        stacked: vectors and tensors carry a leading dim K (block k uses V_k).

    Returns:
        ``[N]`` (``[K, N]`` stacked) products.
    """
    groups = out_grad.shape[: 2 if stacked else 1]
    total = out_grad.new_zeros(groups)
    if weight is not None:
        if stacked:
            mapped = torch.matmul(inputs, _blocks(weight, inputs.dim(), 2).transpose(-1, -2))
        else:
            mapped = F.linear(inputs, weight)
        total = total + _group_sum(mapped * out_grad, groups)
    if bias is not None:
        vector = _blocks(bias, out_grad.dim(), 1) if stacked else bias
        total = total + _group_sum(out_grad * vector, groups)
    return total


def conv2d_dots(
    module: torch.nn.Conv2d,
    inputs: torch.Tensor,
    out_grad: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    stacked: bool = False,
) -> torch.Tensor:
    """⟨conv(a_r, V), g_r⟩ + ⟨v, Σ_positions g_r⟩ for every record r of a ``Conv2d`` layer.

    Args:
        module: the layer (its stride, padding, dilation and groups).
        inputs: ``[(K,) N, *rows, C, H, W]``; out_grad: ``[(K,) N, *rows, C', H', W']``.
        weight, bias: V ``[(K,) C', C / groups, kh, kw]`` and v ``[(K,) C']``.
        stacked: one vector per leading block; the K blocks are one grouped convolution,
            block k's inputs laid beside the others as channels and V_k as its group.

    Returns:
        ``[N]`` (``[K, N]`` stacked) products.
    """
    if module.padding_mode != "zeros":
        raise UnsupportedError(
            f"ghost products need Conv2d with zero padding, not {module.padding_mode!r}"
        )
    groups = out_grad.shape[: 2 if stacked else 1]
    total = out_grad.new_zeros(groups)

    def convolve(images: torch.Tensor, kernel: torch.Tensor, n_groups: int) -> torch.Tensor:
        # The layer's own geometry, V as its weight.
        return F.conv2d(
            images, kernel, None, module.stride, module.padding, module.dilation, n_groups
        )

    if weight is not None:
        image = inputs.shape[-3:]
        if stacked:
            n_blocks = inputs.shape[0]
            # [K, M, C, H, W] → [M, K·C, H, W]: block k's channels meet V_k's group only.
            side_by_side = inputs.reshape(n_blocks, -1, *image).transpose(0, 1)
            side_by_side = side_by_side.reshape(side_by_side.shape[0], -1, *image[1:])
            conv = convolve(
                side_by_side, weight.reshape(-1, *weight.shape[2:]), n_blocks * module.groups
            )
            conv = conv.reshape(conv.shape[0], n_blocks, *out_grad.shape[-3:]).transpose(0, 1)
        else:
            conv = convolve(inputs.reshape(-1, *image), weight, module.groups)
        total = total + _group_sum(conv.reshape(out_grad.shape) * out_grad, groups)
    if bias is not None:
        vector = _blocks(bias, out_grad.dim() - 2, 1) if stacked else bias
        total = total + _group_sum(out_grad.sum(dim=(-2, -1)) * vector, groups)
    return total


def embedding_dots(
    module: torch.nn.Embedding,
    indices: torch.Tensor,
    out_grad: torch.Tensor,
    weight: torch.Tensor | None,
    *,
    stacked: bool = False,
) -> torch.Tensor:
    """Σ_t ⟨V[x_{r,t}], g_{r,t}⟩ for every record r of an ``Embedding`` layer.

    Args:
        module: the layer (its padding index).
        indices: ``[(K,) N, *rows]`` token indices x.
        out_grad: ``[(K,) N, *rows, D]``.
        weight: V ``[(K,) num_embeddings, D]``; None gives zeros.
        stacked: one vector per leading block.

    Returns:
        ``[N]`` (``[K, N]`` stacked) products.
    """
    if module.scale_grad_by_freq or module.max_norm is not None:
        raise UnsupportedError("Embedding with scale_grad_by_freq or max_norm is not supported")
    groups = out_grad.shape[: 2 if stacked else 1]
    total = out_grad.new_zeros(groups)
    if weight is None:
        return total
    if stacked:
        block = torch.arange(weight.shape[0], device=indices.device)
        rows = weight[_blocks(block, indices.dim(), 0), indices]
    else:
        rows = weight[indices]
    products = (rows * out_grad).sum(-1)
    if module.padding_idx is not None:
        # The padding row gets no gradient in nn.Embedding.
        products = products * (indices != module.padding_idx).to(products.dtype)
    return total + _group_sum(products, groups)


def layer_dots(
    module: torch.nn.Module,
    inputs: torch.Tensor,
    out_grad: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    stacked: bool = False,
) -> torch.Tensor:
    """The ghost products of one call of ``module`` (``Linear``, ``Conv2d`` or ``Embedding``).

    Under mixed precision (autocast) activations and their gradients are low precision: the
    products are taken in the vectors' dtype (a no-op when they already agree).

    Args:
        module: the layer.
        inputs: the call's input (indices for an ``Embedding``), ``[(K,) N, *rows, ...]``.
        out_grad: the gradient of the call's output.
        weight, bias: the vectors of the layer's weight and bias (None: not scored; an
            ``Embedding`` has no bias).
        stacked: a leading dim K of vectors and blocks of records (see the module docstring).

    Returns:
        ``[N]`` (``[K, N]`` stacked) products, in the vectors' dtype.
    """
    reference = weight if weight is not None else bias
    if reference is not None:
        out_grad = out_grad.to(reference.dtype)
        if inputs.is_floating_point():
            inputs = inputs.to(reference.dtype)
    if isinstance(module, torch.nn.Linear):
        return linear_dots(inputs, out_grad, weight, bias, stacked=stacked)
    if isinstance(module, torch.nn.Conv2d):
        return conv2d_dots(module, inputs, out_grad, weight, bias, stacked=stacked)
    if isinstance(module, torch.nn.Embedding):
        return embedding_dots(module, inputs, out_grad, weight, stacked=stacked)
    raise UnsupportedError(f"no ghost products for {type(module).__name__} layers")


def hooked_dots(
    layers: Sequence[Layer],
    run: Callable[[], torch.Tensor],
    n: int,
    unit: str = "record",
) -> tuple[torch.Tensor, torch.Tensor]:
    """⟨vectors, ∇_θ ℓ_r⟩ for every record r, in one forward and one backward pass.

    Forward hooks on the layers capture each call's input while ``run`` computes the
    records' values; one backward pass of their sum gives each call's output gradient; the
    calls are contracted with their layer's vectors (``layer_dots``). A layer called
    several times contributes every call; a parameter shared by two layers (tied
    embeddings) is listed with both and gets both contributions.

    Args:
        layers: each layer with its weight and bias vectors.
        run: computes the per-record values ``[n]`` (with a graph to the layers' outputs).
        n: the number of records; every captured call must have one leading row per record.
        unit: what a record is called in error messages ("record", "sequence").

    Returns:
        The values ``run`` returned, and the ``[n]`` products in their dtype.

    Raises:
        ValueError: ``run`` returned another shape than ``(n,)``.
        UnsupportedError: a layer ran on another leading size than ``n``.
    """
    calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def capture(position: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            calls.append((position, inputs[0].detach(), output))

        return hook

    handles = [module.register_forward_hook(capture(i)) for i, (module, _, _) in enumerate(layers)]
    try:
        values = run()
    finally:
        for handle in handles:
            handle.remove()
    if values.shape != (n,):
        raise ValueError(
            f"the per-{unit} function returned shape {tuple(values.shape)}, not ({n},)"
        )
    dots = torch.zeros(n, dtype=values.dtype, device=values.device)
    taken = [call for call in calls if call[2].requires_grad]
    if not taken:
        return values, dots
    # Records are independent, so d(Σ_j ℓ_j)/d(output of record r) = dℓ_r/d(output_r).
    grads = torch.autograd.grad(values.sum(), [out for _, _, out in taken], allow_unused=True)
    for (position, inputs, _), grad in zip(taken, grads, strict=True):
        if grad is None:
            continue
        module, weight, bias = layers[position]
        if grad.shape[0] != n:
            raise UnsupportedError(
                f"{type(module).__name__} saw {grad.shape[0]} rows, not one per {unit} ({n})"
            )
        dots = dots + layer_dots(module, inputs, grad, weight, bias).to(dots.dtype)
    return values, dots
