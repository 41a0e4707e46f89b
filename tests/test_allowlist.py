"""Nothing a run directory or preset names is imported blindly (``rlattr.allowlist``).

Two proofs of concept, each a real recorded run with an edited ``run.json``:

- ``this``: ``policy.class`` names the module ``this`` (importing it prints the Zen of
  Python);
- ``evilrun``: the run directory is itself a Python package whose ``__init__`` writes a
  marker file, ``policy.class`` is ``evilrun.Policy``, and the command runs from the run's
  parent folder, so ``evilrun`` is importable there.

Every entry point that reads a run (the CLI's replay, attribute, diagnose, inspect; the
Python ``RunLog(...).load_checkpoint`` of a sparse checkpoint and ``diagnose``) runs in a
subprocess with that folder as its working directory, the import path as a user has it
(``python -c``: the current folder first), and must run no code from it: one ``error:``
line naming the module and ``--allow-module``, exit status 2, no marker, no Zen.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rlattr import Preset, PresetError, RunLog
from rlattr.allowlist import (
    ALLOWED_MODULES,
    Allowance,
    BadClassNameError,
    DisallowedModuleError,
)
from rlattr.cli.main import main
from rlattr.record import io as run_io
from rlattr.record.serialize import check_run_names, import_class
from rlattr.run import run_env_factory

ZEN = "Beautiful is better than ugly"
MARKER = "EVIL_CODE_RAN"
EVIL_INIT = f"""
from pathlib import Path
Path(__file__).resolve().parent.parent.joinpath({MARKER!r}).write_text("ran")
class Policy:
    pass
"""
CUSTOM_MODULE = """
import torch
from stable_baselines3.common.policies import ActorCriticPolicy

class MyPolicy(ActorCriticPolicy):
    pass

class MyTanh(torch.nn.Tanh):
    pass
"""
CLI = "import sys; from rlattr.cli.main import main; sys.exit(main(sys.argv[1:]))"
LOAD_CHECKPOINT = (
    "import sys; import rlattr.record; from rlattr import RunLog; "
    "RunLog(sys.argv[1]).load_checkpoint(1)"
)
DIAGNOSE = (
    "import sys; from rlattr.analysis.diagnose import diagnose; "
    "diagnose(sys.argv[1], progress=print)"
)
# The Python API's other readers of a run: each builds the run's policy.
PYTHON_API = (
    "import sys; import rlattr; from rlattr import RunLog, ReturnTarget; "
    "log = RunLog(sys.argv[1]); call = sys.argv[2]; "
    "rlattr.replay_iteration(log, 0) if call == 'replay_iteration' else "
    "rlattr.attribute(log, 0, ReturnTarget(), store=False) if call == 'attribute' else "
    "rlattr.fidelity(log, 0, ReturnTarget(), n_subsets=2)"
)


# ---------------------------------------------------------------------- recorded runs
@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-iteration CartPole run (checkpoint 1 sparse: rebuilt by replay); read-only."""
    run = tmp_path_factory.mktemp("allowlist") / "base"
    argv = ["train", "cartpole", "--timesteps", "512", "--run-dir", str(run), "--no-progress"]
    assert main(argv) == 0
    assert "tensors" in json.loads((run / "checkpoints" / "000001.json").read_text())
    return run


def edit_run_json(run: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to ``run.json``, re-sealing its checksum where the format has one
    (as a person editing it with the library's own helper would)."""
    path = run / "run.json"
    payload = json.loads(path.read_text())
    change(payload)
    checksum_key = getattr(run_io, "JSON_CHECKSUM_KEY", None)
    if checksum_key is not None and checksum_key in payload:
        payload = run_io.with_json_checksum(payload)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))


def policy_class(name: str) -> Callable[[dict[str, Any]], None]:
    def change(payload: dict[str, Any]) -> None:
        payload["policy"]["class"] = name

    return change


