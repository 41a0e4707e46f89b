"""Every JSON file of a run carries the checksum of its content (format 2.1): an edited value
is named by ``verify``/``rlattr inspect`` (exit 1) and refused on load; runs written before
still read, their metadata reported unverified."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from rlattr import AttributedPPO, RunLog, replay_iteration
from rlattr.cli.main import main
from rlattr.errors import CorruptRunLogError
from rlattr.record.io import (
    JSON_CHECKSUM_KEY,
    atomic_create_json,
    atomic_write_json,
    json_checksum,
    with_json_checksum,
)
from rlattr.record.replay import state_matches
from rlattr.record.runlog import FORMAT_MINOR

BAD_RUN_JSON = re.escape("run.json does not match its recorded checksum")
SMALL = {"n_steps": 32, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}


@pytest.fixture
def trained(run_dir: Path) -> RunLog:
    """A 3-iteration run with stored scores, the writer lock given back."""
    model = AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=run_dir, **SMALL)
    model.learn(96)
    model.run_log.write_scores(1, "mine", torch.linspace(-1, 1, 32), {"method": "test"})
    model.run_log.release_writer()
    return RunLog(run_dir)


def _edit(path: Path, change) -> None:
    """Change a JSON file's content as a person would, its stored checksum left as it was."""
    payload = json.loads(path.read_text())
    change(payload)
    atomic_write_json(path, payload)


def _one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _inspect(capsys: pytest.CaptureFixture[str], run_dir: Path) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["inspect", str(run_dir)])
    captured = capsys.readouterr()
    return status, " ".join((captured.out + captured.err).split())


def test_every_json_file_carries_a_matching_checksum(trained: RunLog) -> None:
    files = [
        trained.path / "run.json",
        *(trained.iteration_dir(k) / "iteration.json" for k in trained.iterations()),
        *sorted((trained.path / "checkpoints").glob("*.json")),
        trained.iteration_dir(1) / "scores" / "mine.json",
    ]
    for path in files:
        stored = json.loads(path.read_text())
        assert stored[JSON_CHECKSUM_KEY] == json_checksum(stored), path
    assert json.loads(files[0].read_text())["format_minor"] == FORMAT_MINOR
    assert trained.metadata_checksummed and trained.verify().metadata_verified
    assert JSON_CHECKSUM_KEY not in trained.meta  # what readers see is the content
    assert JSON_CHECKSUM_KEY not in trained.iteration_meta(1)


def test_an_edited_gamma_is_named_by_inspect_and_refused_by_attribute(
    trained: RunLog, capsys: pytest.CaptureFixture[str]
) -> None:
    run_json = trained.path / "run.json"
    assert trained.meta["algorithm"]["gamma"] == 0.99
    _edit(run_json, lambda meta: meta["algorithm"].update(gamma=0.98))
    status, shown = _inspect(capsys, trained.path)
    assert status == 1
    assert f"{run_json} does not match its recorded checksum" in shown
    line = _one_error_line(capsys, ["attribute", str(trained.path), "--iteration", "1"])
    assert f"{run_json} does not match its recorded checksum" in line
    assert _one_error_line(capsys, ["replay", str(trained.path), "--iteration", "1"])
    log = RunLog(trained.path)  # opens, so that it can be verified, but nothing loads
    with pytest.raises(CorruptRunLogError, match=BAD_RUN_JSON):
        log.meta  # noqa: B018
    with pytest.raises(CorruptRunLogError, match=BAD_RUN_JSON):
        log.load_records(1)
    with pytest.raises(CorruptRunLogError, match=BAD_RUN_JSON):
        log.load_checkpoint(1)
    with pytest.raises(CorruptRunLogError, match=BAD_RUN_JSON):
        log.load_scores(1, "mine")
    with pytest.raises(CorruptRunLogError, match=BAD_RUN_JSON):
        AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=trained.path, resume=True, **SMALL)


