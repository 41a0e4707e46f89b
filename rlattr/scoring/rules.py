"""Keep-mask rules of IIF as pure functions of the scores (docs/science.md §3).

One implementation for every filter: ``rlattr.training`` (IIF in PPO) and ``rlattr.llm``
(IIF in TRL) are one layer and may not import each other, so the rules live here, below
both: ``keep_mask`` (the rules), ``FilterRule`` (a rule's settings and their validation,
embedded by ``rlattr.training.filters.IIF`` and ``rlattr.llm.LLMIIF``) and
``finite_scores`` (the guard: non-finite scores leave that round unfiltered).

Rules: ``neg_bottom(p)`` drops the fraction p *of the negatives* with the lowest scores;
``drop_negative`` drops every negative; ``bottom(q)`` the lowest fraction q of all;
``random(q)`` q at random; ``random_like`` and ``advantage_like`` drop as many as the rule
``like`` would, at random or by lowest advantage.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch

Rule = Literal["neg_bottom", "drop_negative", "bottom", "random", "random_like", "advantage_like"]
RULES: tuple[str, ...] = (
    "neg_bottom",
    "drop_negative",
    "bottom",
    "random",
    "random_like",
    "advantage_like",
)
MATCHED: tuple[str, ...] = ("random_like", "advantage_like")
"""Rules that drop as many records as their ``like`` rule would."""
LIKEABLE: tuple[str, ...] = ("neg_bottom", "drop_negative", "bottom")
NEEDS_FRACTION: tuple[str, ...] = ("neg_bottom", "bottom", "random")


def drop_count(scores: torch.Tensor, rule: str, fraction: float) -> int:
    """How many records ``rule`` drops for these scores."""
    n = scores.numel()
    if rule == "neg_bottom":
        return math.floor(fraction * int((scores < 0).sum()))
    if rule == "drop_negative":
        return int((scores < 0).sum())
    if rule in ("bottom", "random"):
        return math.floor(fraction * n)
    raise ValueError(f"no drop count for rule {rule!r}")


def keep_mask(
    scores: torch.Tensor | None,
    n_records: int,
    rule: str,
    fraction: float,
    generator: torch.Generator,
    min_kept: int = 1,
    like: str | None = None,
    like_fraction: float = 0.125,
    advantages: torch.Tensor | None = None,
) -> torch.Tensor:
    """The records ``rule`` keeps (True = kept), a CPU bool tensor of ``n_records``.

    Args:
        scores: one score per record (positive = helpful); may be None for ``random``.
        n_records: number of records.
        rule: one of ``RULES``.
        fraction: p of ``neg_bottom``, q of ``bottom`` and ``random``.
        generator: the random rules' own generator (global RNGs are not touched).
        min_kept: at least this many records are kept (the highest scored, or random).
        like, like_fraction: for ``random_like`` / ``advantage_like``, the rule whose
            drop count is matched, and its fraction.
        advantages: ``advantage_like`` ranks by these instead of the scores.
    """
    if rule not in RULES:
        raise ValueError(f"IIF rule must be one of {RULES}, got {rule!r}")
    if rule == "random":
        n_drop = math.floor(fraction * n_records)
    elif rule in MATCHED:
        if scores is None or like not in LIKEABLE:
            raise ValueError(f"{rule} needs scores and like in {LIKEABLE}")
        n_drop = drop_count(scores, like, like_fraction)
    else:
        if scores is None:
            raise ValueError(f"rule {rule!r} needs scores")
        n_drop = drop_count(scores, rule, fraction)
    n_drop = max(0, min(n_drop, n_records - min_kept))
    mask = torch.ones(n_records, dtype=torch.bool)
    if n_drop == 0:
        return mask
    if rule in ("random", "random_like"):
        dropped = torch.randperm(n_records, generator=generator)[:n_drop]
    else:
        ranked = scores if rule != "advantage_like" else advantages
        if ranked is None:
            raise ValueError("advantage_like needs the records' advantages")
        # The most negative first; a stable sort makes ties deterministic.
        dropped = torch.sort(ranked.detach().cpu(), stable=True).indices[:n_drop]
    mask[dropped] = False
    return mask


def finite_scores(
    scores: torch.Tensor | None, who: str, when: str, consequence: str, stacklevel: int = 2
) -> bool:
    """The guard of every filter: True when all scores are finite (or there are none).

    Otherwise it warns "``who``: k of n scores of ``when`` are NaN or inf; ``consequence``"
    and returns False: a rule ranking NaN would drop arbitrary records, so the caller
    trains on every record this time instead.

    Args:
        scores: the round's scores.
        who: the filter, first word of the warning ("IIF", "intervention").
        when: the round ("iteration 3", "round 3").
        consequence: what the caller does instead ("this iteration trains on every record").
        stacklevel: as ``warnings.warn``'s, counted from the caller of this function.
    """
    if scores is None:
        return True
    finite = torch.isfinite(scores)
    if bool(finite.all()):
        return True
    bad = int((~finite).sum())
    warnings.warn(
        f"{who}: {bad} of {scores.numel()} scores of {when} are NaN or inf; {consequence}",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )
    return False


def _check_fraction(rule: str, fraction: float, name: str) -> None:
    """p of neg_bottom may be 1 (every negative: the paper's p = 100 %, drop_negative);
    q of bottom/random must stay below 1, or the rule would drop the whole buffer."""
    high_ok = rule == "neg_bottom"
    if not (0 <= fraction <= 1 if high_ok else 0 <= fraction < 1):
        interval = "[0, 1]" if high_ok else "[0, 1)"
        raise ValueError(f"{name} of {rule} must be in {interval}, got {fraction}")


# metadata["help"]: the one-line help of a command-line flag (``rlattr train --iif-<field>``).
@dataclass(frozen=True)
class FilterRule:
    """Which records a filter drops: the rule and its numbers, validated on construction.

    Embedded (as the first fields) by the IIF configurations of PPO
    (``rlattr.training.filters.IIF``) and TRL (``rlattr.llm.LLMIIF``), which add how the
    scores are taken; a subclass may declare ``rule`` again with another default.

    Attributes:
        rule: one of ``RULES`` (see the module docstring).
        fraction: p of ``neg_bottom`` (share of the negatives, in [0, 1]), q of ``bottom``
            and ``random`` (in [0, 1)).
        like: for ``random_like`` and ``advantage_like``, the rule whose drop count is
            matched (one of ``LIKEABLE``).
        like_fraction: that rule's fraction.
    """

    rule: Rule = field(
        default="neg_bottom", metadata={"help": "which records to drop each iteration"}
    )
    fraction: float = field(
        default=0.125,
        metadata={"help": "p of neg_bottom (share of the negatives), q of bottom/random"},
    )
    like: Rule | None = field(
        default=None,
        metadata={"help": "random_like/advantage_like: the rule whose drop count is matched"},
    )
    like_fraction: float = field(default=0.125, metadata={"help": "the matched rule's fraction"})

    def __post_init__(self) -> None:
        self.check_numbers()
        self.check_rule()

    def check_numbers(self) -> None:
        """Numbers where numbers belong (a YAML typo would otherwise fail in a comparison)."""
        for name in ("fraction", "like_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ValueError(f"IIF {name} must be a number in [0, 1], got {value!r}")

    def check_rule(self) -> None:
        """The rule is known and its fractions fit it (see ``_check_fraction``)."""
        if self.rule not in RULES:
            raise ValueError(f"IIF rule must be one of {RULES}, got {self.rule!r}")
        if self.rule in NEEDS_FRACTION:
            _check_fraction(self.rule, self.fraction, "IIF fraction")
        if self.rule in MATCHED:
            if self.like not in LIKEABLE:
                raise ValueError(
                    f"{self.rule} needs like='neg_bottom', 'drop_negative' or 'bottom'"
                )
            _check_fraction(self.like, self.like_fraction, "like_fraction")

    @property
    def needs_scores(self) -> bool:
        """``random`` needs no scores (they are still computed when a run records them)."""
        return self.rule != "random"

    def keep_mask(
        self,
        scores: torch.Tensor | None,
        n_records: int,
        generator: torch.Generator,
        min_kept: int,
        advantages: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The records this rule keeps (True = kept): ``keep_mask`` with these settings."""
        return keep_mask(
            scores, n_records, self.rule, self.fraction, generator, min_kept,
            self.like, self.like_fraction, advantages,
        )  # fmt: skip

    def scores_finite(
        self, scores: torch.Tensor | None, unit: str, index: int, records: str
    ) -> bool:
        """The guard (``finite_scores``) in IIF's words: False, with a warning, when a score
        is NaN or inf; the caller then trains ``unit`` ``index`` ("iteration", 3) on every
        one of its ``records`` ("record", "pair")."""
        return finite_scores(
            scores,
            "IIF",
            f"{unit} {index}",
            f"this {unit} trains on every {records}",
            stacklevel=3,
        )
