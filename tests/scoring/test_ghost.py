"""The ghost-product kernel equals a naive per-record autograd loop (fp64).

Every layer (Linear, Conv2d, Embedding), one-row records and records of several rows
(sequences), one shared vector and one vector per block (``stacked``), and the one-pass
driver ``hooked_dots`` on a model with all three layers and a tied weight.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlattr.errors import UnsupportedError
from rlattr.scoring.ghost import (
    conv2d_dots,
    embedding_dots,
    hooked_dots,
    layer_dots,
    linear_dots,
    supports,
)

DTYPE = torch.float64


def _naive(forward, weight_shape, bias_shape, inputs, out_grad, weight, bias):
    """⟨(V, v), ∇_{W,b} Σ⟨layer(a_r), g_r⟩⟩ for each record r, one backward pass each.

    ``inputs``/``out_grad``/vectors carry a leading block dim; the result is [K, N]."""
    n_blocks, n = out_grad.shape[:2]
    dots = torch.zeros(n_blocks, n, dtype=DTYPE)
    for k in range(n_blocks):
        for r in range(n):
            w = torch.zeros(weight_shape, dtype=DTYPE, requires_grad=True)
            b = (
                None
                if bias_shape is None
                else torch.zeros(bias_shape, dtype=DTYPE).requires_grad_()
            )
            # The layer is linear in (W, b): its gradient at 0 is the gradient anywhere.
            value = (forward(inputs[k, r], w, b) * out_grad[k, r]).sum()
            wanted = [t for t in (w, b) if t is not None]
            grads = torch.autograd.grad(value, wanted, allow_unused=True)
            total = torch.zeros((), dtype=DTYPE)
            for g, v in zip(grads, (weight[k], None if bias is None else bias[k]), strict=False):
                if g is not None and v is not None:
                    total = total + (g * v).sum()
            dots[k, r] = total
    return dots


def _both_ways(kernel, inputs, out_grad, weight, bias, **kwargs):
    """The kernel stacked over K blocks, and unstacked on each block alone."""
    stacked = kernel(inputs, out_grad, weight, bias, stacked=True, **kwargs)
    one_at_a_time = torch.stack(
        [
            kernel(
                inputs[k],
                out_grad[k],
                None if weight is None else weight[k],
                None if bias is None else bias[k],
                stacked=False,
                **kwargs,
            )
            for k in range(out_grad.shape[0])
        ]
    )
    return stacked, one_at_a_time


@pytest.mark.parametrize("rows", [(), (5,), (2, 3)])
@pytest.mark.parametrize("parts", ["both", "weight", "bias"])
def test_linear_equals_naive_loop(rows: tuple[int, ...], parts: str) -> None:
    generator = torch.Generator().manual_seed(0)
    n_blocks, n, d_in, d_out = 3, 4, 6, 5

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=DTYPE)

    inputs = randn(n_blocks, n, *rows, d_in)
    out_grad = randn(n_blocks, n, *rows, d_out)
    weight = randn(n_blocks, d_out, d_in) if parts != "bias" else None
    bias = randn(n_blocks, d_out) if parts != "weight" else None
    expected = _naive(
        lambda a, w, b: F.linear(a, w, b), (d_out, d_in), (d_out,), inputs, out_grad,
        weight if weight is not None else torch.zeros(n_blocks, d_out, d_in, dtype=DTYPE),
        bias,
    )  # fmt: skip
    stacked, single = _both_ways(
        lambda a, g, w, b, stacked: linear_dots(a, g, w, b, stacked=stacked),
        inputs, out_grad, weight, bias,
    )  # fmt: skip
    assert stacked.shape == (n_blocks, n)
    torch.testing.assert_close(stacked, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(single, expected, rtol=1e-12, atol=1e-12)


CONVS = [
    dict(in_channels=3, out_channels=4, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2),
    dict(in_channels=2, out_channels=3, kernel_size=(2, 3), dilation=2, padding=(1, 0)),
]


@pytest.mark.parametrize("options", CONVS)
@pytest.mark.parametrize("rows", [(), (2,)])
def test_conv2d_equals_naive_loop(options: dict, rows: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(1)
    module = torch.nn.Conv2d(**options).to(DTYPE)
    n_blocks, n, size = 3, 4, 9
    inputs = torch.randn(n_blocks, n, *rows, options["in_channels"], size, size, dtype=DTYPE)
    out_shape = module(inputs.reshape(-1, *inputs.shape[-3:])).shape[-3:]
    out_grad = torch.randn(n_blocks, n, *rows, *out_shape, generator=generator, dtype=DTYPE)
    weight = torch.randn(n_blocks, *module.weight.shape, generator=generator, dtype=DTYPE)
    bias = torch.randn(n_blocks, *module.bias.shape, generator=generator, dtype=DTYPE)

    def forward(a, w, b):
        image = a.reshape(-1, *a.shape[-3:])
        out = F.conv2d(image, w, b, module.stride, module.padding, module.dilation, module.groups)
        return out.reshape(*a.shape[:-3], *out.shape[1:])

    expected = _naive(
        forward, module.weight.shape, module.bias.shape, inputs, out_grad, weight, bias
    )
    stacked, single = _both_ways(
        lambda a, g, w, b, stacked: conv2d_dots(module, a, g, w, b, stacked=stacked),
        inputs, out_grad, weight, bias,
    )  # fmt: skip
    torch.testing.assert_close(stacked, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(single, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding_idx", [None, 2])
@pytest.mark.parametrize("rows", [(), (6,)])
def test_embedding_equals_naive_loop(padding_idx: int | None, rows: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(2)
    module = torch.nn.Embedding(7, 5, padding_idx=padding_idx).to(DTYPE)
    n_blocks, n = 3, 4
    indices = torch.randint(0, 7, (n_blocks, n, *rows), generator=generator)
    indices[0, 0] = 2  # the padding row is used (and gets no gradient)
    out_grad = torch.randn(n_blocks, n, *rows, 5, generator=generator, dtype=DTYPE)
    weight = torch.randn(n_blocks, 7, 5, generator=generator, dtype=DTYPE)
    expected = _naive(
        lambda x, w, _: F.embedding(x, w, padding_idx=padding_idx),
        (7, 5), None, indices, out_grad, weight, None,
    )  # fmt: skip
    stacked, single = _both_ways(
        lambda x, g, w, b, stacked: embedding_dots(module, x, g, w, stacked=stacked),
        indices, out_grad, weight, None,
    )  # fmt: skip
    torch.testing.assert_close(stacked, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(single, expected, rtol=1e-12, atol=1e-12)
    if padding_idx is not None:
        # Were the padding row counted, record 0 of block 0 would differ.
        counted = embedding_dots(torch.nn.Embedding(7, 5), indices[0], out_grad[0], weight[0])
        assert not torch.allclose(counted[0], expected[0, 0])


def test_layer_dots_takes_the_vectors_dtype_and_refuses_the_unsupported() -> None:
    module = torch.nn.Linear(3, 2)
    inputs, out_grad = torch.randn(4, 3), torch.randn(4, 2)
    weight = torch.randn(2, 3, dtype=DTYPE)
    low = layer_dots(module, inputs.half(), out_grad.half(), weight, None)
    assert low.dtype == DTYPE
    exact = layer_dots(module, inputs.half().double(), out_grad.half().double(), weight, None)
    torch.testing.assert_close(low, exact)
    assert not supports(torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"))
    assert not supports(torch.nn.Embedding(5, 2, max_norm=1.0))
    assert not supports(torch.nn.LayerNorm(3))
    with pytest.raises(UnsupportedError, match="zero padding"):
        conv2d_dots(
            torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"),
            torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.randn(1, 1, 3, 3), None,
        )  # fmt: skip
    with pytest.raises(UnsupportedError, match="max_norm"):
        embedding_dots(
            torch.nn.Embedding(5, 2, max_norm=1.0),
            torch.zeros(2, dtype=torch.long), torch.randn(2, 2), torch.randn(5, 2),
        )  # fmt: skip
    with pytest.raises(UnsupportedError, match="LayerNorm"):
        layer_dots(torch.nn.LayerNorm(3), inputs, inputs, torch.ones(3), None)


class _Model(torch.nn.Module):
    """Tokens through an embedding and a tied output head, an image through a convolution:
    each record a sequence of token rows plus one image."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 4, padding_idx=0)
        self.hidden = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 11, bias=False)
        self.head.weight = self.embed.weight  # tied: both layers' contributions count
        self.conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1)

    def forward(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.hidden(self.embed(tokens)))
        logits = self.head(hidden).log_softmax(-1)
        per_token = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        return per_token.sum(-1) + torch.sin(self.conv(images)).flatten(1).sum(-1)


