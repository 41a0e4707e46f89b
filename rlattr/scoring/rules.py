"""Keep-mask rules of IIF as pure functions of the scores (docs/science.md §3).

One implementation for every filter: ``rlattr.training`` (IIF in PPO) and ``rlattr.llm``
(IIF in TRL) are one layer and may not import each other, so the rules live here, below
both.

Rules: ``neg_bottom(p)`` drops the fraction p *of the negatives* with the lowest scores;
``drop_negative`` drops every negative; ``bottom(q)`` the lowest fraction q of all;
``random(q)`` q at random; ``random_like`` and ``advantage_like`` drop as many as the rule
``like`` would, at random or by lowest advantage.
"""

from __future__ import annotations

import math
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
