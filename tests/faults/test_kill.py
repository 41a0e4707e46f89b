"""kill -9 at every write point of training, then ``train --resume``: nothing committed is
lost, the run inspects clean and every iteration replays bit for bit.

``POINTS`` enumerates the writes the run log does while training (``rlattr.record.io`` and
``runlog``): the writer lock, ``run.json`` (created once), then per iteration the records,
the plan, the next checkpoint (tensors, then JSON), ``iteration.json`` (the commit marker)
and, with sparse checkpoints, the checkpoint that turns sparse (JSON rewritten, tensors
deleted). Each write is atomic (temporary file, fsync, rename): the kill strikes before it,
while the temporary file is open, after the fsync before the rename, and after the rename.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rlattr import RunLog
from tests.faults.harness import (
    AFTER_RENAME,
    AFTER_UNLINK,
    BEFORE,
    BEFORE_LINK,
    BEFORE_RENAME,
    BEFORE_UNLINK,
    LOCK_WRITE,
    WRITING,
    Point,
    add_row,
    leftover_temporaries,
    preset,
    run_child,
    snapshot,
    train_argv,
    trained_run,
)

ITERATIONS = 3  # the budget: 3 CartPole iterations of 256 steps
K = 1  # the iteration whose writes are killed (0 is committed before)

POINTS = [
    Point("lock", LOCK_WRITE, "lock.json", "writer lock taken at create, holder not written"),
    Point("run.json-writing", WRITING, "run.json", "run.json: temporary file open, empty"),
    Point("run.json-before-link", BEFORE_LINK, "run.json", "run.json: fsynced, not linked"),
    Point("checkpoint0-before", BEFORE, "checkpoints/000000.safetensors",
          "run.json written, first checkpoint not"),
    Point("records-before", BEFORE, f"iterations/{K:06d}/records.safetensors",
          f"records {K}: before the write"),
    Point("records-writing", WRITING, f"iterations/{K:06d}/records.safetensors",
          f"records {K}: temporary file open, empty"),
    Point("records-before-rename", BEFORE_RENAME, f"iterations/{K:06d}/records.safetensors",
          f"records {K}: fsynced, not renamed"),
    Point("records-after-rename", AFTER_RENAME, f"iterations/{K:06d}/records.safetensors",
          f"records {K}: renamed into place"),
    Point("plan-before-rename", BEFORE_RENAME, f"iterations/{K:06d}/plan.safetensors",
          f"plan {K}: fsynced, not renamed"),
    Point("checkpoint-tensors-before-rename", BEFORE_RENAME,
          f"checkpoints/{K + 1:06d}.safetensors", f"checkpoint {K + 1} tensors: fsynced, "
          "not renamed"),
    Point("checkpoint-json-before", BEFORE, f"checkpoints/{K + 1:06d}.json",
          f"checkpoint {K + 1}: tensors in place, JSON not written"),
    Point("checkpoint-json-before-rename", BEFORE_RENAME, f"checkpoints/{K + 1:06d}.json",
          f"checkpoint {K + 1} JSON: fsynced, not renamed"),
    Point("iteration.json-before", BEFORE, f"iterations/{K:06d}/iteration.json",
          f"iteration.json {K}: everything else written, commit marker not"),
    Point("iteration.json-before-rename", BEFORE_RENAME, f"iterations/{K:06d}/iteration.json",
          f"iteration.json {K}: fsynced, not renamed"),
    Point("iteration.json-after-rename", AFTER_RENAME, f"iterations/{K:06d}/iteration.json",
          f"iteration.json {K}: committed, retention not applied"),
]  # fmt: skip
# With sparse checkpoints (every 2nd full): checkpoint 1 turns sparse once iteration 1 has
# committed (JSON rewritten first, then its tensors deleted).
SPARSE_POINTS = [
    Point("sparse-json-before-rename", BEFORE_RENAME, "checkpoints/000001.json",
          "checkpoint 1 turning sparse: JSON fsynced, not renamed", nth=2),
    Point("sparse-before-delete", BEFORE_UNLINK, "checkpoints/000001.safetensors",
          "checkpoint 1 turning sparse: JSON says sparse, tensors not deleted"),
    Point("sparse-after-delete", AFTER_UNLINK, "checkpoints/000001.safetensors",
          "checkpoint 1 turning sparse: tensors deleted"),
]  # fmt: skip


def kill_and_resume(point: Point, tmp_path, sparse: bool) -> dict:
    """The row of the fault table for ``point`` (asserting what it says)."""
    run_dir = tmp_path / "run"
    preset_file = preset(tmp_path, checkpoint_every=2 if sparse else 1)
    killed = run_child(
        train_argv(preset_file, run_dir, ITERATIONS), tmp_path / "killed", point, run_dir
    )
    assert killed.status == -9, f"the kill did not strike: {killed.stderr}"
    before = snapshot(run_dir, 2 if sparse else 1)
    committed_before = RunLog(run_dir).iterations() if (run_dir / "run.json").exists() else []
    inspect_killed = run_child(["inspect", str(run_dir)], tmp_path / "inspect-killed")
    resumed = run_child(
        train_argv(preset_file, run_dir, ITERATIONS, resume=True), tmp_path / "resumed"
    )
    assert resumed.status == 0, resumed.stderr
    inspected = run_child(["inspect", str(run_dir)], tmp_path / "inspect")
    assert inspected.status == 0, inspected.stdout + inspected.stderr
    replayed = run_child(["replay", str(run_dir)], tmp_path / "replay")
    assert replayed.status == 0, replayed.stdout + replayed.stderr

    log = RunLog(run_dir)
    assert log.iterations() == list(range(ITERATIONS))
    report = log.verify()
    assert report.ok and not report.leftovers, (report.problems, report.leftovers)
    # Replays are checked against states training wrote: every checkpoint with every=1;
    # with sparse ones, `replay` chains to the next full one (even, and the newest).
    logged = [k for k in log.checkpoints() if log.is_logged_checkpoint(k)]
    if sparse:  # the full grid and the newest at least; one the kill kept full stays full
        assert {0, 2, ITERATIONS} <= set(logged), logged
    else:
        assert logged == list(range(ITERATIONS + 1))
    after = snapshot(run_dir, 2 if sparse else 1)
    lost = sorted(name for name, digest in before.items() if after.get(name) != digest)
    assert lost == [], f"committed before the kill, changed or lost after: {lost}"
    # Before the kill, the iterations before the killed one had committed (a kill loses only
    # what had not committed).
    assert committed_before == _committed_at_kill(point)
    return {
        "point": point,
        "committed_before": committed_before,
        "inspect_killed": inspect_killed,
        "resumed": resumed,
        "inspected": inspected,
        "replayed": replayed,
        "files_checked": len(before),
        "full_checkpoints": logged,
    }


# While ``attribute`` stores the scores of iteration 1 (in a finished 3-iteration run).
SCORE_POINTS = [
    Point("scores-before-rename", BEFORE_RENAME, "iterations/000001/scores/*.safetensors",
          "`attribute` storing scores: tensors fsynced, not renamed"),
    Point("scores-json-before", BEFORE, "iterations/000001/scores/*.json",
          "`attribute` storing scores: tensors in place, JSON not written"),
    Point("scores-json-before-rename", BEFORE_RENAME, "iterations/000001/scores/*.json",
          "`attribute` storing scores: JSON fsynced, not renamed"),
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.mktemp("kill-scores"), ITERATIONS)


def kill_while_storing_scores(point: Point, trained: Path, tmp_path: Path) -> dict:
    """The row of the fault table for ``point`` (asserting what it says)."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    before = snapshot(run_dir)
    argv = ["attribute", str(run_dir), "--iteration", "1"]
    killed = run_child(argv, tmp_path / "killed", point, run_dir)
    assert killed.status == -9, f"the kill did not strike: {killed.stderr}"
    assert RunLog(run_dir).score_names(1) == []  # nothing half-stored is listed
    inspect_killed = run_child(["inspect", str(run_dir)], tmp_path / "inspect-killed")
    assert inspect_killed.status == 0, inspect_killed.stdout + inspect_killed.stderr
    again = run_child(argv, tmp_path / "again")
    assert again.status == 0, again.stderr
    assert len(RunLog(run_dir).score_names(1)) == 1
    inspected = run_child(["inspect", str(run_dir)], tmp_path / "inspect")
    assert inspected.status == 0, inspected.stdout + inspected.stderr
    replayed = run_child(["replay", str(run_dir)], tmp_path / "replay")
    assert replayed.status == 0, replayed.stdout + replayed.stderr
    after = snapshot(run_dir)
    lost = sorted(name for name, digest in before.items() if after.get(name) != digest)
    assert lost == [], f"committed before the kill, changed or lost after: {lost}"
    temporaries = leftover_temporaries(run_dir)  # a kill leaves its temporary file
    return {
        "point": point,
        "inspect_killed": inspect_killed,
        "again": again,
        "inspected": inspected,
        "replayed": replayed,
        "files_checked": len(before),
        "temporaries": temporaries,
    }


