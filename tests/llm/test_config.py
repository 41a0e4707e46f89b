"""LLMIIF is IIF's filter rule (``rlattr.scoring.rules.FilterRule``) with the LLM's settings,
and the trainer's keep-mask goes through the rule's guard and mask."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from rlattr.llm import LLMIIF, IIFGRPOTrainer
from rlattr.scoring.rules import FilterRule, keep_mask


def test_the_stored_form_is_unchanged() -> None:
    # The run log stores asdict(iif): the same keys, in the same order, as before the rule
    # moved into FilterRule.
    assert list(dataclasses.asdict(LLMIIF())) == [
        "rule", "fraction", "like", "like_fraction", "target", "backend", "parameters",
        "renormalize", "warmup_rounds", "min_kept", "seed",
    ]  # fmt: skip
    assert isinstance(LLMIIF(), FilterRule)
    assert LLMIIF().rule == "drop_negative"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "bottom", "fraction": 1.0}, r"fraction of bottom must be in \[0, 1\)"),
        ({"rule": "random_like", "like": "random"}, "random_like needs like="),
        ({"fraction": "0.1"}, "IIF fraction must be a number"),
        ({"backend": "fast"}, "backend must be"),
        ({"warmup_rounds": -1}, "warmup_rounds"),
        ({"min_kept": 0}, "min_kept"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LLMIIF(**kwargs)


class _Batch:
    """What ``_keep`` reads of a round's batch."""

    def __init__(self, advantages: torch.Tensor):
        self.advantages = advantages

    def __len__(self) -> int:
        return len(self.advantages)


def _trainer(iif: LLMIIF, round_: int) -> SimpleNamespace:
    """What ``IIFGRPOTrainer._keep`` reads of the trainer."""
    return SimpleNamespace(iif=iif, _round=round_, _iif_generator=torch.Generator().manual_seed(0))


def test_the_trainer_keeps_what_the_rule_keeps() -> None:
    scores = torch.tensor([0.5, -1.0, 2.0, -0.25, 1.0, -3.0])
    batch = _Batch(torch.linspace(-1, 1, 6))
    iif = LLMIIF(rule="neg_bottom", fraction=0.5, min_kept=2)
    mask = IIFGRPOTrainer._keep(_trainer(iif, 0), scores, batch)
    expected = keep_mask(scores, 6, "neg_bottom", 0.5, torch.Generator().manual_seed(0), 2)
    assert torch.equal(mask, expected)
    assert mask.tolist() == [True, True, True, True, True, False]  # floor(0.5 × 3) = 1


def test_non_finite_scores_train_the_round_on_every_pair() -> None:
    scores = torch.tensor([0.5, float("nan"), -2.0, -1.0])
    iif = LLMIIF(rule="drop_negative")
    with pytest.warns(RuntimeWarning, match="1 of 4 scores of round 2 are NaN or inf; this round"):
        mask = IIFGRPOTrainer._keep(_trainer(iif, 2), scores, _Batch(torch.zeros(4)))
    assert bool(mask.all())
    finite = IIFGRPOTrainer._keep(_trainer(iif, 2), scores.nan_to_num(), _Batch(torch.zeros(4)))
    assert finite.tolist() == [True, True, False, False]
