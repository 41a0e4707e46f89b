"""Fault injection for the run log: a child process that dies (SIGKILL) or meets a full
disk (ENOSPC) at one chosen write, chosen by the file it writes and the moment.

The child is forked from the test process (torch, SB3 and rlattr are imported already,
which saves seconds a case); it wraps, in itself only, the functions the run log writes
through (``rlattr.record.io.atomic_write_bytes``, ``os.fdopen``, ``os.replace``,
``os.link``, ``os.pwrite``, ``Path.unlink``), runs ``rlattr`` with the given arguments and
exits with its status. Deterministic: the fault strikes at the ``nth`` matching call, with
no polling and no timing. Nothing in rlattr knows about it.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import pathlib
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch._dynamo  # noqa: F401  (imported here once: Adam imports it lazily, ~1.5 s a child)
import yaml

import rlattr.cli.main  # noqa: F401  (the forked children find it imported)
from rlattr import RunLog
from rlattr.record.io import sha256_file

ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 300  # seconds
STEPS = 256  # one CartPole iteration of the shipped preset (8 envs x 32 steps)

# Moments of one atomic write at which a fault can strike.
BEFORE = "before"  # nothing of the file written yet (atomic_write_bytes entered)
WRITING = "writing"  # the temporary file is being written (ENOSPC: half of it written)
BEFORE_RENAME = "before-rename"  # temporary file written and fsynced, not renamed yet
AFTER_RENAME = "after-rename"  # the file is in place, the caller has not gone on
BEFORE_LINK = "before-link"  # run.json: temporary file fsynced, not linked yet
BEFORE_UNLINK = "before-unlink"  # a delete about to happen
AFTER_UNLINK = "after-unlink"  # a delete just done
LOCK_WRITE = "lock-write"  # the writer lock is taken, its holder not written yet


@dataclass(frozen=True)
class Point:
    """Where a fault strikes: at ``moment`` of the ``nth`` write (or delete) whose path,
    relative to the run directory, matches ``pattern``."""

    name: str
    moment: str
    pattern: str
    what: str  # the table's words for it
    nth: int = 1

    def matches(self, run_dir: Path, path: str | os.PathLike[str]) -> bool:
        try:
            relative = Path(os.path.abspath(path)).relative_to(run_dir)
        except ValueError:
            return False
        return fnmatch.fnmatchcase(relative.as_posix(), self.pattern)


def _final_path(temporary: str) -> Path:
    """The file a temporary file of ``io.atomic_write_bytes`` becomes
    (``.NAME.<random>.tmp`` in the same folder)."""
    path = Path(temporary)
    return path.with_name(path.name[1:].rsplit(".", 2)[0])


class _Injector:
    """Counts matching calls and strikes at the ``nth``."""

    def __init__(self, point: Point, run_dir: Path, fault: str):
        self.point, self.run_dir, self.fault, self.seen = point, run_dir, fault, 0

    def hit(self, moment: str, path: str | os.PathLike[str]) -> bool:
        if moment != self.point.moment or not self.point.matches(self.run_dir, path):
            return False
        self.seen += 1
        return self.seen == self.point.nth

    def strike(self) -> None:
        if self.fault == "kill":
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        # What a full disk gives a write: errno 28 and no file name.
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullDiskFile:
    """A file object whose ``write`` stores half of the bytes, then fails with ENOSPC
    (once ``wait_for`` is set, when given: a slow disk, failing only once the next write is
    queued behind it)."""

    def __init__(self, handle: Any, wait_for: threading.Event | None = None):
        self._handle, self._wait_for = handle, wait_for

    def write(self, data: bytes) -> int:
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        if self._wait_for is not None:
            self._wait_for.wait(timeout=60)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _FullDiskFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def install(point: Point, run_dir: Path, fault: str) -> None:
    """Wrap the writers (in this process) so that ``fault`` strikes at ``point`` of run
    directory ``run_dir``: "kill" (SIGKILL), "enospc" (a full disk), "enospc-queued" (a full
    disk that fails the write only once the run log has queued its next write)."""
    import rlattr.record.io as rio
    import rlattr.record.runlog as runlog

    injector = _Injector(point, Path(os.path.abspath(run_dir)), fault)
    queued = threading.Event()  # the run log queued a write after the failing one began
    failing = threading.Event()  # the failing write has begun
    if fault == "enospc-queued":
        submit = runlog.BackgroundWriter.submit

        def submit_(self: Any, *args: Any, **kwargs: Any) -> None:
            submit(self, *args, **kwargs)
            if failing.is_set():
                queued.set()

        runlog.BackgroundWriter.submit = submit_  # type: ignore[method-assign]
    write_bytes, fdopen, replace = rio.atomic_write_bytes, os.fdopen, os.replace
    link, pwrite, unlink = os.link, os.pwrite, pathlib.Path.unlink

    def atomic_write_bytes(path: Path, data: bytes) -> None:
        if injector.hit(BEFORE, path):
            injector.strike()
        write_bytes(path, data)
        if injector.hit(AFTER_RENAME, path):
            injector.strike()

    def fdopen_(fd: int, *args: Any, **kwargs: Any) -> Any:
        handle = fdopen(fd, *args, **kwargs)
        with contextlib.suppress(OSError):
            target = _final_path(os.readlink(f"/proc/self/fd/{fd}"))
            if injector.hit(WRITING, target):
                if fault == "kill":
                    injector.strike()
                if fault == "enospc-queued":
                    failing.set()
                    return _FullDiskFile(handle, queued)
                return _FullDiskFile(handle)
        return handle

    def replace_(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if injector.hit(BEFORE_RENAME, dst):
            injector.strike()
        replace(src, dst, *args, **kwargs)

    def link_(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if injector.hit(BEFORE_LINK, dst):
            injector.strike()
        link(src, dst, *args, **kwargs)

    def pwrite_(fd: int, data: bytes, offset: int) -> int:
        with contextlib.suppress(OSError):
            if injector.hit(LOCK_WRITE, os.readlink(f"/proc/self/fd/{fd}")):
                injector.strike()
        return pwrite(fd, data, offset)

    def unlink_(self: pathlib.Path, missing_ok: bool = False) -> None:
        if injector.hit(BEFORE_UNLINK, self):
            injector.strike()
        unlink(self, missing_ok=missing_ok)
        if injector.hit(AFTER_UNLINK, self):
            injector.strike()

    rio.atomic_write_bytes = atomic_write_bytes
    os.fdopen, os.replace, os.link, os.pwrite = fdopen_, replace_, link_, pwrite_
    pathlib.Path.unlink = unlink_  # type: ignore[method-assign]


@dataclass
class Outcome:
    status: int  # exit status, or minus the signal that ended the child
    stdout: str
    stderr: str


def run_child(argv: list[str], out: Path, point: Point | None = None, run_dir: Path | None = None,
              fault: str = "kill") -> Outcome:  # fmt: skip
    """``rlattr ARGV`` in a forked child, with ``fault`` at ``point`` of ``run_dir``."""
    out.mkdir(parents=True, exist_ok=True)
    stdout, stderr = out / "stdout.txt", out / "stderr.txt"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 70
        try:
            for fd, path in ((1, stdout), (2, stderr)):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            # pytest's capture replaced these; the child writes to its own files.
            sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
            if point is not None:
                assert run_dir is not None
                install(point, run_dir, fault)
            from rlattr.cli.main import main

            status = main(argv)
        except BaseException:  # a traceback is an outcome too: exit 1, as python gives
            import traceback

            traceback.print_exc()
            status = 1
        finally:
            with contextlib.suppress(BaseException):
                # What the interpreter does at exit, which os._exit skips: wait for the
                # worker threads (the run log's background writer) to finish their work.
                import concurrent.futures.thread

                concurrent.futures.thread._python_exit()
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
    started = time.perf_counter()
    while True:  # a guard only: a case takes about a second
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() - started > CHILD_TIMEOUT:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"rlattr {' '.join(argv)} ran over {CHILD_TIMEOUT} s")
        time.sleep(0.01)
    if os.environ.get("RLATTR_FAULTS_TIMING"):
        print(f"{argv[0]}: {time.perf_counter() - started:.2f} s", file=sys.__stderr__)
    code = os.waitstatus_to_exitcode(wait_status)
    return Outcome(code, stdout.read_text(), stderr.read_text())


def snapshot(run_dir: Path, full_every: int = 1) -> dict[str, str]:
    """SHA-256 of every file of the committed iterations and of the full checkpoints they
    start from and end at (and of run.json)."""
    if not (run_dir / "run.json").exists():
        return {}
    log = RunLog(run_dir)
    committed = log.iterations()
    files = [run_dir / "run.json"]
    files += [p for k in committed for p in log.iteration_dir(k).rglob("*") if p.is_file()]
    if committed:  # with sparse checkpoints, those on the full grid
        for k in range(0, committed[-1] + 2, full_every):
            files += [run_dir / "checkpoints" / f"{k:06d}{s}" for s in (".safetensors", ".json")]
    return {str(p.relative_to(run_dir)): sha256_file(p) for p in files}


def leftover_temporaries(run_dir: Path) -> list[str]:
    """Temporary files of atomic writes still in ``run_dir`` (their random part as ``*``)."""
    found = {
        str(p.relative_to(run_dir).with_name(p.name.rsplit(".", 2)[0] + ".*.tmp"))
        for p in run_dir.rglob(".*.tmp")
    }
    return sorted(found)


def preset(folder: Path, checkpoint_every: int) -> Path:
    """The shipped CartPole preset keeping every ``checkpoint_every``-th checkpoint full."""
    payload = yaml.safe_load((ROOT / "agents" / "cartpole.yaml").read_text())
    payload["recording"] = {"checkpoint_every": checkpoint_every}
    # Two epochs instead of twenty: the faults are in the run log, not in the update, and
    # training and replay then cost a tenth (every write happens just the same).
    payload["ppo"]["n_epochs"] = 2
    path = folder / f"cartpole_every{checkpoint_every}.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


def train_argv(
    preset_file: Path, run_dir: Path, iterations: int, resume: bool = False
) -> list[str]:
    argv = ["train", str(preset_file), "--timesteps", str(STEPS * iterations),
            "--run-dir", str(run_dir), "--no-progress", "--seed", "3"]  # fmt: skip
    return argv + (["--resume"] if resume else [])


# ----------------------------------------------------------------- the fault table
# Rows the cases add once their assertions passed (``tests/faults/table.py`` writes them to
# docs/faults.md): section, fault, where, outcome, what was lost.
ROWS: list[dict[str, str]] = []


def trained_run(folder: Path, iterations: int) -> Path:
    """A run of ``iterations`` trained to the end in ``folder/run`` (every checkpoint full),
    which a case copies and then damages."""
    done = run_child(train_argv(preset(folder, 1), folder / "run", iterations), folder / "train")
    assert done.status == 0, done.stderr
    return folder / "run"


def add_row(section: str, fault: str, where: str, outcome: str, lost: str) -> None:
    ROWS.append(
        {"section": section, "fault": fault, "where": where, "outcome": outcome, "lost": lost}
    )


def said(outcome: Outcome) -> str:
    """How a failed command reported itself: one ``error:`` line, or a traceback."""
    if "Traceback" in outcome.stderr:
        last = outcome.stderr.strip().splitlines()[-1]
        return f"a traceback ending `{last}`"
    lines = [line for line in outcome.stderr.strip().splitlines() if line]
    errors = [line for line in lines if line.startswith("error: ")]
    if len(errors) == 1:
        extra = " + the resume command" if any("resume with:" in ln for ln in lines) else ""
        return f"one `error:` line{extra}"
    return f"{len(lines)} lines on stderr, {len(errors)} `error:`"
