"""``rlattr intervene RUN --iteration k``: the post-hoc what-if from the command line, and
its one-line errors (exit status 2) for a missing run, an unrecorded iteration, missing
scores and an unknown rule."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest

from rlattr import AttributedPPO, RunLog, ScoreHook
from rlattr.cli.main import main

TRAP = "rlattr.envs:rlattr/TrapGrid-v0"
SMALL = {"n_steps": 64, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A TrapGrid run trained through the CLI's preset (so ``intervene`` finds its
    environment) with scores stored, and one without scores."""
    root = tmp_path_factory.mktemp("whatif_cli")
    scored, bare = root / "scored", root / "bare"
    assert main(["train", "trap_grid", "--timesteps", "1024", "--run-dir", str(bare),
                 "--no-progress"]) == 0  # fmt: skip
    AttributedPPO("MlpPolicy", TRAP, run_dir=scored, record_hooks=[ScoreHook()], **SMALL).learn(192)
    return {"scored": scored, "bare": bare}


def test_intervene_reports_delta_and_writes_the_box_plot(
    runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "report"
    args = ["intervene", str(runs["scored"]), "--iteration", "0", "2", "--episodes", "4",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "iteration 0: dropped" in printed and "random control Δ" in printed
    with open(out / "whatif.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["iteration"]) for r in rows] == [0, 2]
    negatives = [
        int((RunLog(runs["scored"]).load_scores(k, "snapshot-return")[0] < 0).sum()) for k in (0, 2)
    ]
    assert [int(r["n_dropped"]) for r in rows] == negatives
    assert (out / "whatif.png").exists() and (out / "whatif.md").exists()


def test_compute_scores_fills_in_missing_scores(
    runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    bare = runs["bare"]
    assert "snapshot-return" not in RunLog(bare).score_names(1)
    out = tmp_path / "report"
    args = ["intervene", str(bare), "--iteration", "1", "--episodes", "3", "--compute-scores",
            "--no-control", "--out", str(out)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # was numpy's "Mean of empty slice"
        assert main(args) == 0
    assert "random control" not in capsys.readouterr().out
    report = (out / "whatif.md").read_text()
    assert "no random control was run" in report
    [row] = [line for line in report.splitlines() if line.startswith("| 1 |")]
    # Neither a control Δ nor "rule > control 0/1", which would read as the rule losing.
    assert row.split("|")[5:7] == [" – ", " – "], row
    assert "snapshot-return" in RunLog(bare).score_names(1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}", "--iteration", "0"], "is not an rlattr run directory"),
        (["{scored}", "--iteration", "9"], "iteration 9 is not recorded"),
        (["{scored}", "--iteration", "0", "--scores", "tracin-return"], "no scores"),
        (["{bare}", "--iteration", "0"], "rlattr attribute"),
        (["{scored}", "--iteration", "0", "--rule", "drop_positive"], "invalid choice"),
        (["{scored}", "--iteration", "0", "--rule", "bottom", "--fraction", "1.5"], "fraction"),
        (["{scored}"], "one of the arguments --iteration --every is required"),
        (["{scored}", "--iteration", "0", "--fraction", "2"], "argument --fraction: must be"),
        (["{scored}", "--iteration", "0", "--episodes", "1"], "argument --episodes: expected"),
        (["{scored}", "--iteration", "0", "--eval-seed", "-1"], "argument --eval-seed: expected"),
        (["{scored}", "--iteration", "0", "--out", "{file}"], "is a file, not a folder"),
        (
            ["{scored}", "--iteration", "0", "--scores", "tracin-return", "--compute-scores"],
            "drop --scores to use 'snapshot-return'",
        ),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(
    runs: dict[str, Path], tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    (tmp_path / "notes.txt").write_text("a file")
    paths = {
        "missing": tmp_path / "nothing",
        "file": tmp_path / "notes.txt",
        **{k: str(v) for k, v in runs.items()},
    }
    argv = ["intervene", *(a.format(**paths) for a in args)]
    if "bare" in args[0]:  # a bare run's scores could be computed: not asked for, refused
        assert "snapshot-return" not in RunLog(runs["bare"]).score_names(0)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert message in err
