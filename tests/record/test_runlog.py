"""The run directory: safetensors + JSON only, checksums, versions, retention, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from rlattr import AttributedPPO, Retention, RunLog
from rlattr.errors import CorruptRunLogError, FormatVersionError, RunLogError
from rlattr.record.io import atomic_write_json

SMALL = {"n_steps": 32, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}


def _train(run_dir: Path, timesteps: int = 128, **kwargs) -> RunLog:
    AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=run_dir, **SMALL, **kwargs).learn(timesteps)
    return RunLog(run_dir)


def test_layout_has_no_pickle_and_verifies(run_dir: Path) -> None:
    log = _train(run_dir)
    suffixes = {p.suffix for p in run_dir.rglob("*") if p.is_file() and "tb" not in p.parts}
    assert suffixes == {".json", ".safetensors"}
    report = log.verify()
    assert report.ok and not report.leftovers
    assert report.iterations == [0, 1, 2, 3]
    assert report.checkpoints == [0, 1, 2, 3, 4]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["format_version"] == 2
    assert meta["seed"] == 0
    assert "torch" in meta["versions"] and "stable-baselines3" in meta["versions"]


def test_records_round_trip(run_dir: Path) -> None:
    model = AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=run_dir, **SMALL)
    model.learn(32)
    stored = RunLog(run_dir).load_records(0)
    live = model.iteration_data(0).records
    for name in ("observations", "actions", "rewards", "advantages", "returns", "log_probs"):
        assert torch.equal(getattr(stored, name), getattr(live, name)), name
    assert torch.equal(stored.record_ids, torch.arange(32))


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_corrupted_records_file_is_detected(run_dir: Path, damage: str) -> None:
    log = _train(run_dir)
    path = log.iteration_dir(1) / "records.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(CorruptRunLogError, match="checksum"):
        log.load_records(1)
    report = log.verify()
    assert not report.ok
    assert any("records.safetensors" in p for p in report.problems)
    log.load_records(2)  # the rest of the run stays readable


def test_corrupted_json_is_detected(run_dir: Path) -> None:
    log = _train(run_dir)
    path = log.iteration_dir(2) / "iteration.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(CorruptRunLogError, match="not valid JSON"):
        log.load_plan(2)
    assert not log.verify().ok


def test_corrupted_checkpoint_is_detected(run_dir: Path) -> None:
    log = _train(run_dir, retention=Retention(checkpoint_every=2))  # checkpoint 2 is full
    path = run_dir / "checkpoints" / "000002.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptRunLogError, match="checksum"):
        log.load_checkpoint(2)


def test_missing_iteration_names_what_exists(run_dir: Path) -> None:
    log = _train(run_dir)
    with pytest.raises(RunLogError, match=r"iteration 9 is not recorded .*0\.\.3"):
        log.load_records(9)
    with pytest.raises(RunLogError, match="no checkpoint for the start of iteration 42"):
        log.load_checkpoint(42)


def test_incompatible_format_version(run_dir: Path) -> None:
    _train(run_dir, timesteps=32)
    meta = json.loads((run_dir / "run.json").read_text())
    meta["format_version"] = 99
    atomic_write_json(run_dir / "run.json", meta)
    with pytest.raises(FormatVersionError, match="version 99; this rlattr reads versions 1, 2"):
        RunLog(run_dir)


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(RunLogError, match="not an rlattr run directory"):
        RunLog(tmp_path)


def test_existing_run_is_not_overwritten(run_dir: Path) -> None:
    _train(run_dir, timesteps=32)
    with pytest.raises(RunLogError, match="already holds a run"):
        _train(run_dir, timesteps=32)


def test_record_every_and_keep_last(run_dir: Path) -> None:
    log = _train(run_dir, timesteps=32 * 7, retention=Retention(record_every=2, keep_last=2))
    assert log.iterations() == [4, 6]
    # Start checkpoints of kept iterations, the states after them, and the newest.
    assert log.checkpoints() == [4, 5, 6, 7]
    assert log.verify().ok


def test_retention_is_validated() -> None:
    with pytest.raises(ValueError, match="record_every"):
        Retention(record_every=0)
    with pytest.raises(ValueError, match="keep_last"):
        Retention(keep_last=0)


def test_resume_point_skips_unfinished_iteration(run_dir: Path) -> None:
    # Every checkpoint full, as a kill before iteration 3 commits leaves checkpoint 3
    # (it turns sparse only once iteration 3 has committed).
    log = _train(run_dir, retention=Retention(checkpoint_every=1))
    assert log.resume_point() == 4
    # Simulate a kill after checkpoint 4 was written but before iteration 3 committed.
    (log.iteration_dir(3) / "iteration.json").unlink()
    assert log.resume_point() == 3
    log.discard_after(3)
    assert log.iterations() == [0, 1, 2]
    assert log.checkpoints() == [0, 1, 2, 3]
    assert log.verify().ok and not log.verify().leftovers


def test_a_gap_in_the_middle_is_a_problem(run_dir: Path) -> None:
    log = _train(run_dir)
    (log.iteration_dir(1) / "iteration.json").unlink()
    report = log.verify()
    assert not report.ok
    assert report.gaps == [1]
    assert any("iteration 1 is not committed" in p for p in report.problems)
    assert report.leftovers == []  # not what an interruption leaves: resuming cannot fix it


def test_an_interrupted_end_is_not_a_gap(run_dir: Path) -> None:
    log = _train(run_dir)
    (log.iteration_dir(3) / "iteration.json").unlink()  # what a kill mid-commit leaves
    report = log.verify()
    assert report.ok and report.gaps == []
    assert report.leftovers == [str(log.iteration_dir(3))]


def test_gaps_follow_record_every(run_dir: Path) -> None:
    log = _train(run_dir, timesteps=32 * 7, retention=Retention(record_every=2))
    assert log.iterations() == [0, 2, 4, 6]
    assert log.verify().gaps == []  # odd iterations are not recorded, by design
    shutil.rmtree(log.iteration_dir(2))
    assert log.verify().gaps == [2]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_run_files_honour_the_umask(run_dir: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        _train(run_dir, timesteps=32)
    finally:
        os.umask(previous)
    files = [p for p in run_dir.rglob("*") if p.is_file() and "tb" not in p.parts]
    assert files
    modes = {oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert modes == {oct(0o666 & ~umask)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda meta: meta.pop("algorithm"), "lacks algorithm"),
        (lambda meta: meta["policy"].pop("action_space"), "lacks policy.action_space"),
        (lambda meta: meta.update(retention={"every": 2}), "invalid retention"),
    ],
    ids=["algorithm", "action-space", "retention"],
)
def test_damaged_run_json_is_named(run_dir: Path, change, message: str) -> None:
    _train(run_dir, timesteps=32)
    meta = json.loads((run_dir / "run.json").read_text())
    change(meta)
    (run_dir / "run.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptRunLogError, match=message):
        RunLog(run_dir)


def test_binary_run_json_is_named(run_dir: Path) -> None:
    _train(run_dir, timesteps=32)
    (run_dir / "run.json").write_bytes(b"\xb7\x00\xff" * 50)
    with pytest.raises(CorruptRunLogError, match="not valid JSON"):
        RunLog(run_dir)
