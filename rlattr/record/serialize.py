"""JSON forms of Gymnasium spaces and SB3 policy arguments, so a run log rebuilds its policy."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from rlattr.errors import UnsupportedError

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


def import_class(path: str) -> type:
    """Import ``package.module.Class`` for a torch module or optimiser class."""
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{path!r} is not a dotted class path")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {path!r}: {err}") from err
    if not (inspect.isclass(obj) and issubclass(obj, _ALLOWED_BASES)):
        raise ValueError(f"{path!r} is not a torch.nn.Module or torch.optim.Optimizer class")
    return obj


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


def decode(value: Any) -> Any:
    """Inverse of ``encode``."""
    if isinstance(value, dict):
        if set(value) == {_CLASS_KEY}:
            return import_class(value[_CLASS_KEY])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value
