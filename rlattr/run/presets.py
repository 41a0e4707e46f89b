"""Agent presets: one YAML file per task, validated, turned into an ``AttributedPPO``."""

from __future__ import annotations

import copy
import importlib
import importlib.resources
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import torch
import yaml
from stable_baselines3.common.env_util import make_vec_env

from rlattr.allowlist import Allowance, BadClassNameError
from rlattr.errors import PresetError
from rlattr.training.ppo_bounds import (  # PPO_BOUNDS, LinearSchedule: also read from here
    PPO_BOUNDS,  # noqa: F401
    Bound,
    LinearSchedule,  # noqa: F401
    check_ppo_values,
    parse_schedule,
)

# PPO arguments a preset may set (others are rlattr's or fixed by design).
PPO_KEYS = (
    "learning_rate",
    "n_steps",
    "batch_size",
    "n_epochs",
    "gamma",
    "gae_lambda",
    "clip_range",
    "clip_range_vf",
    "normalize_advantage",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
    "target_kl",
)
POLICY_KWARG_KEYS = (
    "net_arch",
    "activation_fn",
    "ortho_init",
    "log_std_init",
    "full_std",
    "share_features_extractor",
    "normalize_images",
    "features_extractor_class",
    "features_extractor_kwargs",
    "optimizer_class",
    "optimizer_kwargs",
)
RECORDING_KEYS = ("record_every", "keep_last", "checkpoint_every")
IIF_KEYS = (
    "scorer",
    "greedy_blocks",
    "minibatching",
    "rule",
    "fraction",
    "like",
    "like_fraction",
    "params",
    "warmup_iterations",
    "min_kept",
    "seed",
)
_SCHEDULED = ("learning_rate", "clip_range", "clip_range_vf")


_AT_LEAST_ONE = Bound(1, integer=True)
RECORDING_BOUNDS = {
    "record_every": _AT_LEAST_ONE,
    "keep_last": Bound(1, integer=True, nullable=True),
    "checkpoint_every": Bound(1, integer=True, nullable=True),
}
_BOOLEAN_POLICY_KWARGS = ("ortho_init", "full_std", "share_features_extractor", "normalize_images")
_MAPPING_POLICY_KWARGS = ("features_extractor_kwargs", "optimizer_kwargs")
_CLASS_POLICY_KWARGS = ("activation_fn", "optimizer_class", "features_extractor_class")
_SHORT_NAMES = {
    "activation_fn": "torch.nn",
    "optimizer_class": "torch.optim",
}


