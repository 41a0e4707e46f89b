"""Ghost per-sequence products equal a naive per-sequence loop (fp64), LoRA included."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from rlattr.errors import UnsupportedError
from rlattr.llm.ghost import score_parameters, sequence_dots
from rlattr.llm.loss import LossSpec, sequence_weights
from rlattr.llm.scores import loss_function, snapshot_scores
from tests.llm.conftest import random_batch

SPEC = LossSpec(loss_type="dapo", per_device_batch_size=6, max_completion_length=8)


def _random_vector(params, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=generator, dtype=p.dtype) for n, p in params.items()}


def _dots(model, batch, spec, backend):
    params = score_parameters(model)
    weights = sequence_weights(batch.loss_mask, spec, batch.loss_mask.sum(), torch.float64)
    fn = loss_function(model, batch, weights, spec)
    return sequence_dots(model, params, _random_vector(params), fn, len(batch), backend)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_ghost_equals_naive_loop_full_model(fp64_model, tokenizer, task, loss_type) -> None:
    batch = random_batch(tokenizer, task)
    spec = LossSpec(loss_type=loss_type, per_device_batch_size=6, max_completion_length=8)
    params = score_parameters(fp64_model)
    # Every Linear and the embedding: all weights but the RMSNorm scales.
    assert "lm_head.weight" in params and "model.embed_tokens.weight" in params
    ghost = _dots(fp64_model, batch, spec, "ghost")
    naive = _dots(fp64_model, batch, spec, "naive")
    assert torch.allclose(ghost, naive, rtol=1e-10, atol=1e-12), (ghost - naive).abs().max()
    assert all(p.grad is None for p in fp64_model.parameters())


def test_ghost_equals_naive_loop_with_lora_and_beta(fp64_model, tokenizer, task) -> None:
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
    model = get_peft_model(fp64_model, config)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero B so every adapter matters
            torch.nn.init.normal_(param, std=0.1)
    params = score_parameters(model)
    assert params and all("lora_" in name for name in params)
    batch = random_batch(tokenizer, task, seed=1)
    generator = torch.Generator().manual_seed(5)
    shape = batch.completion_ids.shape
    batch = type(batch)(
        **{
            **batch.__dict__,
            "ref_per_token_logps": -torch.rand(shape, generator=generator, dtype=torch.float64),
            "old_per_token_logps": -torch.rand(shape, generator=generator, dtype=torch.float64),
        }
    )
    spec = LossSpec(loss_type="dapo", beta=0.1, per_device_batch_size=6, max_completion_length=8)
    ghost = _dots(model, batch, spec, "ghost")
    naive = _dots(model, batch, spec, "naive")
    assert torch.allclose(ghost, naive, rtol=1e-10, atol=1e-12), (ghost - naive).abs().max()


def test_tied_embeddings_get_both_layers(tokenizer, task) -> None:
    from rlattr.llm.toy import tiny_causal_lm

    model = tiny_causal_lm(tokenizer, seed=2, dtype=torch.float64)
    model.lm_head.weight = model.model.embed_tokens.weight
    batch = random_batch(tokenizer, task, seed=2)
    ghost = _dots(model, batch, SPEC, "ghost")
    naive = _dots(model, batch, SPEC, "naive")
    assert torch.allclose(ghost, naive, rtol=1e-10, atol=1e-12)


def test_snapshot_scores_backends_agree_and_sign(fp64_model, tokenizer, task) -> None:
    batch = random_batch(tokenizer, task, seed=4)
    params = score_parameters(fp64_model)
    weights = sequence_weights(batch.loss_mask, SPEC, batch.loss_mask.sum(), torch.float64)
    ghost = snapshot_scores(fp64_model, params, batch, weights, SPEC, backend="ghost")
    naive = snapshot_scores(fp64_model, params, batch, weights, SPEC, backend="naive")
    assert torch.allclose(ghost, naive, rtol=1e-10, atol=1e-12)
    # Same-batch target at ρ = 1: the scores sum to w·|∇f|²·B > 0 (training on the whole
    # batch raises its own surrogate).
    assert float(ghost.sum()) > 0


def test_explicit_parameters_are_checked(fp64_model) -> None:
    with pytest.raises(UnsupportedError, match="not in a Linear or Embedding"):
        score_parameters(fp64_model, ("model.norm.weight",))
    with pytest.raises(UnsupportedError, match="unknown"):
        score_parameters(fp64_model, ("nope",))
