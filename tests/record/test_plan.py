"""Minibatches around a keep mask, formed by one function for training, replay and filters."""

from __future__ import annotations

import torch

from rlattr.record.plan import cut_minibatches, mask_minibatches, stored_optimizer_steps


def test_mask_minibatches_removes_dropped_records_and_empty_minibatches() -> None:
    batches = [torch.tensor([3, 1]), torch.tensor([0, 2]), torch.tensor([5, 4])]
    keep = torch.tensor([False, True, False, True, False, True])
    masked = mask_minibatches(batches, keep)
    assert [b.tolist() for b in masked] == [[3, 1], [5]]  # [0, 2] lost both records: gone
    assert [b.tolist() for b in mask_minibatches(batches, None)] == [[3, 1], [0, 2], [5, 4]]


def test_cut_minibatches_as_drawn_and_recut() -> None:
    order = torch.tensor([4, 0, 3, 1, 5, 2])
    keep = torch.tensor([True, False, True, True, True, True])
    as_drawn = cut_minibatches(order, 4, keep, "as_drawn")
    assert [b.tolist() for b in as_drawn] == [[4, 0, 3], [5, 2]]  # record 1 dropped
    recut = cut_minibatches(order, 4, keep, "recut")
    assert [b.tolist() for b in recut] == [[4, 0, 3, 5], [2]]
    assert [b.tolist() for b in cut_minibatches(order, 4)] == [[4, 0, 3, 1], [5, 2]]


def test_optimizer_steps_are_read_from_new_and_old_run_dirs() -> None:
    assert stored_optimizer_steps({"n_optimizer_steps": 12}) == 12
    assert stored_optimizer_steps({"n_steps": 7}) == 7  # written before the rename
