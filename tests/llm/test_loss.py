"""The per-pair losses sum to TRL's own micro-batch loss (value and gradient, fp64)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from rlattr.errors import UnsupportedError
from rlattr.llm.batch import completion_logps
from rlattr.llm.loss import LossSpec, sequence_losses, sequence_weights
from rlattr.llm.trainer import IIFGRPOTrainer
from tests.llm.conftest import grpo_config, random_batch


def _trainer(model, tokenizer, task, tmp_path, **overrides):
    settings = dict(per_device_train_batch_size=6, num_generations=2, steps_per_generation=1)
    settings.update(overrides)
    return IIFGRPOTrainer(
        model=model,
        reward_funcs=task.reward,
        args=grpo_config(tmp_path, **settings),
        train_dataset=Dataset.from_dict({"prompt": task.prompts(6)}),
        processing_class=tokenizer,
    )


@pytest.mark.parametrize(
    ("loss_type", "level", "beta"),
    [
        ("dapo", "token", 0.0),
        ("dapo", "sequence", 0.05),
        ("grpo", "token", 0.0),
        ("bnpo", "token", 0.05),
        ("dr_grpo", "token", 0.0),
    ],
)
def test_sum_of_pair_losses_is_the_trainers_loss(
    fp64_model, tokenizer, task, tmp_path, loss_type, level, beta
) -> None:
    trainer = _trainer(
        fp64_model,
        tokenizer,
        task,
        tmp_path,
        loss_type=loss_type,
        importance_sampling_level=level,
        epsilon_high=0.28,
    )
    trainer.beta = beta  # a reference model is not needed: its log-probs are inputs
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model
    model.train()
    batch = random_batch(tokenizer, task, seed=7)
    generator = torch.Generator().manual_seed(8)
    with torch.no_grad():
        logps = completion_logps(model, batch, 1.0)
    shape = logps.shape
    # Old log-probs off θ so that ratios move and clipping is active somewhere.
    old = logps + 0.3 * torch.randn(shape, generator=generator, dtype=torch.float64)
    ref = logps + 0.2 * torch.randn(shape, generator=generator, dtype=torch.float64)
    inputs = {
        "prompt_ids": batch.prompt_ids,
        "prompt_mask": batch.prompt_mask,
        "completion_ids": batch.completion_ids,
        "completion_mask": batch.completion_mask,
        "advantages": batch.advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": batch.completion_mask.sum(),
    }
    params = [p for p in model.parameters() if p.requires_grad]
    expected = trainer._compute_loss(model, inputs)
    expected_grads = torch.autograd.grad(expected, params)

    spec = LossSpec.from_trainer(trainer)
    weights = sequence_weights(
        batch.loss_mask, spec, inputs["num_items_in_batch"], dtype=torch.float64
    )
    # The formula, on the trainer's own log-probabilities: equal to fp64 rounding.
    trainer_logps, _, _ = trainer._get_per_token_logps_and_entropies(
        model,
        torch.cat([batch.prompt_ids, batch.completion_ids], 1),
        torch.cat([batch.prompt_mask, batch.completion_mask], 1),
        batch.completion_ids.shape[1],
    )
    losses = sequence_losses(
        trainer_logps, batch.advantages, batch.loss_mask, weights, spec, old, ref if beta else None
    )
    grads = torch.autograd.grad(losses.sum(), params)
    assert torch.allclose(losses.sum(), expected, rtol=1e-12, atol=1e-15)
    assert float(losses.abs().sum()) > 0
    # Gradients pass back through TRL's float32 LM-head kernel: float32 agreement.
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-8)
    # The scorer's log-probabilities (the model's unfused forward): TRL's fused LM head
    # projects in float32 whatever the model's dtype, so they agree to float32 precision.
    ours = completion_logps(model, batch, spec.temperature)
    assert trainer_logps.dtype == torch.float32
    mask = batch.loss_mask.bool()
    assert torch.allclose(ours.float()[mask], trainer_logps[mask], rtol=1e-5, atol=1e-5)


def test_unsupported_loss_settings_are_refused(fp64_model, tokenizer, task, tmp_path) -> None:
    trainer = _trainer(fp64_model, tokenizer, task, tmp_path, loss_type="sapo")
    with pytest.raises(UnsupportedError, match="loss_type"):
        LossSpec.from_trainer(trainer)
    trainer = _trainer(fp64_model, tokenizer, task, tmp_path / "b", top_entropy_quantile=0.5)
    with pytest.raises(UnsupportedError, match="top_entropy_quantile"):
        LossSpec.from_trainer(trainer)