def _committed_at_kill(point: Point) -> list[int]:
    if point.name.startswith(("lock", "run.json", "checkpoint0")):
        return []
    if point.name.startswith("sparse"):
        return [0, 1]
    if point.name == "iteration.json-after-rename":
        return list(range(K + 1))
    return list(range(K))


@pytest.mark.parametrize("point", POINTS, ids=lambda p: p.name)
def test_kill_then_resume(point: Point, tmp_path) -> None:
    _row(kill_and_resume(point, tmp_path, sparse=False))


@pytest.mark.parametrize("point", SPARSE_POINTS, ids=lambda p: p.name)
@pytest.mark.sparse_checkpoints
def test_kill_while_a_checkpoint_turns_sparse(point: Point, tmp_path) -> None:
    _row(kill_and_resume(point, tmp_path, sparse=True))


def _row(case: dict) -> None:
    point: Point = case["point"]
    committed = case["committed_before"]
    shown = f"{committed[0]}..{committed[-1]}" if committed else "none"
    extra = ""
    if point.name.startswith("sparse") and 1 in case["full_checkpoints"]:
        extra = "; checkpoint 1 stays full (not turned sparse on resume: more bytes, no loss)"
    no_run = " (no run.json yet: not a run directory)" if case["files_checked"] == 0 else ""
    add_row(
        "kill",
        "kill -9 (SIGKILL) of `train`",
        point.what,
        f"committed at the kill: {shown}; inspect after the kill: exit "
        f"{case['inspect_killed'].status}{no_run}; `train --resume`: exit "
        f"{case['resumed'].status}; "
        f"inspect: exit {case['inspected'].status}, no leftovers; replay (all {ITERATIONS}): exit "
        f"{case['replayed'].status}{extra}",
        f"nothing ({case['files_checked']} committed files unchanged)"
        if case["files_checked"]
        else "nothing (nothing had been written that a run keeps)",
    )


@pytest.mark.parametrize("point", SCORE_POINTS, ids=lambda p: p.name)
def test_kill_while_storing_scores(point: Point, trained: Path, tmp_path: Path) -> None:
    case = kill_while_storing_scores(point, trained, tmp_path)
    temporaries = case["temporaries"]
    left = (
        f"; temporary file left, still there after `attribute` again and not reported by "
        f"inspect: `{', '.join(temporaries)}`"
        if temporaries
        else ""
    )
    add_row(
        "kill",
        "kill -9 (SIGKILL) of `attribute`",
        point.what,
        f"nothing listed as stored; inspect after the kill: exit "
        f"{case['inspect_killed'].status}; `attribute` again: exit {case['again'].status}, "
        f"stored; inspect: exit {case['inspected'].status}; replay (all {ITERATIONS}): exit "
        f"{case['replayed'].status}{left}",
        f"nothing ({case['files_checked']} committed files unchanged)",
    )