@dataclass(frozen=True)
class Preset:
    """One task's PPO configuration, as read from ``agents/<task>.yaml``.

    Attributes:
        name: short name of the preset.
        env_id: Gymnasium id; ``module:Id`` imports ``module`` first (e.g. ``minigrid:...``).
        total_timesteps: default training budget.
        n_envs: parallel environments (``DummyVecEnv``).
        policy: ``MlpPolicy`` or ``CnnPolicy``.
        ppo: PPO hyperparameters (keys in ``PPO_KEYS``); schedules as ``lin_<value>``.
        policy_kwargs: SB3 policy arguments (keys in ``POLICY_KWARG_KEYS``); classes by name.
        env_kwargs: keyword arguments of ``gymnasium.make``.
        wrappers: dotted paths of ``gymnasium.Wrapper`` classes applied in order.
            Every class and ``module:`` a preset names comes from a package
            ``rlattr.allowlist`` allows, or one allowed with ``allowing`` (CLI:
            ``--allow-module``); nothing is imported before that check.
        recording: RunLog retention (``record_every``, ``keep_last``).
        iif: IIF settings used when filtering is switched on (keys in ``IIF_KEYS``);
            filtering itself is switched on by ``build(iif=True)`` or ``rlattr train --iif``.
        description: what the preset is for.
        sources: where each hyperparameter comes from (key → citation).
        extra: the pip extra the environment needs (``box2d``, ``minigrid``, ``mujoco``).
    """

    name: str
    env_id: str
    total_timesteps: int
    n_envs: int = 1
    policy: str = "MlpPolicy"
    ppo: dict[str, Any] = field(default_factory=dict)
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    wrappers: list[str] = field(default_factory=list)
    recording: dict[str, Any] = field(default_factory=dict)
    iif: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    extra: str | None = None
    # What the class names may come from (``allowing``): not one of the preset's values.
    _allowance: ClassVar[Allowance | None] = None

    def __post_init__(self) -> None:
        where = f"preset {self.name!r}"
        self._check_top_level(where)
        _check_keys(self.ppo, PPO_KEYS, f"{where} ppo")
        _check_keys(self.policy_kwargs, POLICY_KWARG_KEYS, f"{where} policy_kwargs")
        _check_keys(self.recording, RECORDING_KEYS, f"{where} recording")
        _check_keys(self.iif, IIF_KEYS, f"{where} iif")
        self._check_ppo(where)
        _check_policy_kwargs(self.policy_kwargs, f"{where} policy_kwargs")
        for key, value in self.recording.items():
            RECORDING_BOUNDS[key].check(value, f"{where} recording.{key}", PresetError)
        try:
            self.iif_config()
        except ValueError as err:
            raise PresetError(f"{where} iif: {err}") from err

    def _check_top_level(self, where: str) -> None:
        """Types of the keys outside the sections (YAML gives whatever was written)."""
        for key in ("name", "env_id", "description"):
            if not isinstance(getattr(self, key), str):
                raise PresetError(f"{where}: {key} must be text, got {getattr(self, key)!r}")
        if self.policy not in ("MlpPolicy", "CnnPolicy"):
            raise PresetError(f"{where}: policy must be MlpPolicy or CnnPolicy")
        _AT_LEAST_ONE.check(self.total_timesteps, f"{where} total_timesteps", PresetError)
        _AT_LEAST_ONE.check(self.n_envs, f"{where} n_envs", PresetError)
        for key in ("env_kwargs", "sources"):
            if not isinstance(getattr(self, key), dict):
                raise PresetError(f"{where}: {key} must be a mapping")
        if not isinstance(self.wrappers, list) or not all(
            isinstance(w, str) for w in self.wrappers
        ):
            raise PresetError(f"{where}: wrappers must be a list of dotted class paths")
        if self.extra is not None and not isinstance(self.extra, str):
            raise PresetError(f"{where}: extra must be the name of a pip extra")

    def _check_ppo(self, where: str) -> None:
        """Every PPO value within SB3's meaning (a gamma of 1.7 would train, wrongly): the
        table ``AttributedPPO(...)`` checks too (``rlattr.training.ppo_bounds``)."""
        check_ppo_values(self.ppo, f"{where} ppo.", PresetError)

    @classmethod
    def from_dict(cls, payload: dict[str, Any], name: str | None = None) -> Preset:
        allowed = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(payload) - allowed)
        if unknown:
            raise PresetError(
                f"unknown key(s) {unknown} in preset {name or payload.get('name')!r}; "
                f"allowed keys: {sorted(allowed)}"
            )
        values = dict(payload)
        values.setdefault("name", name or "unnamed")
        missing = [key for key in ("env_id", "total_timesteps") if key not in values]
        if missing:
            raise PresetError(f"preset {values['name']!r} lacks required key(s) {missing}")
        values["total_timesteps"] = _whole_budget(values["total_timesteps"], values["name"])
        try:
            return cls(**values)
        except TypeError as err:
            raise PresetError(f"preset {values['name']!r}: {err}") from err

    @classmethod
    def load(cls, path: str | Path, allow_modules: Iterable[str] = ()) -> Preset:
        """Read a preset from a YAML file (or a bare name found in ``agents/``); its class
        names may come from ``allow_modules`` besides ``rlattr.allowlist``'s list."""
        resolved = resolve_preset_path(path)
        try:
            payload = yaml.safe_load(resolved.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise PresetError(f"{resolved} is not a YAML preset (binary data, not text)") from err
        except OSError as err:
            raise PresetError(f"cannot read {resolved}: {err}") from err
        except yaml.YAMLError as err:
            raise PresetError(f"{resolved} is not valid YAML: {_yaml_problem(err)}") from err
        if not isinstance(payload, dict):
            raise PresetError(f"{resolved} should hold a mapping of preset keys")
        try:
            preset = cls.from_dict(payload, name=payload.get("name", resolved.stem))
        except PresetError as err:
            raise PresetError(f"{resolved}: {err}") from err  # which file to correct
        return preset.allowing(allow_modules) if allow_modules else preset

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    def with_overrides(self, **changes: Any) -> Preset:
        values = self.to_dict()
        for key, value in changes.items():
            if value is not None:
                values[key] = value
        changed = Preset.from_dict(values)
        if self._allowance is not None:
            object.__setattr__(changed, "_allowance", self._allowance)
        return changed

    def allowing(self, modules: Iterable[str] = (), run_dir: str | Path | None = None) -> Preset:
        """This preset, its classes, wrappers and ``module:`` environment allowed from
        ``modules`` besides ``rlattr.allowlist.ALLOWED_MODULES``.

        Args:
            modules: top-level modules the user allows (CLI: ``--allow-module``).
            run_dir: the run directory the preset is stored in, if it is; no module is
                then taken from inside it.
        """
        allowed = copy.copy(self)
        where = f"the preset stored in {run_dir}" if run_dir is not None else None
        allowance = Allowance.of(modules, run_dir, where or f"preset {self.name!r}")
        object.__setattr__(allowed, "_allowance", allowance)
        return allowed

    @property
    def allowance(self) -> Allowance:
        """What this preset's class names may come from (see ``allowing``)."""
        return self._allowance or Allowance.of(source=f"preset {self.name!r}")

    # ------------------------------------------------------------------ building
    def _wrap_function(self) -> Callable[[gym.Env], gym.Env] | None:
        """The preset's wrappers applied in order (None without wrappers)."""
        _import_env_module(self.env_id, self.allowance)
        wrapper_classes = [_import_wrapper(path, self.allowance) for path in self.wrappers]
        if not wrapper_classes:
            return None

        def wrap(env: gym.Env) -> gym.Env:
            for wrapper in wrapper_classes:
                env = wrapper(env)
            return env

        return wrap

    def make_env(self, seed: int | None = None) -> Any:
        """The vectorised training environment (``DummyVecEnv`` of ``n_envs`` copies)."""
        return make_vec_env(
            self.env_id,
            n_envs=self.n_envs,
            seed=seed,
            env_kwargs=dict(self.env_kwargs),
            wrapper_class=self._wrap_function(),
        )

    def env_factory(self) -> Callable[[], gym.Env]:
        """Builds one environment as training sees it (``gym.make`` and the preset's
        wrappers, unvectorised): for evaluation, never the training environment itself."""
        wrap = self._wrap_function()

        def make() -> gym.Env:
            env = gym.make(self.env_id, **self.env_kwargs)
            return env if wrap is None else wrap(env)

        return make

    def environment_spaces(self, seed: int = 0) -> tuple[Any, Any]:
        """The observation and action spaces, from the environment made once: call it
        before anything is written, so that a wrong ``env_id`` or ``env_kwargs`` is the
        preset's error rather than a failure deep inside training.

        Raises:
            PresetError: the environment cannot be made as the preset says.
        """
        try:
            env = self.make_env(seed)
        except (gym.error.Error, TypeError) as err:
            # TypeError: gymnasium's report of an env_kwargs key the environment does not take.
            raise PresetError(
                f"preset {self.name!r} cannot make its environment {self.env_id!r}: {err}; "
                "correct env_id or env_kwargs in the preset"
            ) from err
        spaces = (env.observation_space, env.action_space)
        env.close()
        return spaces

    def ppo_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.ppo)
        for key in _SCHEDULED:
            if key in kwargs and kwargs[key] is not None:
                kwargs[key] = _schedule(kwargs[key], key)
        if "max_grad_norm" in kwargs:
            kwargs["max_grad_norm"] = float(kwargs["max_grad_norm"])
        return kwargs

    def iif_config(self, **overrides: Any) -> Any:
        """The preset's ``IIF`` configuration (with ``overrides`` that are not None)."""
        from rlattr.training.filters import IIF

        values = {**self.iif, **{k: v for k, v in overrides.items() if v is not None}}
        return IIF(**values)

    def resolved_policy_kwargs(self) -> dict[str, Any]:
        kwargs = copy.deepcopy(self.policy_kwargs)
        for key in ("activation_fn", "optimizer_class", "features_extractor_class"):
            if key in kwargs:
                kwargs[key] = _import_class(kwargs[key], _SHORT_NAMES.get(key), self.allowance)
        return kwargs


