"""Values typed at the command line: parsers shared by ``rlattr.cli`` and ``rlattr.sweep``.

Layer 0 (no rlattr imports): the sweep commands (layer 4) and the main command line
(layer 5) both need them, and neither may import the other's. Each ``argparse`` type
raises ``argparse.ArgumentTypeError`` with a message that says what was expected; the
command line turns it into one ``error:`` line (exit status 2).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

# Sizes a person may type: SI units (powers of 1000) and IEC units (powers of 1024), the
# way ``ls``, ``free`` and torch's memory reports print them. Bare numbers are bytes.
MEMORY_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
# Words that lift a memory limit.
UNLIMITED = ("none", "unlimited")
_SIZE = re.compile(r"\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-z]*)\s*", re.IGNORECASE)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {value}")
        return value

    parse.__name__ = f"whole number >= {low}"
    return parse


def parse_memory_size(text: str) -> int | None:
    """Bytes in a size such as ``256MiB``, ``1.5GiB``, ``500MB`` or ``1048576``; None for
    ``none`` or ``unlimited`` (no limit).

    Units (any case): B, KB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB (powers
    of 1024); a bare number is bytes. Fractions are rounded down to whole bytes.

    Raises:
        ValueError: not a size, an unknown unit, or less than one byte.
    """
    if text.strip().lower() in UNLIMITED:
        return None
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a memory size: write a number and a unit such as 256MiB or "
            "1GiB, or 'none' for no limit"
        )
    unit = match["unit"].lower() or "b"
    if unit not in MEMORY_UNITS:
        raise ValueError(
            f"unknown unit {match['unit']!r} in {text!r}: use one of B, KB, MB, GB, TB, "
            "KiB, MiB, GiB, TiB"
        )
    size = math.floor(float(match["number"]) * MEMORY_UNITS[unit])
    if size < 1:
        raise ValueError(f"a memory size must be at least 1 byte, got {text!r}")
    return size


def memory_size(text: str) -> int | str:
    """An argparse type: a memory size in bytes (see ``parse_memory_size``), or the word
    ``"none"`` for no limit (kept as a word so "not given" (None) stays distinguishable)."""
    try:
        size = parse_memory_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return "none" if size is None else size


def format_memory_size(size: int | None) -> str:
    """``size`` bytes in the largest IEC unit that keeps it readable (``256MiB``,
    ``1.5GiB``); ``none`` for None."""
    if size is None:
        return "none"
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = MEMORY_UNITS[unit.lower()]
        if size >= scale:
            return f"{size / scale:.4g}{unit}"
    return f"{size}B"


def check_device(text: str) -> str:
    """``text`` if it names a torch device present on this machine (or is ``auto``).

    SB3 quietly falls back to the CPU when CUDA is asked for and missing; a person who
    asked for ``cuda`` wants to know instead. Used by the command line's ``--device`` and by
    a sweep's trials, on the machine that runs them.

    Raises:
        ValueError: an unknown device, or one this machine lacks, with what to use.
    """
    import torch  # here, not at the top: argparse types load before torch is needed

    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"unknown device {text!r}: use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU"
            raise ValueError(
                f"{text}: CUDA is not available here ({why}; torch {torch.__version__}); "
                "use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{text}: MPS is not available here; use cpu")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {text!r}: use cpu, cuda, cuda:N, mps or auto")
    return text


def device(text: str) -> str:
    """An argparse type: ``check_device``, its refusal as the argument's error."""
    try:
        return check_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
