"""Record hooks for AttributedPPO: score each iteration during training and log diagnostics."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlattr.scoring.attribute import score_name
from rlattr.scoring.grads import Backend, ParamSelection
from rlattr.scoring.influence import snapshot_scores
from rlattr.scoring.targets import ReturnTarget, Target
from rlattr.training.seams import IterationContext, StoredScores


@dataclass
class ScoreHook:
    """Score each iteration's records during training (a record hook for AttributedPPO).

    Scores are computed at θ_k before the update and returned to AttributedPPO, which
    stores them with the iteration and shows them in TensorBoard (``rlattr.training.board``).

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
        # The return target's scores get the full diagnosis under "scores"; others keep
        # their own prefix so the two never mix in one curve.
        prefix = "scores" if isinstance(target, ReturnTarget) else f"scores_{target.name}"
        return {
            score_name("snapshot", target, self.params): StoredScores(scores.cpu(), meta, prefix)
        }
