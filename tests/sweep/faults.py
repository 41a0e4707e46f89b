"""A trial function that kills its worker once, mid-trial (pickled by value into Ray)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlattr.sweep.trial import TrialJob, run_trial


def killed_once_after_round_1(job: TrialJob, victim: str) -> dict[str, Any]:
    """Run ``job``; if it is ``victim`` and no marker file says it was killed before, end
    the worker process with ``os._exit`` right after its round-1 result was written."""
    marker = Path(job.result_path + ".killed")

    def on_point(trial: Any, point: Any) -> None:
        if trial.key == victim and point.round == 1 and not marker.exists():
            marker.write_text(f"killed pid {os.getpid()} after round 1\n")
            os._exit(1)  # a crash: no exception, no cleanup, the worker is gone

    return run_trial(
        job.trial,
        Path(job.result_path),
        Path(job.run_dir) if job.run_dir else None,
        origin=job.provenance,
        commit=job.git_commit,
        on_point=on_point,
    )
