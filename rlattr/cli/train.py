"""``rlattr train PRESET``: train a preset with recording on (IIF and interventions as asked).

The options become ``rlattr.run.RunOptions``; ``rlattr.run.assemble`` builds the model and
checks everything that can be checked before a byte is written. Ctrl-C or a refused write
(a full disk) prints the last committed iteration and the command that resumes the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlattr.argtypes import at_least, device
from rlattr.cli import console as out
from rlattr.cli.args import (
    NO_BUDGET,
    HelpFormatter,
    add_allow_module,
    add_memory_budget,
    allowed_modules,
    budget_option,
    literal_choices,
    preset_names,
    share,
)
from rlattr.cli.paths import output_folder
from rlattr.record.runlog import RunLog
from rlattr.run import (
    IIF_OPTION_FIELDS,
    InterventionOptions,
    RunOptions,
    assemble,
    command_path,
    committed_summary,
)
from rlattr.run.presets import Preset
from rlattr.training.nonfinite import NONFINITE_MODES


def add(sub: Any) -> None:
    """The ``train`` subcommand."""
    train = sub.add_parser(
        "train", help="train a preset with recording on", formatter_class=HelpFormatter
    )
    train.add_argument("preset", help=f"YAML file, or a shipped preset: {preset_names()}")
    train.add_argument(
        "--timesteps", type=at_least(1), help="training budget (default: the preset's)"
    )
    train.add_argument("--seed", type=at_least(0), default=0, help="seed of the whole run")
    train.add_argument(
        "--run-dir", type=output_folder, help="run directory (default: runs/<preset>-s<seed>)"
    )
    train.add_argument("--device", type=device, default="auto", help="cpu, cuda[:N], mps, auto")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--nonfinite", choices=NONFINITE_MODES, default=None,
        help="what a NaN or inf reward, observation, advantage or loss does: error stops "
        "before its iteration is committed, skip-iteration discards that rollout, warn trains "
        "on it (default: the resumed run's, else error)",
    )  # fmt: skip
    add_allow_module(train)
    _add_iif_options(train)
    _add_intervention_options(train)
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` say; returns the exit status."""
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
        raise out.UsageError(f"{given[0]} only applies with --intervene action:FILE")
    preset = Preset.load(args.preset, allow_modules=allowed_modules(args))
    run_dir = Path(args.run_dir or f"runs/{preset.name}-s{args.seed}")
    if args.resume and not (run_dir / "run.json").exists():
        out.console.print(f"[yellow]{run_dir} holds no run yet; starting a new one[/]")
    options = RunOptions(
        seed=args.seed,
        device=args.device,
        run_dir=run_dir,
        resume=args.resume,
        timesteps=args.timesteps,
        iif=args.iif,
        iif_overrides={name: getattr(args, f"iif_{name}") for name in IIF_OPTION_FIELDS},
        memory_budget=args.memory_budget,
        intervention=_intervention_options(args),
        nonfinite=args.nonfinite,
    )
    assembled = assemble(preset, options)
    model, preset = assembled.model, assembled.preset
    if assembled.rounded_from is not None:
        rollouts = preset.total_timesteps // (model.n_steps * model.n_envs)
        out.console.print(
            f"budget rounded up to {preset.total_timesteps} steps ({rollouts} rollouts)"
        )
    _describe_filters(model)
    if assembled.remaining <= 0:
        out.console.print(
            f"{run_dir} has already trained {model.num_timesteps} steps; nothing to do"
        )
        return out.EXIT_OK
    if assembled.resuming:
        out.console.print(
            f"resuming {run_dir} at iteration {model.iteration} "
            f"({model.num_timesteps} of {preset.total_timesteps} steps done)"
        )
    try:
        model.learn(
            assembled.remaining,
            progress_bar=not args.no_progress,
            reset_num_timesteps=not assembled.resuming,
            tb_log_name="ppo",
        )
    except KeyboardInterrupt:
        out.error_console.print(
            f"interrupted: {committed_summary(run_dir)}", markup=False, emoji=False, soft_wrap=True
        )
        return out.EXIT_INTERRUPTED
    except OSError as err:
        if err.filename is None:
            raise
        # A write the file system refused mid-run (a full disk): what was committed
        # stays, and the person needs the command that continues once it is fixed.
        out.report(f"{err.filename}: {err.strerror or err}; make room or fix that path")
        out.error_console.print(
            committed_summary(run_dir), markup=False, emoji=False, soft_wrap=True
        )
        return out.EXIT_USAGE
    log = RunLog(run_dir)
    if model.iif is not None:
        from rlattr.cli.inspect import dropped_share

        out.console.print(f"IIF dropped {dropped_share(log, log.iterations())}")
    out.console.print(
        f"[bold green]done[/]: {model.num_timesteps} steps, {len(log.iterations())} iterations "
        f"recorded in {run_dir}\n"
        f"  inspect:     {command_path('rlattr')} inspect {run_dir}\n"
        f"  TensorBoard: {command_path('tensorboard')} --logdir {log.tb_dir}"
    )
    return out.EXIT_OK


def _intervention_options(args: argparse.Namespace) -> InterventionOptions | None:
    if args.intervene is None:
        return None
    budget = 0.05 if args.budget is None else args.budget
    return InterventionOptions(
        spec=args.intervene,
        budget=None if budget == NO_BUDGET else budget,
        weight=args.intervene_weight,
        rule=args.intervene_rule,
    )


def _describe_filters(model: Any) -> None:
    """One line each for IIF and an intervention, as the model will apply them."""
    intervention = getattr(model, "intervention", None)
    iif = model.iif if intervention is None else intervention.with_iif
    if iif is not None:
        out.console.print(
            f"IIF on: rule {iif.rule}, fraction {iif.fraction:g}, minibatches {iif.minibatching}"
        )
    if intervention is not None:
        budget = "none" if intervention.budget is None else intervention.budget
        out.console.print(
            f"intervention on: {intervention.rule}, budget {budget}, weight "
            f"{intervention.weight:g}" + (" (with IIF)" if iif is not None else "")
        )


# Range checks of IIF options at parse time (IIF itself checks how they combine).
_IIF_TYPES: dict[str, Callable[[str], Any]] = {
    "fraction": share(open_low=False),
    "like_fraction": share(open_low=False),
    "greedy_blocks": at_least(1),
    "warmup_iterations": at_least(0),
    "min_kept": at_least(1),
}


def _add_iif_options(train: argparse.ArgumentParser) -> None:
    """``--iif-<field>`` for each of ``IIF_OPTION_FIELDS``: help, default and choices come
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
        if field.name not in IIF_OPTION_FIELDS:
            continue
        choices = literal_choices(hints[field.name])
        kind = _IIF_TYPES.get(field.name, int if hints[field.name] is int else str)
        shown = "none" if field.default is None else field.default
        group.add_argument(
            "--iif-" + field.name.replace("_", "-"),
            type=None if choices else kind,
            choices=[c for c in choices if c is not None] if choices else None,
            help=f"{field.metadata['help']} (default: the preset's, else {shown})",
        )
    add_memory_budget(group, "with --iif-scorer metagrad")


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
        "--budget", type=budget_option, default=None,
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
