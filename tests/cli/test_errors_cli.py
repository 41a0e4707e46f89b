"""Bad input at the command line: one ``error: ...`` line saying what to do, exit status 2.

Each case goes through ``rlattr.cli.main.main`` as a person would type it, and checks the
message, the exit status and that nothing was started or written that should not be.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import save_file

import rlattr
from rlattr import RunLog
from rlattr.cli import console
from rlattr.cli.main import main
from rlattr.run import resume_command
from rlattr.training.filters import RULES

# The module (``rlattr.cli.main`` the attribute is the function ``main``).
cli = importlib.import_module("rlattr.cli.main")

AGENTS = Path(__file__).resolve().parents[2] / "agents"
QUIET = ["--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-iteration CartPole run (read-only: copy it to change it)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "cartpole", "--timesteps", "1024", "--run-dir", str(run), *QUIET]) == 0
    return run


@pytest.fixture
def copy_of(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "copy"))


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``rlattr argv``; assert exit status 2 and a single ``error:`` line; return it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------- targets and stages
def test_bad_target_spec(trained: Path, capsys) -> None:
    line = _error(capsys, ["attribute", str(trained), "--iteration", "1", "--target", "return:xyz"])
    assert "unknown advantage 'xyz'" in line and "return:mc" in line
    line = _error(capsys, ["attribute", str(trained), "--iteration", "1", "--target", "value"])
    assert "unknown target 'value'" in line


@pytest.fixture
def nothing_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any iteration or checkpoint is read (the expensive part)."""

    def refuse(*args, **kwargs):
        raise AssertionError("loaded the run before checking the input")

    monkeypatch.setattr(RunLog, "load_records", refuse)
    monkeypatch.setattr(RunLog, "load_checkpoint", refuse)


@pytest.mark.usefixtures("nothing_loaded")
def test_reversed_stages(trained: Path, capsys) -> None:
    line = _error(capsys, ["stages", str(trained), "--stages", "5:2"])
    assert "stage 5:2 is reversed or empty" in line and "a < b" in line
    line = _error(capsys, ["stages", str(trained), "--records", "3:3"])
    assert "stage 3:3 is reversed or empty" in line
    line = _error(capsys, ["stages", str(trained), "--stages", "0:2,two"])
    assert "'two' is not a stage" in line


@pytest.mark.usefixtures("nothing_loaded")
def test_out_of_range_stages_fail_before_loading(trained: Path, capsys) -> None:
    line = _error(capsys, ["stages", str(trained), "--stages", "99:100"])
    assert "ends after the run's 4 iterations" in line and "0..3" in line
    assert "99💯" not in line  # rich must not read ":100:" as an emoji code
    line = _error(capsys, ["stages", str(trained), "--stages", "9"])
    assert "cannot cut 4 iterations into 9 stages" in line


def test_unknown_device(trained: Path, tmp_path: Path, capsys) -> None:
    line = _error(capsys, ["attribute", str(trained), "--iteration", "1", "--device", "tpu"])
    assert "unknown device 'tpu'" in line and "cpu" in line
    run = tmp_path / "never"
    line = _error(capsys, ["train", "cartpole", "--run-dir", str(run), "--device", "tpu"])
    assert "unknown device 'tpu'" in line
    assert not run.exists()


def test_cuda_without_cuda_is_an_error(tmp_path: Path, capsys, monkeypatch) -> None:
    # SB3 alone would train on the CPU without a word.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "never"
    line = _error(capsys, ["train", "cartpole", "--run-dir", str(run), "--device", "cuda"])
    assert "CUDA is not available here" in line and "--device cpu" in line
    assert not run.exists()


# ---------------------------------------------------------------------- IIF options
def test_iif_fraction_out_of_range(tmp_path: Path, capsys) -> None:
    run = tmp_path / "never"
    argv = ["train", "cartpole", "--run-dir", str(run), "--iif", "--iif-fraction", "1.5"]
    line = _error(capsys, argv)
    assert "--iif-fraction" in line and "[0, 1)" in line and "1.5" in line
    assert not run.exists()


