"""What a run directory or a preset may name: every module is checked before it is imported.

``run.json`` names classes (``policy.class``, ``{"__class__": ...}`` in the policy's
arguments) and its stored preset names an environment (``module:Env``), wrappers and
classes. Importing a module runs its code, so a name is imported only when

- its top-level package is in ``ALLOWED_MODULES`` (the libraries rlattr builds on and the
  environment packages its presets use), or one the user allows explicitly (CLI:
  ``--allow-module NAME``; Python: ``allow_modules=[...]``); and
- for the built-in list, the package is not found in the current folder nor inside the
  run directory (a folder that shadows ``minigrid`` there is not minigrid). Where that
  package would be found is asked of ``importlib.util.find_spec`` on the top-level name,
  which locates it without running it; a package already imported is the one in use.

A name the user allows explicitly is imported from wherever Python finds it: they vouched
for it. Anything else is a ``DisallowedModuleError`` (an ``RlattrError``: the command line
prints one ``error:`` line and exits 2) naming the module and the option that allows it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlattr.errors import RlattrError

#: Top-level packages whose classes and environments a run directory or preset may name.
ALLOWED_MODULES: tuple[str, ...] = (
    "stable_baselines3",
    "sb3_contrib",
    "torch",
    "gymnasium",
    "rlattr",
    "minigrid",
    "highway_env",
)


class DisallowedModuleError(RlattrError):
    """A run directory or preset names a module rlattr does not import unless allowed."""


class BadClassNameError(RlattrError, ValueError):
    """A run directory or preset names something that is not a usable class."""


def _allow_hint(module: str) -> str:
    return (
        f"if you trust it, allow it with --allow-module {module} "
        f"(Python: allow_modules=[{module!r}])"
    )


@dataclass(frozen=True)
class Allowance:
    """Which modules one run directory or preset may name, and where it was read from.

    Attributes:
        modules: top-level modules the user allows besides ``ALLOWED_MODULES``.
        run_dir: the run directory the names come from (no module is taken from inside
            it); None for a preset the user gave.
        source: what names them, for messages (``run.json of runs/x``, ``preset 'y'``).
    """

    modules: tuple[str, ...] = ()
    run_dir: Path | None = None
    source: str = "the run directory"

    @classmethod
    def of(
        cls, modules: Iterable[str] = (), run_dir: str | Path | None = None, source: str = ""
    ) -> Allowance:
        return cls(
            tuple(modules),
            None if run_dir is None else Path(run_dir),
            source or (f"{run_dir}" if run_dir is not None else "the preset"),
        )

    def check_module(self, module: str) -> None:
        """Refuse ``module`` (a dotted name) unless its top-level package may be imported.

        Raises:
            BadClassNameError: ``module`` is not a dotted name of identifiers.
            DisallowedModuleError: it is not allowed, or is found where it must not be.
        """
        parts = module.split(".")
        if not module or not all(part.isidentifier() for part in parts):
            raise BadClassNameError(
                f"{self.source} names the module {module!r}, which is not a dotted name "
                "(e.g. torch.nn): the file is damaged or was edited"
            )
        top = parts[0]
        if top in self.modules:
            return  # the user vouched for it, wherever Python finds it
        if top not in ALLOWED_MODULES:
            raise DisallowedModuleError(
                f"{self.source} names the module {module!r}, which rlattr does not import "
                f"(only {', '.join(ALLOWED_MODULES)}); {_allow_hint(top)}"
            )
        place = self._unsafe_location(top)
        if place is not None:
            raise DisallowedModuleError(
                f"{self.source} names the module {module!r}, but {top!r} would be imported "
                f"from {place}, {self._why(place)}, not the installed package; run from "
                f"another folder, or {_allow_hint(top)}"
            )

    def _why(self, place: Path) -> str:
        if self.run_dir is not None and _inside(place, self.run_dir.resolve()):
            return "inside the run directory"
        return "the current folder"

    def _unsafe_location(self, top: str) -> Path | None:
        """Where ``top`` would be found, if that is the current folder or inside the run
        directory; None when it is elsewhere, already imported, or not installed."""
        if top in sys.modules:
            return None  # already imported: importing it again runs nothing new
        try:
            spec = importlib.util.find_spec(top)  # top-level: locates, runs nothing
        except (ImportError, ValueError):
            return None  # the import itself reports it
        if spec is None:
            return None
        places = [Path(p) for p in spec.submodule_search_locations or ()]
        if spec.has_location and spec.origin:
            origin = Path(spec.origin)
            # a package's origin is its __init__; a plain module's is the file itself
            places.append(origin.parent if spec.submodule_search_locations else origin)
        cwd = Path(os.getcwd()).resolve()
        run_dir = self.run_dir.resolve() if self.run_dir is not None else None
        for place in places:
            resolved = place.resolve()
            if resolved.parent == cwd or (run_dir is not None and _inside(resolved, run_dir)):
                return resolved
        return None

    def import_object(self, path: str, default_module: str | None = None) -> Any:
        """The object ``package.module.Name`` names (``Name`` alone: in ``default_module``),
        imported only after ``check_module`` allows its module.

        Raises:
            BadClassNameError: a malformed name, or one that cannot be imported.
            DisallowedModuleError: see ``check_module``.
        """
        if not isinstance(path, str):
            raise BadClassNameError(f"{self.source} names {path!r} where a class name belongs")
        module_name, _, name = path.rpartition(".")
        module_name = module_name or default_module or ""
        if not name.isidentifier() or not module_name:
            raise BadClassNameError(
                f"{self.source} names {path!r}, which is not a dotted class name "
                "(package.module.Class): the file is damaged or was edited"
            )
        self.check_module(module_name)
        try:
            return getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as err:
            raise BadClassNameError(f"{self.source}: cannot import {path!r}: {err}") from err

    def import_class(
        self, path: str, bases: tuple[type, ...], kind: str, default_module: str | None = None
    ) -> type:
        """``import_object``, refused unless it is a subclass of one of ``bases``."""
        obj = self.import_object(path, default_module)
        if not (inspect.isclass(obj) and issubclass(obj, bases)):
            raise BadClassNameError(f"{self.source} names {path!r}, which is not {kind}")
        return obj

    def check_env_id(self, env_id: str) -> None:
        """A Gymnasium id: a registered one (``CartPole-v1``) is fine; ``module:Name``
        imports ``module``, which must be allowed."""
        module, sep, _ = env_id.partition(":")
        if sep:
            self.check_module(module)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
