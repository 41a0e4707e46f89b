"""Paths typed at the command line, checked before any work starts.

Each function is an ``argparse`` type: it raises ``argparse.ArgumentTypeError`` with a
message that says what to give instead, which the command line prints as one ``error:``
line (exit status 2). A report written after minutes of scoring must not then fail on a
folder that is a file; what cannot be seen in advance (a full disk, ``/proc``) is an
``OSError`` that ``rlattr.cli.main.main`` reports the same way.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

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


def _check_creatable(path: Path) -> None:
    """``path`` can be made: its nearest existing ancestor is a folder this user may write."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
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
    return path
