"""Sweeps: tasks × arms × seeds trained and evaluated every round, on Ray or locally.

``SweepSpec`` says what to run (``SweepSpec.load("sweep.yaml")``); ``run_sweep`` runs the
unfinished trials, each writing its result and run directory, and keeps one results
table current; ``run_trial`` trains one arm of one preset on one seed. Ray is the optional
extra ``sweep`` (``pip install 'rlattr[sweep]'``); the ``local`` backend needs nothing.
"""

from rlattr.sweep.engine import SweepOutcome, run_sweep
from rlattr.sweep.spec import ARMS, SweepError, SweepSpec, SweepSpecError, TaskSpec, Trial
from rlattr.sweep.trial import TrialJob, run_trial

__all__ = [
    "ARMS",
    "SweepError",
    "SweepOutcome",
    "SweepSpec",
    "SweepSpecError",
    "TaskSpec",
    "Trial",
    "TrialJob",
    "run_sweep",
    "run_trial",
]
