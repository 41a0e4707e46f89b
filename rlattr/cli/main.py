"""``rlattr`` command line: train presets, inspect, score and replay run directories.

Exit status: 0 done; 1 a check failed (``inspect`` found problems, ``replay`` differed);
2 bad input or an unusable run directory, reported as one ``error: ...`` line on stderr
that says what to do (never a traceback); 130 interrupted by Ctrl-C (``train`` prints the
last committed iteration and the command that resumes it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import shutil
import sys
import time
import typing
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from safetensors import SafetensorError

from rlattr.argtypes import at_least as _at_least
from rlattr.argtypes import device as _device
from rlattr.argtypes import format_memory_size, memory_size
from rlattr.cli.intervene import add_intervene
from rlattr.cli.paths import output_file, output_folder, run_directory
from rlattr.cli.reports import add_diagnose, add_formation
from rlattr.errors import PresetError, RlattrError
from rlattr.record.runlog import RunLog
from rlattr.sweep.cli import add_compare_parser, add_sweep_parser
from rlattr.training.presets import Preset, shipped_presets

console = Console()
error_console = Console(stderr=True)

# The conventional status of a program stopped by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130
EXIT_USAGE = 2
# IIF settings offered as ``rlattr train --iif-<field>``; help and choices come from the
# ``IIF`` dataclass (``target`` is Python-only; ``seed`` is the preset's to set).
IIF_CLI_FIELDS = (
    "rule",
    "fraction",
    "like",
    "like_fraction",
    "scorer",
    "greedy_blocks",
    "minibatching",
    "params",
    "warmup_iterations",
    "min_kept",
)


class UsageError(RlattrError):
    """Bad command-line input: printed as one ``error:`` line, exit status 2."""


# ---------------------------------------------------------------------- argument types
def _share(open_low: bool) -> Callable[[str], float]:
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


def _threads(text: str) -> int:
    """An argparse type: torch CPU threads, 1 to this machine's CPU count (more never
    helps, and OpenMP crashes outright on a slip such as 100000)."""
    count = _at_least(1)(text)
    cpus = os.cpu_count() or 1
    if count > cpus:
        raise argparse.ArgumentTypeError(
            f"{count} threads on a machine with {cpus} CPU(s): use 1 to {cpus}"
        )
    return count


def _compute_device(text: str) -> str:
    """``_device``, with ``auto`` resolved (post-hoc analyses hand it to torch as is)."""
    text = _device(text)
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return text


@dataclass(frozen=True)
class TargetSpec:
    """A parsed ``--target``/``--behavior``: ``return``, ``return:gae|mc`` or ``action:FILE``."""

    text: str
    kind: str
    argument: str


def _target_spec(text: str) -> TargetSpec:
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


def _stage_span(text: str) -> str:
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


def _stage_spec(text: str) -> str:
    """An argparse type: ``K`` equal stages, or ``a:b,c:d`` (syntax and order only;
    the run's length is checked once the run is open, before anything is loaded)."""
    if text.isdigit():
        if int(text) < 1:
            raise argparse.ArgumentTypeError("the number of stages must be >= 1")
        return text
    for part in text.split(","):
        _stage_span(part)
    return text


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors raised as one-line ``UsageError``s."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
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


@contextlib.contextmanager
def _user_input(what: str) -> Iterator[None]:
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


# ---------------------------------------------------------------------- train
def _train(args: argparse.Namespace) -> int:
    given = [name for name in IIF_CLI_FIELDS if getattr(args, f"iif_{name}") is not None]
    if given and not args.iif:
        option = "--iif-" + given[0].replace("_", "-")
        raise UsageError(f"{option} only applies with --iif: add --iif to filter, or drop {option}")
    preset = Preset.load(args.preset).with_overrides(total_timesteps=args.timesteps)
    iif = _iif_config(preset, args) if args.iif else None
    if args.memory_budget is not None and (iif is None or iif.scorer != "metagrad"):
        raise UsageError(
            "--memory-budget only applies to metagradient IIF: add --iif --iif-scorer metagrad, "
            "or drop --memory-budget"
        )
    given = [
        option
        for option, value in (
            ("--budget", args.budget),
            ("--intervene-weight", args.intervene_weight),
            ("--intervene-rule", args.intervene_rule),
        )
        if value is not None
    ]
    if args.intervene is None and given:
        raise UsageError(f"{given[0]} only applies with --intervene action:FILE")
    run_dir = Path(args.run_dir or f"runs/{preset.name}-s{args.seed}")
    if (run_dir / "run.json").exists() and not args.resume:
        raise UsageError(
            f"{run_dir} already holds a run: add --resume to continue it, or choose "
            "another --run-dir"
        )
    rollout = preset.n_envs * int(preset.ppo.get("n_steps", 2048))
    whole = -(-preset.total_timesteps // rollout) * rollout
    if whole != preset.total_timesteps:
        # SB3 overshoots to a whole rollout anyway; rounding up keeps schedules >= 0 (SB3's
        # linear schedules turn negative in an overshooting last iteration).
        console.print(f"budget rounded up to {whole} steps ({whole // rollout} rollouts)")
        preset = preset.with_overrides(total_timesteps=whole)
    resuming = args.resume and (run_dir / "run.json").exists()
    if resuming:
        _check_resumable(run_dir, preset, args)
    elif args.resume:
        console.print(f"[yellow]{run_dir} holds no run yet; starting a new one[/]")
    _import_project_envs()
    spaces_ = preset.environment_spaces(args.seed)
    if iif is not None:
        console.print(
            f"IIF on: rule {iif.rule}, fraction {iif.fraction:g}, minibatches {iif.minibatching}"
        )
    intervention = _intervention(args, iif, spaces_)
    if intervention is not None:
        console.print(
            f"intervention on: {intervention.rule}, budget "
            f"{'none' if intervention.budget is None else intervention.budget}, weight "
            f"{intervention.weight:g}" + (" (with IIF)" if iif is not None else "")
        )
        iif = None  # it travels inside the intervention (with_iif)
    with _sb3_checks(preset):
        model = preset.build(
            run_dir=run_dir, seed=args.seed, device=args.device, resume=resuming, iif=iif,
            **({"intervention": intervention} if intervention is not None else {}),
        )  # fmt: skip
    remaining = preset.total_timesteps - model.num_timesteps
    if remaining <= 0:
        console.print(f"{run_dir} has already trained {model.num_timesteps} steps; nothing to do")
        return 0
    if resuming:
        console.print(
            f"resuming {run_dir} at iteration {model.iteration} "
            f"({model.num_timesteps} of {preset.total_timesteps} steps done)"
        )
    try:
        model.learn(
            remaining,
            progress_bar=not args.no_progress,
            reset_num_timesteps=not resuming,
            tb_log_name="ppo",
        )
    except KeyboardInterrupt:
        return _interrupted(run_dir)
    except OSError as err:
        if err.filename is None:
            raise
        # A write the file system refused mid-run (a full disk): what was committed
        # stays, and the person needs the command that continues once it is fixed.
        _report(f"{err.filename}: {err.strerror or err}; make room or fix that path")
        error_console.print(_committed(run_dir), markup=False, emoji=False, soft_wrap=True)
        return EXIT_USAGE
    log = RunLog(run_dir)
    if iif is not None:
        console.print(f"IIF dropped {_dropped_share(log, log.iterations())}")
    console.print(
        f"[bold green]done[/]: {model.num_timesteps} steps, {len(log.iterations())} iterations "
        f"recorded in {run_dir}\n"
        f"  inspect:     {_command('rlattr')} inspect {run_dir}\n"
        f"  TensorBoard: {_command('tensorboard')} --logdir {log.tb_dir}"
    )
    return 0


@contextlib.contextmanager
def _sb3_checks(preset: Preset) -> Iterator[None]:
    """Report SB3's own checks of a preset's values as the preset's error.

    SB3 checks some values with ``assert`` (``n_steps * n_envs > 1``, ``CnnPolicy`` only
    on images); only an assertion raised in SB3's code is taken as one: an assertion in
    rlattr is a bug and keeps its traceback.
    """
    try:
        yield
    except AssertionError as err:
        frame = err.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        module = frame.tb_frame.f_globals.get("__name__", "") if frame else ""
        if not module.startswith("stable_baselines3."):
            raise
        raise PresetError(
            f"preset {preset.name!r} cannot be trained as written: {err}; correct the preset"
        ) from err


def _intervention(args: argparse.Namespace, iif: Any, spaces_: tuple[Any, Any]) -> Any:
    """The ``--intervene`` configuration (IIF inside it when ``--iif`` is given), checked
    against the preset's spaces before anything trains; None without ``--intervene``."""
    if args.intervene is None:
        return None
    from rlattr.training.intervention import intervention_from_spec

    options: dict[str, Any] = {"with_iif": iif}
    if args.intervene_weight is not None:
        options["weight"] = args.intervene_weight
    if args.intervene_rule is not None:
        options["rule"] = args.intervene_rule
    budget = 0.05 if args.budget is None else args.budget
    if budget == _NO_BUDGET:
        budget = None
    with _user_input(f"--intervene {args.intervene}"):
        return intervention_from_spec(args.intervene, budget, *spaces_, **options)


def _iif_config(preset: Preset, args: argparse.Namespace) -> Any:
    """The preset's IIF settings with the ``--iif-*`` options on top, validated."""
    overrides = {name: getattr(args, f"iif_{name}") for name in IIF_CLI_FIELDS}
    overrides["memory_budget"] = args.memory_budget
    with _user_input("IIF settings (the --iif-* options over the preset's iif section)"):
        return preset.iif_config(**overrides)


def _check_resumable(run_dir: Path, preset: Preset, args: argparse.Namespace) -> None:
    """Refuse to resume a run with another preset or another filtering switch."""
    stored_config = RunLog(run_dir).meta.get("config", {})
    # With --intervene, IIF travels inside the intervention, which the model itself checks.
    if args.intervene is None and ("iif" in stored_config) != bool(args.iif):
        was = "with" if "iif" in stored_config else "without"
        raise PresetError(f"{run_dir} was trained {was} --iif; resume it the same way")
    stored = stored_config.get("preset", {})
    stored_cmp = {**stored, "total_timesteps": preset.total_timesteps}
    if stored_cmp != preset.to_dict():
        raise PresetError(
            f"{run_dir} was started with a different preset; resume it with the same "
            "preset file (only --timesteps may change)"
        )


def _interrupted(run_dir: Path) -> int:
    """After Ctrl-C: what is safe on disk and the exact command that continues."""
    error_console.print(
        f"interrupted: {_committed(run_dir)}", markup=False, emoji=False, soft_wrap=True
    )
    return EXIT_INTERRUPTED


def _committed(run_dir: Path) -> str:
    """What a stopped run kept on disk, and the exact command that continues it."""
    if not (run_dir / "run.json").exists():
        return "the run had not started; nothing to resume"
    log = RunLog(run_dir)
    committed = log.iterations()
    if committed:
        steps = log.iteration_meta(committed[-1])["info"].get("num_timesteps")
        done = f"iteration {committed[-1]} is the last committed ({steps} steps)"
    else:
        done = "no iteration was committed yet"
    return f"{done}; nothing committed is lost.\nresume with: {resume_command(log)}"


def resume_command(log: RunLog) -> str:
    """The ``rlattr train ... --resume`` command that continues the run in ``log``.

    Built from ``run.json`` (preset, seed, budget, IIF settings), so it matches what the
    resume check compares; IIF options are spelled out where they differ from the preset.
    """
    config = log.meta.get("config", {})
    preset = config.get("preset", {})
    name = preset.get("name", "PRESET")
    if name not in shipped_presets():
        name = f"{name}.yaml"  # a preset file: the run stores its contents, not its path
    words = [_command("rlattr"), "train", name, "--run-dir", str(log.path)]
    words += ["--seed", str(log.meta.get("seed", 0))]
    if "total_timesteps" in preset:
        words += ["--timesteps", str(preset["total_timesteps"])]
    if "iif" in config:
        words.append("--iif")
        words += _iif_options(config["iif"], preset.get("iif", {}))
    return shlex.join([*words, "--resume"])


def _iif_options(stored: dict[str, Any], preset_iif: dict[str, Any]) -> list[str]:
    """``--iif-*`` options for the stored IIF settings that differ from the preset's."""
    from rlattr.training.filters import IIF

    defaults = {f.name: f.default for f in dataclasses.fields(IIF)}
    words = []
    for name in IIF_CLI_FIELDS:
        if name in stored and stored[name] != {**defaults, **preset_iif}.get(name):
            words += ["--iif-" + name.replace("_", "-"), str(stored[name])]
    budget = stored.get("memory_budget", defaults["memory_budget"])
    if budget != {**defaults, **preset_iif}.get("memory_budget"):
        words += ["--memory-budget", "none" if budget is None else str(budget)]
    return words


def _command(name: str) -> str:
    """``name`` if it is on PATH, else its path beside this Python (an unactivated venv)."""
    if shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


# ---------------------------------------------------------------------- inspect
def _inspect(args: argparse.Namespace) -> int:
    log = RunLog(args.run)
    config = log.meta.get("config", {})
    preset = config.get("preset", {})
    report = log.verify()
    iterations = report.iterations
    table = Table(title=f"run {log.path}", show_header=False)
    from rlattr.training.rundir import run_summary

    for label, text in run_summary(log.meta):  # the preset, or what a Python run knows
        table.add_row(label, text)
    table.add_row("seed", str(log.meta.get("seed")))
    table.add_row("format", f"{log.meta['format']} v{log.meta['format_version']}")
    versions = log.meta.get("versions", {})
    table.add_row("versions", ", ".join(f"{k} {v}" for k, v in versions.items()))
    table.add_row("IIF", _describe_iif(config.get("iif")))
    if config.get("iif") is not None:
        table.add_row("dropped", _dropped_share(log, iterations))
    span = f"{iterations[0]}..{iterations[-1]}" if iterations else "none"
    table.add_row("iterations committed", f"{len(iterations)} ({span})")
    if report.gaps:
        table.add_row("gaps", f"[red]{', '.join(map(str, report.gaps))} not committed[/]")
    table.add_row("checkpoints", str(len(report.checkpoints)))
    last_meta = _last_meta(log, iterations)
    if last_meta is not None:
        table.add_row(
            "records / iteration",
            f"{last_meta['n_envs'] * last_meta['n_steps']} ({last_meta['n_envs']} envs)",
        )
        from rlattr.record.plan import stored_optimizer_steps

        table.add_row("optimiser steps (last)", str(stored_optimizer_steps(last_meta["plan"])))
        table.add_row("timesteps (last)", str(last_meta["info"].get("num_timesteps")))
    table.add_row("stored scores", _describe_scores(log, iterations))
    size = sum(p.stat().st_size for p in log.path.rglob("*") if p.is_file())
    table.add_row("size on disk", f"{size / 2**20:.2f} MiB")
    table.add_row("state", _run_state(log, report, preset, last_meta))
    status = (
        "[green]all checksums match[/]"
        if report.ok
        else f"[red]{len(report.problems)} problem(s)[/]"
    )
    table.add_row("verification", status)
    console.print(table)
    for problem in report.problems:
        console.print(f"  {problem}", style="red", soft_wrap=True, markup=False, emoji=False)
    if report.leftovers or not _finished(preset, last_meta):
        console.print(
            f"resume with: {resume_command(log)}", soft_wrap=True, markup=False, emoji=False
        )
    return 0 if report.ok else 1


def _last_meta(log: RunLog, iterations: list[int]) -> dict[str, Any] | None:
    """The newest readable ``iteration.json`` (a damaged one is a verify problem)."""
    for k in reversed(iterations):
        with contextlib.suppress(RlattrError):
            return log.iteration_meta(k)
    return None


def _finished(preset: dict[str, Any], last_meta: dict[str, Any] | None) -> bool:
    """Whether the run reached its preset's budget (True when it has no preset budget)."""
    total = preset.get("total_timesteps")
    if total is None:
        return True  # trained through the Python API: the budget is not recorded
    done = (last_meta or {}).get("info", {}).get("num_timesteps", 0)
    return done >= total


def _run_state(
    log: RunLog, report: Any, preset: dict[str, Any], last_meta: dict[str, Any] | None
) -> str:
    """``complete`` or why the run is not: interrupted mid-iteration, or short of budget."""
    total = preset.get("total_timesteps")
    done = (last_meta or {}).get("info", {}).get("num_timesteps", 0)
    if report.leftovers:
        return (
            f"[yellow]interrupted[/]: {len(report.leftovers)} uncommitted leftover(s) "
            f"({done} of {total or '?'} steps committed; resume discards them)"
        )
    if not _finished(preset, last_meta):
        return f"[yellow]stopped early[/]: {done} of {total} steps"
    return "complete" if total is not None else f"{done} steps (budget not recorded)"


def _dropped_share(log: RunLog, iterations: list[int]) -> str:
    """The share of the *buffer* a filter dropped (p of ``neg_bottom`` is a share of the
    negatively scored records, so the two differ: p = 0.5 drops about a quarter on Acrobot)."""
    shares = []
    for k in iterations:
        try:
            keep = log.load_plan(k).keep_mask
        except RlattrError:  # a damaged iteration: inspect reports it elsewhere
            continue
        shares.append(float((~keep).double().mean()))
    if not shares:
        return "nothing yet (no committed iteration)"
    filtered = sum(share > 0 for share in shares)
    return (
        f"{sum(shares) / len(shares):.1%} of the buffer on average (max {max(shares):.1%}); "
        f"{filtered} of {len(shares)} iterations filtered"
    )


def _describe_iif(stored: dict[str, Any] | None) -> str:
    if stored is None:
        return "off (plain PPO updates)"
    shown = ("rule", "fraction", "scorer", "minibatching", "params", "warmup_iterations")
    return ", ".join(f"{key} {stored[key]}" for key in shown if key in stored)


def _describe_scores(log: RunLog, iterations: list[int]) -> str:
    """Each stored score name with the iterations it covers."""
    by_name: dict[str, list[int]] = {}
    for k in iterations:
        for name in log.score_names(k):
            by_name.setdefault(name, []).append(k)
    if not by_name:
        return "none (rlattr attribute stores them)"
    return "\n".join(
        f"{name}: {len(ks)} iteration(s) ({ks[0]}..{ks[-1]})" for name, ks in by_name.items()
    )


# ---------------------------------------------------------------------- replay
def _replay(args: argparse.Namespace) -> int:
    from rlattr.record.checkpoint import capture_checkpoint
    from rlattr.record.replay import (
        IterationData,
        build_policy,
        load_iteration,
        replay,
        state_matches,
    )

    log = RunLog(args.run)
    iterations = args.iteration or log.iterations()
    if not iterations:
        raise UsageError(f"{log.path} holds no committed iteration to replay")
    for k in iterations:
        log.iteration_meta(k)  # every requested iteration exists, before any replay
    policy = build_policy(log, args.device)
    failures = 0
    for k in iterations:
        data = load_iteration(log, k, args.device)
        replay(data, policy)
        # A sparse θ_{k+1} (format 2), or one rebuilt and cached, is itself made by this
        # very replay, so comparing with it would check nothing: replay on, on the logged
        # data, up to the next checkpoint training wrote, and compare there.
        end = k + 1
        while log.has_checkpoint(end) and not log.is_logged_checkpoint(end):
            tensors, _ = capture_checkpoint(policy)
            chained = IterationData(
                end,
                log.load_records(end, args.device),
                log.load_plan(end, args.device),
                tensors,
                log.checkpoint_meta(end),
            )
            replay(chained, policy)
            end += 1
        if not log.has_checkpoint(end):
            console.print(f"iteration {k}: replayed (no later checkpoint kept to compare with)")
            continue
        expected, _ = log.load_checkpoint(end)
        mismatched = state_matches(policy, expected)
        through = "" if end == k + 1 else f" (replayed on through iteration {end - 1})"
        if mismatched:
            failures += 1
            console.print(
                f"[red]iteration {k}: {len(mismatched)} tensors differ from the logged "
                f"θ_{end}{through}: {mismatched}[/]"
            )
        else:
            console.print(f"iteration {k}: [green]bit-identical[/] to the logged θ_{end}{through}")
    return 1 if failures else 0


# ---------------------------------------------------------------------- targets
def _load_target(spec: TargetSpec, log: RunLog) -> Any:
    """The target of a parsed spec; an action file is read and checked against the run's
    observation and action spaces before anything is scored."""
    from rlattr.scoring.targets import ActionTarget, ReturnTarget

    if spec.kind == "return":
        return ReturnTarget(advantage=spec.argument)
    path = Path(spec.argument)
    tensors = _read_action_file(path)
    missing = {"observations", "actions"} - tensors.keys()
    if missing:
        raise UsageError(
            f"{path} lacks {sorted(missing)}: an action target file holds observations "
            "[M, *obs_shape] and actions [M, ...]"
        )
    with _user_input(f"action target {path}"):
        target = ActionTarget(tensors["observations"].float(), tensors["actions"])
        target.check_spaces(*_run_spaces(log))
    return target


def _read_action_file(path: Path) -> dict[str, torch.Tensor]:
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


def _run_spaces(log: RunLog) -> tuple[Any, Any]:
    from rlattr.record.serialize import space_from_json

    spec = log.meta["policy"]
    return space_from_json(spec["observation_space"]), space_from_json(spec["action_space"])


# ---------------------------------------------------------------------- attribute
def _attribute(args: argparse.Namespace) -> int:
    from rlattr.scoring.attribute import attribute, score_name

    budget = _memory_budget(args, args.method == "metagrad", "with --method metagrad")
    log = RunLog(args.run)
    log.iteration_meta(args.iteration)  # the iteration exists, before the target is read
    target = _load_target(args.target, log)
    start = time.perf_counter()
    scores = attribute(
        log, args.iteration, target, args.method, args.params, args.backend, args.device,
        store=not args.no_store,
        memory_budget=budget,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    records = log.load_records(args.iteration)
    name = score_name(args.method, target, args.params)
    stored = (
        "not stored (--no-store)"
        if args.no_store
        else f"stored as {name!r} in {log.iteration_dir(args.iteration) / 'scores'}"
    )
    console.print(
        f"{args.method} scores of iteration {args.iteration} on the {target.name} target: "
        f"{len(scores)} records in {seconds:.2f} s, {float((scores < 0).float().mean()):.1%} "
        f"negative; {stored}",
        soft_wrap=True,
    )
    if args.out is not None:
        from rlattr.analysis.tables import scores_table, write_table

        table = scores_table(log, [args.iteration])
        table[f"score:{name}"] = scores.cpu().numpy()  # also when --no-store
        args.out.parent.mkdir(parents=True, exist_ok=True)  # as every other --out does
        console.print(f"wrote {write_table(table, args.out)}", soft_wrap=True)
    order = torch.argsort(scores, descending=True)
    for title, picks in (
        ("most helpful", order[: args.top]),
        ("most harmful", order.flip(0)[: args.top]),
    ):
        _print_records(
            f"{title} records",
            [(args.iteration, records, i, float(scores[i])) for i in picks.tolist()],
        )
    return 0


def _print_records(title: str, rows: list[tuple[int, Any, int, float]]) -> None:
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


# ---------------------------------------------------------------------- fidelity
@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    """A rich progress display on stderr (stdout stays the report), or None."""
    if not enabled:
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=error_console, transient=True) as progress:
        yield progress


def _fidelity(args: argparse.Namespace) -> int:
    from rlattr.analysis.fidelity import fidelity

    budget = _memory_budget(
        args, args.method in ("metagrad", "all"), "with --method metagrad or all"
    )
    log = RunLog(args.run)
    log.iteration_meta(args.iteration)
    target = _load_target(args.target, log)
    methods = ["snapshot", "tracin", "metagrad"] if args.method == "all" else [args.method]
    table = Table(title=f"fidelity, iteration {args.iteration}, {target.name} target")
    for column in ("method", "subsets", "LDS", "Pearson", "sign", "ceiling", "LDS avg-order"):
        table.add_column(column, no_wrap=True)
    with _progress(not args.no_progress) as progress:
        task = progress.add_task("fidelity", total=len(methods)) if progress else None
        for number, method in enumerate(methods, 1):
            if progress is not None:
                progress.update(
                    task,
                    description=f"[{number}/{len(methods)}] {method}: scoring, then "
                    f"{args.subsets} leave-subset-out replays × {args.orders} order(s)",
                )
            report = fidelity(
                log, args.iteration, target, method, n_subsets=args.subsets,
                fraction=args.fraction, orders=args.orders, seed=args.seed, device=args.device,
                memory_budget=budget,
            )  # fmt: skip
            table.add_row(
                method, f"{report.n_subsets} × {report.fraction:g}", f"{report.lds:.3f}",
                f"{report.pearson:.3f}", f"{report.sign_agreement:.2f}",
                f"{report.ceiling:.3f}", f"{report.lds_mean_order:.3f}",
            )  # fmt: skip
            if progress is not None:
                progress.advance(task)
    console.print(table)
    return 0


# ---------------------------------------------------------------------- stages
# Above this ‖e_T‖/‖δ‖ the CLI flags an SO estimate as unreliable.
SO_GROWTH_WARNING = 100.0


def _check_stages(log: RunLog, spec: str, option: str) -> None:
    """The run records every iteration from 0 and the stages lie within it.

    Listing the run's iterations is cheap; loading them (what ``stage_effects`` does
    first) is not, so the spec is checked here.
    """
    from rlattr.analysis.stages import parse_stages

    recorded = log.iterations()
    if not recorded or recorded != list(range(len(recorded))):
        raise UsageError(
            f"stage effects need every iteration recorded from 0; {log.path} holds "
            f"{len(recorded)} iteration(s) ({', '.join(map(str, recorded[:4]))}"
            f"{'…' if len(recorded) > 4 else ''}): train with record_every=1 and no keep_last"
        )
    n = len(recorded)
    try:
        parse_stages(spec, n)
    except ValueError as err:
        raise UsageError(
            f"{option} {spec}: {err}; this run has iterations 0..{n - 1}, so stages a:b "
            f"need 0 <= a < b <= {n} (or give a count from 1 to {n})"
        ) from err


def _stages(args: argparse.Namespace) -> int:
    from rlattr.analysis.stages import stage_effects

    log = RunLog(args.run)
    _check_stages(log, args.records or args.stages, "--records" if args.records else "--stages")
    plain_return = args.behavior.text == "return"
    behavior = None if plain_return else _load_target(args.behavior, log)
    start = time.perf_counter()
    if args.records:
        return _stage_records(log, args, behavior)
    with _progress(not args.no_progress) as progress:
        if progress is not None:
            progress.add_task(
                f"stage effects over {len(log.iterations())} iterations"
                + (" (with ground-truth replays)" if args.ground_truth else ""),
                total=None,
            )
        effects = stage_effects(
            log, args.stages, behavior, second_order=not args.first_order_only,
            ground_truth=args.ground_truth, optimizer_state=args.optimizer_state,
            device=args.device,
        )  # fmt: skip
    table = Table(title=f"stage effects on the {args.behavior.text} behaviour of the final policy")
    for column in ("stage", "FO", "SO", "SO ‖e_T‖/‖δ‖", "ground truth"):
        table.add_column(column, no_wrap=True)
    for effect in effects:
        so = "–" if effect.so is None else f"{effect.so:+.4e}"
        growth = "–" if effect.so_growth is None else f"{effect.so_growth:.3g}"
        truth = "–" if effect.ground_truth is None else f"{effect.ground_truth:+.4e}"
        table.add_row(str(effect.stage), f"{effect.fo:+.4e}", so, growth, truth)
    console.print(table)
    if any((e.so_growth or 0.0) > SO_GROWTH_WARNING for e in effects):
        console.print(
            f"[yellow]SO stretched a stage's displacement more than {SO_GROWTH_WARNING:g}×: "
            "the linearised update map is expanding there and that SO value is unreliable "
            "(see rlattr.analysis.stages.StageEffect).[/yellow]"
        )
    from rlattr.analysis.plots import save_figure, stage_effects_figure

    png = log.path / "reports" / "stage_effects.png"
    figure = stage_effects_figure(effects, f"stage effects on the {args.behavior.text} behaviour")
    save_figure(figure, png, log.tb_dir / "reports", tag="stage_effects")
    console.print(f"{time.perf_counter() - start:.1f} s; chart: {png} (and in TensorBoard)")
    return 0


def _stage_records(log: RunLog, args: argparse.Namespace, behavior: Any) -> int:
    from rlattr.analysis.stages import stage_record_scores

    with _progress(not args.no_progress) as progress:
        if progress is not None:
            progress.add_task(f"splitting stage {args.records} over its records", total=None)
        split = stage_record_scores(
            log, args.records, behavior, optimizer_state=args.optimizer_state,
            device=args.device,
        )  # fmt: skip
    shares = [(k, i, float(v)) for k, values in split.scores.items() for i, v in enumerate(values)]
    total = sum(v for _, _, v in shares)
    console.print(
        f"stage {split.stage}: FO effect {split.estimate:+.4e} on the {args.behavior.text} "
        f"behaviour = {len(shares)} record shares (sum {total:+.4e}) + remainder "
        f"{split.remainder:+.4e} (weight decay, inherited momentum)"
    )
    records = {k: log.load_records(k) for k in split.scores}
    shares.sort(key=lambda row: row[2], reverse=True)
    for title, picked in (
        ("records that raised the behaviour most", shares[: args.top]),
        ("records that lowered it most", shares[::-1][: args.top]),
    ):
        _print_records(title, [(k, records[k], i, v) for k, i, v in picked])
    return 0


def _import_project_envs() -> None:
    # Registers rlattr's own environments (rlattr/...), so presets and --env can name them.
    import rlattr.envs  # noqa: F401


# ---------------------------------------------------------------------- parser
def _literal_choices(hint: Any) -> tuple[str, ...] | None:
    """The values of a ``Literal`` (or ``Literal | None``) annotation, else None."""
    if typing.get_origin(hint) is typing.Literal:
        return tuple(typing.get_args(hint))
    members = [_literal_choices(arg) for arg in typing.get_args(hint) if arg is not type(None)]
    if members and all(members):
        return tuple(value for member in members for value in member or ())
    return None


# Range checks of IIF options at parse time (IIF itself checks how they combine).
_IIF_TYPES: dict[str, Callable[[str], Any]] = {
    "fraction": _share(open_low=False),
    "like_fraction": _share(open_low=False),
    "greedy_blocks": _at_least(1),
    "warmup_iterations": _at_least(0),
    "min_kept": _at_least(1),
}


def _add_iif_options(train: argparse.ArgumentParser) -> None:
    """``--iif-<field>`` for each of ``IIF_CLI_FIELDS``: help, default and choices come
    from the ``IIF`` dataclass (its field metadata and ``Literal`` annotations)."""
    from rlattr.training.filters import IIF

    group = train.add_argument_group(
        "iterative influence-based filtering",
        "Filtering is on with --iif; each --iif-* option overrides the preset's iif "
        "section, whose unset values take the default shown.",
    )
    group.add_argument("--iif", action="store_true", help="filter records before each update")
    hints = typing.get_type_hints(IIF)
    for field in dataclasses.fields(IIF):
        if field.name not in IIF_CLI_FIELDS:
            continue
        choices = _literal_choices(hints[field.name])
        kind = _IIF_TYPES.get(field.name, int if hints[field.name] is int else str)
        shown = "none" if field.default is None else field.default
        group.add_argument(
            "--iif-" + field.name.replace("_", "-"),
            type=None if choices else kind,
            choices=[c for c in choices if c is not None] if choices else None,
            help=f"{field.metadata['help']} (default: the preset's, else {shown})",
        )
    _add_memory_budget(group, "with --iif-scorer metagrad")


def _add_train(sub: Any) -> None:
    train = sub.add_parser(
        "train", help="train a preset with recording on", formatter_class=_HelpFormatter
    )
    train.add_argument("preset", help=f"YAML file, or a shipped preset: {_preset_names()}")
    train.add_argument(
        "--timesteps", type=_at_least(1), help="training budget (default: the preset's)"
    )
    train.add_argument("--seed", type=_at_least(0), default=0, help="seed of the whole run")
    train.add_argument(
        "--run-dir", type=output_folder, help="run directory (default: runs/<preset>-s<seed>)"
    )
    train.add_argument("--device", type=_device, default="auto", help="cpu, cuda[:N], mps, auto")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_iif_options(train)
    _add_intervention_options(train)
    train.set_defaults(func=_train)


# ``--budget none``: no limit per iteration (e.g. the matching rule: every matching record).
_NO_BUDGET = "none"


def _budget(text: str) -> float | int | str:
    """A count (an integer), a fraction of the buffer in [0, 1), or ``none`` (no limit)."""
    if text.strip().lower() == _NO_BUDGET:
        return _NO_BUDGET
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


def _add_intervention_options(train: argparse.ArgumentParser) -> None:
    from rlattr.training.intervention import INTERVENTION_RULES, Intervention

    def help_of(name: str) -> str:
        return str(Intervention.__dataclass_fields__[name].metadata.get("help", ""))

    group = train.add_argument_group("targeted intervention (rlattr.Intervention)")
    group.add_argument(
        "--intervene", metavar="action:FILE",
        help="drop (or down-weight) the records that push most towards this unwanted "
        "behaviour: the (observation, action) pairs in FILE (.npz or .safetensors)",
    )  # fmt: skip
    group.add_argument(
        "--budget", type=_budget, default=None,
        help=f"{help_of('budget')}, or none for no limit (default: 0.05 of the buffer)",
    )  # fmt: skip
    group.add_argument(
        "--intervene-weight", type=float, default=None,
        help=f"{help_of('weight')} (default: 0, drop)",
    )  # fmt: skip
    group.add_argument(
        "--intervene-rule", choices=INTERVENTION_RULES, default=None,
        help=f"{help_of('rule')} (default: top)",
    )  # fmt: skip


def _add_memory_budget(parser: Any, applies: str) -> None:
    """``--memory-budget``: the metagradient's graph memory (``metagradient_scores``)."""
    from rlattr.scoring.graph_memory import DEFAULT_MEMORY_BUDGET

    parser.add_argument(
        "--memory-budget", type=memory_size, metavar="SIZE",
        help=f"{applies}: graph memory the metagradient may hold, e.g. 256MiB or 1GiB "
        "(segments of the update are recomputed to stay within it; same scores), or none "
        f"(one graph of the whole update: fastest) (default: "
        f"{format_memory_size(DEFAULT_MEMORY_BUDGET)})",
    )  # fmt: skip


def _memory_budget(args: argparse.Namespace, applies: bool, needs: str) -> Any:
    """``--memory-budget`` as given, else the default; refused where no metagradient runs."""
    from rlattr.scoring.graph_memory import DEFAULT_MEMORY_BUDGET

    if args.memory_budget is None:
        return DEFAULT_MEMORY_BUDGET
    if not applies:
        raise UsageError(f"--memory-budget only applies {needs}: add it, or drop --memory-budget")
    return args.memory_budget


def _preset_names() -> str:
    try:
        return ", ".join(sorted(shipped_presets()))
    except (ModuleNotFoundError, OSError):  # a source tree without the package data
        return "see agents/"


def _add_run_commands(sub: Any) -> None:
    inspect_ = sub.add_parser(
        "inspect",
        help="summarise and verify a run directory (exit status 1 if a problem is found)",
        formatter_class=_HelpFormatter,
    )
    inspect_.add_argument("run", type=run_directory, help="run directory")
    inspect_.set_defaults(func=_inspect)

    replay = sub.add_parser(
        "replay", help="replay logged iterations and check bit-exactness",
        formatter_class=_HelpFormatter,
    )  # fmt: skip
    replay.add_argument("run", type=run_directory, help="run directory")
    replay.add_argument(
        "--iteration", type=_at_least(0), action="append",
        help="iteration to replay; repeatable (default: all)",
    )  # fmt: skip
    replay.add_argument("--device", type=_compute_device, default="cpu", help="where to replay")
    replay.set_defaults(func=_replay)


_TARGET_HELP = "return (GAE advantages), return:mc (Monte-Carlo) or action:FILE (.npz, safetensors)"


def _add_attribute(sub: Any) -> None:
    attribute = sub.add_parser(
        "attribute", help="score the records of a logged iteration",
        formatter_class=_HelpFormatter,
    )  # fmt: skip
    attribute.add_argument("run", type=run_directory, help="run directory")
    attribute.add_argument(
        "--iteration", type=_at_least(0), required=True, help="a committed iteration"
    )
    attribute.add_argument(
        "--target", type=_target_spec, default="return", help=f"what to explain: {_TARGET_HELP}"
    )
    attribute.add_argument(
        "--method", default="snapshot", choices=["snapshot", "tracin", "metagrad"],
        help="snapshot (θ_k only), tracin (over the replayed update), metagrad (exact)",
    )  # fmt: skip
    attribute.add_argument(
        "--params", default="policy", choices=["policy", "value", "all"],
        help="parameters whose gradients score the records",
    )  # fmt: skip
    attribute.add_argument(
        "--backend", default="auto", choices=["auto", "hooks", "jvp", "vmap", "naive"],
        help="how per-record gradient products are computed",
    )  # fmt: skip
    attribute.add_argument("--top", type=_at_least(0), default=5, help="records shown at each end")
    attribute.add_argument(
        "--no-store", action="store_true", help="do not store the scores in the run"
    )
    attribute.add_argument("--device", type=_compute_device, default="cpu", help="where to score")
    _add_memory_budget(attribute, "with --method metagrad")
    attribute.add_argument(
        "--out", type=output_file(".csv", ".parquet"), metavar="FILE.csv|FILE.parquet",
        help="also write one row per record (env, step, episode, observation, action, reward, "
        "advantages, scores, kept)",
    )  # fmt: skip
    attribute.set_defaults(func=_attribute)


def _add_fidelity(sub: Any) -> None:
    fidelity = sub.add_parser(
        "fidelity", help="check scores against leave-subset-out replay",
        formatter_class=_HelpFormatter,
    )  # fmt: skip
    fidelity.add_argument("run", type=run_directory, help="run directory")
    fidelity.add_argument(
        "--iteration", type=_at_least(0), required=True, help="a committed iteration"
    )
    fidelity.add_argument(
        "--target", type=_target_spec, default="return", help=f"what to explain: {_TARGET_HELP}"
    )
    fidelity.add_argument(
        "--method", default="all", choices=["snapshot", "tracin", "metagrad", "all"],
        help="which scores to check",
    )  # fmt: skip
    fidelity.add_argument(
        "--subsets", type=_at_least(2), default=64, help="random subsets left out, one each"
    )
    fidelity.add_argument(
        "--fraction", type=_share(open_low=True), default=0.1,
        help="share of the records each subset leaves out",
    )  # fmt: skip
    fidelity.add_argument(
        "--orders", type=_at_least(1), default=2,
        help="minibatch orders replayed; >= 2 also reports the noise ceiling",
    )  # fmt: skip
    fidelity.add_argument("--seed", type=_at_least(0), default=0, help="seed of the subsets")
    fidelity.add_argument("--device", type=_compute_device, default="cpu", help="where to replay")
    _add_memory_budget(fidelity, "with --method metagrad or all")
    fidelity.add_argument("--no-progress", action="store_true", help="no progress display")
    fidelity.set_defaults(func=_fidelity)


def _add_stages(sub: Any) -> None:
    stages = sub.add_parser(
        "stages", help="which training stages account for a behaviour",
        formatter_class=_HelpFormatter,
    )  # fmt: skip
    stages.add_argument("run", type=run_directory, help="run directory (every iteration recorded)")
    stages.add_argument(
        "--stages", type=_stage_spec, default="4",
        help="K equal spans, or a:b,c:d (iterations a to b-1)",
    )  # fmt: skip
    stages.add_argument(
        "--behavior", type=_target_spec, default="return",
        help="return (the return target on the last buffer), return:mc or action:FILE",
    )  # fmt: skip
    stages.add_argument(
        "--first-order-only", action="store_true", help="skip the second-order estimate"
    )
    stages.add_argument(
        "--ground-truth", action="store_true", help="also replay without each stage"
    )
    stages.add_argument(
        "--optimizer-state", default="rollback", choices=["rollback", "carry"],
        help="optimiser state after a removed stage: rolled back, or carried on",
    )  # fmt: skip
    stages.add_argument(
        "--records", type=_stage_span, metavar="A:B",
        help="split stage A:B's first-order effect over its records instead",
    )  # fmt: skip
    stages.add_argument("--top", type=_at_least(0), default=10, help="records shown with --records")
    stages.add_argument("--device", type=_compute_device, default="cpu", help="where to compute")
    stages.add_argument("--no-progress", action="store_true", help="no progress display")
    stages.set_defaults(func=_stages)


def _version() -> str:
    from rlattr.versions import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``rlattr`` argument parser (every option with help and its default)."""
    parser = _Parser(
        prog="rlattr",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Exit status: 0 done, 1 a check failed, 2 bad input, 130 interrupted.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rlattr {_version()}")
    parser.add_argument(
        "--threads", type=_threads, default=1,
        help="torch CPU threads; small policies run fastest on one (two threads made a "
        "FrozenLake replay 4.6× slower on a busy 2-core machine), CNNs on big batches may "
        "gain from more",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_run_commands(sub)
    _add_attribute(sub)
    _add_fidelity(sub)
    _add_stages(sub)
    add_diagnose(sub, _HelpFormatter, _at_least(1))
    add_formation(sub, _HelpFormatter, _at_least(1), _target_spec, _load_target)
    add_intervene(sub, _HelpFormatter, _at_least(1), _compute_device, _share(open_low=True))
    add_sweep_parser(sub, formatter_class=_HelpFormatter)
    add_compare_parser(sub, formatter_class=_HelpFormatter)
    return parser


def _report(message: str) -> None:
    # One line: no markup (messages hold brackets), no emoji codes (":100:" in a stage),
    # no wrapping (messages are grep-able), and a stray newline from a library flattened.
    message = " ".join(line.strip() for line in message.splitlines())
    error_console.print(
        f"error: {message}", style="red", markup=False, emoji=False, highlight=False, soft_wrap=True
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rlattr`` command; returns the exit status (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
        torch.set_num_threads(args.threads)
        return args.func(args)
    except RlattrError as err:
        _report(str(err))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _report("interrupted")
        return EXIT_INTERRUPTED
    except OSError as err:
        # A path the file system refused (read-only, full, not a folder, /proc): the
        # person can act on it; an OSError without a path is not theirs to fix.
        if err.filename is None:
            raise
        _report(f"{err.filename}: {err.strerror or err}; check that path, or choose another")
        return EXIT_USAGE
    except SystemExit as exit_:  # --help and --version: printed, and done
        return exit_.code if isinstance(exit_.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
