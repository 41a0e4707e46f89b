"""A run killed with SIGKILL mid-training resumes with no finished iteration lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rlattr import RunLog, replay_iteration
from rlattr.record.io import sha256_file
from rlattr.record.replay import state_matches

ROOT = Path(__file__).resolve().parents[2]


def _train_command(run_dir: Path, resume: bool) -> list[str]:
    command = [
        sys.executable, "-m", "rlattr.cli", "train", "cartpole",
        "--timesteps", str(256 * 40), "--run-dir", str(run_dir), "--no-progress", "--seed", "4",
    ]  # fmt: skip
    return command + (["--resume"] if resume else [])


def _committed(run_dir: Path) -> list[int]:
    root = run_dir / "iterations"
    if not root.exists():
        return []
    return sorted(int(d.name) for d in root.iterdir() if (d / "iteration.json").exists())


def test_sigkill_then_resume(run_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        _train_command(run_dir, resume=False),
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(_committed(run_dir)) < 6:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL

    finished = _committed(run_dir)
    assert finished, "nothing finished before the kill"
    log = RunLog(run_dir)
    hashes = {k: sha256_file(log.iteration_dir(k) / "records.safetensors") for k in finished}
    assert log.verify().ok  # a kill leaves only uncommitted leftovers, never corrupt files

    resumed = subprocess.run(
        _train_command(run_dir, resume=True), cwd=ROOT, env=env, capture_output=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert "resuming" in resumed.stdout.decode()

    log = RunLog(run_dir)
    assert log.iterations() == list(range(40))
    for k in finished:  # nothing finished before the kill was lost or rewritten
        assert sha256_file(log.iteration_dir(k) / "records.safetensors") == hashes[k]
    report = log.verify()
    assert report.ok and not report.leftovers
    # Iterations on both sides of the kill replay exactly.
    for k in (finished[-1], finished[-1] + 1, 39):
        assert state_matches(replay_iteration(log, k), log.load_checkpoint(k + 1)[0]) == []
    # The schedule continued where it stopped: the last iteration's lr is the preset's.
    last_lr = float(log.load_plan(39).learning_rates[0])
    assert abs(last_lr - 0.001 * (1 - 40 * 256 / (40 * 256))) < 1e-12
    first_after = float(log.load_plan(finished[-1] + 1).learning_rates[0])
    expected = 0.001 * (1 - (finished[-1] + 2) * 256 / (40 * 256))
    assert abs(first_after - expected) < 1e-12
