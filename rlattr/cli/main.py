"""``rlattr`` command line: train presets, inspect, score and replay run directories.

Each command lives in its own module of ``rlattr.cli`` with an ``add(subparsers)`` that
registers it; this module builds the parser and turns errors into exit statuses.

Exit status: 0 done; 1 a check failed (``inspect`` found problems, ``replay`` differed);
2 bad input or an unusable run directory, reported as one ``error: ...`` line on stderr
that says what to do (never a traceback); 130 interrupted by Ctrl-C (``train`` prints the
last committed iteration and the command that resumes it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from rlattr.cli import (
    attribute,
    compare,
    diagnose,
    fidelity,
    formation,
    inspect,
    intervene,
    replay,
    stages,
    sweep,
    train,
)
from rlattr.cli import console as out
from rlattr.cli.args import HelpFormatter, Parser, threads
from rlattr.errors import RlattrError

# In the order ``rlattr --help`` lists them: record, look, explain, act, compare.
COMMANDS = (
    train, inspect, replay, attribute, fidelity, stages, diagnose, formation, intervene,
    sweep, compare,
)  # fmt: skip


def _version() -> str:
    from rlattr.versions import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``rlattr`` argument parser (every option with help and its default)."""
    parser = Parser(
        prog="rlattr",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Exit status: 0 done, 1 a check failed, 2 bad input, 130 interrupted.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rlattr {_version()}")
    parser.add_argument(
        "--threads", type=threads, default=1,
        help="torch CPU threads; small policies run fastest on one (two threads made a "
        "FrozenLake replay 4.6× slower on a busy 2-core machine), CNNs on big batches may "
        "gain from more",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rlattr`` command; returns the exit status (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
        torch.set_num_threads(args.threads)
        return args.func(args)
    except RlattrError as err:
        out.report(str(err))
        return out.EXIT_USAGE
    except KeyboardInterrupt:
        out.report("interrupted")
        return out.EXIT_INTERRUPTED
    except OSError as err:
        # A path the file system refused (read-only, full, not a folder, /proc): the
        # person can act on it; an OSError without a path is not theirs to fix.
        if err.filename is None:
            raise
        out.report(f"{err.filename}: {err.strerror or err}; check that path, or choose another")
        return out.EXIT_USAGE
    except SystemExit as exit_:  # --help and --version: printed, and done
        return exit_.code if isinstance(exit_.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
