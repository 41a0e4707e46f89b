"""Record hooks for AttributedPPO: score each iteration during training and log diagnostics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlattr.record.records import Records
from rlattr.scoring.attribute import score_name
from rlattr.scoring.grads import Backend, ParamSelection
from rlattr.scoring.influence import snapshot_scores
from rlattr.scoring.targets import ReturnTarget, Target
from rlattr.training.seams import IterationContext, StoredScores


@dataclass
class ScoreHook:
    """Score each iteration's records during training (a record hook for AttributedPPO).

    Scores are computed at θ_k before the update and returned to AttributedPPO, which
    stores them with the iteration and logs their diagnostics to TensorBoard (histogram,
    fraction negative, correlation with the advantage).

    Attributes:
        target: what to score against (default: the return target on the same buffer).
        params, backend: see ``rlattr.scoring.grads``.
        last_scores: the latest iteration's scores (the hook's own record, for the caller).
    """

    target: Target | None = None
    params: ParamSelection = "policy"
    backend: Backend = "auto"
    last_scores: torch.Tensor | None = field(default=None, init=False)

    def __call__(self, context: IterationContext) -> dict[str, StoredScores]:
        target = self.target or ReturnTarget()
        scores = snapshot_scores(
            context.policy,
            context.records,
            target,
            context.loss_config,
            context.target_context(),
            self.params,
            self.backend,
        ).detach()
        self.last_scores = scores
        meta = {
            "method": "snapshot",
            "target": target.name,
            "params": self.params,
            "during": "training",
        }
        return {score_name("snapshot", target, self.params): StoredScores(scores.cpu(), meta)}


def log_score_diagnostics(
    logger: Any, scores: torch.Tensor, records: Records, prefix: str = "attribution"
) -> None:
    """Histogram, fraction negative and score–advantage correlation, to TensorBoard."""
    scores = scores.to(records.device)
    finite = torch.isfinite(scores)
    logger.record(f"{prefix}/fraction_negative", float((scores[finite] < 0).float().mean()))
    logger.record(f"{prefix}/nonfinite", int((~finite).sum()))
    if bool(finite.any()):
        logger.record(
            f"{prefix}/scores",
            scores[finite].detach().cpu(),
            exclude=("stdout", "log", "json", "csv"),
        )
        pair = torch.stack([scores[finite].double(), records.advantages[finite].double()])
        corr = torch.corrcoef(pair)[0, 1]
        logger.record(f"{prefix}/score_advantage_corr", float(corr))
