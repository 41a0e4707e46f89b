"""The report's sentence on how far to trust the scores, from the fidelity check."""

from __future__ import annotations

import math

from rlattr.analysis.diagnose import _trust, _verdict


def test_verdict_compares_the_lds_with_the_ceiling() -> None:
    assert "as well as the ground truth allows" in _verdict(0.8, 0.95, 16)
    assert "usefully, but below" in _verdict(0.67, 0.94, 16)
    assert "do <b>not</b> predict" in _verdict(0.4, 0.95, 16)
    assert "do <b>not</b> predict" in _verdict(-0.58, 1.0, 16)
    assert "do <b>not</b> predict" in _verdict(0.25, 0.3, 16)  # low, however close to the ceiling
    # No ceiling measured (one order): judged against a perfect ground truth.
    assert "usefully" in _verdict(0.6, math.nan, 16)


def test_an_order_dominated_ground_truth_makes_no_lds_evidence() -> None:
    # BipedalWalker (Adam, 10 epochs): LDS 0.39 against a ceiling of -0.12 was reported
    # as "about as well as the ground truth allows".
    for lds in (0.39, 0.9, -0.5):
        verdict = _verdict(lds, -0.12, 16)
        assert "depends on the minibatch order" in verdict and "not</b> evidence" in verdict
    # Within noise of 0 means below 1/sqrt(n - 1): 0.258 over 16 subsets, 0.127 over 63.
    assert "depends on the minibatch order" in _verdict(0.8, 0.25, 16)
    assert "depends on the minibatch order" not in _verdict(0.8, 0.27, 16)
    assert "depends on the minibatch order" not in _verdict(0.8, 0.25, 63)
    assert "depends on the minibatch order" in _verdict(0.8, 0.5, 4)
    check = {"iteration": 100, "lds": 0.39, "ceiling": -0.12, "sign_agreement": 0.2,
             "subsets": 16, "seconds": 1}  # fmt: skip
    assert "right in only" not in _trust([check])  # no sign advice on an order-made effect


def test_a_wrong_sign_is_said_beside_a_good_ranking() -> None:
    check = {"iteration": 24, "lds": 0.67, "ceiling": 0.94, "sign_agreement": 0.31,
             "subsets": 16, "seconds": 1}  # fmt: skip
    assert "right in only 31% of subsets" in _trust([check])
    assert "right in only" not in _trust([{**check, "sign_agreement": 0.9}])
    assert "right in only" not in _trust([{**check, "lds": 0.1}])
