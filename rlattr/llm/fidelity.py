"""Ground truth for pair scores by replay: leave-subset-out effects (docs/science.md §2).

For a recorded round k, the update is replayed from θ_k with the same plan and with the
pairs of a subset S removed from every micro-batch; the actual effect of S on the target
is Δ_S = f(θ_{k+1}) − f(θ_{k+1}^{−S}), and the prediction is Σ_{i∈S} score_i (positive
scores help, so removing them lowers f). LDS is the Spearman correlation of the two over
many subsets. The target is the one the round was scored against: the recorded validation
completions, or the round's own pairs for the same-batch target. One plan is replayed,
so there is no order-noise ceiling here (a different shuffle would need a new plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlattr.errors import RunLogError
from rlattr.llm.batch import SequenceBatch
from rlattr.llm.replay import replay_round
from rlattr.llm.runlog import LLMRunLog
from rlattr.llm.scores import sequence_target


@dataclass(frozen=True)
class SubsetEffects:
    """Predicted and actual effects of removing each subset (one entry per subset).

    Attributes:
        predicted: ``[S]`` Σ_{i∈S} score_i.
        actual: ``[S]`` f(θ_{k+1}) − f(θ_{k+1}^{−S}) by replay.
        sizes: ``[S]`` pairs in each subset.
    """

    predicted: torch.Tensor
    actual: torch.Tensor
    sizes: torch.Tensor

    @property
    def lds(self) -> float:
        """Spearman correlation of predicted and actual effects."""
        return spearman(self.predicted, self.actual)

    @property
    def sign_agreement(self) -> float:
        return float((torch.sign(self.predicted) == torch.sign(self.actual)).double().mean())


def _ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation (ties broken by position; effects are continuous)."""
    ra, rb = _ranks(a.double().cpu()), _ranks(b.double().cpu())
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@torch.no_grad()
def target_value(trainer: Any, target: SequenceBatch) -> float:
    """f(θ) at the trainer model's current parameters (dropout off)."""
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        return float(sequence_target(model, target, float(trainer.temperature)))
    finally:
        model.train(was_training)


def subset_effects(
    trainer: Any, run_dir: str | Path, round_index: int, drops: list[torch.Tensor]
) -> SubsetEffects:
    """Replay round ``round_index`` once as recorded and once without each subset.

    Args:
        trainer: an ``IIFGRPOTrainer`` built like the recorded one (its model ends at the
            last counterfactual's parameters).
        run_dir: the run directory.
        round_index: a committed round whose scores were recorded.
        drops: ``[B]`` bool masks, True for the pairs removed (on top of those the round
            already dropped).
    """
    record = LLMRunLog(run_dir).read_round(round_index)
    if "scores" not in record.extras:
        raise RunLogError(f"round {round_index} has no recorded scores (IIF was off)")
    scores = record.extras["scores"].double()
    target = record.target_batch() or record.batch()
    device = next(trainer.model.parameters()).device
    target = SequenceBatch.from_tensors({k: v.to(device) for k, v in target.to_tensors().items()})
    base_keep = record.extras.get("keep", torch.ones(len(scores), dtype=torch.bool)).bool()
    replay_round(trainer, run_dir, round_index)
    full = target_value(trainer, target)
    predicted, actual, sizes = [], [], []
    for drop in drops:
        removed = drop.bool().cpu() & base_keep
        replay_round(trainer, run_dir, round_index, keep=base_keep & ~removed)
        actual.append(full - target_value(trainer, target))
        predicted.append(float(scores[removed].sum()))
        sizes.append(int(removed.sum()))
    return SubsetEffects(
        torch.tensor(predicted, dtype=torch.float64),
        torch.tensor(actual, dtype=torch.float64),
        torch.tensor(sizes),
    )