def test_an_edited_clip_range_is_named_by_inspect_and_refused_on_load(
    trained: RunLog, capsys: pytest.CaptureFixture[str]
) -> None:
    path = trained.iteration_dir(2) / "iteration.json"
    _edit(path, lambda meta: meta["plan"]["loss_config"].update(clip_range=0.3))
    status, shown = _inspect(capsys, trained.path)
    assert status == 1 and f"{path} does not match its recorded checksum" in shown
    with pytest.raises(CorruptRunLogError, match=re.escape(f"{path} does not match")):
        trained.load_plan(2)
    trained.load_plan(1)  # the rest of the run stays readable


@pytest.mark.parametrize("which", ["checkpoint", "scores"])
def test_edited_checkpoint_and_score_json_are_named(trained: RunLog, which: str) -> None:
    if which == "checkpoint":
        path = trained.path / "checkpoints" / "000001.json"
        _edit(path, lambda meta: meta["counters"].update(num_timesteps=7))
        load = lambda: trained.load_checkpoint(1)  # noqa: E731
    else:
        path = trained.iteration_dir(1) / "scores" / "mine.json"
        _edit(path, lambda meta: meta.update(method="other"))
        load = lambda: trained.load_scores(1, "mine")  # noqa: E731
    with pytest.raises(CorruptRunLogError, match=re.escape(f"{path} does not match")):
        load()
    report = trained.verify()
    assert not report.ok and any(str(path) in problem for problem in report.problems)


def test_a_removed_checksum_is_a_problem_in_a_checksummed_run(trained: RunLog) -> None:
    path = trained.iteration_dir(0) / "iteration.json"
    _edit(path, lambda meta: meta.pop(JSON_CHECKSUM_KEY))
    with pytest.raises(CorruptRunLogError, match=re.escape(f"{path} lacks its checksum")):
        trained.load_records(0)
    assert any(f"{path} lacks its checksum" in p for p in trained.verify().problems)


def test_a_run_written_without_metadata_checksums_reads_unverified(
    trained: RunLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """As an older release wrote it: no checksum in any JSON file, no format_minor."""
    for path in trained.path.rglob("*.json"):
        if path.name != "lock.json":
            _edit(path, lambda meta: (meta.pop(JSON_CHECKSUM_KEY), meta.pop("format_minor", 0)))
    old = RunLog(trained.path)
    assert not old.metadata_checksummed and old.meta["algorithm"]["gamma"] == 0.99
    report = old.verify()
    assert report.ok and not report.metadata_verified
    for k in old.iterations():
        assert state_matches(replay_iteration(old, k), old.load_checkpoint(k + 1)[0]) == []
    assert old.load_scores(1, "mine")[1]["method"] == "test"
    status, shown = _inspect(capsys, trained.path)
    assert status == 0 and "all checksums match" in shown and "metadata unverified" in shown
    # Resumed by this release, it stays as it was written: no checksum in part of it.
    model = AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=trained.path, resume=True, **SMALL)
    model.learn(64, reset_num_timesteps=False)
    model.run_log.release_writer()
    again = RunLog(trained.path)
    assert again.iterations() == [0, 1, 2, 3, 4] and not again.metadata_checksummed
    assert again.verify().ok
    added = json.loads((again.iteration_dir(4) / "iteration.json").read_text())
    assert JSON_CHECKSUM_KEY not in added


def test_the_checksum_is_of_the_content_as_read_back() -> None:
    written = {"b": (1, 2.5), 3: {"x": float("nan"), "y": -0.0}, "a": "é"}
    as_read = json.loads(json.dumps(written))
    assert json_checksum(written) == json_checksum(as_read)
    assert with_json_checksum(written)[JSON_CHECKSUM_KEY] == json_checksum(written)
    assert json_checksum({**as_read, "b": [1, 2.5000001]}) != json_checksum(as_read)


def test_run_json_is_created_only_where_none_exists(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    assert atomic_create_json(path, {"first": 1})
    assert not atomic_create_json(path, {"second": 2})
    assert json.loads(path.read_text()) == {"first": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary left
