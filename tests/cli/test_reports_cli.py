"""``rlattr diagnose``, ``rlattr formation`` and ``rlattr attribute --out`` end to end."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlattr import IIF, AttributedPPO, RunLog
from rlattr.cli.main import main
from rlattr.record.replay import build_policy


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("reports") / "run"
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, n_steps=128, batch_size=64, n_epochs=1,
        seed=0, device="cpu", iif=IIF(fraction=0.5),
    ).learn(384)  # fmt: skip
    return run_dir


def test_diagnose_writes_the_report(run: Path, capsys) -> None:
    out = run / "diag.html"
    args = ["diagnose", str(run), "--out", str(out), "--fidelity-subsets", "4", "--no-progress"]
    assert main(args) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    printed = capsys.readouterr().out
    assert "fidelity at iteration" in printed and f"report: {out}" in printed
    # The table by quarter of training (here one iteration a quarter), recomputed from the
    # run log: the share of the buffer IIF dropped and of negatively scored records.
    log = RunLog(run)
    rows = {
        cells[0]: cells[1:]
        for row in re.findall(r"<tr>(.*?)</tr>", out.read_text(), flags=re.S)
        if (cells := re.findall(r"<td>(.*?)</td>", row))
    }
    for k in log.iterations():
        dropped, negative = rows[f"Q{k + 1} (iterations {k}–{k})"][:2]
        keep = log.load_plan(k).keep_mask
        scores = log.load_scores(k, "snapshot-return")[0]
        assert float(dropped) == pytest.approx(1 - int(keep.sum()) / len(keep), abs=5e-4)
        assert float(negative) == pytest.approx(int((scores < 0).sum()) / len(scores), abs=5e-4)


def test_formation_writes_csv_and_figures(run: Path, tmp_path: Path, capsys) -> None:
    records = RunLog(run).load_records(0)
    pairs = tmp_path / "pairs.npz"
    np.savez(pairs, observations=records.observations[:4].numpy(), actions=np.zeros(4))
    out = tmp_path / "formation"
    args = ["formation", str(run), "--behavior", f"action:{pairs}", "--group-by",
            "advantage_sign", "--neighbours", "5", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    table = pandas.read_csv(out / "formation.csv")
    assert set(table["group"]) <= {"Â>0", "Â≤0"} and sorted(set(table["iteration"])) == [0, 1, 2]
    assert (out / "formation_heatmap.png").stat().st_size > 1000
    assert "Pearson" in capsys.readouterr().out
    # The behaviour f(θ_k) = mean log π_θk(a = 0 | o) over the pairs, from each logged θ_k.
    log = RunLog(run)
    policy = build_policy(log)
    observations = torch.as_tensor(records.observations[:4])

    def behaviour(k: int) -> float:
        state = log.load_checkpoint(k)[0]
        policy.load_state_dict({n: state["policy." + n] for n in policy.state_dict()})
        with torch.no_grad():
            probs = policy.get_distribution(observations).distribution.probs
        return float(torch.log(probs[:, 0]).double().mean())

    values = {k: behaviour(k) for k in (0, 1, 2, 3)}
    by_iteration = table.groupby("iteration")[["behavior", "change"]].first()
    for k in (0, 1, 2):
        assert by_iteration.loc[k, "behavior"] == pytest.approx(values[k], abs=1e-5)
        assert by_iteration.loc[k, "change"] == pytest.approx(values[k + 1] - values[k], abs=1e-5)


def test_formation_refuses_an_unknown_grouping(run: Path, tmp_path: Path, capsys) -> None:
    records = RunLog(run).load_records(0)
    pairs = tmp_path / "pairs.npz"
    np.savez(pairs, observations=records.observations[:2].numpy(), actions=np.zeros(2))
    args = ["formation", str(run), "--behavior", f"action:{pairs}", "--group-by", "colour"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --group-by 'colour': use one of") and "\n" not in err


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``rlattr argv``; assert exit status 2 and one ``error:`` line; return it."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("os:getcwd", "failed (TypeError: "),  # takes no records
        ("builtins:dir", "returned "),  # a list, but not one label per record
    ],
)
def test_formation_group_by_function_that_does_not_label_records(
    run: Path, tmp_path: Path, capsys, function: str, message: str
) -> None:
    argv = ["formation", str(run), "--behavior", "return", "--group-by", function,
            "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    line = _error(capsys, argv)
    assert f"--group-by '{function}' {message}" in line
    assert "it must take the records (rlattr Records) and return one label per record" in line


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [("--fidelity-subsets", "2", ">= 4, got 2"), ("--fidelity-iterations", "-1", ">= 0, got -1")],
)
def test_diagnose_names_the_option_out_of_range(
    run: Path, capsys, option: str, value: str, expected: str
) -> None:
    line = _error(capsys, ["diagnose", str(run), option, value])
    assert f"argument {option}: expected a whole number {expected}" in line


def test_report_out_of_the_wrong_kind_is_refused_before_any_work(
    run: Path, tmp_path: Path, capsys
) -> None:
    (tmp_path / "notes.txt").write_text("a file")
    line = _error(capsys, ["diagnose", str(run), "--out", str(tmp_path)])
    assert f"{tmp_path} is a folder: give a file to write" in line
    argv = ["formation", str(run), "--behavior", "return", "--out", str(tmp_path / "notes.txt")]
    assert "notes.txt is a file, not a folder" in _error(capsys, argv)
    assert (tmp_path / "notes.txt").read_text() == "a file"
    assert not (run / "reports").exists()  # nothing was computed, nothing written


def test_attribute_out_in_a_new_folder(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "scores.csv"  # its folder is made, as every --out's is
    assert main(["attribute", str(run), "--iteration", "1", "--no-store", "--out", str(out)]) == 0
    assert len(pandas.read_csv(out)) == 128


def test_attribute_writes_a_table(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "scores.csv"
    args = ["attribute", str(run), "--iteration", "1", "--no-store", "--out", str(out)]
    assert main(args) == 0
    table = pandas.read_csv(out)
    assert len(table) == 128
    assert table["kept"].sum() < 128  # IIF dropped some records of this iteration
    assert "score:snapshot-return" in table.columns
    assert f"wrote {out}" in capsys.readouterr().out


def test_train_and_inspect_state_the_share_of_the_buffer_dropped(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "iif"
    args = ["train", "cartpole", "--iif", "--iif-fraction", "0.5", "--timesteps", "768",
            "--run-dir", str(run_dir), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    # Independently of the plans on disk: what the board logged while training.
    events = EventAccumulator(str(next((run_dir / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    shares = [event.value for event in events.Scalars("filter/fraction_dropped")]
    assert len(shares) == len(RunLog(run_dir).iterations()) == 3
    expected = f"{sum(shares) / len(shares):.1%} of the buffer on average"
    assert sum(shares) > 0 and f"IIF dropped {expected}" in capsys.readouterr().out
    assert main(["inspect", str(run_dir)]) == 0
    assert expected in capsys.readouterr().out
