"""The command line's shared argument types and parsers, each an ``argparse`` type that
raises ``argparse.ArgumentTypeError`` with a message saying what to give instead.

Paths have their own module (``rlattr.cli.paths``); ranges of numbers and devices come from
``rlattr.argtypes``, which the Python API's configs use too.
"""

from __future__ import annotations

import argparse
import os
import typing
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from rlattr.argtypes import at_least, device, format_memory_size, memory_size
from rlattr.cli.console import UsageError, user_input
from rlattr.record.runlog import RunLog
from rlattr.run.presets import shipped_presets


def share(open_low: bool) -> Callable[[str], float]:
    """An argparse type: a fraction in [0, 1), or (0, 1) with ``open_low``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        above_low = value > 0 if open_low else value >= 0
        if not (above_low and value < 1):  # NaN fails both
            interval = "(0, 1)" if open_low else "[0, 1)"
            raise argparse.ArgumentTypeError(f"must be a fraction in {interval}, got {value:g}")
        return value

    parse.__name__ = "fraction"
    return parse


def threads(text: str) -> int:
    """An argparse type: torch CPU threads, 1 to this machine's CPU count (more never
    helps, and OpenMP crashes outright on a slip such as 100000)."""
    count = at_least(1)(text)
    cpus = os.cpu_count() or 1
    if count > cpus:
        raise argparse.ArgumentTypeError(
            f"{count} threads on a machine with {cpus} CPU(s): use 1 to {cpus}"
        )
    return count


def compute_device(text: str) -> str:
    """``device``, with ``auto`` resolved (post-hoc analyses hand it to torch as is)."""
    text = device(text)
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return text


@dataclass(frozen=True)
class TargetSpec:
    """A parsed ``--target``/``--behavior``: ``return``, ``return:gae|mc`` or ``action:FILE``."""

    text: str
    kind: str
    argument: str


def target_spec(text: str) -> TargetSpec:
    """An argparse type: check a target's syntax (and that an action file exists)."""
    kind, _, argument = text.partition(":")
    if kind == "return":
        if argument not in ("", "gae", "mc"):
            raise argparse.ArgumentTypeError(
                f"unknown advantage {argument!r} in {text!r}: use return (GAE advantages), "
                "return:gae or return:mc (Monte-Carlo)"
            )
        return TargetSpec(text, kind, argument or "gae")
    if kind == "action":
        if not argument:
            raise argparse.ArgumentTypeError(
                "action needs a file: action:FILE (.safetensors or .npz holding "
                "observations and actions)"
            )
        from rlattr.training.intervention import check_action_file

        try:
            check_action_file(argument)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return TargetSpec(text, kind, argument)
    raise argparse.ArgumentTypeError(
        f"unknown target {text!r}: use return, return:mc or action:FILE"
    )


TARGET_HELP = "return (GAE advantages), return:mc (Monte-Carlo) or action:FILE (.npz, safetensors)"


def stage_span(text: str) -> str:
    """An argparse type: one stage ``a:b`` (iterations a to b-1, a < b)."""
    start, colon, end = text.partition(":")
    if not (colon and start.isdigit() and end.isdigit()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a stage: write a:b for iterations a to b-1 (e.g. 0:4)"
        )
    if int(start) >= int(end):
        raise argparse.ArgumentTypeError(
            f"stage {text} is reversed or empty: a:b covers iterations a to b-1, so a < b"
        )
    return text


def stage_spec(text: str) -> str:
    """An argparse type: ``K`` equal stages, or ``a:b,c:d`` (syntax and order only;
    the run's length is checked once the run is open, before anything is loaded)."""
    if text.isdigit():
        if int(text) < 1:
            raise argparse.ArgumentTypeError("the number of stages must be >= 1")
        return text
    for part in text.split(","):
        stage_span(part)
    return text


# ``--budget none``: no limit per iteration (e.g. the matching rule: every matching record).
NO_BUDGET = "none"


