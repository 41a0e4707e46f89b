"""The keep-mask rules, through the PPO filter (``IIF``) and as the LLM trainer calls them
(``LLMIIF``'s settings), drop exactly the records their definitions name on hand-made
scores; the random rules drop their count, drawn from the generator."""

from __future__ import annotations

import pytest
import torch

from rlattr.llm.config import LLMIIF
from rlattr.scoring.rules import keep_mask
from rlattr.training.filters import IIF
from rlattr.training.filters import keep_mask as ppo_keep_mask

# Hand-made scores (16 records, 8 negative, a three-way tie at -0.3) and advantages; the
# records each rule drops are written below from the rule's definition, not computed.
SCORES = torch.tensor(
    [0.5, -0.3, -0.9, 0.1, -0.3, 0.0, -0.1, 0.7, -0.6, 0.2, -0.3, 0.4, -0.05, 0.3, -0.8, 0.6]
)
# ascending, ties by index: 2, 14, 8, 1, 4, 10, 6, 12 | 5, 3, 9, 13, 11, 0, 15, 7
ADVANTAGES = torch.tensor(
    [0.0, 1.0, 2.0, -3.0, 4.0, -5.0, 6.0, -7.0, 8.0, -9.0, 10.0, -11.0, 12.0, -13.0, 14.0, -15.0]
)
# ascending: 15, 13, 11, 9, 7, 5, 3, 0, 1, 2, ...
DETERMINISTIC = [
    # every negative (0.0 is not negative)
    ("drop_negative", 0.125, None, {1, 2, 4, 6, 8, 10, 12, 14}),
    # floor(0.5 × 8 negatives) = 4 lowest; of the tie at -0.3 the lowest index goes first
    ("neg_bottom", 0.5, None, {2, 14, 8, 1}),
    ("neg_bottom", 0.625, None, {2, 14, 8, 1, 4}),  # floor(5.0)
    ("neg_bottom", 1.0, None, {1, 2, 4, 6, 8, 10, 12, 14}),  # p = 100 %: every negative
    # floor(0.375 × 16) = 6 lowest of all
    ("bottom", 0.375, None, {2, 14, 8, 1, 4, 10}),
    ("bottom", 0.6, None, {2, 14, 8, 1, 4, 10, 6, 12, 5}),  # floor(9.6): one non-negative
    # as many as drop_negative (8), the lowest advantages
    ("advantage_like", 0.3, "drop_negative", {15, 13, 11, 9, 7, 5, 3, 0}),
]
RANDOM = [
    ("random", 0.3, None, 4),  # floor(0.3 × 16)
    ("random_like", 0.3, "drop_negative", 8),
    ("random_like", 0.3, "neg_bottom", 4),  # like_fraction 0.5 of 8 negatives
]


def _masks(rule: str, fraction: float, like: str | None, seed: int) -> list[torch.Tensor]:
    """The mask of the PPO filter (an ``IIF``) and of the shared rule as the LLM trainer
    calls it, each with its own generator seeded alike."""
    like_fraction = 0.5
    config = IIF(rule=rule, fraction=fraction, like=like, like_fraction=like_fraction, seed=seed)
    ppo = ppo_keep_mask(SCORES, 16, config, torch.Generator().manual_seed(seed), 1, ADVANTAGES)
    llm_config = LLMIIF(rule=rule, fraction=fraction, like=like, like_fraction=like_fraction)
    llm = keep_mask(
        SCORES, 16, llm_config.rule, llm_config.fraction, torch.Generator().manual_seed(seed),
        1, llm_config.like, llm_config.like_fraction, ADVANTAGES,
    )  # fmt: skip
    return [ppo, llm]


@pytest.mark.parametrize(("rule", "fraction", "like", "dropped"), DETERMINISTIC)
def test_rules_drop_the_records_their_definition_names(rule, fraction, like, dropped) -> None:
    for mask in _masks(rule, fraction, like, seed=0):
        assert mask.dtype == torch.bool and mask.shape == (16,)
        assert set(torch.nonzero(~mask).flatten().tolist()) == dropped


@pytest.mark.parametrize(("rule", "fraction", "like", "count"), RANDOM)
def test_random_rules_drop_their_count_from_the_generator(rule, fraction, like, count) -> None:
    draws = {}
    for seed in (0, 1):
        ppo, llm = _masks(rule, fraction, like, seed)
        assert torch.equal(ppo, llm)  # the same generator state gives the same draw
        assert int((~ppo).sum()) == count
        draws[seed] = set(torch.nonzero(~ppo).flatten().tolist())
    assert draws[0] != draws[1]  # drawn from the generator, not chosen by the scores


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
