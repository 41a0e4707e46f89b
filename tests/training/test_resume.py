"""A run killed with SIGKILL mid-training resumes with no finished iteration lost.

The child kills itself at a fixed point (``sigkill_driver.py``: just before iteration
``KILL_AT`` commits), so the test does not race the training; the run keeps every
checkpoint full, so each replay is compared with the state training itself wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from rlattr import RunLog, replay_iteration
from rlattr.record.io import sha256_file
from rlattr.record.replay import state_matches

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("sigkill_driver.py")
KILL_AT = 6


def _full_checkpoint_preset(folder: Path) -> Path:
    """The cartpole preset with every start-of-iteration checkpoint kept full."""
    preset = yaml.safe_load((ROOT / "agents" / "cartpole.yaml").read_text())
    preset["recording"] = {"checkpoint_every": 1}
    path = folder / "cartpole_full.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def _train_command(preset: Path, run_dir: Path, resume: bool, kill_at: int = -1) -> list[str]:
    command = [
        sys.executable, str(DRIVER), str(kill_at), "--", str(preset),
        "--timesteps", str(256 * 40), "--run-dir", str(run_dir), "--no-progress", "--seed", "4",
    ]  # fmt: skip
    return command + (["--resume"] if resume else [])


def _committed(run_dir: Path) -> list[int]:
    root = run_dir / "iterations"
    if not root.exists():
        return []
    return sorted(int(d.name) for d in root.iterdir() if (d / "iteration.json").exists())


def test_sigkill_then_resume(run_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    preset = _full_checkpoint_preset(tmp_path)
    killed = subprocess.run(
        _train_command(preset, run_dir, resume=False, kill_at=KILL_AT),
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()

    finished = _committed(run_dir)
    assert finished == list(range(KILL_AT))  # killed just before iteration KILL_AT commits
    assert (run_dir / "iterations" / f"{KILL_AT:06d}" / "records.safetensors").exists()
    log = RunLog(run_dir)
    hashes = {k: sha256_file(log.iteration_dir(k) / "records.safetensors") for k in finished}
    report = log.verify()
    assert report.ok  # a kill leaves only uncommitted leftovers, never corrupt files
    assert report.leftovers  # iteration KILL_AT's files, written but not committed

    resumed = subprocess.run(
        _train_command(preset, run_dir, resume=True), cwd=ROOT, env=env, capture_output=True,
        timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert f"resuming {run_dir} at iteration {KILL_AT}" in " ".join(resumed.stdout.decode().split())

    log = RunLog(run_dir)
    assert log.iterations() == list(range(40))
    for k in finished:  # nothing finished before the kill was lost or rewritten
        assert sha256_file(log.iteration_dir(k) / "records.safetensors") == hashes[k]
    report = log.verify()
    assert report.ok and not report.leftovers
    # Iterations on both sides of the kill replay exactly onto the state training wrote.
    for k in (KILL_AT - 1, KILL_AT, 39):
        assert log.is_logged_checkpoint(k + 1), k
        assert state_matches(replay_iteration(log, k), log.load_checkpoint(k + 1)[0]) == []
    # The schedule continued where it stopped: the last iteration's lr is the preset's.
    last_lr = float(log.load_plan(39).learning_rates[0])
    assert abs(last_lr - 0.001 * (1 - 40 * 256 / (40 * 256))) < 1e-12
    first_after = float(log.load_plan(KILL_AT).learning_rates[0])
    expected = 0.001 * (1 - (KILL_AT + 1) * 256 / (40 * 256))
    assert abs(first_after - expected) < 1e-12
