"""Run a sweep: plan its trials, skip finished ones, run the rest on a backend, and keep
the results table current as each trial finishes.

Layout of ``spec.out``::

    <task>/<arm>-s<seed>.json   the trial's result (status running / done / failed)
    <task>/<arm>-s<seed>/       its run directory: TensorBoard events (eval/return_mean...),
                                under ``spec.runs`` instead where the spec names one
    summary.csv, summary.md     every finished trial, rewritten after each one finishes
    <task>.png                  evaluation curves per arm (at the end)

A killed sweep resumes when run again: finished trials (same task, arm, seed, rounds and
evaluation episodes) are skipped; unfinished and failed ones start anew, each again with
``spec.retries`` retries. A finished result made with other settings stops the sweep with
an error rather than mixing two experiments in one table.
"""

from __future__ import annotations

import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from rlattr.argtypes import check_device
from rlattr.provenance import git_commit, provenance
from rlattr.record.io import atomic_write_json
from rlattr.sweep.backends import Outcome, TrialFn, ray_available, run_local, run_ray
from rlattr.sweep.report import result_path, write_report
from rlattr.sweep.spec import SweepError, SweepSpec, Trial, plan_trials
from rlattr.sweep.trial import (
    TrialJob,
    read_result,
    run_job,
    same_trial,
)

Backend = Literal["auto", "ray", "local"]


@dataclass
class SweepOutcome:
    """What a sweep did.

    Attributes:
        spec: the sweep.
        backend: the backend that ran it.
        finished: keys (``task/arm-s<seed>``) of the trials run to the end now.
        skipped: keys of the trials already finished before.
        failed: key → the last attempt's error, for trials that failed every attempt.
        report: the report files (``csv``, ``markdown``, ``plot:<task>``).
    """

    spec: SweepSpec
    backend: str
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    report: dict[str, Path] = field(default_factory=dict)


def resolve_backend(backend: Backend) -> str:
    """``auto`` is Ray where it is installed, else the local loop."""
    if backend == "auto":
        return "ray" if ray_available() else "local"
    if backend not in ("ray", "local"):
        raise SweepError(f"backend must be ray, local or auto, got {backend!r}")
    return backend


def run_dir_of(runs: Path, trial: Trial) -> Path:
    """``<runs>/<task>/<arm>-s<seed>/``: TensorBoard shows the trials of a task by arm-seed."""
    return runs / trial.task / f"{trial.arm}-s{trial.seed}"


def plan_jobs(spec: SweepSpec, command: str | None = None) -> tuple[list[TrialJob], list[str]]:
    """The jobs still to run and the keys of the trials already finished.

    Raises:
        SweepError: a finished result in ``spec.out`` was made with other settings.
    """
    out = Path(spec.out)
    origin = provenance(command)
    commit = git_commit()
    jobs, skipped = [], []
    for trial in plan_trials(spec):
        path = result_path(out, trial.task, trial.arm, trial.seed)
        payload = read_result(path)
        if payload is not None and payload.get("status") == "done":
            if not same_trial(payload, trial):
                raise SweepError(
                    f"{path} holds a finished trial made with other settings (rounds "
                    f"{payload.get('rounds')}, {payload.get('evaluation', {}).get('episodes')} "
                    f"evaluation episodes; this sweep: {trial.rounds}, {trial.episodes}): "
                    "choose another out folder, or delete that result to run it again"
                )
            skipped.append(trial.key)
            continue
        jobs.append(
            TrialJob(
                trial,
                str(path),
                str(run_dir_of(spec.runs_dir, trial)),
                provenance=origin,
                git_commit=commit,
                record=spec.record,
            )
        )
    return jobs, skipped