def shipped_presets() -> dict[str, Path]:
    """The presets that ship with rlattr (package data ``rlattr.agents``): name → file."""
    folder = importlib.resources.files("rlattr.agents")
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def resolve_preset_path(path: str | Path) -> Path:
    """A YAML file, or the name of a shipped preset (``cartpole``, ``cartpole.yaml``)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    shipped = shipped_presets()
    name = candidate.name.removesuffix(".yaml") if candidate.parent == Path(".") else None
    if name in shipped:
        return shipped[name]
    raise PresetError(f"no preset {str(path)!r}: not a file, and not one of {sorted(shipped)}")


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own text spans lines)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _whole_budget(value: Any, name: str) -> Any:
    """``total_timesteps`` as an int; YAML's ``1e6`` (text) and ``1.0e6`` (float) allowed."""
    if isinstance(value, bool):
        return value  # refused by the bound check, with the key named
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value  # refused by the bound check, with the key named
    if not math.isfinite(number) or number != int(number):
        raise PresetError(f"preset {name!r} total_timesteps must be a whole number, got {value!r}")
    return int(number)


def _check_policy_kwargs(kwargs: dict[str, Any], where: str) -> None:
    """Types of the policy arguments (class names are checked on import, at build)."""
    for key in _BOOLEAN_POLICY_KWARGS:
        if key in kwargs and not isinstance(kwargs[key], bool):
            raise PresetError(f"{where}.{key} must be true or false, got {kwargs[key]!r}")
    for key in _MAPPING_POLICY_KWARGS:
        if key in kwargs and not isinstance(kwargs[key], dict):
            raise PresetError(f"{where}.{key} must be a mapping, got {kwargs[key]!r}")
    for key in _CLASS_POLICY_KWARGS:
        if key in kwargs and not isinstance(kwargs[key], str):
            raise PresetError(f"{where}.{key} must be a class name, got {kwargs[key]!r}")
    if "log_std_init" in kwargs:
        Bound().check(kwargs["log_std_init"], f"{where}.log_std_init", PresetError)
    if "net_arch" in kwargs:
        _check_net_arch(kwargs["net_arch"], f"{where}.net_arch")


