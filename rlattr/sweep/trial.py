"""One trial: train a preset's arm on one seed, evaluating the policy after every round.

The trial writes its result JSON after every round, atomically (temp file + rename), with
the command, versions, git commit and settings; ``status`` is ``running`` until the
budget is spent, then ``done``. A trial that keeps its run log (``record``) resumes after a
kill from the log's last checkpoint, its curve kept up to there; one without a run log
starts anew.
Its run directory, if given, receives the TensorBoard events of the run (``eval/*`` after
every round, SB3's ``train/*`` and rlattr's ``iif/*``), named by the directory.

The result format is the one the IIF paper's suite has always been committed in
(experiments/results/suite); the sweep adds keys, never renames them.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlattr.argtypes import check_device
from rlattr.provenance import git_commit, provenance
from rlattr.record.io import atomic_write_json
from rlattr.run import arm_iif, build_model
from rlattr.sweep.spec import Trial

# A recording trial's run log, inside its run directory.
RUN_LOG_FOLDER = "runlog"
# Keys whose values must agree for a finished result to count as this trial's.
_IDENTITY = ("task", "arm", "seed", "rounds")


def read_result(path: Path) -> dict[str, Any] | None:
    """The result JSON at ``path``; None if it is missing or unreadable (a torn write)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def is_done(path: Path) -> bool:
    """Whether ``path`` holds a finished trial."""
    payload = read_result(path)
    return payload is not None and payload.get("status") == "done"


@dataclass(frozen=True)
class TrialJob:
    """A trial with where it writes and what it records: what a backend ships to a worker.

    Attributes:
        trial: what to train.
        result_path: the result JSON.
        run_dir: the trial's run directory (TensorBoard events); None writes none.
        provenance: the sweep's command, versions and machine (taken by the driver: a
            worker's own ``sys.argv`` is Ray's).
        git_commit: the code's commit, taken by the driver.
        extra: keys added to the result (e.g. ``{"evaluation": {"paper_episodes": 1000}}``;
            a mapping is merged into the mapping of the same key).
        record: keep the trial's run log in ``<run_dir>/runlog``.
    """

    trial: Trial
    result_path: str
    run_dir: str | None = None
    provenance: dict[str, Any] | None = None
    git_commit: str | None = None
    extra: dict[str, Any] | None = None
    record: bool = False


def run_job(job: TrialJob) -> dict[str, Any]:
    """``run_trial`` for a job (the function backends call in their workers)."""
    return run_trial(
        job.trial,
        Path(job.result_path),
        None if job.run_dir is None else Path(job.run_dir),
        origin=job.provenance,
        commit=job.git_commit,
        extra=job.extra,
        record=job.record,
    )


