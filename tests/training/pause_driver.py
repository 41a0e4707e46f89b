"""Test driver: ``rlattr train`` in this process, paused just before it commits an iteration.

``python pause_driver.py PAUSE_AT PAUSED GO -- TRAIN_ARGS...`` runs ``rlattr train
TRAIN_ARGS`` and, when the run log is about to commit iteration ``PAUSE_AT`` (its records,
plan and the checkpoint that follows are on disk; its ``iteration.json`` is not), creates
the file ``PAUSED`` and waits until the file ``GO`` exists, then goes on. A test-only hook,
as ``sigkill_driver.py``'s kill: it wraps the run log's JSON writer here, nothing in rlattr
knows about it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import rlattr.record.runlog as runlog
from rlattr.cli.main import main

WAIT_S = 240.0


def install_pause_point(pause_at: int, paused: Path, go: Path) -> None:
    write_json = runlog.atomic_write_json

    def writing(path: Path, *args: Any, **kwargs: Any) -> Any:
        path = Path(path)
        directory = path.parent.name
        if path.name == "iteration.json" and directory.isdigit() and int(directory) == pause_at:
            paused.touch()
            deadline = time.monotonic() + WAIT_S
            while not go.exists():
                if time.monotonic() > deadline:
                    raise SystemExit(f"pause_driver: {go} did not appear in {WAIT_S:.0f} s")
                time.sleep(0.05)
        return write_json(path, *args, **kwargs)

    runlog.atomic_write_json = writing


if __name__ == "__main__":
    pause_at, paused, go, separator, *train_args = sys.argv[1:]
    assert separator == "--", sys.argv
    install_pause_point(int(pause_at), Path(paused), Path(go))
    sys.exit(main(["train", *train_args]))
