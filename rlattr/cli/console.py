"""What every command prints through: the consoles, the one-line error, progress displays.

Exit status: 0 done; 1 a check failed (``inspect`` found problems, ``replay`` differed);
2 bad input, reported as one ``error: ...`` line on stderr that says what to do (never a
traceback); 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from rlattr.errors import RlattrError

console = Console()
error_console = Console(stderr=True)

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2

# The conventional status of a program stopped by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


class UsageError(RlattrError):
    """Bad command-line input: printed as one ``error:`` line, exit status 2."""


@contextlib.contextmanager
def user_input(what: str) -> Iterator[None]:
    """Report a ``ValueError`` raised by a value the user gave as a ``UsageError``.

    Only around code that validates user input: a ``ValueError`` elsewhere is a bug and
    keeps its traceback.
    """
    try:
        yield
    except RlattrError:
        raise
    except ValueError as err:
        raise UsageError(f"{what}: {err}") from err


def report(message: str) -> None:
    """Print ``message`` as the one ``error:`` line a person sees for bad input."""
    # One line: no markup (messages hold brackets), no emoji codes (":100:" in a stage),
    # no wrapping (messages are grep-able), and a stray newline from a library flattened.
    message = " ".join(line.strip() for line in message.splitlines())
    error_console.print(
        f"error: {message}", style="red", markup=False, emoji=False, highlight=False, soft_wrap=True
    )


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[Progress | None]:
    """A rich progress display on stderr (stdout stays the report), or None."""
    if not enabled:
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=error_console, transient=True) as display:
        yield display


def say(enabled: bool) -> Callable[[str], None]:
    """Progress messages on stderr, each with the seconds since this call (or silence)."""
    start = time.perf_counter()

    def message(text: str) -> None:
        if enabled:
            error_console.print(f"[{time.perf_counter() - start:5.1f} s] {text}", markup=False)

    return message


def print_records(title: str, rows: list[tuple[int, Any, int, float]]) -> None:
    """A table of records: (iteration, Records, index, score) per row."""
    table = Table(title=title)
    for column in ("iteration", "id", "env/step", "score", "action", "advantage", "observation"):
        table.add_column(column, no_wrap=column != "observation")
    for iteration, records, i, score in rows:
        obs = records.observations[i].flatten()
        shown = " ".join(f"{v:.2g}" for v in obs[:4].tolist()) + (" …" if len(obs) > 4 else "")
        table.add_row(
            str(iteration),
            str(int(records.record_ids[i])),
            f"{int(records.env_index[i])}/{int(records.step_index[i])}",
            f"{score:+.2e}",
            " ".join(f"{v:g}" for v in records.actions[i].tolist()),
            f"{float(records.advantages[i]):+.3f}",
            shown,
        )
    console.print(table)