def _check_net_arch(net_arch: Any, where: str) -> None:
    """``[64, 64]`` or ``{pi: [64, 64], vf: [64, 64]}``: positive layer widths."""
    layers = net_arch
    if isinstance(net_arch, dict):
        unknown = sorted(set(net_arch) - {"pi", "vf"})
        if unknown:
            raise PresetError(f"{where} may hold pi and vf only, got {unknown}")
        if not all(isinstance(part, list) for part in net_arch.values()):
            raise PresetError(f"{where}.pi and .vf must be lists of layer widths")
        layers = [width for part in net_arch.values() for width in part]
    if not isinstance(layers, list):
        raise PresetError(f"{where} must be a list of layer widths or a pi/vf mapping")
    for width in layers:
        _AT_LEAST_ONE.check(width, f"{where} layer width", PresetError)


def _check_keys(values: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(values, dict):
        raise PresetError(f"{where} must be a mapping")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise PresetError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def _schedule(value: Any, where: str) -> Any:
    """A number, or ``lin_<number>`` as a ``LinearSchedule``; else ``PresetError``."""
    return parse_schedule(value, where, PresetError)


def _import_env_module(env_id: str, allowance: Allowance) -> None:
    """Import the ``module`` of an id ``module:Name`` once the allow-list allows it (a
    registered id needs nothing imported)."""
    allowance.check_env_id(env_id)
    module, sep, _ = env_id.partition(":")
    if sep:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise PresetError(
                f"environment {env_id!r} needs the package {module!r}: {err}. "
                "Install the matching extra, e.g. pip install 'rlattr[minigrid]'"
            ) from err


def _import_class(path: str, default_module: str | None, allowance: Allowance) -> type:
    try:
        return allowance.import_class(
            path, (torch.nn.Module, torch.optim.Optimizer), "a torch module or optimiser class",
            default_module,
        )  # fmt: skip
    except BadClassNameError as err:
        raise PresetError(str(err)) from err


def _import_wrapper(path: str, allowance: Allowance) -> type:
    try:
        return allowance.import_class(path, (gym.Wrapper,), "a gymnasium.Wrapper class")
    except BadClassNameError as err:
        raise PresetError(str(err)) from err
