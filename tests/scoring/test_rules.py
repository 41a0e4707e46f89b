"""The one filter rule (``FilterRule``): its validation, its keep-mask and the non-finite
guard every filter uses (``finite_scores``)."""

from __future__ import annotations

import warnings

import pytest
import torch

from rlattr.scoring.rules import FilterRule, finite_scores, keep_mask


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "everything"}, "IIF rule must be one of"),
        (
            {"rule": "neg_bottom", "fraction": 1.5},
            r"IIF fraction of neg_bottom must be in \[0, 1\]",
        ),
        ({"rule": "bottom", "fraction": 1.0}, r"IIF fraction of bottom must be in \[0, 1\)"),
        ({"rule": "random", "fraction": -0.1}, r"IIF fraction of random must be in \[0, 1\)"),
        ({"rule": "random_like"}, "random_like needs like='neg_bottom', 'drop_negative' or"),
        ({"rule": "advantage_like", "like": "random"}, "advantage_like needs like="),
        (
            {"rule": "random_like", "like": "bottom", "like_fraction": 1.0},
            r"like_fraction of bottom must be in \[0, 1\)",
        ),
        ({"fraction": "0.1"}, "IIF fraction must be a number"),
        ({"like_fraction": float("nan")}, "IIF like_fraction must be a number"),
        ({"fraction": True}, "IIF fraction must be a number"),
    ],
)
def test_bad_rules_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FilterRule(**kwargs)


def test_good_rules_are_accepted() -> None:
    # p = 1 of neg_bottom is every negative (the paper's p = 100 %); drop_negative has no p.
    FilterRule(rule="neg_bottom", fraction=1.0)
    FilterRule(rule="drop_negative", fraction=5.0)
    FilterRule(rule="random_like", like="neg_bottom", like_fraction=1.0)
    assert not FilterRule(rule="random", fraction=0.5).needs_scores
    assert FilterRule().needs_scores


@pytest.mark.parametrize(
    ("rule", "like"), [("neg_bottom", None), ("random", None), ("advantage_like", "bottom")]
)
def test_the_rule_keeps_what_keep_mask_keeps(rule: str, like: str | None) -> None:
    generator = torch.Generator().manual_seed(0)
    scores, advantages = torch.randn(20, generator=generator), torch.randn(20, generator=generator)
    config = FilterRule(rule=rule, fraction=0.5, like=like, like_fraction=0.25)
    mask = config.keep_mask(scores, 20, torch.Generator().manual_seed(1), 3, advantages)
    expected = keep_mask(
        scores, 20, rule, 0.5, torch.Generator().manual_seed(1), 3, like, 0.25, advantages
    )
    assert torch.equal(mask, expected)
    assert not bool(mask.all())


def test_finite_scores_pass_silently() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert finite_scores(torch.tensor([1.0, -2.0]), "IIF", "iteration 0", "anything")
        assert finite_scores(None, "IIF", "iteration 0", "anything")
        assert FilterRule().scores_finite(torch.zeros(3), "round", 1, "pair")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_warn_and_fail_the_guard(bad: float) -> None:
    scores = torch.tensor([1.0, bad, 0.5, bad, -1.0])
    with pytest.warns(RuntimeWarning) as caught:
        assert not finite_scores(scores, "intervention", "iteration 4", "it does not intervene")
    assert str(caught[0].message) == (
        "intervention: 2 of 5 scores of iteration 4 are NaN or inf; it does not intervene"
    )

    def a_filter() -> bool:  # the filter whose caller the warning points at
        return FilterRule().scores_finite(scores, "round", 3, "pair")

    with pytest.warns(RuntimeWarning) as caught:
        assert not a_filter()
    assert str(caught[0].message) == (
        "IIF: 2 of 5 scores of round 3 are NaN or inf; this round trains on every pair"
    )
    assert caught[0].filename == __file__


def test_the_stored_form_of_iif_is_unchanged() -> None:
    # run.json stores vars(iif) and a resume compares it: the rule's fields (FilterRule's,
    # shared with the LLM's IIF) stay first, under the same names.
    from rlattr.training.filters import IIF

    assert list(vars(IIF())) == [
        "rule", "fraction", "like", "like_fraction", "target", "scorer", "greedy_blocks",
        "minibatching", "params", "warmup_iterations", "min_kept", "seed", "memory_budget",
    ]  # fmt: skip
    assert isinstance(IIF(), FilterRule)
    assert IIF().rule == "neg_bottom"
    with pytest.raises(ValueError, match="IIF greedy_blocks must be a whole number"):
        IIF(greedy_blocks=1.5)  # type: ignore[arg-type]