def test_iif_option_without_iif(tmp_path: Path, capsys) -> None:
    run = tmp_path / "never"
    for option, value in (("--iif-fraction", "0.5"), ("--iif-rule", "bottom")):
        line = _error(capsys, ["train", "cartpole", "--run-dir", str(run), option, value])
        assert f"{option} only applies with --iif" in line and "add --iif" in line
    assert not run.exists()


def test_iif_combination_is_checked_before_training(tmp_path: Path, capsys) -> None:
    run = tmp_path / "never"
    argv = ["train", "cartpole", "--run-dir", str(run), "--iif", "--iif-rule", "random_like"]
    line = _error(capsys, argv)
    assert "random_like needs like=" in line
    assert not run.exists()


# ---------------------------------------------------------------------- run.json
def test_binary_garbage_in_run_json(copy_of: Path, capsys) -> None:
    (copy_of / "run.json").write_bytes(bytes(range(256)) * 4)
    for argv in (["inspect", str(copy_of)], ["attribute", str(copy_of), "--iteration", "1"]):
        line = _error(capsys, argv)
        assert "run.json is not valid JSON" in line


@pytest.mark.parametrize("key", ["algorithm", "policy"])
def test_missing_keys_in_run_json(copy_of: Path, capsys, key: str) -> None:
    meta = json.loads((copy_of / "run.json").read_text())
    del meta[key]
    (copy_of / "run.json").write_text(json.dumps(meta))
    line = _error(capsys, ["attribute", str(copy_of), "--iteration", "1"])
    assert f"run.json lacks {key}" in line and "restore it" in line


def test_missing_inner_key_in_run_json(copy_of: Path, capsys) -> None:
    meta = json.loads((copy_of / "run.json").read_text())
    del meta["algorithm"]["gamma"]
    (copy_of / "run.json").write_text(json.dumps(meta))
    assert "run.json lacks algorithm.gamma" in _error(capsys, ["inspect", str(copy_of)])


# ---------------------------------------------------------------------- presets
def _preset_file(tmp_path: Path, **ppo: object) -> Path:
    payload = yaml.safe_load((AGENTS / "cartpole.yaml").read_text())
    payload["ppo"].update(ppo)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


def test_preset_with_a_word_for_a_number(tmp_path: Path, capsys) -> None:
    preset = _preset_file(tmp_path, batch_size="big")
    line = _error(capsys, ["train", str(preset), "--run-dir", str(tmp_path / "never")])
    assert "ppo.batch_size must be a whole number >= 1, got 'big'" in line


def test_preset_with_gamma_above_one_does_not_train(tmp_path: Path, capsys) -> None:
    preset = _preset_file(tmp_path, gamma=1.7)
    run = tmp_path / "never"
    line = _error(capsys, ["train", str(preset), "--run-dir", str(run)])
    assert "ppo.gamma must be a number in (0, 1], got 1.7" in line
    assert not run.exists()


