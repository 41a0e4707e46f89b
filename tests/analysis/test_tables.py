"""Scores as a table: one row per record, joined correctly with what the run log holds."""

from __future__ import annotations

from pathlib import Path

import pandas
import pytest
import torch

from rlattr import AttributedPPO, ReturnTarget, RunLog, attribute
from rlattr.analysis.tables import scores_table, write_table
from rlattr.errors import RlattrError


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("table") / "run"
    model = AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, n_steps=64, batch_size=32, n_epochs=1,
        seed=0, device="cpu",
    )  # fmt: skip
    model.learn(128)  # two iterations of 64 records
    attribute(run_dir, 1, ReturnTarget())
    return run_dir


def test_one_row_per_record_with_its_stored_scores(scored_run: Path) -> None:
    log = RunLog(scored_run)
    table = scores_table(scored_run)
    assert len(table) == 128
    assert table["record_id"].is_unique
    assert table.groupby("iteration").size().to_dict() == {0: 64, 1: 64}
    stored, _ = log.load_scores(1, log.score_names(1)[0])
    second = table[table["iteration"] == 1]
    [column] = [c for c in table.columns if c.startswith("score:")]
    assert second[column].tolist() == stored.tolist()
    assert table[table["iteration"] == 0][column].isna().all()  # not scored there
    records = log.load_records(1)
    assert second["reward"].tolist() == records.rewards.tolist()
    assert second["kept"].all()


def test_positions_and_monte_carlo_advantages_follow_the_episodes(scored_run: Path) -> None:
    table = scores_table(scored_run, iterations=[1])
    records = RunLog(scored_run).load_records(1)
    starts = records.episode_starts.bool()
    # Position 0 exactly where an episode starts (or the buffer does).
    assert ((table["t_in_episode"] == 0).tolist()) == (starts | (records.step_index == 0)).tolist()
    # The step before an episode start ends an episode: its Monte-Carlo advantage is r − V.
    last_steps = torch.nonzero(starts[1:]).flatten()
    assert last_steps.numel() > 0
    for i in last_steps.tolist():
        expected = float(records.rewards[i]) - float(records.values[i])
        assert table["advantage_mc"].iloc[i] == pytest.approx(expected, abs=1e-6)
    assert table["advantage_mc"].iloc[-1] != table["advantage_mc"].iloc[-1]  # NaN: runs on


def test_csv_round_trip_and_unknown_suffix(scored_run: Path, tmp_path: Path) -> None:
    table = scores_table(scored_run, iterations=[1])
    path = write_table(table, tmp_path / "scores.csv")
    back = pandas.read_csv(path)
    assert back["record_id"].tolist() == table["record_id"].tolist()
    with pytest.raises(RlattrError, match=r"must end in \.csv or \.parquet"):
        write_table(table, tmp_path / "scores.xlsx")
