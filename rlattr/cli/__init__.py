"""The ``rlattr`` command line."""

from rlattr.cli.main import main

__all__ = ["main"]
