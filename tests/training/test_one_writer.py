"""One writer at a time: a second process that would write a run being written is refused,
naming the holder, and writes nothing; the first then finishes a run that verifies and
replays bit for bit. The lock goes with its holder, however that ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rlattr import AttributedPPO, RunLog, replay_iteration
from rlattr.cli.main import main
from rlattr.record.io import LOCK_FILE, RunLockedError, sha256_file
from rlattr.record.replay import state_matches

ROOT = Path(__file__).resolve().parents[2]
PAUSE_DRIVER = Path(__file__).with_name("pause_driver.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
PAUSE_AT = 5
ITERATIONS = 8


def _full_checkpoint_preset(folder: Path) -> Path:
    """The cartpole preset with every start-of-iteration checkpoint kept full."""
    preset = yaml.safe_load((ROOT / "agents" / "cartpole.yaml").read_text())
    preset["recording"] = {"checkpoint_every": 1}
    path = folder / "cartpole_full.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def _train_args(preset: Path, run_dir: Path) -> list[str]:
    return [
        str(preset), "--timesteps", str(256 * ITERATIONS), "--run-dir", str(run_dir),
        "--no-progress", "--seed", "4",
    ]  # fmt: skip


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the first writer ended early: {process.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


def _snapshot(run_dir: Path) -> dict[str, str]:
    """Every file of the run but the lock file and TensorBoard's, with its hash."""
    return {
        str(p.relative_to(run_dir)): sha256_file(p)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE and "tb" not in p.relative_to(run_dir).parts
    }


def test_a_second_resume_is_refused_and_the_first_writer_finishes_a_sound_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    preset = _full_checkpoint_preset(tmp_path)
    paused, go = tmp_path / "paused", tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, str(PAUSE_DRIVER), str(PAUSE_AT), str(paused), str(go), "--",
         *_train_args(preset, run_dir)],
        cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(paused, first)  # iteration PAUSE_AT written, not committed
        before = _snapshot(run_dir)
        assert f"iterations/{PAUSE_AT:06d}/records.safetensors" in before
        second = subprocess.run(
            [sys.executable, "-m", "rlattr.cli", "train", *_train_args(preset, run_dir),
             "--resume"],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr
        assert f"pid {first.pid} on host {socket.gethostname()}" in lines[0]
        assert "being written by another process" in lines[0]
        assert _snapshot(run_dir) == before  # the refused writer deleted and wrote nothing
    finally:
        go.touch()
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr

    assert main(["inspect", str(run_dir)]) == 0
    assert "all checksums match" in capsys.readouterr().out
    log = RunLog(run_dir)
    report = log.verify()
    assert report.ok and not report.leftovers and report.metadata_verified
    assert log.iterations() == list(range(ITERATIONS))
    for k in log.iterations():  # each replay lands on the state training wrote, bit for bit
        assert log.is_logged_checkpoint(k + 1), k
        assert state_matches(replay_iteration(log, k), log.load_checkpoint(k + 1)[0]) == [], k


HOLD = """
import sys
from rlattr.record.runlog import RunLog
log = RunLog.open_for_writing(sys.argv[1])
print("holding", flush=True)
sys.stdin.read()
"""


def _hold(run_dir: Path) -> subprocess.Popen:
    """A process that holds ``run_dir``'s writer lock until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)],
        cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_stored_scores_wait_for_the_writer_and_reading_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    model = AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, n_steps=32, batch_size=16, n_epochs=2,
        device="cpu", seed=0,
    )  # fmt: skip
    model.learn(64)
    assert model.run_log.is_writer
    model.run_log.release_writer()  # this process is done writing
    holder = _hold(run_dir)
    try:
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on host"):
            RunLog(run_dir).write_scores(1, "mine", torch.zeros(32), {})
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            RunLog.open_for_writing(run_dir)
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            AttributedPPO(
                "MlpPolicy", "CartPole-v1", run_dir=run_dir, n_steps=32, batch_size=16,
                n_epochs=2, device="cpu", seed=0, resume=True,
            )  # fmt: skip
        capsys.readouterr()
        argv = ["attribute", str(run_dir), "--iteration", "1", "--target", "return", "--top", "1"]
        assert main(argv) == 2  # it would store the scores
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and f"pid {holder.pid}" in err[0]
        assert RunLog(run_dir).score_names(1) == []
        assert main([*argv, "--no-store"]) == 0  # reading needs no lock
        assert RunLog(run_dir).verify().ok  # nor does verifying
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert main(argv) == 0  # the holder is gone: the scores are stored
    assert RunLog(run_dir).score_names(1)


def test_the_lock_goes_with_a_killed_holder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, n_steps=32, batch_size=16, n_epochs=2,
        device="cpu", seed=0,
    ).run_log.release_writer()  # fmt: skip
    holder = _hold(run_dir)
    with pytest.raises(RunLockedError):
        RunLog.open_for_writing(run_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    log = RunLog.open_for_writing(run_dir)  # the kernel dropped the lock with the process
    assert log.is_writer
    stored = (run_dir / LOCK_FILE).read_text()
    assert f'"pid": {os.getpid()}' in stored and socket.gethostname() in stored


TRY_TO_WRITE = """
import sys
from rlattr.record.io import RunLockedError
from rlattr.record.runlog import RunLog
try:
    RunLog.open_for_writing(sys.argv[1])
except RunLockedError as err:
    print(err)
"""


def test_record_run_holds_the_lock_of_the_run_it_records(tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    from rlattr import RecordRun

    run_dir = tmp_path / "sb3"
    callback = RecordRun(run_dir, tensorboard=False)
    PPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=16, n_epochs=2, seed=0).learn(
        64, callback=callback
    )
    assert callback.run_log.is_writer
    attempt = subprocess.run(
        [sys.executable, "-c", TRY_TO_WRITE, str(run_dir)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in attempt.stdout, attempt
    callback.run_log.release_writer()
    attempt = subprocess.run(
        [sys.executable, "-c", TRY_TO_WRITE, str(run_dir)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert attempt.returncode == 0 and attempt.stdout == "", attempt


def _someone_else_can_write(run_dir: Path) -> bool:
    attempt = subprocess.run(
        [sys.executable, "-c", TRY_TO_WRITE, str(run_dir)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert attempt.returncode == 0, attempt.stderr
    return attempt.stdout == ""


def test_within_a_process_the_lock_is_shared_until_its_last_writer_lets_go(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, n_steps=32, batch_size=16, n_epochs=2,
        device="cpu", seed=0,
    ).run_log.release_writer()  # fmt: skip
    first, second = RunLog.open_for_writing(run_dir), RunLog(run_dir)
    second.write_scores(0, "mine", torch.zeros(32), {})  # takes a share, does not wait
    assert first.is_writer and second.is_writer
    first.release_writer()
    assert not first.is_writer and not _someone_else_can_write(run_dir)
    del second  # collected: its share goes with it
    assert _someone_else_can_write(run_dir)
