"""Assembling a run: a preset and the user's options become a ready ``AttributedPPO``.

The one place that builds a model from a preset (``rlattr train``, ``rlattr compare`` and
``rlattr sweep`` trials, and the experiments all come through here): the budget rounded to
whole rollouts, the resume checks, IIF and intervention configured against the preset's
own environment, SB3's own checks reported as the preset's error. Options flow one way:
command line → ``RunOptions`` → ``assemble`` → training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlattr.errors import PresetError, RlattrError
from rlattr.record.runlog import Retention, RunLog
from rlattr.run.presets import Preset, shipped_presets

#: IIF settings a run may override on top of its preset's ``iif`` section (the command
#: line offers each as ``--iif-<field>``; ``target`` is Python-only, ``seed`` the preset's).
IIF_OPTION_FIELDS = (
    "rule", "fraction", "like", "like_fraction", "scorer", "greedy_blocks", "minibatching",
    "params", "warmup_iterations", "min_kept",
)  # fmt: skip


class RunOptionsError(RlattrError, ValueError):
    """Options that cannot assemble a run (they contradict each other or the run on disk)."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class InterventionOptions:
    """A targeted intervention as the user names it (``rlattr train --intervene``)."""

    spec: str = field(metadata=_help("action:FILE, the unwanted (observation, action) pairs"))
    budget: float | int | None = field(
        default=0.05, metadata=_help("records dropped per iteration: a fraction, a count, None")
    )
    weight: float | None = field(default=None, metadata=_help("weight of the picked records"))
    rule: str | None = field(default=None, metadata=_help("how records are picked"))


@dataclass(frozen=True)
class RunOptions:
    """Everything a run is assembled from, besides its preset.

    Validated on construction: a contradiction is a ``RunOptionsError`` naming both sides.
    """

    seed: int = field(default=0, metadata=_help("seed of the whole run"))
    device: str = field(default="auto", metadata=_help("torch device: cpu, cuda[:N], mps, auto"))
    run_dir: Path | None = field(
        default=None, metadata=_help("run directory to record into; None records nothing")
    )
    resume: bool = field(
        default=False, metadata=_help("continue the run already in run_dir, if there is one")
    )
    timesteps: int | None = field(
        default=None, metadata=_help("training budget in steps (default: the preset's)")
    )
    iif: bool = field(default=False, metadata=_help("filter records with the preset's IIF"))
    iif_overrides: Mapping[str, Any] = field(
        default_factory=dict,
        metadata=_help(f"IIF settings over the preset's, of {', '.join(IIF_OPTION_FIELDS)}"),
    )
    memory_budget: Any = field(
        default=None, metadata=_help("metagradient graph memory (IIF with scorer metagrad)")
    )
    intervention: InterventionOptions | None = field(
        default=None, metadata=_help("a targeted intervention (IIF then travels inside it)")
    )
    nonfinite: str | None = field(
        default=None,
        metadata=_help(
            "what a NaN or inf reward, observation, advantage or loss does: error, "
            "skip-iteration or warn (None: the resumed run's choice, else error)"
        ),
    )

    def __post_init__(self) -> None:
        from rlattr.training.nonfinite import NONFINITE_MODES

        if self.nonfinite is not None and self.nonfinite not in NONFINITE_MODES:
            raise RunOptionsError(
                f"nonfinite must be one of {', '.join(NONFINITE_MODES)}, got {self.nonfinite!r}"
            )
        unknown = sorted(set(self.iif_overrides) - set(IIF_OPTION_FIELDS))
        if unknown:
            raise RunOptionsError(f"unknown IIF option(s) {unknown}; known: {IIF_OPTION_FIELDS}")
        given = [k for k, v in self.iif_overrides.items() if v is not None]
        if given and not self.iif:
            option = "--iif-" + given[0].replace("_", "-")
            raise RunOptionsError(
                f"{option} only applies with --iif: add --iif to filter, or drop {option}"
            )
        if self.resume and self.run_dir is None:
            raise RunOptionsError("resume continues a run directory: give run_dir")