def copy_run(recorded: Path, where: Path, name: str) -> Path:
    return Path(shutil.copytree(recorded, where / name))


@pytest.fixture
def zen_run(recorded: Path, tmp_path: Path) -> Path:
    run = copy_run(recorded, tmp_path, "zenrun")
    edit_run_json(run, policy_class("this.Policy"))
    return run


@pytest.fixture
def evil_run(recorded: Path, tmp_path: Path) -> Path:
    run = copy_run(recorded, tmp_path, "evilrun")
    (run / "__init__.py").write_text(EVIL_INIT)
    edit_run_json(run, policy_class("evilrun.Policy"))
    return run


def run_in(folder: Path, script: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """``python -c script args`` with ``folder`` as the working directory (first on the path)."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


ENTRY_POINTS = {
    "replay": (CLI, ["replay", "{run}"]),
    "attribute": (CLI, ["attribute", "{run}", "--iteration", "0"]),
    "diagnose": (CLI, ["diagnose", "{run}", "--no-progress"]),
    "inspect": (CLI, ["inspect", "{run}"]),
    "fidelity": (CLI, ["fidelity", "{run}", "--iteration", "0", "--subsets", "2"]),
    "stages": (CLI, ["stages", "{run}", "--stages", "1", "--no-progress"]),
    "formation": (CLI, ["formation", "{run}", "--behavior", "action:pairs.npz"]),
    "intervene": (CLI, ["intervene", "{run}", "--iteration", "0", "--compute-scores"]),
    "load_checkpoint": (LOAD_CHECKPOINT, ["{run}"]),
    "python-diagnose": (DIAGNOSE, ["{run}"]),
    "python-replay_iteration": (PYTHON_API, ["{run}", "replay_iteration"]),
    "python-attribute": (PYTHON_API, ["{run}", "attribute"]),
    "python-fidelity": (PYTHON_API, ["{run}", "fidelity"]),
}


def _call(entry: str, run: Path, extra: tuple[str, ...] = ()) -> Any:
    script, args = ENTRY_POINTS[entry]
    if entry == "formation":  # a behaviour file of CartPole's shapes, beside the run
        import numpy as np

        np.savez(run.parent / "pairs.npz", observations=np.zeros((2, 4), np.float32),
                 actions=np.zeros(2, np.int64))  # fmt: skip
    argv = [a.format(run=run.name) for a in args]
    if script == CLI:
        argv += list(extra)
    return run_in(run.parent, script, *argv)


def _assert_refused(result: Any, module: str, run: Path) -> None:
    output = result.stdout + result.stderr
    assert ZEN not in output, output
    assert not (run.parent / MARKER).exists(), "the run directory's code ran"
    if result.args[2] == CLI:
        assert result.returncode == 2, output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "Traceback" not in result.stderr
        line = lines[0]
    else:  # the Python API: the error is raised, its type and message in the traceback
        assert result.returncode == 1, output
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith("rlattr.allowlist.DisallowedModuleError: "), result.stderr
    assert f"'{module}" in line and f"--allow-module {module}" in line, line
    assert f"allow_modules=['{module}']" in line, line


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_run_naming_this_runs_nothing(entry: str, zen_run: Path) -> None:
    _assert_refused(_call(entry, zen_run), "this", zen_run)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_run_directory_package_runs_nothing(entry: str, evil_run: Path) -> None:
    # the premise: from the run's parent folder, the run directory is importable
    probe = run_in(
        evil_run.parent, "import importlib.util; print(importlib.util.find_spec('evilrun'))"
    )
    assert "evilrun" in probe.stdout and not (evil_run.parent / MARKER).exists()
    _assert_refused(_call(entry, evil_run), "evilrun", evil_run)


def test_an_allowed_custom_module_is_imported(recorded: Path, tmp_path: Path) -> None:
    """A legitimate custom policy class and activation: refused until allowed, then the
    run replays bit for bit."""
    library = tmp_path / "lib"
    library.mkdir()
    (library / "mycustom.py").write_text(CUSTOM_MODULE)
    run = copy_run(recorded, tmp_path, "custom")

    def change(payload: dict[str, Any]) -> None:
        payload["policy"]["class"] = "mycustom.MyPolicy"
        payload["policy"]["kwargs"]["activation_fn"] = {"__class__": "mycustom.MyTanh"}

    edit_run_json(run, change)
    env = {"PYTHONPATH": str(library)}
    refused = run_in(tmp_path, CLI, "replay", run.name, env=env)
    assert refused.returncode == 2, refused.stderr
    assert "--allow-module mycustom" in refused.stderr
    allowed = run_in(tmp_path, CLI, "replay", run.name, "--allow-module", "mycustom", env=env)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "Traceback" not in allowed.stderr
    # the Python API: RunLog(..., allow_modules=...) rebuilds the sparse checkpoint
    script = (
        "import sys, rlattr.record; from rlattr import RunLog; "
        "log = RunLog(sys.argv[1], allow_modules=['mycustom']); "
        "print(sorted(log.load_checkpoint(1)[0])[:1])"
    )
    api = run_in(tmp_path, script, run.name, env=env)
    assert api.returncode == 0, api.stderr


# ---------------------------------------------------------------------- damaged run.json
def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_policy_class_os_system(recorded: Path, tmp_path: Path, capsys) -> None:
    run = copy_run(recorded, tmp_path, "ossystem")
    edit_run_json(run, policy_class("os.system"))
    line = _error(capsys, ["replay", str(run)])
    assert "'os'" in line and "--allow-module os" in line
    # allowed, it is still not a class
    line = _error(capsys, ["replay", str(run), "--allow-module", "os"])
    assert "'os.system'" in line and "not a torch.nn.Module" in line


def test_policy_class_relative_name(recorded: Path, tmp_path: Path, capsys) -> None:
    run = copy_run(recorded, tmp_path, "relative")
    edit_run_json(run, policy_class(".x.Y"))
    for command in (["replay", str(run)], ["inspect", str(run)]):
        line = _error(capsys, command)
        assert "'.x'" in line and "not a dotted name" in line


def test_malformed_box_space(recorded: Path, tmp_path: Path, capsys) -> None:
    run = copy_run(recorded, tmp_path, "box")

    def change(payload: dict[str, Any]) -> None:
        payload["policy"]["observation_space"]["shape"] = [3]  # low and high hold 4

    edit_run_json(run, change)
    line = _error(capsys, ["replay", str(run)])
    assert "unreadable space" in line and "damaged or was edited" in line


# ---------------------------------------------------------------------- the checker itself
def test_names_outside_the_list_are_refused_before_import(capfd) -> None:
    allowance = Allowance.of(source="run.json of r")
    with pytest.raises(DisallowedModuleError, match=r"--allow-module this \(Python"):
        allowance.import_object("this.Policy")
    with pytest.raises(DisallowedModuleError, match="'subprocess'"):
        import_class("subprocess.Popen")
    assert ZEN not in capfd.readouterr().out
    for bad in (".x.Y", "a..b", "", "x.1y", 3):
        with pytest.raises(BadClassNameError):
            allowance.import_object(bad)  # type: ignore[arg-type]
    assert allowance.import_object("torch.nn.ReLU").__name__ == "ReLU"
    assert set(ALLOWED_MODULES) >= {"torch", "gymnasium", "stable_baselines3", "rlattr"}


def test_an_allowed_name_shadowed_in_the_current_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``highway_env`` (allowed) as a folder in the current directory, first on the path."""
    shadow = tmp_path / "highway_env"
    shadow.mkdir()
    (shadow / "__init__.py").write_text(f"open({str(tmp_path / MARKER)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "highway_env", raising=False)
    with pytest.raises(DisallowedModuleError, match="the current folder"):
        Allowance.of().check_env_id("highway_env:highway-v0")
    assert not (tmp_path / MARKER).exists()
    # and inside the run directory (which is on the path), from anywhere
    run = tmp_path / "run"
    (run / "highway_env").mkdir(parents=True)
    (run / "highway_env" / "__init__.py").write_text("")
    monkeypatch.chdir(run.parent.parent)
    monkeypatch.syspath_prepend(str(run))
    with pytest.raises(DisallowedModuleError, match="inside the run directory"):
        Allowance.of(run_dir=run).check_module("highway_env.envs")
    # allowed explicitly, the user vouches for it wherever it is
    Allowance.of(["highway_env"], run_dir=run).check_module("highway_env.envs")
    assert not (tmp_path / MARKER).exists()  # checking imports nothing


def test_env_ids() -> None:
    allowance = Allowance.of()
    allowance.check_env_id("CartPole-v1")  # registered: nothing to import
    allowance.check_env_id("minigrid:MiniGrid-Empty-8x8-v0")
    allowance.check_env_id("rlattr.envs:rlattr/TrapGrid-v0")
    with pytest.raises(DisallowedModuleError, match="'this'"):
        allowance.check_env_id("this:Zen-v0")
    Allowance.of(["this"]).check_env_id("this:Zen-v0")  # allowed: checked, not imported


def _preset(**changes: Any) -> Preset:
    return Preset.from_dict({**Preset.load("cartpole").to_dict(), **changes})


def test_presets_are_checked_before_import(tmp_path: Path, capfd) -> None:
    with pytest.raises(DisallowedModuleError, match=r"preset 'cartpole'.*'this'"):
        _preset(env_id="this:Zen-v0").environment_spaces()
    with pytest.raises(DisallowedModuleError, match="'this'"):
        _preset(wrappers=["this.Wrapper"]).env_factory()
    with pytest.raises(DisallowedModuleError, match="'this'"):
        _preset(policy_kwargs={"activation_fn": "this.Act"}).resolved_policy_kwargs()
    assert ZEN not in capfd.readouterr().out
    with pytest.raises(PresetError, match=r"not a gymnasium\.Wrapper"):
        _preset(wrappers=["torch.nn.ReLU"]).env_factory()
    # a preset file the user gives may name modules the user allows
    (tmp_path / "mywrappers.py").write_text(
        "import gymnasium\nclass Same(gymnasium.Wrapper):\n    pass\n"
    )
    path = tmp_path / "custom.yaml"
    path.write_text(
        json.dumps({**Preset.load("cartpole").to_dict(), "wrappers": ["mywrappers.Same"]})
    )
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(DisallowedModuleError, match="--allow-module mywrappers"):
            Preset.load(path).env_factory()
        preset = Preset.load(path, allow_modules=["mywrappers"])
        env = preset.with_overrides(total_timesteps=64).env_factory()()
        assert type(env).__name__ == "Same"
        env.close()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mywrappers", None)


def test_a_stored_preset_and_environment_id_are_checked(recorded: Path, tmp_path: Path) -> None:
    run = copy_run(recorded, tmp_path, "env")

    def change(payload: dict[str, Any]) -> None:
        payload["config"]["preset"]["env_id"] = "this:Zen-v0"

    edit_run_json(run, change)
    with pytest.raises(DisallowedModuleError, match=r"the preset stored in .*'this'"):
        run_env_factory(RunLog(run))
    with pytest.raises(DisallowedModuleError):
        check_run_names(RunLog(run))

    def no_preset(payload: dict[str, Any]) -> None:
        del payload["config"]["preset"]
        payload["environment"]["id"] = "this:Zen-v0"

    edit_run_json(run, no_preset)
    with pytest.raises(DisallowedModuleError, match=r"run\.json of .*'this'"):
        run_env_factory(RunLog(run))
    check_run_names(RunLog(run, allow_modules=["this"]))  # allowed: nothing raised
