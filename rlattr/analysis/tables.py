"""Scores as a table: one row per record, for pandas, CSV or Parquet.

``scores_table`` joins what the run log holds about each record (where it came from, what
it saw and did, its advantages) with the scores stored for its iteration and whether the
update kept it. pandas is an optional dependency (``pip install 'rlattr[stats]'``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlattr.errors import RlattrError
from rlattr.record.runlog import RunLog
from rlattr.scoring.diagnosis import (
    episode_ends_in_buffer,
    positions_in_episode,
    reference_advantages,
)

#: Columns of every table, before the observation and score columns.
COLUMNS = (
    "iteration",
    "record",
    "record_id",
    "env",
    "step",
    "episode",
    "t_in_episode",
    "action",
    "reward",
    "advantage",
    "advantage_mc",
    "kept",
)


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as err:  # an optional extra
        raise RlattrError(
            "scores tables need pandas: pip install 'rlattr[stats]' (or pandas)"
        ) from err
    return pandas


def iteration_rows(log: RunLog, iteration: int, gamma: float) -> dict[str, list[Any]]:
    """Column name → values for every record of one iteration (see ``COLUMNS``)."""
    records = log.load_records(iteration)
    plan = log.load_plan(iteration)
    n = len(records)
    starts = records.episode_starts.view(records.n_envs, records.n_steps).long()
    # Episodes are numbered per environment from the start of the buffer.
    episode = (starts.cumsum(dim=1) - starts[:, :1]).reshape(-1)
    reference = reference_advantages(records, gamma).monte_carlo
    actions = records.actions.reshape(n, -1)
    columns: dict[str, list[Any]] = {
        "iteration": [iteration] * n,
        "record": list(range(n)),
        "record_id": records.record_ids.tolist(),
        "env": records.env_index.tolist(),
        "step": records.step_index.tolist(),
        "episode": episode.tolist(),
        "t_in_episode": positions_in_episode(records).tolist(),
        "action": actions[:, 0].tolist() if actions.shape[1] == 1 else actions.tolist(),
        "reward": records.rewards.tolist(),
        "advantage": records.advantages.tolist(),
        "advantage_mc": reference.tolist(),
        "kept": plan.keep_mask.cpu().tolist(),
        "episode_ends_in_buffer": episode_ends_in_buffer(records).tolist(),
    }
    observations = records.observations.reshape(n, -1)
    if observations.shape[1] <= 32:
        for j in range(observations.shape[1]):
            columns[f"obs_{j}"] = observations[:, j].tolist()
    else:  # images: too wide for a table; keep a summary
        columns["obs_mean"] = observations.float().mean(dim=1).tolist()
    for name in log.score_names(iteration):
        scores, _ = log.load_scores(iteration, name)
        columns[f"score:{name}"] = scores.tolist()
    return columns


def scores_table(log: RunLog | str | Path, iterations: Iterable[int] | None = None) -> Any:
    """A ``pandas.DataFrame`` with one row per record of the given iterations.

    Args:
        log: the run (a ``RunLog`` or its directory).
        iterations: which recorded iterations (default: all).

    Returns:
        Columns ``COLUMNS``, ``episode_ends_in_buffer``, the observation (``obs_j``, or
        ``obs_mean`` for images) and one ``score:<name>`` column per stored score (NaN in
        iterations where that score was not stored).
    """
    pandas = _pandas()
    log = log if isinstance(log, RunLog) else RunLog(log)
    gamma = float(log.meta["algorithm"]["gamma"])
    chosen = list(log.iterations() if iterations is None else iterations)
    frames = [pandas.DataFrame(iteration_rows(log, k, gamma)) for k in chosen]
    if not frames:
        return pandas.DataFrame(columns=list(COLUMNS))
    return pandas.concat(frames, ignore_index=True)


def write_table(table: Any, path: str | Path) -> Path:
    """Write a scores table as CSV or Parquet (by the file's suffix)."""
    path = Path(path)
    if path.suffix == ".csv":
        table.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        try:
            table.to_parquet(path, index=False)
        except ImportError as err:
            raise RlattrError("Parquet needs pyarrow: pip install pyarrow") from err
    else:
        raise RlattrError(f"{path}: the table's file must end in .csv or .parquet")
    return path
