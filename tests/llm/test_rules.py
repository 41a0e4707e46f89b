"""LLMIIF and IIF configs reach the same shared rule (rlattr.scoring.rules) with the same
arguments: the same mask for every rule."""

from __future__ import annotations

import pytest
import torch

from rlattr.llm.config import LLMIIF
from rlattr.scoring.rules import keep_mask
from rlattr.training.filters import IIF
from rlattr.training.filters import keep_mask as ppo_keep_mask

CASES = [
    ("neg_bottom", 0.5, None),
    ("drop_negative", 0.125, None),
    ("bottom", 0.25, None),
    ("random", 0.3, None),
    ("random_like", 0.125, "drop_negative"),
    ("random_like", 0.125, "neg_bottom"),
    ("advantage_like", 0.125, "drop_negative"),
]


@pytest.mark.parametrize(("rule", "fraction", "like"), CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_rules_match_the_ppo_filters(rule, fraction, like, seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(37, generator=generator)
    scores[3] = scores[4] = scores[5]  # ties are broken the same way
    advantages = torch.randn(37, generator=generator)
    like_fraction = 0.5 if like == "neg_bottom" else 0.125
    config = IIF(rule=rule, fraction=fraction, like=like, like_fraction=like_fraction, seed=seed)
    expected = ppo_keep_mask(scores, 37, config, torch.Generator().manual_seed(seed), 2, advantages)
    mask = keep_mask(
        scores,
        37,
        rule,
        fraction,
        torch.Generator().manual_seed(seed),
        2,
        like,
        like_fraction,
        advantages,
    )
    assert torch.equal(mask, expected)
    if rule == "drop_negative":
        assert torch.equal(mask, scores >= 0)


def test_min_kept_and_bad_configs() -> None:
    scores = -torch.ones(5)
    mask = keep_mask(scores, 5, "drop_negative", 0.0, torch.Generator(), min_kept=2)
    assert int(mask.sum()) == 2
    with pytest.raises(ValueError, match="rule must be one of"):
        LLMIIF(rule="everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs like"):
        LLMIIF(rule="random_like")
    with pytest.raises(ValueError, match="target"):
        LLMIIF(target="future")  # type: ignore[arg-type]
