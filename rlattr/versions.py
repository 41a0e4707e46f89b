"""Versions of the packages a run depends on, stored in every run's metadata."""

from __future__ import annotations

import platform
from importlib import metadata

#: rlattr's own version (pyproject.toml reads it from here: one source of truth).
__version__ = "0.1.0"

_PACKAGES = ("rlattr", "torch", "stable-baselines3", "gymnasium", "numpy", "safetensors")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
