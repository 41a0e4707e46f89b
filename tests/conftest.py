"""Shared test helpers. Tests run on CPU with one torch thread (fast and deterministic)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import rlattr.envs  # noqa: E402, F401  (registers the toy environments)

torch.set_num_threads(1)


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Every parameter and buffer of ``a`` equals ``b``'s bit for bit (torch.equal)."""
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    different = [name for name in state_a if not torch.equal(state_a[name], state_b[name])]
    assert not different, f"tensors differ: {different}"


@pytest.fixture(autouse=True)
def every_checkpoint_full(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs made in tests keep every checkpoint full, unless a test asks for sparse ones.

    Tests check a replay of iteration k against the logged checkpoint k + 1. A sparse
    checkpoint (run-log format 2's default spacing) is itself rebuilt by replay, so that
    check would compare replay with replay and could not fail. Tests of sparse
    checkpoints set ``checkpoint_every`` themselves or are marked ``sparse_checkpoints``
    (the default spacing applies); subprocesses are not affected.
    """
    if request.node.get_closest_marker("sparse_checkpoints") is not None:
        return
    from rlattr.record import runlog

    monkeypatch.setattr(runlog, "CHECKPOINT_STEPS", 1)
    monkeypatch.setattr(runlog, "CHECKPOINT_EVERY", 1)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