def test_preset_that_is_not_yaml(tmp_path: Path, capsys) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    assert "binary data, not text" in _error(capsys, ["train", str(binary)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [cartpole\n")
    line = _error(capsys, ["train", str(broken)])
    assert "is not valid YAML: expected ',' or ']'" in line and "line 2" in line


def test_existing_run_without_resume(trained: Path, capsys) -> None:
    line = _error(capsys, ["train", "cartpole", "--run-dir", str(trained)])
    assert "already holds a run: add --resume" in line


# ---------------------------------------------------------------------- action files
@pytest.mark.parametrize(
    ("observations", "actions", "message"),
    [
        (np.zeros((5, 3), np.float32), np.zeros(5), "observations have shape (5, 3)"),
        (np.zeros((5, 4), np.float32), np.zeros(4), "4 actions for 5 observations"),
        (np.zeros((5, 4), np.float32), np.full(5, 7), "actions must be integers in [0, 2)"),
        (np.zeros((5, 4), np.float32), np.zeros((5, 3)), "actions have shape (5, 3)"),
    ],
    ids=["observation-shape", "count", "out-of-space", "action-shape"],
)
def test_wrong_action_file(trained: Path, tmp_path: Path, capsys, observations, actions, message):
    path = tmp_path / "pairs.npz"
    np.savez(path, observations=observations, actions=actions)
    target = f"action:{path}"
    line = _error(capsys, ["attribute", str(trained), "--iteration", "1", "--target", target])
    assert message in line, line
    assert not (trained / "iterations" / "000001" / "scores").exists()


def test_unreadable_or_incomplete_action_file(trained: Path, tmp_path: Path, capsys) -> None:
    argv = ["attribute", str(trained), "--iteration", "1", "--target"]
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    assert "is not a readable safetensors file" in _error(capsys, [*argv, f"action:{junk}"])
    half = tmp_path / "half.safetensors"
    save_file({"observations": torch.zeros(3, 4)}, half)
    assert "lacks ['actions']" in _error(capsys, [*argv, f"action:{half}"])
    missing = tmp_path / "missing.npz"
    assert "does not exist" in _error(capsys, [*argv, f"action:{missing}"])
    line = _error(capsys, [*argv, f"action:{tmp_path}"])  # was: "does not exist"
    assert f"action target {tmp_path} is a folder: give the .npz or .safetensors file" in line


# ---------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_during_train_prints_how_to_resume(tmp_path: Path, capsys, monkeypatch) -> None:
    from rlattr.training.ppo import AttributedPPO

    collect = AttributedPPO.collect_rollouts
    calls = []

    def interrupted_third_rollout(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return collect(self, *args, **kwargs)

    monkeypatch.setattr(AttributedPPO, "collect_rollouts", interrupted_third_rollout)
    run = tmp_path / "run"
    argv = ["train", "cartpole", "--timesteps", "1024", "--run-dir", str(run), *QUIET]
    assert main(argv) == console.EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "interrupted: iteration 1 is the last committed (512 steps)" in err
    [command] = [line for line in err.splitlines() if line.startswith("resume with: ")]
    words = shlex.split(command.removeprefix("resume with: "))
    assert words[1:] == [
        "train", "cartpole", "--run-dir", str(run), "--seed", "0", "--timesteps", "1024",
        "--resume",
    ]  # fmt: skip
    # The printed command continues the run to its end.
    monkeypatch.setattr(AttributedPPO, "collect_rollouts", collect)
    assert main([*words[1:], *QUIET]) == 0
    assert "resuming" in capsys.readouterr().out
    assert RunLog(run).iterations() == [0, 1, 2, 3]


def test_a_full_disk_during_train_says_what_and_how_to_resume(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from rlattr.training.ppo import AttributedPPO

    collect = AttributedPPO.collect_rollouts
    calls = []
    run = tmp_path / "run"

    def disk_full_on_third_rollout(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(run / "iterations"))
        return collect(self, *args, **kwargs)

    monkeypatch.setattr(AttributedPPO, "collect_rollouts", disk_full_on_third_rollout)
    argv = ["train", "cartpole", "--timesteps", "1024", "--run-dir", str(run), *QUIET]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert (
        lines[0]
        == f"error: {run / 'iterations'}: No space left on device; make room or fix that path"
    )
    assert "iteration 1 is the last committed (512 steps)" in lines[1]
    assert lines[2].startswith("resume with: ") and lines[2].endswith("--resume")


def test_resume_command_spells_out_iif_options(tmp_path: Path, capsys, monkeypatch) -> None:
    run = tmp_path / "run"
    argv = ["train", "cartpole", "--timesteps", "256", "--run-dir", str(run), *QUIET]
    iif = ["--iif", "--iif-rule", "bottom", "--iif-fraction", "0.25"]
    assert main([*argv, *iif]) == 0
    command = resume_command(RunLog(run))
    assert "--iif --iif-rule bottom --iif-fraction 0.25" in command
    assert "--iif-minibatching" not in command  # the preset's own value needs no option


# ---------------------------------------------------------------------- inspect
def test_inspect_reports_a_gap(copy_of: Path, capsys) -> None:
    (copy_of / "iterations" / "000002" / "iteration.json").unlink()
    assert main(["inspect", str(copy_of)]) == 1
    out = capsys.readouterr().out
    assert "all checksums match" not in out
    assert "iteration 2 is not committed" in out and "although later ones are" in out


def test_inspect_reports_an_interrupted_run(copy_of: Path, capsys) -> None:
    # What a kill leaves: the newest iteration written but not committed.
    (copy_of / "iterations" / "000003" / "iteration.json").unlink()
    assert main(["inspect", str(copy_of)]) == 0  # nothing is damaged
    out = capsys.readouterr().out
    assert "interrupted" in out and "1 uncommitted" in out
    assert "--resume" in out and "all checksums match" in out


def test_inspect_shows_iif_and_stored_scores(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    argv = ["train", "cartpole", "--timesteps", "512", "--run-dir", str(run), *QUIET]
    iif = ["--iif", "--iif-rule", "bottom", "--iif-fraction", "0.25"]
    assert main([*argv, *iif, "--nonfinite", "skip-iteration"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "rule bottom, fraction 0.25" in out
    assert re.search(r"non-finite values\s+│\s+skip-iteration", out)
    assert "snapshot-return: 2 iteration(s) (0..1)" in out
    assert "complete" in out


# ---------------------------------------------------------------------- stored scores
def test_score_names_carry_the_target(copy_of: Path, tmp_path: Path, capsys) -> None:
    base = ["attribute", str(copy_of), "--iteration", "1", "--top", "1"]
    assert main([*base, "--target", "return"]) == 0
    assert main([*base, "--target", "return:mc"]) == 0
    records = RunLog(copy_of).load_records(1)
    for name, rows in (("a.npz", slice(0, 3)), ("b.npz", slice(3, 6))):
        np.savez(
            tmp_path / name,
            observations=records.observations[rows].numpy(),
            actions=records.actions[rows, 0].numpy(),
        )
        assert main([*base, "--target", f"action:{tmp_path / name}"]) == 0
    out = capsys.readouterr().out
    names = RunLog(copy_of).score_names(1)
    assert "snapshot-return" in names and "snapshot-return-mc" in names
    actions = [n for n in names if n.startswith("snapshot-action-")]
    assert len(actions) == 2, names  # two files, two entries: neither overwrote the other
    where = copy_of / "iterations" / "000001" / "scores"
    assert f"stored as 'snapshot-return-mc' in {where}" in out


def test_no_store(copy_of: Path, capsys) -> None:
    argv = ["attribute", str(copy_of), "--iteration", "1", "--top", "1", "--no-store"]
    assert main(argv) == 0
    assert "not stored (--no-store)" in capsys.readouterr().out
    assert RunLog(copy_of).score_names(1) == []


# ---------------------------------------------------------------------- help
def _subparsers():
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return parser, sub.choices


def test_every_option_has_help_and_shows_its_default() -> None:
    _, commands = _subparsers()
    for name, command in commands.items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if action.dest == "help":
                continue
            assert action.help, f"rlattr {name} {action.option_strings or action.dest}: no help"
            # None and False mean "the preset's" / "off", which the help text says in words.
            switch = action.default is None or isinstance(action.default, bool)
            if action.option_strings and not switch:
                shown = f"(default: {action.default})"
                assert "default" in action.help or shown in text, (name, action.option_strings)


def test_iif_options_come_from_the_config_dataclass(capsys) -> None:
    _, commands = _subparsers()
    options = {a.dest: a for a in commands["train"]._actions}
    assert tuple(options["iif_rule"].choices) == RULES
    assert "which records to drop" in options["iif_rule"].help  # IIF's field metadata
    assert "else 0.125" in options["iif_fraction"].help
    assert main(["train", "--help"]) == 0
    assert "--iif-minibatching {recut,as_drawn}" in capsys.readouterr().out


def test_version(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rlattr {rlattr.__version__}"


def test_fidelity_shows_progress_on_stderr(trained: Path, capsys, monkeypatch) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(console, "error_console", Console(file=terminal, force_terminal=True))
    argv = ["fidelity", str(trained), "--iteration", "1", "--method", "snapshot"]
    assert main([*argv, "--subsets", "2", "--orders", "1"]) == 0
    assert "snapshot: scoring, then 2 leave-subset-out replays" in terminal.getvalue()
    assert "LDS" in capsys.readouterr().out


# ---------------------------------------------------------------------- paths
# Every command that reads a run names it as its first argument; the folder is checked
# before the command opens anything.
RUN_COMMANDS = [
    ["inspect"],
    ["replay"],
    ["attribute", "--iteration", "0"],
    ["fidelity", "--iteration", "0"],
    ["stages"],
    ["diagnose"],
    ["formation", "--behavior", "return"],
    ["intervene", "--iteration", "0"],
]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("missing", "it does not exist; give the folder `rlattr train --run-dir` wrote"),
        ("file", "it is a file; give the folder that holds run.json"),
        ("run.json", "but the run's run.json: give its folder, {run}"),
        ("parent", "(no run.json): give the folder `rlattr train --run-dir` wrote (runs "
         "inside it: {run})"),
    ],
    ids=["missing", "file", "run.json", "parent"],
)  # fmt: skip
@pytest.mark.parametrize("command", RUN_COMMANDS, ids=[c[0] for c in RUN_COMMANDS])
def test_a_path_that_is_not_a_run_directory(
    trained: Path, tmp_path: Path, capsys, where: str, message: str, command: list[str]
) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    path = {
        "missing": tmp_path / "nothing",
        "file": tmp_path / "notes.txt",
        "run.json": trained / "run.json",
        "parent": trained.parent,  # the folder above the run (runs/, say)
    }[where]
    line = _error(capsys, [command[0], str(path), *command[1:]])
    assert f"{path} is not an rlattr run directory" in line
    assert message.format(run=trained) in line, line


@pytest.mark.usefixtures("nothing_loaded")
def test_attribute_out_is_checked_before_scoring(trained: Path, tmp_path: Path, capsys) -> None:
    argv = ["attribute", str(trained), "--iteration", "1", "--out"]
    line = _error(capsys, [*argv, str(tmp_path)])
    assert f"{tmp_path} is a folder: give a file to write, e.g. {tmp_path / 'report.csv'}" in line
    line = _error(capsys, [*argv, str(tmp_path / "scores.txt")])
    assert "scores.txt: the file must end in .csv or .parquet" in line
    (tmp_path / "notes.txt").write_text("a file")
    line = _error(capsys, [*argv, str(tmp_path / "notes.txt" / "scores.csv")])
    assert f"{tmp_path / 'notes.txt'} is a file, not a folder; choose another path" in line


def test_train_run_dir_that_is_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("a file")
    argv = ["train", "cartpole", "--timesteps", "256", *QUIET, "--run-dir"]
    line = _error(capsys, [*argv, str(tmp_path / "notes.txt")])
    assert "notes.txt is a file, not a folder: give a folder" in line
    line = _error(capsys, [*argv, str(tmp_path / "notes.txt" / "run")])
    assert "notes.txt is a file, not a folder; choose another path" in line
    assert (tmp_path / "notes.txt").read_text() == "a file"


def test_a_path_the_file_system_refuses_is_one_line(
    trained: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    # What a read-only mount, a full disk or /proc gives: seen only when writing.
    import rlattr.analysis.tables

    out = tmp_path / "scores.csv"

    def refuse(table, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(rlattr.analysis.tables, "write_table", refuse)
    argv = ["attribute", str(trained), "--iteration", "1", "--no-store", "--out", str(out)]
    line = _error(capsys, argv)
    assert f"{out}: Permission denied; check that path, or choose another" in line

    def broken(table, path):
        raise OSError("not about a path")  # a bug, not the user's: keeps its traceback

    monkeypatch.setattr(rlattr.analysis.tables, "write_table", broken)
    with pytest.raises(OSError, match="not about a path"):
        main(argv)


# ---------------------------------------------------------------------- environments
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"env_id": "CartPol-v1"}, "Did you mean: `CartPole`?"),
        ({"env_kwargs": {"render_mod": "rgb_array"}}, "unexpected keyword argument 'render_mod'"),
    ],
    ids=["env_id", "env_kwargs"],
)  # fmt: skip
def test_preset_whose_environment_cannot_be_made(
    tmp_path: Path, capsys, edit: dict, message: str
) -> None:
    payload = {**yaml.safe_load((AGENTS / "cartpole.yaml").read_text()), **edit}
    preset = tmp_path / "edited.yaml"
    preset.write_text(yaml.safe_dump(payload))
    run = tmp_path / "never"
    line = _error(capsys, ["train", str(preset), "--run-dir", str(run), *QUIET])
    assert "preset 'cartpole' cannot make its environment" in line and message in line
    assert "correct env_id or env_kwargs in the preset" in line
    assert not run.exists()


# ---------------------------------------------------------------------- counts
def test_more_threads_than_cpus(trained: Path, capsys) -> None:
    # OpenMP segfaulted on --threads 100000 (exit status 139, no message).
    cpus = os.cpu_count() or 1
    line = _error(capsys, ["--threads", str(cpus + 1), "inspect", str(trained)])
    assert f"argument --threads: {cpus + 1} threads on a machine with {cpus} CPU(s)" in line
    assert f"use 1 to {cpus}" in line


def test_replay_of_a_run_without_iterations(copy_of: Path, capsys) -> None:
    shutil.rmtree(copy_of / "iterations")  # was: exit status 0, having replayed nothing
    line = _error(capsys, ["replay", str(copy_of)])
    assert f"{copy_of} holds no committed iteration to replay" in line


# ---------------------------------------------------------------------- SB3's own checks
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"n_envs": 1, "ppo": {"n_steps": 1}}, "`n_steps * n_envs` must be greater than 1"),
        ({"policy": "CnnPolicy"}, "You should use NatureCNN only with images"),
    ],
    ids=["one-record-buffer", "cnn-on-a-vector"],
)
def test_preset_that_sb3_refuses(tmp_path: Path, capsys, edit: dict, message: str) -> None:
    payload = yaml.safe_load((AGENTS / "cartpole.yaml").read_text())
    payload["ppo"].update(edit.pop("ppo", {}))
    preset = tmp_path / "edited.yaml"
    preset.write_text(yaml.safe_dump({**payload, **edit}))
    run = tmp_path / "never"
    line = _error(capsys, ["train", str(preset), "--run-dir", str(run), *QUIET])
    assert "preset 'cartpole' cannot be trained as written: " in line and message in line
    assert line.endswith("; correct the preset")
    assert not run.exists()


def test_an_assertion_in_rlattr_keeps_its_traceback(tmp_path: Path, monkeypatch) -> None:
    from rlattr.training.ppo import AttributedPPO

    def broken(self, *args, **kwargs):
        raise AssertionError("a bug in rlattr")

    monkeypatch.setattr(AttributedPPO, "__init__", broken)
    with pytest.raises(AssertionError, match="a bug in rlattr"):
        main(["train", "cartpole", "--run-dir", str(tmp_path / "run"), *QUIET])
