"""``rlattr compare`` and ``rlattr sweep`` on a tiny budget, through ``rlattr.cli.main``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from rlattr.cli.main import main as rlattr
from rlattr.sweep.backends import ray_available
from tests.sweep.tables import markdown_rows, numbers, trial_metrics

AGENTS = Path(__file__).resolve().parents[2] / "agents"


def test_compare_prints_the_table_and_the_tensorboard_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the table's titles on a narrow console
    out = tmp_path / "compare"
    argv = ["compare", "cartpole", "--arms", "ppo", "iif", "random_like", "--seeds", "1"]
    # Two rounds: the preset's linear schedules reach 0 at the last update, so with one
    # round the curve would stay flat and every curve metric would be the same number.
    argv += ["--rounds", "2", "--episodes", "4", "--out", str(out)]
    assert rlattr([*argv, "--backend", "local"]) == 0  # with the progress display
    printed = capsys.readouterr().out
    assert "trials 3/3 done" in printed
    for text in ("SE_ave", "SE_peak", "AUC", "final", "random_like"):
        assert text in printed
    assert f"tensorboard --logdir {out / 'cartpole'}" in printed
    # One TensorBoard run per arm and seed, each with the evaluation curve.
    runs = sorted(p.name for p in (out / "cartpole").iterdir() if p.is_dir())
    assert runs == ["iif-s0", "ppo-s0", "random_like-s0"]
    for run in runs:
        assert list((out / "cartpole" / run).glob("events.out.tfevents.*"))
    # The table's cells (one seed: the trial's own value) recomputed from each trial's JSON.
    curves = {arm: trial_metrics(out / "cartpole" / f"{arm}-s0.json") for arm in ("ppo", "iif")}
    assert any(m["final_return"] != m["auc"] for m in curves.values())  # the curves moved
    rows = markdown_rows(out / "summary.md")
    assert sorted(rows) == ["iif", "ppo", "random_like"]
    for arm, cells in rows.items():
        metrics = trial_metrics(out / "cartpole" / f"{arm}-s0.json")
        for title, key in (("final return", "final_return"), ("AUC", "auc")):
            [value] = numbers(cells[title])
            decimals = len(cells[title].partition(".")[2])
            assert value == pytest.approx(metrics[key], abs=0.51 * 10**-decimals), (arm, title)
    with open(out / "summary.csv") as handle:
        for row in csv.DictReader(handle):
            metrics = trial_metrics(out / "cartpole" / f"{row['arm']}-s0.json")
            for key, value in metrics.items():
                assert float(row[key]) == pytest.approx(value, rel=1e-9), (row["arm"], key)
            assert (float(row["fraction_dropped"]) > 0) == (row["arm"] != "ppo")
    # Run again: everything is finished, nothing is trained.
    assert rlattr([*argv, "--backend", "local", "--no-progress"]) == 0
    assert "3 trial(s) already finished" in capsys.readouterr().out


def test_sweep_runs_a_spec_file_and_prints_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        "tasks: [{preset: cartpole, name: pole}]\narms: [ppo]\nseeds: [3]\nrounds: 2\n"
        "eval_episodes: 8\nout: results\n"
    )
    assert rlattr(["sweep", str(spec), "--backend", "local", "--no-progress", "--record"]) == 0
    printed = capsys.readouterr().out
    # --record keeps the trial's run log beside its TensorBoard events.
    assert (tmp_path / "results" / "pole" / "ppo-s3" / "runlog" / "run.json").exists()
    assert "pole/ppo-s3: done" in printed and "SE_ave" in printed
    assert f"tensorboard --logdir {tmp_path / 'results'}" in printed
    assert (tmp_path / "results" / "pole" / "ppo-s3.json").exists()
    assert (tmp_path / "results" / "summary.md").exists()
    # The table's cells recomputed from the trial's JSON (two rounds, 8 episodes: the curve
    # moves; with one round the linear schedules make the only update a no-op).
    metrics = trial_metrics(tmp_path / "results" / "pole" / "ppo-s3.json")
    assert metrics["final_return"] != metrics["auc"]
    cells = markdown_rows(tmp_path / "results" / "summary.md")["ppo"]
    for title, key in (("final return", "final_return"), ("AUC", "auc")):
        [value] = numbers(cells[title])
        decimals = len(cells[title].partition(".")[2])
        assert value == pytest.approx(metrics[key], abs=0.51 * 10**-decimals), title


def test_sweep_and_compare_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("tasks: [cartpole]\n")
    cases = [
        (
            ["sweep", str(tmp_path / "nope.yaml"), "--backend", "local"],
            "cannot read the sweep spec",
        ),
        (["sweep", str(spec), "--backend", "local", "--address", "auto"], "with --backend ray"),
        (["compare", "cartpole", "--arms", "iif", "--backend", "local"], "add ppo to --arms"),
        (["compare", "cartpole", "--seeds", "0"], "expected a whole number >= 1"),
        (["compare", "cartpole", "--arms", "ppo", "iif_p0"], "unknown arm 'iif_p0'"),
    ]
    if ray_available():  # a closed port: refused at once, not after Ray's minutes of retries
        argv = ["sweep", str(spec), "--backend", "ray", "--address", "127.0.0.1:1"]
        cases.append((argv, "no Ray cluster answers at 127.0.0.1:1"))
    for argv, message in cases:
        assert rlattr(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err


def test_a_device_this_machine_lacks_is_refused_before_any_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # SB3 alone would train every trial on the CPU without a word.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"tasks: [cartpole]\narms: [ppo]\nseeds: [0]\nrounds: 1\neval_episodes: 4\n"
        f"out: {tmp_path / 'r'}\n"
    )
    spec_cuda = tmp_path / "cuda.yaml"
    spec_cuda.write_text(spec.read_text() + "device: cuda\n")
    cases = [
        (["compare", "cartpole", "--device", "cuda", "--out", str(tmp_path / "c")], "CUDA"),
        (["compare", "cartpole", "--device", "tpu", "--out", str(tmp_path / "c")], "'tpu'"),
        (["sweep", str(spec_cuda), "--backend", "local"], "CUDA is not available here"),
    ]
    for argv, message in cases:
        assert rlattr([*argv, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
        assert "device unknown device" not in err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()
    # A finished sweep rebuilds its report on any machine: nothing is left to train.
    monkeypatch.undo()
    assert rlattr(["sweep", str(spec), "--backend", "local", "--no-progress"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rlattr(["sweep", str(spec_cuda), "--backend", "local", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "1 trial(s) already finished" in printed and "done, final" not in printed


def test_a_trial_checks_its_device_where_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a cluster the driver cannot know the workers' devices: the trial refuses, and
    # the sweep records that as the trial's error.
    from rlattr.sweep.spec import Trial
    from rlattr.sweep.trial import run_trial

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trial = Trial("cartpole", "cartpole", "ppo", 0, 1, 2, device="cuda")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="CUDA is not available here"):
            run_trial(trial, tmp_path / "r.json", tmp_path / "run")
        assert torch.get_num_threads() == 2  # the caller's threads, untouched
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "run").exists()


def test_a_preset_whose_environment_cannot_be_made_is_refused_before_any_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = yaml.safe_load((AGENTS / "cartpole.yaml").read_text())
    preset["env_id"] = "CartPol-v1"
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(preset))
    out = tmp_path / "c"
    argv = ["compare", str(path), "--arms", "ppo", "--seeds", "2", "--rounds", "1"]
    assert rlattr([*argv, "--out", str(out), "--backend", "local", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: preset 'cartpole' cannot make its environment 'CartPol-v1'")
    assert "correct env_id" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused once, before any trial (was: every trial failed)