def run_trial(
    trial: Trial,
    result_path: Path,
    run_dir: Path | None = None,
    *,
    origin: dict[str, Any] | None = None,
    commit: str | None = None,
    extra: dict[str, Any] | None = None,
    on_point: Callable[[Trial, Any], None] | None = None,
    record: bool = False,
) -> dict[str, Any]:
    """Train ``trial`` for its rounds, evaluating after every round; returns the result.

    Args:
        trial: what to train.
        result_path: the result JSON, rewritten (atomically) after every round.
        run_dir: the trial's run directory for TensorBoard events; emptied first (a retried
            trial starts anew and must not leave the killed attempt's curve beside its own).
        origin: command, versions and machine (default: this process's).
        commit: the code's git commit (default: ``git_commit()``).
        extra: keys added to the result; a mapping merges into the mapping of its key.
        on_point: called with (trial, ``EvalPoint``) after every evaluation.
        record: also keep the trial's run log (``rlattr.RunLog``: records, update plans,
            checkpoints) in ``<run_dir>/runlog``; needs ``run_dir``.

    Returns:
        The result as written, ``status`` ``done``.
    """
    import torch

    from rlattr.run.presets import Preset
    from rlattr.training.evaluation import EvalEveryRound, EvalPoint

    if record and run_dir is None:
        raise ValueError("record=True keeps the run log in the trial's run_dir: give run_dir")
    # On the machine that trains (a cluster's worker): SB3 would fall back to the CPU.
    check_device(trial.device)
    # One thread per trial: trials run side by side, and one thread is deterministic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        preset = Preset.load(trial.preset, allow_modules=trial.allow_modules)
        iif = arm_iif(preset, trial.arm, trial.seed)
        run_log_dir = run_dir / RUN_LOG_FOLDER if record and run_dir is not None else None
        before = _resumable(result_path, trial, run_log_dir)
        if run_dir is not None and before is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        model = build_model(
            preset,
            run_dir=run_log_dir,
            seed=trial.seed,
            device=trial.device,
            iif=iif,
            resume=before is not None,
        )
        if run_dir is not None:
            from stable_baselines3.common.logger import configure

            # The sweep's own logger: TensorBoard in the trial's folder (not runlog/tb), so
            # `tensorboard --logdir <out>` shows every trial by its name.
            model.set_logger(configure(str(run_dir), ["tensorboard"]))
        steps_per_round = model.n_steps * model.n_envs
        payload: dict[str, Any] = {
            **(origin if origin is not None else provenance()),
            "git_commit": commit if commit is not None else git_commit(),
            "status": "running",
            "task": trial.task,
            "arm": trial.arm,
            "seed": trial.seed,
            "rounds": trial.rounds,
            "steps_per_round": steps_per_round,
            "preset": preset.to_dict(),
            "iif": None if iif is None else {k: str(v) for k, v in vars(iif).items()},
            "evaluation": {
                "episodes": trial.episodes,
                "every": trial.eval_every,
                "policy": "stochastic",
                "episode_seeds": f"{trial.eval_seed} + j",
                "sampling_seed": trial.eval_seed,
                "n_envs": trial.eval_envs,
            },
            "torch_threads": torch.get_num_threads(),
            "curve": [],
        }
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(payload.get(key), dict):
                payload[key] = {**payload[key], **value}
            else:
                payload[key] = value
        if run_dir is not None:
            payload["run_dir"] = str(run_dir)
        if run_log_dir is not None:
            payload["run_log"] = str(run_log_dir)

        def record(point: Any) -> None:
            payload["curve"].append(point.to_dict())
            atomic_write_json(result_path, payload)
            if on_point is not None:
                on_point(trial, point)

        def write_clock(rounds: int, wall: float, cpu: float) -> None:
            # What a resume reads back: the training clocks at the latest round.
            payload["clock"] = {
                "rounds": rounds,
                "train_seconds": wall,
                "train_cpu_seconds": cpu,
                "wall_seconds": time.perf_counter() - start,
            }
            atomic_write_json(result_path, payload)

        start = time.perf_counter()
        evaluation = EvalEveryRound(
            preset.env_factory(),
            episodes=trial.episodes,
            seed=trial.eval_seed,
            n_envs=trial.eval_envs,
            on_point=record,
            every=trial.eval_every,
            on_round=write_clock,
        )
        if before is not None:
            rounds_done = model.iteration
            kept, clock = _curve_before(before, rounds_done)
            payload["curve"] = kept
            payload["resumed"] = [*before.get("resumed", []), {"round": rounds_done}]
            payload["wall_seconds_before"] = before.get("wall_seconds_before", 0.0) + before.get(
                "clock", {}
            ).get("wall_seconds", 0.0)
            evaluation.resume([EvalPoint(**p) for p in kept], rounds_done, clock)
        model.learn(
            trial.rounds * steps_per_round - model.num_timesteps,
            callback=evaluation,
            reset_num_timesteps=before is None,
        )
        payload["status"] = "done"
        payload["wall_seconds"] = (
            time.perf_counter() - start + payload.get("wall_seconds_before", 0.0)
        )
        payload["date_finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        atomic_write_json(result_path, payload)
        model.env.close()
        model.logger.close()
        return payload
    finally:
        torch.set_num_threads(threads)


def _resumable(result_path: Path, trial: Trial, run_log_dir: Path | None) -> dict[str, Any] | None:
    """The unfinished result of ``trial`` when its run log can resume it, else None."""
    if run_log_dir is None or not (run_log_dir / "run.json").exists():
        return None
    payload = read_result(result_path)
    if payload is None or payload.get("status") != "running" or not same_trial(payload, trial):
        return None
    from rlattr.record.runlog import RunLog

    start = RunLog(run_log_dir).resume_point()
    return payload if start else None


def _curve_before(payload: dict[str, Any], rounds: int) -> tuple[list[dict[str, Any]], Any]:
    """The points of a stopped trial before round ``rounds``, and its training clocks at
    that round: the last written clock, scaled by rounds (what ran after it is unknown)."""
    kept = [p for p in payload["curve"] if p["round"] < rounds]
    clock = payload.get("clock", {})
    if clock.get("rounds"):
        share = rounds / clock["rounds"]
        return kept, (clock["train_seconds"] * share, clock["train_cpu_seconds"] * share)
    last = kept[-1] if kept else {"train_seconds": 0.0, "train_cpu_seconds": 0.0}
    return kept, (last["train_seconds"], last["train_cpu_seconds"])


def same_trial(payload: dict[str, Any], trial: Trial) -> bool:
    """Whether a stored result was made for ``trial`` (task, arm, seed, rounds, episodes)."""
    ours = asdict(trial)
    if any(payload.get(key) != ours[key] for key in _IDENTITY):
        return False
    evaluation = payload.get("evaluation", {})
    return (
        evaluation.get("episodes") == trial.episodes
        and evaluation.get("every", 1) == trial.eval_every
    )


def curve_key(payload: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What a rerun of a trial must reproduce exactly: per round, the timesteps, the
    evaluation return's mean and spread, and the dropped share (clocks excluded)."""
    return [
        (p["round"], p["timesteps"], p["return_mean"], p["return_std"], p["fraction_dropped"])
        for p in payload["curve"]
    ]