@dataclass(frozen=True)
class AssembledRun:
    """A model ready to ``learn``, and what assembling it decided.

    Attributes:
        model: the ``AttributedPPO``.
        preset: the preset as trained (budget rounded up to whole rollouts).
        rounded_from: the budget asked for, when it was rounded up; else None.
        resuming: the model continues the run in ``run_dir``.
        remaining: steps still to train.
    """

    model: Any
    preset: Preset
    rounded_from: int | None
    resuming: bool
    remaining: int


def whole_rollouts(preset: Preset) -> tuple[Preset, int | None]:
    """The preset with its budget rounded up to whole rollouts, and the budget before
    (None if it was whole). SB3 overshoots to a whole rollout anyway; rounding up keeps
    schedules >= 0 (SB3's linear schedules turn negative in an overshooting iteration)."""
    rollout = preset.n_envs * int(preset.ppo.get("n_steps", 2048))
    whole = -(-preset.total_timesteps // rollout) * rollout
    if whole == preset.total_timesteps:
        return preset, None
    return preset.with_overrides(total_timesteps=whole), preset.total_timesteps


def iif_config(preset: Preset, overrides: Mapping[str, Any], memory_budget: Any = None) -> Any:
    """The preset's IIF settings with ``overrides`` on top (None: the preset's), validated."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if memory_budget is not None:
        values["memory_budget"] = memory_budget
    try:
        return preset.iif_config(**values)
    except PresetError:
        raise
    except ValueError as err:
        raise RunOptionsError(
            f"IIF settings (the --iif-* options over the preset's iif section): {err}"
        ) from err


def check_resumable(run_dir: Path, preset: Preset, iif: bool, intervening: bool) -> None:
    """Refuse to resume a run with another preset or another filtering switch."""
    stored_config = RunLog(run_dir).meta.get("config", {})
    # With an intervention, IIF travels inside it, which the model itself checks.
    if not intervening and ("iif" in stored_config) != iif:
        was = "with" if "iif" in stored_config else "without"
        raise PresetError(f"{run_dir} was trained {was} --iif; resume it the same way")
    stored = stored_config.get("preset", {})
    stored_cmp = {**stored, "total_timesteps": preset.total_timesteps}
    if stored_cmp != preset.to_dict():
        raise PresetError(
            f"{run_dir} was started with a different preset; resume it with the same "
            "preset file (only --timesteps may change)"
        )


@contextlib.contextmanager
def sb3_checks(preset: Preset) -> Iterator[None]:
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


def build_model(
    preset: Preset,
    run_dir: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    iif: Any = None,
    **extra: Any,
) -> Any:
    """An ``AttributedPPO`` for ``preset`` (recording into ``run_dir`` if given).

    Args:
        preset: the agent preset.
        run_dir: run directory; None records nothing.
        seed: seed of the environments and the initialisation.
        device: torch device.
        resume: continue the run already in ``run_dir``.
        iif: None or False trains plain PPO; True uses the preset's ``iif`` settings; an
            ``IIF`` instance is used as given.
        **extra: further ``AttributedPPO`` arguments (``intervention``, ``record_hooks``,
            ``keep_mask_fn``, ...).
    """
    import rlattr.envs  # noqa: F401  (registers rlattr's own environments for env_id)
    from rlattr.training.ppo import AttributedPPO

    if iif is True:
        iif = preset.iif_config()
    elif iif is False:
        iif = None
    with sb3_checks(preset):
        return AttributedPPO(
            preset.policy,
            preset.make_env(seed),
            run_dir=run_dir,
            retention=Retention(**preset.recording),
            resume=resume,
            iif=iif,
            run_metadata={"preset": preset.to_dict()},
            seed=seed,
            device=device,
            policy_kwargs=preset.resolved_policy_kwargs(),
            **preset.ppo_kwargs(),
            **extra,
        )


def assemble(preset: Preset, options: RunOptions) -> AssembledRun:
    """Build the model ``options`` ask for on ``preset``, checked before anything is written.

    Raises:
        RunOptionsError: the options contradict the preset or the run on disk.
        PresetError: the preset cannot be trained as written (its environment, SB3's checks).
    """
    import rlattr.envs  # noqa: F401  (registers rlattr's own environments for env_id)

    if options.timesteps is not None:
        preset = preset.with_overrides(total_timesteps=options.timesteps)
    iif = iif_config(preset, options.iif_overrides, options.memory_budget) if options.iif else None
    if options.memory_budget is not None and (iif is None or iif.scorer != "metagrad"):
        raise RunOptionsError(
            "--memory-budget only applies to metagradient IIF: add --iif --iif-scorer metagrad, "
            "or drop --memory-budget"
        )
    run_dir = options.run_dir
    if run_dir is not None and (run_dir / "run.json").exists() and not options.resume:
        raise RunOptionsError(
            f"{run_dir} already holds a run: add --resume to continue it, or choose "
            "another --run-dir"
        )
    preset, rounded_from = whole_rollouts(preset)
    resuming = options.resume and run_dir is not None and (run_dir / "run.json").exists()
    if resuming:
        check_resumable(run_dir, preset, options.iif, options.intervention is not None)
    spaces = preset.environment_spaces(options.seed)
    extra: dict[str, Any] = {}
    if options.nonfinite is not None:
        extra["nonfinite"] = options.nonfinite
    if options.intervention is not None:
        extra["intervention"] = _intervention(options.intervention, iif, spaces)
        iif = None  # it travels inside the intervention (with_iif)
    model = build_model(
        preset, run_dir=run_dir, seed=options.seed, device=options.device, resume=resuming,
        iif=iif, **extra,
    )  # fmt: skip
    remaining = max(0, preset.total_timesteps - model.num_timesteps)
    return AssembledRun(model, preset, rounded_from, resuming, remaining)


def _intervention(options: InterventionOptions, iif: Any, spaces: tuple[Any, Any]) -> Any:
    """The intervention (IIF inside it, if any), checked against the preset's spaces."""
    from rlattr.training.intervention import intervention_from_spec

    fields = {"with_iif": iif}
    if options.weight is not None:
        fields["weight"] = options.weight
    if options.rule is not None:
        fields["rule"] = options.rule
    try:
        return intervention_from_spec(options.spec, options.budget, *spaces, **fields)
    except ValueError as err:
        raise RunOptionsError(f"--intervene {options.spec}: {err}") from err


def run_env_factory(log: RunLog) -> Callable[[], Any]:
    """Builds one environment as the run in ``log`` trained on: its stored preset's
    environment and wrappers, or the environment id it recorded (a run trained through
    the Python API on a registered id); for evaluation and what-ifs.

    Every module the run names (``module:`` of an id, wrappers) is checked by
    ``rlattr.allowlist`` before it is imported, with ``log.allow_modules`` allowed too.

    Raises:
        RunOptionsError: the run names neither (its environment cannot be rebuilt).
        DisallowedModuleError: the run names a module that is not allowed.
    """
    import rlattr.envs  # noqa: F401  (the project's environments, for runs trained on them)
    from rlattr.allowlist import Allowance

    allowed = getattr(log, "allow_modules", ())
    stored = log.meta.get("config", {}).get("preset")
    if stored is not None:
        return Preset.from_dict(stored).allowing(allowed, run_dir=log.path).env_factory()
    env_id = log.meta.get("environment", {}).get("id")
    if env_id is None:
        raise RunOptionsError(
            f"{log.path} names neither a preset nor a registered environment id, so its "
            "environment cannot be rebuilt"
        )
    if not isinstance(env_id, str):
        raise RunOptionsError(f"{log.path}: run.json's environment id {env_id!r} is not text")
    # gym.make imports the module of an id ``module:Name``: allowed first
    Allowance.of(allowed, log.path, f"run.json of {log.path}").check_env_id(env_id)
    import gymnasium as gym

    def make_env() -> Any:
        return gym.make(env_id)

    return make_env


def committed_summary(run_dir: Path) -> str:
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
    words = [command_path("rlattr"), "train", name, "--run-dir", str(log.path)]
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
    for name in IIF_OPTION_FIELDS:
        if name in stored and stored[name] != {**defaults, **preset_iif}.get(name):
            words += ["--iif-" + name.replace("_", "-"), str(stored[name])]
    budget = stored.get("memory_budget", defaults["memory_budget"])
    if budget != {**defaults, **preset_iif}.get("memory_budget"):
        words += ["--memory-budget", "none" if budget is None else str(budget)]
    return words


def command_path(name: str) -> str:
    """``name`` if it is on PATH, else its path beside this Python (an unactivated venv)."""
    if shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name
