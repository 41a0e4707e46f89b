"""Agent presets: one YAML file per task, validated, turned into an ``AttributedPPO``."""

from __future__ import annotations

import copy
import importlib
import importlib.resources
import inspect
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
import yaml
from stable_baselines3.common.env_util import make_vec_env

from rlattr.errors import PresetError
from rlattr.record.runlog import Retention

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
RECORDING_KEYS = ("record_every", "keep_last")
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

    def __post_init__(self) -> None:
        _check_keys(self.ppo, PPO_KEYS, f"preset {self.name!r} ppo")
        _check_keys(self.policy_kwargs, POLICY_KWARG_KEYS, f"preset {self.name!r} policy_kwargs")
        _check_keys(self.recording, RECORDING_KEYS, f"preset {self.name!r} recording")
        _check_keys(self.iif, IIF_KEYS, f"preset {self.name!r} iif")
        try:
            self.iif_config()
        except ValueError as err:
            raise PresetError(f"preset {self.name!r} iif: {err}") from err
        if self.policy not in ("MlpPolicy", "CnnPolicy"):
            raise PresetError(f"preset {self.name!r}: policy must be MlpPolicy or CnnPolicy")
        if self.total_timesteps <= 0 or self.n_envs <= 0:
            raise PresetError(f"preset {self.name!r}: total_timesteps and n_envs must be > 0")
        for key in _SCHEDULED:
            if key in self.ppo:
                _schedule(self.ppo[key], f"preset {self.name!r} ppo.{key}")  # validates
        Retention(**self.recording)

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
        values["total_timesteps"] = int(float(values["total_timesteps"]))
        try:
            return cls(**values)
        except TypeError as err:
            raise PresetError(f"preset {values['name']!r}: {err}") from err

    @classmethod
    def load(cls, path: str | Path) -> Preset:
        """Read a preset from a YAML file (or a bare name found in ``agents/``)."""
        resolved = resolve_preset_path(path)
        try:
            payload = yaml.safe_load(resolved.read_text())
        except yaml.YAMLError as err:
            raise PresetError(f"{resolved} is not valid YAML: {err}") from err
        if not isinstance(payload, dict):
            raise PresetError(f"{resolved} should hold a mapping of preset keys")
        return cls.from_dict(payload, name=payload.get("name", resolved.stem))

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    def with_overrides(self, **changes: Any) -> Preset:
        values = self.to_dict()
        for key, value in changes.items():
            if value is not None:
                values[key] = value
        return Preset.from_dict(values)

    # ------------------------------------------------------------------ building
    def make_env(self, seed: int | None = None) -> Any:
        """The vectorised training environment (``DummyVecEnv`` of ``n_envs`` copies)."""
        _import_env_module(self.env_id)
        wrapper_classes = [_import_wrapper(path) for path in self.wrappers]

        def wrap(env: gym.Env) -> gym.Env:
            for wrapper in wrapper_classes:
                env = wrapper(env)
            return env

        return make_vec_env(
            self.env_id,
            n_envs=self.n_envs,
            seed=seed,
            env_kwargs=dict(self.env_kwargs),
            wrapper_class=wrap if wrapper_classes else None,
        )

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
                kwargs[key] = _import_class(kwargs[key], _SHORT_NAMES.get(key))
        return kwargs

    def build(
        self,
        run_dir: str | Path | None = None,
        seed: int = 0,
        device: str = "auto",
        resume: bool = False,
        iif: Any = None,
        **extra: Any,
    ) -> Any:
        """An ``AttributedPPO`` for this preset (recording into ``run_dir`` if given).

        ``iif``: None or False trains plain PPO; True uses the preset's ``iif`` settings;
        an ``IIF`` instance is used as given.
        """
        from rlattr.training.ppo import (
            AttributedPPO,  # late: presets are also read without torch work
        )

        env = self.make_env(seed)
        if iif is True:
            iif = self.iif_config()
        elif iif is False:
            iif = None
        return AttributedPPO(
            self.policy,
            env,
            run_dir=run_dir,
            retention=Retention(**self.recording),
            resume=resume,
            iif=iif,
            run_metadata={"preset": self.to_dict()},
            seed=seed,
            device=device,
            policy_kwargs=self.resolved_policy_kwargs(),
            **self.ppo_kwargs(),
            **extra,
        )


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


def _check_keys(values: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(values, dict):
        raise PresetError(f"{where} must be a mapping")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise PresetError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


class LinearSchedule:
    """``initial × progress_remaining`` (progress goes 1 → 0), like the RL Zoo's ``lin_``."""

    def __init__(self, initial: float):
        self.initial = initial

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.initial

    def __repr__(self) -> str:
        return f"lin_{self.initial}"


def _schedule(value: Any, where: str) -> Any:
    if isinstance(value, str):
        if value.startswith("lin_"):
            try:
                return LinearSchedule(float(value[4:]))
            except ValueError:
                pass
        raise PresetError(f"{where}: {value!r} is neither a number nor 'lin_<number>'")
    if value is None or isinstance(value, int | float):
        if isinstance(value, float) and math.isnan(value):
            raise PresetError(f"{where} is NaN")
        return value
    raise PresetError(f"{where}: {value!r} is neither a number nor 'lin_<number>'")


def _import_env_module(env_id: str) -> None:
    module, sep, _ = env_id.partition(":")
    if sep:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise PresetError(
                f"environment {env_id!r} needs the package {module!r}: {err}. "
                "Install the matching extra, e.g. pip install 'rlattr[minigrid]'"
            ) from err


def _import_class(path: str, default_module: str | None) -> type:
    module_name, _, name = path.rpartition(".")
    module_name = module_name or default_module or ""
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise PresetError(f"cannot import {path!r}: {err}") from err
    if not inspect.isclass(obj):
        raise PresetError(f"{path!r} is not a class")
    if not issubclass(obj, torch.nn.Module | torch.optim.Optimizer):
        raise PresetError(f"{path!r} is not a torch module or optimiser class")
    return obj


def _import_wrapper(path: str) -> type:
    module_name, _, name = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise PresetError(f"cannot import wrapper {path!r}: {err}") from err
    if not (inspect.isclass(obj) and issubclass(obj, gym.Wrapper)):
        raise PresetError(f"{path!r} is not a gymnasium.Wrapper class")
    return obj
