"""A batch of prompt–completion pairs (the records of language-model RL) and their log-probs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from rlattr.errors import UnsupportedError

# Keys of a GRPO generation batch that are not per-pair rows of equal length.
_SCALAR_KEYS = ("num_items_in_batch",)


@dataclass(frozen=True)
class SequenceBatch:
    """Pairs as TRL's ``GRPOTrainer`` holds them: left-padded prompts, right-padded
    completions, one advantage per pair.

    Attributes:
        prompt_ids, prompt_mask: ``[B, P]``.
        completion_ids, completion_mask: ``[B, C]``.
        advantages: ``[B]``.
        tool_mask: ``[B, C]`` tokens written by tools (not trained on), if any.
        old_per_token_logps: ``[B, C]`` log-probs of the sampling policy, if the trainer
            kept them (it does when a generation batch serves several optimiser steps).
        ref_per_token_logps: ``[B, C]`` reference-model log-probs (``beta != 0``).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    tool_mask: torch.Tensor | None = None
    old_per_token_logps: torch.Tensor | None = None
    ref_per_token_logps: torch.Tensor | None = None

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, Any]) -> SequenceBatch:
        """Take the pairs out of a GRPO generation batch (refusing multimodal inputs)."""
        if any(key in inputs for key in ("pixel_values", "num_images", "image_sizes")):
            raise UnsupportedError("IIF for language models does not support image inputs")
        names = [f.name for f in fields(cls)]
        return cls(**{name: inputs[name] for name in names if inputs.get(name) is not None})

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    @property
    def loss_mask(self) -> torch.Tensor:
        if self.tool_mask is None:
            return self.completion_mask
        return self.completion_mask * self.tool_mask

    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The batch's tensors by field name (None fields left out), for safetensors."""
        return {
            prefix + f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) is not None
        }

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> SequenceBatch:
        """Inverse of ``to_tensors``."""
        names = [f.name for f in fields(cls)]
        return cls(**{n: tensors[prefix + n] for n in names if prefix + n in tensors})

    def rows(self, index: torch.Tensor | slice) -> SequenceBatch:
        """The pairs at ``index`` (tensors are indexed, never re-padded)."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = None if value is None else value[index]
        return SequenceBatch(**values)


def select_rows(inputs: Mapping[str, Any], index: torch.Tensor, n_rows: int) -> dict[str, Any]:
    """Rows ``index`` of every per-pair value of a TRL batch dict; scalars pass through.

    Args:
        inputs: a GRPO batch dict (tensors with ``n_rows`` rows, 0-d tensors, lists, None).
        index: ``[k]`` long or ``[n_rows]`` bool index.
        n_rows: rows of the batch, to tell per-pair values from others.
    """
    out: dict[str, Any] = {}
    positions = index.nonzero().flatten() if index.dtype == torch.bool else index
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            if value.shape[0] != n_rows:
                raise UnsupportedError(
                    f"batch value {key!r} has {value.shape[0]} rows, not one per pair ({n_rows})"
                )
            out[key] = value[positions.to(value.device)]
        elif isinstance(value, list):
            if len(value) != n_rows:
                raise UnsupportedError(f"batch list {key!r} is not one entry per pair")
            out[key] = [value[int(i)] for i in positions.tolist()]
        else:
            out[key] = value
    return out


def completion_logps(
    model: torch.nn.Module, batch: SequenceBatch, temperature: float = 1.0
) -> torch.Tensor:
    """``[B, C]`` log-probabilities of the completion tokens, as the trainer scores them.

    The model's own (unfused) forward runs, so every ``Linear`` layer, the LM head
    included, is called as a module (``rlattr.llm.ghost`` hooks them); logits are divided
    by the sampling temperature, as TRL does. Only the completion positions' logits are
    computed (``logits_to_keep``).
    """
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    attention_mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    keep = batch.completion_ids.shape[1]
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep + 1, use_cache=False
    ).logits[:, :-1, :]
    logps = torch.log_softmax(logits / temperature, dim=-1)
    return torch.gather(logps, -1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
