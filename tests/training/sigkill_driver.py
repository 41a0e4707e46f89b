"""Test driver: ``rlattr train`` in this process, killed by its own SIGKILL at a chosen point.

``python sigkill_driver.py KILL_AT -- TRAIN_ARGS...`` runs ``rlattr train TRAIN_ARGS`` and,
when the run log is about to commit iteration ``KILL_AT`` (its records, plan and the
checkpoint that follows are on disk; its ``iteration.json``, the commit marker, is not),
sends itself SIGKILL: iterations ``0..KILL_AT-1`` are committed, ``KILL_AT`` is a leftover.
``KILL_AT`` < 0 kills nothing. A test-only hook: it wraps the run log's JSON writer here,
nothing in rlattr knows about it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import rlattr.record.runlog as runlog
from rlattr.cli.main import main


def install_kill_point(kill_at: int) -> None:
    write_json = runlog.atomic_write_json

    def writing(path: Path, *args: Any, **kwargs: Any) -> Any:
        path = Path(path)
        directory = path.parent.name
        if path.name == "iteration.json" and directory.isdigit() and int(directory) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return write_json(path, *args, **kwargs)

    runlog.atomic_write_json = writing


if __name__ == "__main__":
    kill_at, separator, *train_args = sys.argv[1:]
    assert separator == "--", sys.argv
    if int(kill_at) >= 0:
        install_kill_point(int(kill_at))
    sys.exit(main(["train", *train_args]))