class _Display:
    """Progress over all rounds of all trials (rich), read from the result files.

    The trials write their curve after every round; a watcher reads the curve lengths, so
    the display works the same for trials in this process and in Ray workers.
    """

    def __init__(self, jobs: Sequence[TrialJob], console: Console, show: bool):
        self.jobs = {job.trial.key: job for job in jobs}
        self.done_rounds = dict.fromkeys(self.jobs, 0)
        self.console, self.show = console, show
        self.finished = 0
        self.failed = 0
        total = sum(job.trial.rounds + 1 for job in jobs)  # + 1: the initial evaluation
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("evaluations"),
            TimeElapsedColumn(),
            console=console,
            disable=not show,
        )
        self.task_id = self.progress.add_task(self._description(), total=total)
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}  # trial key → mtime of its result when last read

    def _description(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"trials {self.finished}/{len(self.jobs)} done{failed}"

    def poll(self) -> None:
        with self._lock:
            for key, job in self.jobs.items():
                if self.done_rounds[key] > job.trial.rounds:
                    continue
                # Re-read a result only when it changed (a long sweep has many, and long).
                try:
                    mtime = Path(job.result_path).stat().st_mtime_ns
                except OSError:
                    continue
                if self._seen.get(key) == mtime:
                    continue
                self._seen[key] = mtime
                payload = read_result(Path(job.result_path))
                if payload is not None and payload.get("status") == "running":
                    self.done_rounds[key] = len(payload.get("curve", []))
            self._refresh()

    def _refresh(self) -> None:
        self.progress.update(
            self.task_id, completed=sum(self.done_rounds.values()), description=self._description()
        )

    def trial_ended(self, outcome: Outcome) -> None:
        key = outcome.job.trial.key
        with self._lock:
            if outcome.ok:
                self.finished += 1
                self.done_rounds[key] = outcome.job.trial.rounds + 1
            else:
                self.failed += 1
            self._refresh()
        if outcome.ok and outcome.payload is not None:
            final = outcome.payload["curve"][-1]["return_mean"]
            self.progress.console.print(f"{key}: done, final evaluation return {final:.4g}")
        else:
            self.progress.console.print(f"{key}: failed: {outcome.error}", markup=False)


def _keep_result(outcome: Outcome) -> None:
    """Write the returned result where the worker could not (a cluster node's own disk)."""
    path = Path(outcome.job.result_path)
    stored = read_result(path)
    if outcome.payload is not None and (stored is None or stored.get("status") != "done"):
        atomic_write_json(path, outcome.payload)


def _record_failure(job: TrialJob, error: str | None, attempts: int) -> None:
    """Mark the trial's result file failed (keeping the curve it reached) for the record."""
    path = Path(job.result_path)
    payload = read_result(path) or {"task": job.trial.task, "arm": job.trial.arm}
    payload.update(status="failed", error=error, attempts=attempts, seed=job.trial.seed)
    atomic_write_json(path, payload)


def run_sweep(
    spec: SweepSpec,
    backend: Backend = "auto",
    *,
    address: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    console: Console | None = None,
    command: str | None = None,
    trial_fn: TrialFn = run_job,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> SweepOutcome:
    """Run every unfinished trial of ``spec`` and report.

    Args:
        spec: the sweep.
        backend: ``ray`` (Ray tasks), ``local`` (one after another here) or ``auto``.
        address: a Ray cluster to join (``ray`` only); None starts one on this machine.
        workers: trials side by side on a local Ray instance (default: the cores).
        show_progress: show a progress bar (otherwise one line per finished trial).
        console: where progress and lines go (default: standard output).
        command: the command stored in each result (default: this process's).
        trial_fn: runs one job in a worker (tests substitute one that crashes).
        on_outcome: called after each trial ends and the table is rewritten.

    Returns:
        What ran, what was skipped, what failed, and the report files.
    """
    chosen = resolve_backend(backend)
    if address is not None and chosen != "ray":
        raise SweepError("--address names a Ray cluster: use it with --backend ray")
    console = console or Console()
    command = command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    jobs, skipped = plan_jobs(spec, command)
    if jobs and address is None:
        # The trials run on this machine: refuse a device it lacks before any starts (on a
        # cluster only the workers know; each trial checks where it runs). A finished
        # sweep still rebuilds its report anywhere.
        try:
            check_device(spec.device)
        except ValueError as error:
            raise SweepError(str(error)) from None
        # ... and a preset whose environment cannot be made, once, not once per trial.
        from rlattr.run.presets import Preset

        for preset, allowed in sorted({(j.trial.preset, j.trial.allow_modules) for j in jobs}):
            Preset.load(preset, allow_modules=allowed).environment_spaces()
    result = SweepOutcome(spec, chosen, skipped=skipped)
    for job in jobs:  # an unfinished result is a killed attempt's: the trial starts anew
        Path(job.result_path).unlink(missing_ok=True)
    if skipped:
        console.print(f"{len(skipped)} trial(s) already finished in {spec.out}: skipped")
    display = _Display(jobs, console, show_progress)
    stop = threading.Event()
    watcher = None
    if chosen == "local" and show_progress:
        watcher = threading.Thread(target=_watch, args=(display, stop), daemon=True)
    with display.progress:
        if watcher is not None:
            watcher.start()
        try:
            if chosen == "ray":
                outcomes = run_ray(jobs, trial_fn, spec.retries, display.poll, address, workers)
            else:
                outcomes = run_local(jobs, trial_fn, spec.retries, display.poll)
            for outcome in outcomes:
                key = outcome.job.trial.key
                if outcome.ok:
                    result.finished.append(key)
                    _keep_result(outcome)
                else:
                    result.failed[key] = outcome.error or "unknown error"
                    _record_failure(outcome.job, outcome.error, spec.retries + 1)
                result.report = write_report(spec)
                display.trial_ended(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
        finally:
            stop.set()
    result.report = write_report(spec, final=True)
    return result


def _watch(display: _Display, stop: threading.Event, every: float = 1.0) -> None:
    while not stop.wait(every):
        display.poll()
