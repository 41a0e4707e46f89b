"""Reports written into a run directory wait for its one writer: refused before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlattr import AttributedPPO
from rlattr.cli.main import main

HOLD = """
import sys
from rlattr import RunLog
log = RunLog(sys.argv[1])
log.acquire_writer()
print("holding", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize(
    "argv",
    [["diagnose", "--no-progress"], ["stages", "--stages", "2", "--no-progress"]],
    ids=["diagnose", "stages"],
)
def test_a_report_into_a_run_another_process_writes_is_refused_first(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    run_dir = tmp_path / "run"
    model = AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, n_steps=32, batch_size=16, n_epochs=2,
        device="cpu", seed=0,
    )  # fmt: skip
    model.learn(64)
    model.run_log.release_writer()
    # The work itself must not start: it would take minutes before the write failed.
    import rlattr.analysis.stages as stages_module
    import rlattr.cli.diagnose as diagnose_module

    def started(*_: object, **__: object) -> None:
        raise AssertionError("the report's work began before the lock was checked")

    monkeypatch.setattr(diagnose_module, "diagnose", started)
    monkeypatch.setattr(stages_module, "stage_effects", started)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        capsys.readouterr()
        assert main([argv[0], str(run_dir), *argv[1:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and f"pid {holder.pid}" in err[0]
        assert not (run_dir / "reports").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
