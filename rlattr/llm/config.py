"""Configuration of IIF inside TRL's GRPO trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlattr.scoring.rules import LIKEABLE, MATCHED, NEEDS_FRACTION, RULES, Rule

TargetKind = Literal["validation", "batch"]
ScoreBackend = Literal["ghost", "naive"]


@dataclass(frozen=True)
class LLMIIF:
    """Iterative influence-based filtering of prompt–completion pairs (docs/science.md §3, §6 RLHF).

    Every round (one generation batch) the pairs are scored at the round's starting
    parameters, ``score_i = -<∇f, ∇ℓ_i>`` with ℓ_i the trainer's per-sequence loss, a rule
    turns the scores into a keep-mask, and the round's updates train on the kept pairs only.
    """

    rule: Rule = field(
        default="drop_negative",
        metadata={"help": f"keep-mask rule, one of {RULES} (the paper's RLHF rule by default)"},
    )
    fraction: float = field(
        default=0.125,
        metadata={"help": "p of neg_bottom (share of the negatives), q of bottom and random"},
    )
    like: Rule | None = field(
        default=None,
        metadata={"help": "for random_like / advantage_like: the rule whose drop count is matched"},
    )
    like_fraction: float = field(default=0.125, metadata={"help": "that rule's fraction"})
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
        if self.rule not in RULES:
            raise ValueError(f"IIF rule must be one of {RULES}, got {self.rule!r}")
        if self.rule in NEEDS_FRACTION and not 0 <= self.fraction < 1:
            raise ValueError(f"IIF fraction must be in [0, 1), got {self.fraction}")
        if self.rule in MATCHED:
            if self.like not in LIKEABLE:
                raise ValueError(f"{self.rule} needs like in {LIKEABLE}, got {self.like!r}")
            if not 0 <= self.like_fraction < 1:
                raise ValueError(f"like_fraction must be in [0, 1), got {self.like_fraction}")
        if self.target not in ("validation", "batch"):
            raise ValueError(f"target must be 'validation' or 'batch', got {self.target!r}")
        if self.backend not in ("ghost", "naive"):
            raise ValueError(f"backend must be 'ghost' or 'naive', got {self.backend!r}")
        if self.warmup_rounds < 0:
            raise ValueError("warmup_rounds must be >= 0")
        if self.min_kept < 1:
            raise ValueError("min_kept must be >= 1")

    @property
    def needs_scores(self) -> bool:
        """``random`` needs no scores (they are still computed when a run records them)."""
        return self.rule != "random"
