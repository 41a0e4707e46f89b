"""Configuration of IIF inside TRL's GRPO trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlattr.scoring.rules import RULES, FilterRule, Rule

TargetKind = Literal["validation", "batch"]
ScoreBackend = Literal["ghost", "naive"]


@dataclass(frozen=True)
class LLMIIF(FilterRule):
    """Iterative influence-based filtering of prompt–completion pairs (docs/science.md §3, §6 RLHF).

    Every round (one generation batch) the pairs are scored at the round's starting
    parameters, ``score_i = -<∇f, ∇ℓ_i>`` with ℓ_i the trainer's per-sequence loss, a rule
    turns the scores into a keep-mask, and the round's updates train on the kept pairs only.
    The rule, its fractions, their validation and the non-finite guard are IIF's own
    (``rlattr.scoring.rules.FilterRule``, shared with ``rlattr.training.filters.IIF``).
    """

    # fraction, like, like_fraction: FilterRule's; rule as there, with the RLHF default.
    rule: Rule = field(
        default="drop_negative",
        metadata={"help": f"keep-mask rule, one of {RULES} (the paper's RLHF rule by default)"},
    )
    target: TargetKind = field(
        default="validation",
        metadata={
            "help": "'validation': mean over completions sampled for the validation prompts "
            "of sequence log-probability × group-normalised advantage (the paper's target); "
            "'batch': the same surrogate on the round's own batch (no extra generation)"
        },
    )
    backend: ScoreBackend = field(
        default="ghost",
        metadata={"help": "'ghost': per-layer products, one backward; 'naive': one per pair"},
    )
    parameters: tuple[str, ...] | None = field(
        default=None,
        metadata={
            "help": "names of the parameters the scores use; None: every trainable parameter "
            "of a Linear or Embedding layer (with LoRA: the adapters)"
        },
    )
    renormalize: bool = field(
        default=True,
        metadata={
            "help": "normalise the loss over the kept tokens (dapo/cispo: num_items_in_batch "
            "of the kept pairs), like the paper's mean over kept records; False keeps the "
            "whole batch's normaliser, which shrinks the step by the dropped share"
        },
    )
    warmup_rounds: int = field(
        default=0, metadata={"help": "rounds trained unfiltered (still scored) before IIF starts"}
    )
    min_kept: int = field(default=1, metadata={"help": "never keep fewer pairs than this"})
    seed: int = field(default=0, metadata={"help": "seed of the random rules' own generator"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target not in ("validation", "batch"):
            raise ValueError(f"target must be 'validation' or 'batch', got {self.target!r}")
        if self.backend not in ("ghost", "naive"):
            raise ValueError(f"backend must be 'ghost' or 'naive', got {self.backend!r}")
        if self.warmup_rounds < 0:
            raise ValueError("warmup_rounds must be >= 0")
        if self.min_kept < 1:
            raise ValueError("min_kept must be >= 1")
