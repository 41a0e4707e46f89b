"""A run directory on a read-only mount: refused before the work, with what to do instead.

``attribute`` (storing scores), ``diagnose`` and ``formation`` (reports into the run by
default) check that they can write into the run before they compute; with ``--no-store`` or
``--out`` elsewhere they work on the read-only run. Tests run as root in CI, where
``chmod`` does not stop a write: the run is made read-only by a read-only bind mount in a
private mount namespace (``unshare``), and the commands run inside it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from rlattr import IIF, AttributedPPO, RunLog

# Runs the commands inside the namespace, in one process: each command's exit status, its
# stderr and whether its work (scoring, diagnosis, formation) began.
INSIDE = """
import contextlib, importlib, io, json, sys
from rlattr.cli.main import main

started = []
def watch(module, name):
    original = getattr(module, name)
    def watched(*args, **kwargs):
        started.append(name)
        return original(*args, **kwargs)
    setattr(module, name, watched)
for module, name in [("rlattr.scoring.attribute", "attribute"),
                     ("rlattr.cli.diagnose", "diagnose"), ("rlattr.cli.formation", "formation")]:
    watch(importlib.import_module(module), name)
results = []
for argv in json.loads(sys.argv[1]):
    started.clear()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    results.append({"status": status, "stderr": err.getvalue(), "started": list(started)})
print(json.dumps(results))
"""


def _mount_read_only(folder: Path) -> str:
    """Shell commands that mount ``folder`` read-only over itself (in a new namespace)."""
    return f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}' '{folder}'"


@cache
def _read_only_mounts_unavailable() -> str | None:
    """Why a private read-only bind mount cannot be made here, or None if it can."""
    if shutil.which("unshare") is None or not Path("/proc/self/ns/mnt").exists():
        return "needs unshare(1) and Linux mount namespaces"
    probe = Path(__file__).parent  # any folder: nothing is written
    done = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c",
         f"{_mount_read_only(probe)} && ! touch '{probe}/.rlattr-probe' 2>/dev/null"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if done.returncode != 0:
        return f"unprivileged mount namespaces are unavailable here: {done.stderr.strip()}"
    return None


def run_read_only(folder: Path, argvs: list[list[str]]) -> list[dict]:
    """Run ``rlattr`` with each argv while ``folder`` is mounted read-only."""
    done = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c",
         f'{_mount_read_only(folder)} && exec "$0" -c "$1" "$2"',
         sys.executable, INSIDE, json.dumps(argvs)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if reason := _read_only_mounts_unavailable():
        pytest.skip(reason)
    run_dir = tmp_path_factory.mktemp("readonly") / "run"
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, n_steps=64, batch_size=64, n_epochs=1,
        seed=0, device="cpu", iif=IIF(fraction=0.5),
    ).learn(128)  # fmt: skip
    return run_dir


def test_writes_into_a_read_only_run_are_refused_before_the_work(run: Path, tmp_path: Path) -> None:
    records = RunLog(run).load_records(0)
    pairs = tmp_path / "pairs.npz"
    np.savez(pairs, observations=records.observations[:4].numpy(), actions=np.zeros(4))
    formation = ["formation", str(run), "--behavior", f"action:{pairs}", "--neighbours", "5",
                 "--no-progress"]  # fmt: skip
    diagnose = ["diagnose", str(run), "--fidelity-iterations", "0", "--no-progress"]
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    refused, stored, *allowed = run_read_only(
        run,
        [
            ["attribute", str(run), "--iteration", "0", "--method", "snapshot"],
            ["attribute", str(run), "--iteration", "0", "--method", "snapshot", "--no-store"],
            [*diagnose, "--out", str(tmp_path / "diagnosis.html")],
            [*formation, "--out", str(tmp_path / "formation")],
            diagnose,
            formation,
            [*formation, "--out", str(run / "iterations")],  # an --out that is read-only
        ],
    )
    read_only_out = allowed.pop()
    # attribute: refused before any scoring, one error line that names --no-store.
    assert refused["status"] == 2 and refused["started"] == [], refused
    lines = refused["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {run} is read-only"), lines
    assert "read-only file system" in lines[0] and "add --no-store" in lines[0]
    assert stored == {"status": 0, "stderr": "", "started": ["attribute"]}
    # diagnose and formation: with --out elsewhere they work on the read-only run ...
    assert [a["status"] for a in allowed[:2]] == [0, 0], allowed
    assert (tmp_path / "diagnosis.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "formation" / "formation.csv").is_file()
    # ... and without it they stop before the work, saying to choose --out.
    for result in allowed[2:]:
        assert result["status"] == 2 and result["started"] == [], result
        lines = result["stderr"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {run} is read-only"), lines
        assert "choose --out" in lines[0]
    assert read_only_out["status"] == 2 and read_only_out["started"] == [], read_only_out
    assert f"cannot write into {run / 'iterations'}: it is read-only" in read_only_out["stderr"]
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before


def test_a_writable_run_is_not_refused(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    from rlattr.cli.main import main

    assert main(["attribute", str(copy), "--iteration", "0", "--method", "snapshot"]) == 0
    assert "snapshot-return" in RunLog(copy).score_names(0)
