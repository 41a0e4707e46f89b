"""Command-line value types shared by ``rlattr`` and ``rlattr sweep``."""

from __future__ import annotations

import argparse

import pytest

from rlattr.argtypes import at_least, format_memory_size, memory_size, parse_memory_size


def test_at_least_accepts_the_bound_and_refuses_below_it() -> None:
    assert at_least(1)("1") == 1 and at_least(0)("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected a whole number >= 1, got 0"):
        at_least(1)("0")
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected a whole number, got '2.5'"):
        at_least(1)("2.5")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256MiB", 256 * 1024**2),
        ("1GiB", 1024**3),
        ("1.5gib", 3 * 1024**3 // 2),
        ("500MB", 500_000_000),
        ("64 KiB", 65536),
        ("1048576", 1048576),
        ("3b", 3),
        ("none", None),
        ("Unlimited", None),
    ],
)
def test_memory_sizes(text: str, size: int | None) -> None:
    assert parse_memory_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lots", "'lots' is not a memory size"),
        ("-5MiB", "is not a memory size"),
        ("1e9", "is not a memory size"),
        ("", "is not a memory size"),
        ("12 parsecs", "unknown unit 'parsecs'"),
        ("0MiB", "at least 1 byte"),
        ("0.5B", "at least 1 byte"),
    ],
)
def test_bad_memory_sizes(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_memory_size(text)
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        memory_size(text)


def test_memory_size_keeps_none_as_a_word_and_formats_back() -> None:
    assert memory_size("none") == "none" and memory_size("2KiB") == 2048
    assert format_memory_size(256 * 1024**2) == "256MiB"
    assert format_memory_size(3 * 1024**3 // 2) == "1.5GiB"
    assert format_memory_size(100) == "100B" and format_memory_size(None) == "none"
