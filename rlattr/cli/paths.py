"""Paths typed at the command line, checked before any work starts.

Each function is an ``argparse`` type: it raises ``argparse.ArgumentTypeError`` with a
message that says what to give instead, which the command line prints as one ``error:``
line (exit status 2). A report written after minutes of scoring must not then fail on a
folder that is a file; what cannot be seen in advance (a full disk, ``/proc``) is an
``OSError`` that ``rlattr.cli.main.main`` reports the same way.

Where a command writes into the run directory it was given (``attribute`` storing scores,
``diagnose`` and ``formation`` writing reports by default), its ``run`` calls
``require_writable`` before the work: a run on a read-only mount (an archive, a shared
dataset) is refused at once with the option that avoids the write, not after minutes of
scoring.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from rlattr.cli.console import UsageError

RUN_JSON = "run.json"


def run_directory(text: str) -> str:
    """An existing run directory (one that holds ``run.json``), or why not and what to give."""
    path = Path(text)
    if path.name == RUN_JSON and path.is_file():
        raise argparse.ArgumentTypeError(
            f"{text} is not an rlattr run directory but the run's {RUN_JSON}: give its folder, "
            f"{path.parent}"
        )
    if not path.exists():
        raise argparse.ArgumentTypeError(
            f"{text} is not an rlattr run directory: it does not exist; give the folder "
            f"`rlattr train --run-dir` wrote (it holds {RUN_JSON})"
        )
    if not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is not an rlattr run directory: it is a file; give the folder that holds "
            f"{RUN_JSON}"
        )
    if not (path / RUN_JSON).is_file():
        inside = sorted(str(p.parent) for p in path.glob(f"*/{RUN_JSON}"))
        hint = f" (runs inside it: {', '.join(inside[:3])}{', …' if len(inside) > 3 else ''})"
        raise argparse.ArgumentTypeError(
            f"{text} is not an rlattr run directory (no {RUN_JSON}): give the folder "
            f"`rlattr train --run-dir` wrote" + (hint if inside else "")
        )
    return text


def _nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest ancestor that does."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable(path: Path) -> bool:
    """Whether this user can write ``path``, or make it: it, or while missing its nearest
    existing ancestor, may be written (and, a folder, entered). ``os.access`` asks the
    kernel, which refuses a read-only mount to root too (where permissions do not)."""
    existing = _nearest_existing(Path(path))
    return os.access(existing, os.W_OK | (os.X_OK if existing.is_dir() else 0))


def require_writable(path: Path, what: str, instead: str) -> None:
    """Refuse, before any work, a ``path`` the command would write into but cannot.

    Raises ``UsageError`` (one ``error:`` line, exit status 2): ``"<what> is read-only
    (<why>): <instead>"``, where ``instead`` says what to do instead, e.g. ``"add
    --no-store, or ..."``.
    """
    if not writable(path):
        existing = _nearest_existing(Path(path))
        why = "a read-only file system" if _read_only_mount(existing) else "no write permission"
        where = "" if existing == Path(what) else f" at {existing}"
        raise UsageError(f"{what} is read-only ({why}{where}): {instead}")


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _check_creatable(path: Path) -> None:
    """``path`` can be made: its nearest existing ancestor is a folder this user may write."""
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(
            f"cannot create {path}: {ancestor} is a file, not a folder; choose another path"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"cannot create {path}: no permission to write in {ancestor}; choose another path"
        )


def output_file(*suffixes: str) -> Callable[[str], Path]:
    """An argparse type: a file to write (ending in one of ``suffixes`` if given); it may
    exist (it is replaced), but not as a folder, and its folder can be made."""

    def parse(text: str) -> Path:
        path = Path(text)
        if path.is_dir():
            name = f"report{suffixes[0]}" if suffixes else "report"
            raise argparse.ArgumentTypeError(
                f"{text} is a folder: give a file to write, e.g. {path / name}"
            )
        if suffixes and path.suffix not in suffixes:
            raise argparse.ArgumentTypeError(
                f"{text}: the file must end in {' or '.join(suffixes)}"
            )
        if not path.exists():
            _check_creatable(path)
        elif not writable(path):
            raise argparse.ArgumentTypeError(
                f"cannot write {path}: it is read-only; choose another path"
            )
        return path

    parse.__name__ = "file"
    return parse


def output_folder(text: str) -> Path:
    """An argparse type: a folder to write into; it may exist, but not as a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is a file, not a folder: give a folder (it is created if missing)"
        )
    if not path.exists():
        _check_creatable(path)
    elif not writable(path):
        raise argparse.ArgumentTypeError(
            f"cannot write into {path}: it is read-only; choose another folder"
        )
    return path