def budget_option(text: str) -> float | int | str:
    """A count (an integer), a fraction of the buffer in [0, 1), or ``none`` (no limit)."""
    if text.strip().lower() == NO_BUDGET:
        return NO_BUDGET
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a count of records, a fraction in [0, 1) nor none"
        ) from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"a fraction of the buffer must be in [0, 1), got {value}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors raised as one-line ``UsageError``s."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` where there is a default worth showing.

    Off switches (``False``) and ``None`` ("the preset's", explained in the help) would
    only add noise.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        hidden = action.default is None or action.default is False  # 0 is shown
        if "%(default)" in help_text or hidden or action.default == argparse.SUPPRESS:
            return help_text
        return super()._get_help_string(action) or help_text


def literal_choices(hint: Any) -> tuple[str, ...] | None:
    """The values of a ``Literal`` (or ``Literal | None``) annotation, else None."""
    if typing.get_origin(hint) is typing.Literal:
        return tuple(typing.get_args(hint))
    members = [literal_choices(arg) for arg in typing.get_args(hint) if arg is not type(None)]
    if members and all(members):
        return tuple(value for member in members for value in member or ())
    return None


def add_memory_budget(parser: Any, applies: str) -> None:
    """``--memory-budget``: the metagradient's graph memory (``metagradient_scores``)."""
    from rlattr.scoring.graph_memory import DEFAULT_MEMORY_BUDGET

    parser.add_argument(
        "--memory-budget", type=memory_size, metavar="SIZE",
        help=f"{applies}: graph memory the metagradient may hold, e.g. 256MiB or 1GiB "
        "(segments of the update are recomputed to stay within it; same scores), or none "
        f"(one graph of the whole update: fastest) (default: "
        f"{format_memory_size(DEFAULT_MEMORY_BUDGET)})",
    )  # fmt: skip


def memory_budget(args: argparse.Namespace, applies: bool, needs: str) -> Any:
    """``--memory-budget`` as given, else the default; refused where no metagradient runs."""
    from rlattr.scoring.graph_memory import DEFAULT_MEMORY_BUDGET

    if args.memory_budget is None:
        return DEFAULT_MEMORY_BUDGET
    if not applies:
        raise UsageError(f"--memory-budget only applies {needs}: add it, or drop --memory-budget")
    return args.memory_budget


def preset_names() -> str:
    try:
        return ", ".join(sorted(shipped_presets()))
    except (ModuleNotFoundError, OSError):  # a source tree without the package data
        return "see agents/"


def load_target(spec: TargetSpec, log: RunLog) -> Any:
    """The target of a parsed spec; an action file is read and checked against the run's
    observation and action spaces before anything is scored."""
    from rlattr.scoring.targets import ActionTarget, ReturnTarget

    if spec.kind == "return":
        return ReturnTarget(advantage=spec.argument)
    path = Path(spec.argument)
    tensors = read_action_file(path)
    missing = {"observations", "actions"} - tensors.keys()
    if missing:
        raise UsageError(
            f"{path} lacks {sorted(missing)}: an action target file holds observations "
            "[M, *obs_shape] and actions [M, ...]"
        )
    with user_input(f"action target {path}"):
        target = ActionTarget(tensors["observations"].float(), tensors["actions"])
        target.check_spaces(*run_spaces(log))
    return target


def read_action_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.npz`` or safetensors file, or a ``UsageError`` saying why not."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                return {k: torch.as_tensor(arrays[k]) for k in arrays.files}
        from safetensors.torch import load_file

        return load_file(str(path))
    except (
        OSError,
        ValueError,
        TypeError,
        RuntimeError,
        zipfile.BadZipFile,
        SafetensorError,
    ) as err:
        kind = ".npz" if path.suffix == ".npz" else "safetensors"
        raise UsageError(
            f"{path} is not a readable {kind} file ({err}); save the observations and "
            "actions with numpy.savez (.npz) or safetensors.torch.save_file"
        ) from err


def run_spaces(log: RunLog) -> tuple[Any, Any]:
    from rlattr.record.serialize import space_from_json

    spec = log.meta["policy"]
    return space_from_json(spec["observation_space"]), space_from_json(spec["action_space"])


def add_iteration_target(parser: argparse.ArgumentParser) -> None:
    """A run directory, one of its committed iterations, and a target: what ``attribute``
    and ``fidelity`` both read."""
    from rlattr.cli.paths import run_directory

    parser.add_argument("run", type=run_directory, help="run directory")
    parser.add_argument(
        "--iteration", type=at_least(0), required=True, help="a committed iteration"
    )
    parser.add_argument(
        "--target", type=target_spec, default="return", help=f"what to explain: {TARGET_HELP}"
    )


def config_help(config: type, name: str) -> str:
    """The help text a config dataclass's field carries (its ``help`` metadata)."""
    return str(config.__dataclass_fields__[name].metadata.get("help", ""))


def add_allow_module(parser: argparse.ArgumentParser) -> None:
    """``--allow-module NAME`` (repeatable): a module a run directory or preset may name
    besides ``rlattr.allowlist.ALLOWED_MODULES`` (``allowed_modules(args)``)."""
    from rlattr.allowlist import ALLOWED_MODULES

    parser.add_argument(
        "--allow-module", action="append", metavar="NAME",
        help="a top-level module whose classes the run or preset may name, besides "
        f"{', '.join(ALLOWED_MODULES)} (importing it runs its code: allow only what you "
        "trust); repeatable",
    )  # fmt: skip


def allowed_modules(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--allow-module`` names given (none: an empty tuple)."""
    return tuple(getattr(args, "allow_module", None) or ())
