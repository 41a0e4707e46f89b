"""Iterative influence-based filtering (IIF, docs/science.md §3): drop harmful records, then update.

Each iteration the records are scored against the return target at θ_k (snapshot scores),
a keep mask is chosen by a rule, and the PPO update runs on the kept records only — in
the same process, with no throw-away update.

Rules (``IIF.rule``):
- ``neg_bottom``: among records with a negative score, drop the fraction ``fraction`` with
  the most negative scores (the paper: 0.125 *of the negatives*, not of the buffer);
- ``drop_negative``: drop every record with a negative score (the paper's RLHF variant);
- ``bottom``: drop the lowest ``fraction`` of all records;
- ``random``: drop ``fraction`` of all records at random (ablation);
- ``random_like``: drop as many records as ``like`` (a rule, with ``like_fraction``) would,
  chosen at random (the matched ablation).
- ``advantage_like``: drop as many records as ``like`` would, those with the most negative
  advantages (an ablation that asks whether the scores add anything to "drop the worst
  advantages": the records IIF drops have large negative advantages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from rlattr.record.plan import MINIBATCHING, Minibatching
from rlattr.scoring.attribute import score_name
from rlattr.scoring.grads import ParamSelection
from rlattr.scoring.graph_memory import DEFAULT_MEMORY_BUDGET, MemoryBudget, budget_bytes
from rlattr.scoring.influence import snapshot_scores
from rlattr.scoring.rules import RULES as RULES  # re-exported: the rules IIF offers
from rlattr.scoring.rules import FilterRule
from rlattr.scoring.targets import ReturnTarget, Target
from rlattr.training.seams import (
    FilterDecision,
    IterationContext,
    KeepMaskFilter,
    StoredScores,
    score_prefix,
)


def _check_whole_numbers(config: IIF) -> None:
    """Whole numbers where they belong (a YAML typo would otherwise fail in a comparison)."""
    for name in ("greedy_blocks", "warmup_iterations", "min_kept", "seed"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | None):
            raise ValueError(f"IIF {name} must be a whole number, got {value!r}")


@dataclass(frozen=True)
class IIF(FilterRule):
    """Configuration of iterative influence-based filtering.

    Attributes:
        rule: one of ``RULES`` (see the module docstring).
        fraction: p of ``neg_bottom`` (share of the negatives), q of ``bottom``/``random``.
        like: for ``random_like`` and ``advantage_like``, the rule whose drop count is
            matched.
        like_fraction: that rule's fraction.
        target: what the scores explain; None is the return target on the same buffer.
        scorer: ``"snapshot"`` (the paper's) or ``"metagrad"``: exact metagradient scores
            of the update about to run (its plan is drawn first; the filtered records are
            then removed from their minibatches, which otherwise stay as drawn). TracIn
            is not offered: it needs the very update it would filter (a throw-away update).
        greedy_blocks: with ``metagrad``, drop in this many blocks and re-score after
            each (a metagradient prices a whole subset only to first order); each block
            costs one more metagradient computation.
        minibatching: how the update forms minibatches around dropped records.
            ``"as_drawn"`` (default) removes the dropped records from the minibatches plain
            PPO would have drawn: the same steps as PPO, each on slightly fewer records,
            and the only choice metagradient scores are exact for. ``"recut"`` cuts the
            kept records into minibatches of ``batch_size``; the last one keeps the
            remainder, which can be a record or two, and on Hopper (batch 32, Adam) that
            cost most of the return (experiments/results/iif/hopper-*.md). See
            ``rlattr.record.plan.sample_epoch_minibatches``.
        params: which parameters the scores use (see ``rlattr.scoring.grads``).
        warmup_iterations: iterations trained unfiltered before filtering starts.
        min_kept: never keep fewer records than this (at least 1: an update needs data).
        seed: seed of the random rules' own generator (the global RNGs are not touched);
            None (default) derives it from the model's seed, so random drops differ across
            training seeds (``rlattr.training.seams.filter_seed``).
        memory_budget: with ``metagrad``, the graph memory one metagradient may hold:
            bytes, a size such as ``"256MiB"`` or ``"1GiB"``, or None/``"none"`` (no
            limit: one graph of the whole update). Within it the update's graph is kept
            whole or recomputed in segments (``rlattr.scoring.graph_memory``); the
            scores are the same up to float rounding.
    """

    # rule, fraction, like, like_fraction: FilterRule's (its fields come first).
    # metadata["help"]: the one-line help of ``rlattr train --iif-<field>``.
    target: Target | None = None
    scorer: Literal["snapshot", "metagrad"] = field(
        default="snapshot",
        metadata={"help": "snapshot (the paper's) or metagrad (exact, of the coming update)"},
    )
    greedy_blocks: int = field(
        default=1, metadata={"help": "metagrad: drop in this many blocks, re-scoring after each"}
    )
    minibatching: Minibatching = field(
        default="as_drawn",
        metadata={
            "help": "as_drawn: PPO's minibatches minus the dropped records; recut: the kept "
            "records cut anew (the last minibatch may be tiny)"
        },
    )
    params: ParamSelection = field(
        default="policy", metadata={"help": "the parameters whose gradients score records"}
    )
    warmup_iterations: int = field(
        default=0, metadata={"help": "iterations trained unfiltered before filtering starts"}
    )
    min_kept: int = field(default=1, metadata={"help": "never keep fewer records than this"})
    seed: int | None = None
    memory_budget: MemoryBudget = field(
        default=DEFAULT_MEMORY_BUDGET,
        metadata={"help": "metagrad: graph memory to stay within (256MiB, 1GiB, none)"},
    )

    def __post_init__(self) -> None:
        self.check_numbers()
        _check_whole_numbers(self)
        self.check_rule()
        if self.scorer not in ("snapshot", "metagrad"):
            raise ValueError(
                f"IIF scorer {self.scorer!r} is not available: 'snapshot' and 'metagrad' "
                "score the update before it runs; replay TracIn would need a throw-away update"
            )
        if self.greedy_blocks < 1:
            raise ValueError("greedy_blocks must be >= 1")
        try:
            budget_bytes(self.memory_budget)
        except ValueError as err:
            raise ValueError(f"IIF memory_budget: {err}") from None
        if self.greedy_blocks > 1 and self.scorer != "metagrad":
            raise ValueError("greedy_blocks needs scorer='metagrad'")
        if self.minibatching not in MINIBATCHING:
            raise ValueError(
                f"minibatching must be one of {MINIBATCHING}, got {self.minibatching!r}"
            )
        if self.scorer == "metagrad" and self.minibatching == "recut":
            raise ValueError(
                "scorer='metagrad' needs minibatching='as_drawn': its scores are exact for "
                "the drawn minibatches, which re-cutting would change"
            )
        if self.warmup_iterations < 0:
            raise ValueError("warmup_iterations must be >= 0")
        if self.min_kept < 1:
            raise ValueError("min_kept must be >= 1")
        if self.params not in ("policy", "value", "all"):
            raise ValueError(f"params must be 'policy', 'value' or 'all', got {self.params!r}")


def keep_mask(
    scores: torch.Tensor | None,
    n_records: int,
    config: IIF,
    generator: torch.Generator,
    min_kept: int,
    advantages: torch.Tensor | None = None,
) -> torch.Tensor:
    """The records ``config``'s rule keeps (True = kept); see ``rlattr.scoring.rules``."""
    return config.keep_mask(scores, n_records, generator, min_kept, advantages)


class IIFFilter(KeepMaskFilter):
    """The keep-mask filter AttributedPPO installs when ``iif`` is set.

    Each iteration it scores the records (snapshot, or metagradient of the drafted plan),
    applies ``config.rule`` and returns the keep mask, the scores to store and the
    TensorBoard scalars; the random rules draw from ``context.generator`` (seeded from
    ``config.seed``, or from the model's seed when that is None).
    """

    uses_generator = True

    def __init__(self, config: IIF):
        self.config = config

    @property
    def needs_plan(self) -> bool:  # type: ignore[override]
        """Metagradient scores price the update about to run: its plan is drawn first."""
        return self.config.scorer == "metagrad"

    @property
    def minibatching(self) -> Minibatching:  # type: ignore[override]
        return self.config.minibatching

    @property
    def seed(self) -> int | None:  # type: ignore[override]
        return self.config.seed

    def _metagrad(
        self, context: IterationContext, target: Target, at: torch.Tensor | None = None
    ) -> torch.Tensor:
        from rlattr.record.checkpoint import capture_checkpoint
        from rlattr.record.replay import IterationData
        from rlattr.scoring.metagrad import metagradient_scores

        if context.plan is None:
            raise ValueError("metagradient IIF needs the drafted plan (needs_plan)")
        tensors, meta = capture_checkpoint(context.policy)
        records = context.records
        data = IterationData(records.iteration, records, context.plan, tensors, meta)
        return metagradient_scores(
            data, context.policy, target, context.target_context(), at=at,
            memory_budget=self.config.memory_budget,
        ).scores  # fmt: skip

    def __call__(self, context: IterationContext) -> FilterDecision:
        config = self.config
        records = context.records
        n = len(records)
        target = config.target or ReturnTarget()
        warming_up = context.iteration < config.warmup_iterations
        if config.scorer == "metagrad":
            if warming_up:
                return FilterDecision(None)
            scores = self._metagrad(context, target).detach()
        else:
            # Scores are computed and logged for every rule (random included).
            scores = snapshot_scores(
                context.policy,
                records,
                target,
                context.loss_config,
                context.target_context(),
                config.params,
            ).detach()
        stored = {
            score_name(config.scorer, target, config.params): StoredScores(
                scores.cpu(),
                {"method": config.scorer, "target": target.name, "during": "iif"},
                score_prefix(target),
            )
        }
        if warming_up:
            return FilterDecision(None, stored)
        if not config.scores_finite(scores, "iteration", context.iteration, "record"):
            return FilterDecision(None, stored)
        if context.generator is None:
            raise ValueError("IIFFilter needs its generator (uses_generator)")
        mask = keep_mask(
            scores, n, config, context.generator, min(config.min_kept, n), records.advantages
        )
        if config.greedy_blocks > 1 and config.rule in ("neg_bottom", "drop_negative", "bottom"):
            mask = self._greedy(context, target, scores, int((~mask).sum()))
        return FilterDecision(mask.to(records.device), stored)

    def _greedy(
        self, context: IterationContext, target: Target, scores: torch.Tensor, n_drop: int
    ) -> torch.Tensor:
        """Drop ``n_drop`` records in blocks, re-scoring the rest after each block (the
        scores at weights with the dropped records at 0 are exact for that counterfactual)."""
        mask = torch.ones(len(context.records), dtype=torch.bool)
        blocks = self.config.greedy_blocks
        current = scores.detach().cpu()
        for block in range(blocks):
            size = n_drop // blocks + (1 if block < n_drop % blocks else 0)
            if size == 0:
                continue
            candidates = torch.where(mask, current, torch.full_like(current, float("inf")))
            mask[torch.sort(candidates, stable=True).indices[:size]] = False
            if block < blocks - 1:
                weights = mask.to(torch.float64)
                current = self._metagrad(context, target, at=weights).detach().cpu()
        return mask
