"""A write that fails (a full disk) names its file, and nothing queued behind it commits."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from rlattr.record.io import atomic_write_bytes
from rlattr.record.runlog import BackgroundWriter


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path: Path, monkeypatch) -> None:
    def full(_: int) -> None:  # ENOSPC as the kernel reports it: no file name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "records.safetensors"
    with pytest.raises(OSError) as err:
        atomic_write_bytes(target, b"data")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary one


def test_writes_queued_behind_a_failed_one_do_not_run(tmp_path: Path) -> None:
    writer = BackgroundWriter()
    written = []
    queued = threading.Event()

    def fail() -> int:
        queued.wait(timeout=30)  # fails only once the later writes wait behind it
        raise OSError(errno.ENOSPC, "No space left on device", "iteration 1")

    def write(name: str) -> int:
        (tmp_path / name).write_text("committed")
        written.append(name)
        return 1

    writer.submit(write, "iteration-0")
    writer.submit(fail)
    writer.submit(write, "iteration-2")
    writer.submit(write, "iteration-3")
    queued.set()
    with pytest.raises(OSError, match="No space left"):
        writer.drain()
    assert written == ["iteration-0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iteration-0"]
