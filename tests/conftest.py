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


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
