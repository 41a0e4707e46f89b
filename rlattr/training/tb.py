"""What rlattr adds to the TensorBoard scalars SB3 already writes.

SB3's logger writes ``SummaryWriter`` event files (no TensorFlow needed); rlattr records
its own values through the same logger so they land in the same run, under ``rlattr/``
and ``time/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from stable_baselines3.common.logger import Logger


@dataclass(frozen=True)
class IterationTiming:
    """Wall-clock seconds of one iteration's phases."""

    rollout_s: float
    scoring_s: float
    update_s: float
    logging_s: float


def record_iteration(
    logger: Logger,
    iteration: int,
    n_records: int,
    n_kept: int,
    timing: IterationTiming,
    bytes_written: int,
) -> None:
    """Record the per-iteration rlattr scalars (``bytes_written``: run-log bytes on disk so
    far; writes finish in the background, so the latest iteration may not be counted yet)."""
    logger.record("rlattr/iteration", iteration)
    logger.record("rlattr/records", n_records)
    logger.record("rlattr/records_kept", n_kept)
    logger.record("rlattr/records_kept_fraction", n_kept / max(n_records, 1))
    logger.record("rlattr/run_log_bytes", bytes_written)
    logger.record("time/rollout_s", timing.rollout_s)
    logger.record("time/scoring_s", timing.scoring_s)
    logger.record("time/update_s", timing.update_s)
    logger.record("time/logging_s", timing.logging_s)
