"""What a sweep runs: a validated spec (tasks × arms × seeds) read from YAML, and its trials.

A spec file (``rlattr sweep SPEC.yaml``)::

    # Every key but tasks is optional; values shown are the defaults.
    tasks:                      # preset names (agents/) or YAML paths, or mappings:
      - cartpole
      - {preset: acrobot_paper, name: acrobot, rounds: 50, eval_episodes: 200}
      - {preset: highway, rounds: 25, seeds: 3, arms: [ppo, iif]}  # its own arms, seeds
    arms: [ppo, iif]            # ppo, iif, random_like, advantage_like, iif_metagrad
    seeds: [0, 1, 2]            # or a count: 3 (seeds 0, 1, 2)
    rounds: null                # rounds per trial; null: the preset's total_timesteps
    eval_episodes: 100          # stochastic evaluation episodes after every round
    eval_every: 1               # evaluate after every N rounds only (and the last)
    out: runs/sweep             # results: <out>/<task>/<arm>-s<seed>.json and run dirs
    runs: null                  # run dirs (TensorBoard, run logs) here instead; null: out
    retries: 2                  # a failed or killed trial is run again up to this often
    device: cpu

Relative paths in the file (``out``, ``runs``, preset files) are read from the spec file's folder.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlattr.errors import RlattrError
from rlattr.run.arms import ARMS, ArmName, UnknownArmError
from rlattr.run.arms import parse_arm as _parse_arm

__all__ = [
    "ARMS",
    "EVAL_ENVS",
    "EVAL_SEED",
    "ArmName",
    "SweepError",
    "SweepSpec",
    "SweepSpecError",
    "TaskSpec",
    "Trial",
    "parse_arm",
    "plan_trials",
    "preset_rounds",
]

# Evaluation episode j resets with seed EVAL_SEED + j for every arm, seed and round (common
# random numbers: a difference between arms is not a difference between evaluation draws).
EVAL_SEED = 10_000
EVAL_ENVS = 64


class SweepError(RlattrError):
    """A sweep that cannot run as asked (bad spec, results made by another spec, no Ray)."""


class SweepSpecError(SweepError, ValueError):
    """A sweep spec that cannot be used as written (unknown key, bad value)."""


def parse_arm(name: str) -> ArmName:
    """``rlattr.run.parse_arm``, its refusal a ``SweepSpecError`` (a spec's bad value)."""
    try:
        return _parse_arm(name)
    except UnknownArmError as err:
        raise SweepSpecError(str(err)) from err


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class TaskSpec:
    """One task of a sweep: a preset and what may differ from the sweep's settings."""

    preset: str = field(metadata=_help("a shipped preset's name or a preset YAML file"))
    name: str = field(
        default="", metadata=_help("label of its results folder (default: the preset's stem)")
    )
    rounds: int | None = field(
        default=None, metadata=_help("rounds for this task (default: the sweep's)")
    )
    eval_episodes: int | None = field(
        default=None, metadata=_help("evaluation episodes for this task (default: the sweep's)")
    )
    eval_every: int | None = field(
        default=None,
        metadata=_help("evaluate after every N rounds for this task (default: the sweep's)"),
    )
    arms: tuple[str, ...] | None = field(
        default=None, metadata=_help("arms of this task (default: the sweep's)")
    )
    seeds: tuple[int, ...] | None = field(
        default=None, metadata=_help("seeds of this task, a list or a count (default: the sweep's)")
    )

    def __post_init__(self) -> None:
        if not isinstance(self.preset, str) or not self.preset:
            raise SweepSpecError(f"task preset must be a preset name or file, got {self.preset!r}")
        if not self.name:
            stem = Path(self.preset).name.removesuffix(".yaml").removesuffix(".yml")
            object.__setattr__(self, "name", stem)
        if not isinstance(self.name, str) or "/" in self.name or self.name.startswith("."):
            raise SweepSpecError(f"task name {self.name!r} must be a plain folder name")
        _check_count(self.rounds, f"task {self.name!r} rounds", nullable=True)
        _check_count(self.eval_episodes, f"task {self.name!r} eval_episodes", nullable=True)
        _check_count(self.eval_every, f"task {self.name!r} eval_every", nullable=True)
        if self.arms is not None:
            object.__setattr__(self, "arms", _arms(self.arms, f"task {self.name!r} arms"))
        if self.seeds is not None:
            object.__setattr__(self, "seeds", _seeds(self.seeds, f"task {self.name!r} seeds"))


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: every task × arm × seed is one trial, trained and evaluated every round."""

    tasks: tuple[TaskSpec, ...] = field(
        metadata=_help("presets to train (names, files, or mappings with per-task settings)")
    )
    arms: tuple[str, ...] = field(
        default=("ppo", "iif"),
        metadata=_help(
            f"training arms, of {', '.join(ARMS)}; any but ppo may end in _p<percent> for "
            "its drop fraction (iif_p25)"
        ),
    )
    seeds: tuple[int, ...] = field(
        default=(0, 1, 2), metadata=_help("training seeds (a list, or a count N for 0..N-1)")
    )
    rounds: int | None = field(
        default=None,
        metadata=_help("rounds (rollout + update) per trial; None: the preset's budget"),
    )
    eval_episodes: int = field(
        default=100, metadata=_help("stochastic evaluation episodes after every round")
    )
    eval_every: int = field(
        default=1,
        metadata=_help(
            "evaluate after every N rounds (and the last): for budgets whose evaluations "
            "would cost more than the training; SE metrics then resolve rounds to N"
        ),
    )
    out: str = field(default="runs/sweep", metadata=_help("results folder"))
    runs: str | None = field(
        default=None,
        metadata=_help(
            "folder of the trials' run directories (TensorBoard events, run logs); None: "
            "out. Keeps bulky event files out of a results folder that is committed"
        ),
    )
    retries: int = field(default=2, metadata=_help("times a failed or killed trial is run again"))
    device: str = field(default="cpu", metadata=_help("torch device of every trial"))
    record: bool = field(
        default=False,
        metadata=_help(
            "keep every trial's run log (records, update plans, checkpoints) in "
            "<run dir>/runlog, for rlattr diagnose, attribute, fidelity and intervene"
        ),
    )
    allow_modules: tuple[str, ...] = field(
        default=(),
        metadata=_help(
            "modules the presets may name besides rlattr's list (rlattr.allowlist): "
            "importing one runs its code, so list only what you trust"
        ),
    )

    def __post_init__(self) -> None:
        allow = self.allow_modules
        if isinstance(allow, str) or not all(
            isinstance(m, str) and m for m in _as_list(allow, "allow_modules")
        ):
            raise SweepSpecError(f"allow_modules must be a list of module names, got {allow!r}")
        object.__setattr__(self, "allow_modules", tuple(allow))
        tasks = tuple(_task(entry) for entry in _as_list(self.tasks, "tasks"))
        if not tasks:
            raise SweepSpecError("tasks is empty: name at least one preset, e.g. tasks: [cartpole]")
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise SweepSpecError(f"task names repeat in {names}: give each a distinct name")
        arms = _arms(self.arms, "arms")
        seeds = _seeds(self.seeds, "seeds")
        _check_count(self.rounds, "rounds", nullable=True)
        _check_count(self.eval_episodes, "eval_episodes")
        _check_count(self.eval_every, "eval_every")
        _check_count(self.retries, "retries", low=0)
        for key in ("out", "device"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise SweepSpecError(f"{key} must be text, got {getattr(self, key)!r}")
        if self.runs is not None and (not isinstance(self.runs, str) or not self.runs):
            raise SweepSpecError(f"runs must be text or null, got {self.runs!r}")
        if not isinstance(self.record, bool):
            raise SweepSpecError(f"record must be true or false, got {self.record!r}")
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "arms", arms)
        object.__setattr__(self, "seeds", seeds)

    @classmethod
    def from_dict(cls, payload: Any, base: Path | None = None) -> SweepSpec:
        """A spec from a parsed YAML mapping; relative paths are read from ``base``."""
        if not isinstance(payload, dict):
            raise SweepSpecError("a sweep spec is a mapping with at least 'tasks'")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(payload) - set(allowed))
        if unknown:
            raise SweepSpecError(f"unknown key(s) {unknown} in the sweep spec; allowed: {allowed}")
        if "tasks" not in payload:
            raise SweepSpecError("the sweep spec lacks 'tasks' (the presets to train)")
        values = dict(payload)
        if base is not None:
            values["tasks"] = [_rebased_task(t, base) for t in _as_list(values["tasks"], "tasks")]
            for key in ("out", "runs"):
                if isinstance(values.get(key), str) and not Path(values[key]).is_absolute():
                    values[key] = str(base / values[key])
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        """Read a spec from a YAML file (see the module docstring for the format)."""
        path = Path(path)
        try:
            payload = yaml.safe_load(path.read_text())
        except OSError as err:
            raise SweepSpecError(f"cannot read the sweep spec {path}: {err.strerror}") from err
        except yaml.YAMLError as err:
            raise SweepSpecError(f"{path} is not valid YAML: {err}") from err
        return cls.from_dict(payload, base=path.resolve().parent)

    @property
    def runs_dir(self) -> Path:
        """Where the trials' run directories go: ``runs``, else ``out``."""
        return Path(self.runs if self.runs is not None else self.out)

    def arms_of(self, task: TaskSpec) -> tuple[str, ...]:
        """The task's own arms, else the sweep's."""
        return task.arms if task.arms is not None else self.arms

    def seeds_of(self, task: TaskSpec) -> tuple[int, ...]:
        """The task's own seeds, else the sweep's."""
        return task.seeds if task.seeds is not None else self.seeds

    def with_overrides(self, **changes: Any) -> SweepSpec:
        """A copy with the given fields replaced (None leaves a field as it is)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class Trial:
    """One arm of one task on one seed: what ``rlattr.sweep.trial.run_trial`` trains.

    Attributes:
        task: label of the task (its results folder).
        preset: the preset's name or an absolute path to its file.
        arm: one of ``ARMS``, optionally with a ``_p<percent>`` suffix (``parse_arm``).
        seed: environment and initialisation seed (the same for every arm).
        rounds: rounds of ``n_steps × n_envs`` steps.
        episodes: evaluation episodes after every round.
        device: torch device.
        eval_seed: episode j of every evaluation resets with ``eval_seed + j``.
        eval_envs: evaluation environments stepped side by side.
        eval_every: evaluate after every this many rounds (and after the last).
        allow_modules: modules the preset may name besides rlattr's list.
    """

    task: str
    preset: str
    arm: str
    seed: int
    rounds: int
    episodes: int
    device: str = "cpu"
    eval_seed: int = EVAL_SEED
    eval_envs: int = EVAL_ENVS
    eval_every: int = 1
    allow_modules: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """``<task>/<arm>-s<seed>``: the trial's name in paths, tables and TensorBoard."""
        return f"{self.task}/{self.arm}-s{self.seed}"


def preset_rounds(preset_name: str, allow_modules: tuple[str, ...] = ()) -> int:
    """The preset's budget in rounds: ``total_timesteps / (n_steps × n_envs)``, rounded up."""
    from rlattr.run.presets import Preset

    preset = Preset.load(preset_name, allow_modules=allow_modules)
    steps = int(preset.ppo.get("n_steps", 2048)) * preset.n_envs
    return max(1, math.ceil(preset.total_timesteps / steps))


def plan_trials(spec: SweepSpec) -> list[Trial]:
    """Every trial of ``spec``: per task PPO and IIF first on every seed (the main
    comparison, so a partial sweep already answers it), then the other arms."""
    from rlattr.run.presets import Preset

    for task in spec.tasks:  # a missing or invalid preset stops the sweep before it starts
        Preset.load(task.preset, allow_modules=spec.allow_modules)
    trials = []
    for task in spec.tasks:
        main = [arm for arm in spec.arms_of(task) if arm in ("ppo", "iif")]
        others = [arm for arm in spec.arms_of(task) if arm not in main]
        rounds = task.rounds or spec.rounds or preset_rounds(task.preset, spec.allow_modules)
        episodes = task.eval_episodes or spec.eval_episodes
        every = task.eval_every or spec.eval_every
        for group in (main, others):
            for seed in spec.seeds_of(task):
                for arm in group:
                    trials.append(
                        Trial(
                            task.name,
                            task.preset,
                            arm,
                            seed,
                            rounds,
                            episodes,
                            spec.device,
                            eval_every=every,
                            allow_modules=spec.allow_modules,
                        )
                    )
    return trials


def _task(entry: Any) -> TaskSpec:
    if isinstance(entry, TaskSpec):
        return entry
    if isinstance(entry, str):
        return TaskSpec(preset=entry)
    if isinstance(entry, dict):
        allowed = [f.name for f in dataclasses.fields(TaskSpec)]
        unknown = sorted(set(entry) - set(allowed))
        if unknown or "preset" not in entry:
            raise SweepSpecError(
                f"a task mapping needs 'preset' and may hold {allowed}; got {sorted(entry)}"
            )
        return TaskSpec(**entry)
    raise SweepSpecError(f"a task is a preset name or a mapping with 'preset', got {entry!r}")


def _rebased_task(entry: Any, base: Path) -> Any:
    """A task whose preset is a relative file path, made absolute against ``base``."""
    preset = entry.get("preset") if isinstance(entry, dict) else entry
    if isinstance(preset, str) and preset.endswith((".yaml", ".yml")):
        candidate = base / preset
        if not Path(preset).is_absolute() and candidate.is_file():
            if isinstance(entry, dict):
                return {**entry, "preset": str(candidate)}
            return str(candidate)
    return entry


def _arms(value: Any, name: str) -> tuple[str, ...]:
    arms = tuple(_as_list(value, name))
    parsed = [parse_arm(arm) for arm in arms]  # iif_p25 and iif_p25.0 are one arm
    if not arms or len(set(parsed)) != len(parsed):
        raise SweepSpecError(f"{name} must be distinct names of {list(ARMS)}, got {list(arms)}")
    return arms


def _seeds(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        _check_count(value, name)
        value = tuple(range(value))
    seeds = tuple(_as_list(value, name))
    for seed in seeds:
        _check_count(seed, f"every seed of {name}", low=0)
    if not seeds or len(set(seeds)) != len(seeds):
        raise SweepSpecError(f"{name} must be distinct whole numbers >= 0, got {list(seeds)}")
    return seeds


def _as_list(value: Any, name: str) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    raise SweepSpecError(f"{name} must be a list, got {value!r}")


def _check_count(value: Any, name: str, low: int = 1, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SweepSpecError(f"{name} must be a whole number >= {low}, got {value!r}")
