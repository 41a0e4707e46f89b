"""``rlattr train --intervene action:FILE --budget B``: a targeted intervention from the CLI."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import rlattr.envs  # noqa: F401  (registers rlattr/TrapGrid-v0)
import torch

from rlattr import RunLog
from rlattr.cli.main import main


@pytest.fixture
def trap_pairs(tmp_path: Path) -> Path:
    env = gym.make("rlattr/TrapGrid-v0")
    observations, actions = env.unwrapped.trap_state_actions()
    path = tmp_path / "trap.npz"
    np.savez(path, observations=observations, actions=actions)
    return path


def test_train_intervenes_on_the_unwanted_pairs(tmp_path: Path, trap_pairs: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "trap_grid", "--timesteps", "1024", "--run-dir", str(run_dir),
            "--intervene", f"action:{trap_pairs}", "--budget", "8", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "intervention on: top, budget 8" in capsys.readouterr().out
    log = RunLog(run_dir)
    assert log.meta["config"]["intervention"]["budget"] == 8
    assert sum(int((~log.load_plan(k).keep_mask).sum()) for k in log.iterations()) > 0
    for k in log.iterations():
        dropped = int((~log.load_plan(k).keep_mask).sum())
        [name] = [n for n in log.score_names(k) if "action" in n]
        scores, _ = log.load_scores(k, name)
        # At most the budget, and only records that push towards the trap (positive score).
        assert dropped <= 8 and dropped <= int((scores > 0).sum())
        kept = log.load_plan(k).keep_mask
        if dropped:  # the top-scored records, all pushing towards the trap
            assert float(scores[~kept].min()) >= float(scores[kept].max())
            assert bool((scores[~kept] > 0).all())
        assert torch.isfinite(scores).all()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budget", "0.1"], "error: --budget only applies with --intervene action:FILE"),
        (["--intervene-weight", "0.5"], "error: --intervene-weight only applies with --intervene"),
        (["--intervene-rule", "matching"], "error: --intervene-rule only applies with --intervene"),
        (
            ["--intervene", "action:{pairs}", "--intervene-rule", "best"],
            "error: argument --intervene-rule:",
        ),
        (["--intervene", "action:{pairs}", "--budget", "1.5"], "error: argument --budget:"),
        (
            ["--intervene", "action:{folder}"],
            "error: --intervene action:{folder}: action target {folder} is a folder: give the "
            ".npz or .safetensors file in it",
        ),
    ],
)
def test_bad_intervention_options_are_one_line(
    tmp_path: Path, trap_pairs: Path, capsys, extra: list[str], message: str
) -> None:
    extra = [part.format(pairs=trap_pairs, folder=tmp_path) for part in extra]
    message = message.format(folder=tmp_path)
    args = ["train", "trap_grid", "--timesteps", "512", "--run-dir", str(tmp_path / "r"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_pairs_that_do_not_fit_the_run_are_refused_before_training(tmp_path: Path, capsys) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, observations=np.zeros((2, 5), np.float32), actions=np.zeros(2, np.int64))
    run_dir = tmp_path / "r"
    args = ["train", "trap_grid", "--timesteps", "512", "--run-dir", str(run_dir),
            "--intervene", f"action:{wrong}"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --intervene action:{wrong}:") and "shape" in err
    assert not (run_dir / "run.json").exists()


def test_the_matching_rule_drops_exactly_the_records_that_took_the_pairs(
    tmp_path: Path, trap_pairs: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "trap_grid", "--timesteps", "1024", "--run-dir", str(run_dir),
            "--intervene", f"action:{trap_pairs}", "--intervene-rule", "matching",
            "--budget", "none", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "intervention on: matching, budget none" in capsys.readouterr().out
    pairs = np.load(trap_pairs)
    trap = zip(pairs["observations"], pairs["actions"], strict=True)
    wanted = {(o.tobytes(), int(a)) for o, a in trap}
    log = RunLog(run_dir)
    assert log.meta["config"]["intervention"]["rule"] == "matching"
    total = 0
    for k in log.iterations():
        records = log.load_records(k)
        observations = records.observations.numpy().astype(pairs["observations"].dtype)
        actions = records.actions.flatten().long().tolist()
        took = torch.tensor(
            [(o.tobytes(), a) in wanted for o, a in zip(observations, actions, strict=True)]
        )
        dropped = ~log.load_plan(k).keep_mask
        assert torch.equal(dropped, took)  # no budget: every match, nothing else
        total += int(took.sum())
    assert total > 0
