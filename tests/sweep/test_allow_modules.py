"""A sweep's presets may name modules outside rlattr's list only when the user allows them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlattr.cli.main import main

AGENTS = Path(__file__).resolve().parents[2] / "agents"


def test_compare_needs_allow_module_for_a_presets_own_wrapper(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = yaml.safe_load((AGENTS / "cartpole.yaml").read_text())
    preset["wrappers"] = ["tests.sweep.custom_wrappers.Identity"]
    path = tmp_path / "wrapped.yaml"
    path.write_text(yaml.safe_dump(preset))
    argv = ["compare", str(path), "--arms", "ppo", "--seeds", "1", "--rounds", "1"]
    argv += ["--episodes", "2", "--out", str(tmp_path / "out"), "--backend", "local"]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tests.sweep.custom_wrappers" in err[0]
    assert "--allow-module tests" in err[0]
    assert not (tmp_path / "out" / "wrapped" / "ppo-s0.json").exists()
    assert main([*argv, "--no-progress", "--allow-module", "tests"]) == 0
    assert (tmp_path / "out" / "wrapped" / "ppo-s0.json").exists()