def test_hooked_dots_equals_naive_loop() -> None:
    torch.manual_seed(3)
    model = _Model().to(DTYPE)
    n = 5
    tokens = torch.randint(0, 11, (n, 6))
    images = torch.randn(n, 2, 5, 5, dtype=DTYPE)
    params = dict(model.named_parameters())
    vector = {name: torch.randn_like(p) for name, p in params.items()}
    by_id = {id(p): vector[name] for name, p in params.items()}
    layers = []
    for m in (model.embed, model.hidden, model.head, model.conv):
        bias = getattr(m, "bias", None)
        layers.append((m, by_id[id(m.weight)], None if bias is None else by_id[id(bias)]))
    values, dots = hooked_dots(layers, lambda: model(tokens, images), n)
    torch.testing.assert_close(values, model(tokens, images))
    expected = []
    for r in range(n):
        value = model(tokens[r : r + 1], images[r : r + 1]).sum()
        grads = torch.autograd.grad(value, list(params.values()))
        expected.append(
            sum((g * vector[name]).sum() for g, name in zip(grads, params, strict=True))
        )
    torch.testing.assert_close(dots, torch.stack(expected), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="per-record function returned shape"):
        hooked_dots(layers, lambda: model(tokens, images).sum(), n)
    with pytest.raises(UnsupportedError, match="not one per sequence"):
        hooked_dots(layers, lambda: model(tokens, images)[:3], 3, unit="sequence")
