"""Versions of the packages a run depends on, stored in every run's metadata."""

from __future__ import annotations

import platform
from importlib import metadata

_PACKAGES = ("rlattr", "torch", "stable-baselines3", "gymnasium", "numpy", "safetensors")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
