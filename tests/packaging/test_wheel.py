"""The wheel: one top-level package, presets and environments inside it, usable anywhere.

Builds the wheel from a copy of the sources (so nothing is written into the checkout),
installs it into a temporary directory, and runs the installed ``rlattr`` from another
working directory, where no agents/ or envs/ folder can be found by accident.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "rlattr", "agents", "envs")
PIP = (sys.executable, "-m", "pip", "-q")
TRAIN = ("train", "cartpole", "--timesteps", "512", "--run-dir", "run", "--device", "cpu")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    # -v instead of -q: the build backend's notices are what this checks.
    wheel_command = [*PIP[:-1], "wheel", "-v", "--no-deps", "--no-build-isolation"]
    build = subprocess.run(
        [*wheel_command, "-w", str(work / "dist"), str(source)],
        check=True,
        capture_output=True,
        text=True,
    )
    # Installing must not print setuptools' deprecation notices (e.g. "`project.license`
    # as a TOML table is deprecated").
    assert "is deprecated" not in build.stdout + build.stderr
    [built] = (work / "dist").glob("rlattr-*.whl")
    return built


def test_wheel_installs_rlattr_and_nothing_else_at_top_level(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.startswith("rlattr-")}
    assert top_level == {"rlattr"}
    assert "rlattr/agents/cartpole.yaml" in names
    assert "rlattr/envs/toy.py" in names


def test_pyproject_lists_every_subpackage() -> None:
    # setuptools is given an explicit package list (agents/ and envs/ are mapped into the
    # package): a sub-package missing from it would silently be left out of the wheel.
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "rlattr").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk <= listed, sorted(on_disk - listed)


@pytest.mark.slow
def test_installed_wheel_trains_a_preset_from_another_directory(
    wheel: Path, tmp_path: Path
) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Only the installed copy of rlattr is importable: the checkout is not on the path,
    # and the dependencies come from this interpreter's site-packages.
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    script = (
        "import sys, rlattr, rlattr.cli; "
        f"assert rlattr.__file__.startswith({str(target)!r}), rlattr.__file__; "
        "sys.exit(rlattr.cli.main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *TRAIN],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (elsewhere / "run" / "run.json").is_file()
