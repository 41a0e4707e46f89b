"""Record hooks for AttributedPPO: score each iteration during training and log diagnostics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlattr.record.records import Records
from rlattr.scoring.attribute import score_name
from rlattr.scoring.grads import Backend, ParamSelection
from rlattr.scoring.influence import snapshot_scores
from rlattr.scoring.targets import Target, TargetContext


@dataclass
class ScoreHook:
    """Score each iteration's records during training (a record hook for AttributedPPO).

    Scores are computed at θ_k before the update, logged to TensorBoard (histogram,
    fraction negative, correlation with the advantage) and stored with the iteration.

    Attributes:
        target: what to score against (default: the return target on the same buffer).
        params, backend: see ``rlattr.scoring.grads``.
        last_scores: the latest iteration's scores.
    """

    target: Target | None = None
    params: ParamSelection = "policy"
    backend: Backend = "auto"
    last_scores: torch.Tensor | None = field(default=None, init=False)

    def __call__(self, model: Any, records: Records) -> None:
        from rlattr.scoring.targets import ReturnTarget

        target = self.target or ReturnTarget()
        context = TargetContext(records, model.gamma, model.gae_lambda)
        scores = snapshot_scores(
            model.policy, records, target, model.loss_config(), context, self.params, self.backend
        ).detach()
        self.last_scores = scores
        model.pending_scores[score_name("snapshot", target)] = (
            scores.cpu(),
            {
                "method": "snapshot",
                "target": target.name,
                "params": self.params,
                "during": "training",
            },
        )
        log_score_diagnostics(model.logger, scores, records)


def log_score_diagnostics(logger: Any, scores: torch.Tensor, records: Records) -> None:
    """Histogram, fraction negative and score–advantage correlation, to TensorBoard."""
    finite = torch.isfinite(scores)
    logger.record("attribution/fraction_negative", float((scores[finite] < 0).float().mean()))
    logger.record("attribution/nonfinite", int((~finite).sum()))
    if bool(finite.any()):
        logger.record(
            "attribution/scores",
            scores[finite].detach().cpu(),
            exclude=("stdout", "log", "json", "csv"),
        )
        pair = torch.stack([scores[finite].double(), records.advantages[finite].double()])
        corr = torch.corrcoef(pair)[0, 1]
        logger.record("attribution/score_advantage_corr", float(corr))
