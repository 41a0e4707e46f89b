"""Exact replay of a recorded round's update (docs/science.md §1: the update plan).

From θ_k, the optimiser state at the start of round k, the round's pairs and its plan
(rows of every micro-step, learning rates, accumulation, RNG states), the trainer's own
loss, backward pass, gradient clipping and optimiser step are run again. On CPU the result
is θ_{k+1} bit for bit (tested). A ``keep`` override replays a counterfactual: the same
plan with other pairs removed (the leave-subset-out ground truth of docs/science.md §2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlattr.errors import RunLogError
from rlattr.llm.batch import select_rows
from rlattr.llm.runlog import LLMRunLog, restore_optimizer
from rlattr.llm.trainer import KEEP_KEY, ROW_KEY


def replay_round(
    trainer: Any,
    run_dir: str | Path,
    round_index: int,
    keep: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Re-run round ``round_index`` on ``trainer`` and return its trainable parameters.

    Args:
        trainer: an ``IIFGRPOTrainer`` built like the recorded one (same model
            architecture, trainable parameters, optimiser and loss settings). Its model
            and optimiser state are overwritten.
        run_dir: the run directory the round was recorded in.
        round_index: which round.
        keep: optional ``[B]`` bool mask replacing the recorded one (counterfactuals).

    Returns:
        The trainable parameters after the round's updates (name → tensor).
    """
    model = trainer.model
    device = next(model.parameters()).device
    record = LLMRunLog(run_dir).read_round(round_index, device)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(record.parameters):
        raise RunLogError(
            f"the trainer's trainable parameters differ from round {round_index}'s: "
            f"{sorted(set(params) ^ set(record.parameters))[:5]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(record.parameters[name])
    restore_optimizer(trainer.optimizer, record.optimizer_tensors, record.optimizer_scalars)

    inputs = dict(record.inputs)
    n = int(inputs["prompt_ids"].shape[0])
    inputs[ROW_KEY] = torch.arange(n, device=device)
    mask = keep if keep is not None else record.extras.get("keep")
    if mask is not None:
        inputs[KEEP_KEY] = mask.to(device=device, dtype=torch.bool)
    per_pair = {k: v for k, v in inputs.items() if v.dim() > 0}
    scalars = {k: v for k, v in inputs.items() if v.dim() == 0}
    if keep is not None and trainer.iif is not None and trainer.iif.renormalize:
        loss_mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            loss_mask = loss_mask * inputs["tool_mask"]
        scalars["num_items_in_batch"] = loss_mask[inputs[KEEP_KEY]].sum()

    saved_accumulation = getattr(trainer, "current_gradient_accumulation_steps", 1)
    trainer._replaying = True
    model.train()
    try:
        for group in record.optimizer_steps():
            model.zero_grad()
            for step in group:
                torch.set_rng_state(step.rng_state)
                if step.cuda_rng_state is not None and device.type == "cuda":
                    torch.cuda.set_rng_state(step.cuda_rng_state, device)
                trainer.current_gradient_accumulation_steps = step.accumulation
                micro = select_rows(per_pair, step.rows.to(device), n)
                micro.update(scalars)
                with trainer.compute_loss_context_manager():
                    loss = trainer.compute_loss(model, micro)
                trainer.accelerator.backward(loss)
            if record.max_grad_norm > 0:
                trainer._clip_grad_norm(model)
            for param_group, lr in zip(
                trainer.optimizer.param_groups, group[0].learning_rates, strict=True
            ):
                param_group["lr"] = lr
            trainer.optimizer.step()
        model.zero_grad()
    finally:
        trainer._replaying = False
        trainer.current_gradient_accumulation_steps = saved_accumulation
    return {n: p.detach().clone() for n, p in params.items()}
