"""Sweeps: tasks × arms × seeds trained and evaluated every round, on Ray or locally.

``SweepSpec`` says what to run (``SweepSpec.load("sweep.yaml")``); ``run_sweep`` runs the
unfinished trials, each writing its result and run directory, and keeps one results
table current; ``run_trial`` trains one arm of one preset on one seed. Ray is the optional
extra ``sweep`` (``pip install 'rlattr[sweep]'``); the ``local`` backend needs nothing.
"""

from rlattr.sweep.engine import SweepOutcome, run_sweep
from rlattr.sweep.report import load_results, trial_row, trial_rows, write_report, write_trials_csv
from rlattr.sweep.spec import (
    ARMS,
    EVAL_SEED,
    SweepError,
    SweepSpec,
    SweepSpecError,
    TaskSpec,
    Trial,
    parse_arm,
)
from rlattr.sweep.trial import TrialJob, run_trial

__all__ = [
    "ARMS",
    "EVAL_SEED",
    "SweepError",
    "SweepOutcome",
    "SweepSpec",
    "SweepSpecError",
    "TaskSpec",
    "Trial",
    "TrialJob",
    "load_results",
    "parse_arm",
    "run_sweep",
    "run_trial",
    "trial_row",
    "trial_rows",
    "write_report",
    "write_trials_csv",
]
