"""JSON forms of Gymnasium spaces and SB3 policy arguments, so a run log rebuilds its policy."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from rlattr.allowlist import Allowance
from rlattr.errors import CorruptRunLogError, UnsupportedError

_CLASS_KEY = "__class__"
# Importing a name from a log is only allowed for these kinds of objects (no arbitrary code).
_ALLOWED_BASES: tuple[type, ...] = (torch.nn.Module, torch.optim.Optimizer)


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """Describe a Box, Discrete, MultiDiscrete or MultiBinary space as JSON."""
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "low": space.low.tolist(),
            "high": space.high.tolist(),
            "shape": list(space.shape),
            "dtype": str(space.dtype),
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    raise UnsupportedError(f"cannot store a {type(space).__name__} space in a run log")


def space_from_json(payload: dict[str, Any]) -> spaces.Space:
    """The space ``space_to_json`` described.

    Raises:
        CorruptRunLogError: ``payload`` is not such a description (a damaged or edited
            ``run.json``).
    """
    try:
        return _space_from_json(payload)
    except UnsupportedError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise CorruptRunLogError(
            f"run.json holds an unreadable space {_short(payload)} ({type(err).__name__}: "
            f"{err}): the file is damaged or was edited; restore it from a copy of the run"
        ) from err


def _short(payload: Any) -> str:
    text = repr(payload)
    return text if len(text) <= 120 else text[:117] + "..."


def _space_from_json(payload: dict[str, Any]) -> spaces.Space:
    kind = payload["type"]
    if kind == "Box":
        dtype = np.dtype(payload["dtype"])
        return spaces.Box(
            low=np.asarray(payload["low"], dtype=dtype),
            high=np.asarray(payload["high"], dtype=dtype),
            shape=tuple(payload["shape"]),
            dtype=dtype,
        )
    if kind == "Discrete":
        return spaces.Discrete(payload["n"], start=payload.get("start", 0))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(payload["nvec"])
    if kind == "MultiBinary":
        return spaces.MultiBinary(payload["n"])
    raise UnsupportedError(f"unknown space type {kind!r} in run log")


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(path: str, allowance: Allowance | None = None) -> type:
    """Import ``package.module.Class`` for a torch module or optimiser class, after
    ``rlattr.allowlist`` allows its module (nothing is imported before).

    Args:
        path: the dotted class name.
        allowance: the modules allowed besides the built-in list, and the run directory
            the name comes from (default: the built-in list only).

    Raises:
        DisallowedModuleError: the module is not allowed (``--allow-module`` allows it).
        BadClassNameError: a malformed name, or not such a class.
    """
    allowance = allowance or Allowance()
    return allowance.import_class(
        path, _ALLOWED_BASES, "a torch.nn.Module or torch.optim.Optimizer class"
    )


def encode(value: Any) -> Any:
    """Turn policy kwargs into JSON: classes become ``{"__class__": "pkg.mod.Name"}``."""
    if inspect.isclass(value):
        return {_CLASS_KEY: class_path(value)}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store {value!r} ({type(value).__name__}) in a run log as JSON")


def decode(value: Any, allowance: Allowance | None = None) -> Any:
    """Inverse of ``encode``; each class through ``import_class(..., allowance)``."""
    if isinstance(value, dict):
        if set(value) == {_CLASS_KEY}:
            return import_class(value[_CLASS_KEY], allowance)
        return {k: decode(v, allowance) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v, allowance) for v in value]
    return value


def run_allowance(log: Any) -> Allowance:
    """What the run in ``log`` (a ``RunLog``) may name: its ``allow_modules``, nothing
    from inside its directory."""
    return Allowance.of(
        getattr(log, "allow_modules", ()), log.path, source=f"run.json of {log.path}"
    )


def named_modules(meta: dict[str, Any]) -> list[str]:
    """The modules a ``run.json`` names (its policy's classes, its stored preset's
    ``module:`` environment, wrappers and classes, its environment id), none imported."""
    policy = meta.get("policy") if isinstance(meta.get("policy"), dict) else {}
    names: list[Any] = [policy.get("class"), *_encoded_classes(policy.get("kwargs"))]
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    preset = config.get("preset") if isinstance(config.get("preset"), dict) else {}
    env_ids = [preset.get("env_id"), (meta.get("environment") or {}).get("id")]
    modules = [i.partition(":")[0] for i in env_ids if isinstance(i, str) and ":" in i]
    wrappers = preset.get("wrappers") if isinstance(preset.get("wrappers"), list) else []
    kwargs = preset.get("policy_kwargs") if isinstance(preset.get("policy_kwargs"), dict) else {}
    names += [*wrappers, *kwargs.values()]
    # a bare class name (``ReLU``) is looked up in torch.nn / torch.optim
    modules += [n.rpartition(".")[0] for n in names if isinstance(n, str) and "." in n]
    return modules


def _encoded_classes(value: Any) -> list[Any]:
    if isinstance(value, dict):
        if set(value) == {_CLASS_KEY}:
            return [value[_CLASS_KEY]]
        return [name for v in value.values() for name in _encoded_classes(v)]
    if isinstance(value, list):
        return [name for v in value for name in _encoded_classes(v)]
    return []


def check_run_names(log: Any) -> None:
    """Refuse the run in ``log`` (a ``RunLog``) if ``run.json`` names a module that
    ``run_allowance(log)`` does not allow; imports nothing.

    Raises:
        DisallowedModuleError, BadClassNameError: as ``rlattr.allowlist.Allowance``.
    """
    allowance = run_allowance(log)
    for module in named_modules(log.meta):
        allowance.check_module(module)
