"""The sweep engine end to end on tiny trials (CartPole, 2 rounds of 256 steps, 8 evaluation
episodes; 2 arms × 2 seeds): the local backend, Ray with two workers and a worker killed
mid-trial, resume, retries, and the TensorBoard run directories."""

from __future__ import annotations

import csv
import functools
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

from rlattr.sweep import SweepSpec, run_sweep
from rlattr.sweep.report import result_path
from rlattr.sweep.trial import curve_key, read_result
from tests.sweep import faults
from tests.sweep.tables import markdown_rows, numbers, trial_metrics

TRIALS = ["cartpole/ppo-s0", "cartpole/iif-s0", "cartpole/ppo-s1", "cartpole/iif-s1"]


def tiny_spec(out: Path, **changes: Any) -> SweepSpec:
    values: dict[str, Any] = {
        "tasks": ["cartpole"],
        "arms": ["ppo", "iif"],
        "seeds": 2,
        "rounds": 2,
        "eval_episodes": 8,
        "out": str(out),
        "retries": 1,
        **changes,
    }
    return SweepSpec(**values)


def curves(out: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Trial key → what a rerun must reproduce (returns per round; clocks excluded)."""
    found = {}
    for key in TRIALS:
        payload = read_result(out / f"{key}.json")
        assert payload is not None and payload["status"] == "done", key
        found[key] = curve_key(payload)
    return found


@pytest.fixture(scope="module")
def local_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local")
    outcome = run_sweep(tiny_spec(out), "local", show_progress=False)
    assert sorted(outcome.finished) == sorted(TRIALS)
    assert outcome.failed == {} and outcome.skipped == []
    return out


def test_local_sweep_writes_results_run_dirs_and_table(local_out: Path) -> None:
    for key in TRIALS:
        payload = json.loads((local_out / f"{key}.json").read_text())
        assert payload["status"] == "done"
        assert [p["round"] for p in payload["curve"]] == [0, 1, 2]
        assert payload["evaluation"]["episodes"] == 8
        assert payload["steps_per_round"] == 256  # the preset's 8 envs × 32 steps
        # The run directory holds the evaluation curve as TensorBoard scalars.
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(local_out / key))
        events.Reload()
        scalars = events.Scalars("eval/return_mean")
        assert [s.step for s in scalars] == [0, 256, 512]
        assert [s.value for s in scalars] == pytest.approx(
            [p["return_mean"] for p in payload["curve"]], rel=1e-6
        )
    rows = (local_out / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("task,arm,seed,rounds,final_return,auc")
    assert len(rows) == 1 + len(TRIALS)
    table = (local_out / "summary.md").read_text()
    assert "| ppo | 2 |" in table and "| iif | 2 |" in table
    # Every metric of the CSV, and the table's mean ± sample sd over the two seeds,
    # recomputed from the trials' JSON.
    metrics = {key: trial_metrics(local_out / f"{key}.json") for key in TRIALS}
    assert all(m["final_return"] != m["auc"] for m in metrics.values())  # the curves moved
    with open(local_out / "summary.csv") as handle:
        for row in csv.DictReader(handle):
            key = f"{row['task']}/{row['arm']}-s{row['seed']}"
            for name, value in metrics[key].items():
                assert float(row[name]) == pytest.approx(value, rel=1e-9), (key, name)
    cells = markdown_rows(local_out / "summary.md")
    for arm in ("ppo", "iif"):
        for title, name in (("final return", "final_return"), ("AUC", "auc")):
            values = [metrics[f"cartpole/{arm}-s{seed}"][name] for seed in (0, 1)]
            mean, sd = numbers(cells[arm][title])
            decimals = len(cells[arm][title].split(" ± ")[0].partition(".")[2])
            half = 0.51 * 10**-decimals
            assert mean == pytest.approx(statistics.mean(values), abs=half), (arm, title)
            assert sd == pytest.approx(statistics.stdev(values), abs=half), (arm, title)


def test_resume_skips_finished_trials_and_reruns_the_rest(local_out: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "resume"
    shutil.copytree(local_out, out)
    expected = curves(local_out)
    # A sweep killed mid-trial leaves that trial "running" (its first round written).
    killed = out / "cartpole/iif-s1.json"
    payload = json.loads(killed.read_text())
    payload.update(status="running", curve=payload["curve"][:2])
    killed.write_text(json.dumps(payload))
    outcome = run_sweep(tiny_spec(out), "local", show_progress=False)
    assert outcome.finished == ["cartpole/iif-s1"]
    assert sorted(outcome.skipped) == sorted(set(TRIALS) - {"cartpole/iif-s1"})
    assert curves(out) == expected


def test_failed_trials_are_retried_then_recorded(tmp_path: Path) -> None:
    attempts = tmp_path / "attempts"

    def always_fails(job: Any) -> dict[str, Any]:
        with open(attempts, "a") as handle:
            handle.write(job.trial.key + "\n")
        raise RuntimeError("planted failure")

    spec = tiny_spec(tmp_path / "out", arms=["ppo"], seeds=[0], retries=2)
    outcome = run_sweep(spec, "local", show_progress=False, trial_fn=always_fails)
    assert outcome.failed == {"cartpole/ppo-s0": "RuntimeError: planted failure"}
    assert attempts.read_text().splitlines() == ["cartpole/ppo-s0"] * 3  # 1 + 2 retries
    stored = json.loads(result_path(tmp_path / "out", "cartpole", "ppo", 0).read_text())
    assert stored["status"] == "failed" and stored["attempts"] == 3
    assert "planted failure" in stored["error"]


@pytest.fixture(scope="module")
def ray_session() -> Any:
    ray = pytest.importorskip("ray")
    from rlattr.sweep.backends import init_ray

    init_ray(workers=2)
    yield ray
    ray.shutdown()


def test_ray_sweep_with_a_killed_worker_matches_the_local_sweep(
    ray_session: Any, local_out: Path, tmp_path: Path
) -> None:
    import cloudpickle

    # Ray's workers do not import tests/: ship the fault's code with the task.
    cloudpickle.register_pickle_by_value(sys.modules[faults.__name__])
    victim = "cartpole/iif-s1"
    out = tmp_path / "ray"
    outcome = run_sweep(
        tiny_spec(out),
        "ray",
        show_progress=False,
        trial_fn=functools.partial(faults.killed_once_after_round_1, victim=victim),
    )
    assert outcome.failed == {}
    assert sorted(outcome.finished) == sorted(TRIALS)
    assert (out / f"{victim}.json.killed").exists()  # the worker did die mid-trial
    # Ray retried it from scratch, and every trial equals its local twin.
    assert curves(out) == curves(local_out)
    assert read_result(out / f"{victim}.json")["curve"][0]["round"] == 0


def test_a_recording_sweep_keeps_a_run_log_that_replays_and_trains_the_same(
    local_out: Path, tmp_path: Path
) -> None:
    from rlattr import RunLog, replay_iteration
    from rlattr.record.replay import state_matches

    out = tmp_path / "recorded"
    spec = tiny_spec(out, arms=["iif"], seeds=[0], record=True)
    outcome = run_sweep(spec, "local", show_progress=False)
    assert outcome.finished == ["cartpole/iif-s0"]
    payload = read_result(out / "cartpole/iif-s0.json")
    assert payload is not None and payload["run_log"] == str(out / "cartpole/iif-s0/runlog")
    # Recording changes nothing the trial measures: the curve is the unrecorded sweep's.
    assert curve_key(payload) == curves(local_out)["cartpole/iif-s0"]
    log = RunLog(out / "cartpole/iif-s0/runlog")
    assert log.iterations() == [0, 1]
    policy = replay_iteration(log, 0)
    assert state_matches(policy, log.load_checkpoint(1)[0]) == []
    # The logged keep masks are the drops the trial reported, round by round.
    for k in log.iterations():
        dropped = 1 - log.load_plan(k).keep_mask.double().mean().item()
        assert dropped == pytest.approx(payload["curve"][k + 1]["fraction_dropped"], abs=1e-12)


def test_record_without_a_run_dir_is_refused(tmp_path: Path) -> None:
    from rlattr.sweep.spec import Trial
    from rlattr.sweep.trial import run_trial

    trial = Trial("cartpole", "cartpole", "ppo", 0, 1, 2)
    with pytest.raises(ValueError, match="give run_dir"):
        run_trial(trial, tmp_path / "r.json", None, record=True)


class _KilledError(Exception):
    """Stands in for a kill: raised from the trial's own progress hook."""


def test_a_recording_trial_resumes_after_a_kill(tmp_path: Path) -> None:
    from rlattr import RunLog, replay_iteration
    from rlattr.record.replay import state_matches
    from rlattr.sweep.spec import Trial
    from rlattr.sweep.trial import run_trial

    trial = Trial("cartpole", "cartpole", "iif", 0, 6, 4, eval_every=2)
    whole = run_trial(trial, tmp_path / "whole.json", tmp_path / "whole", record=True)
    assert [p["round"] for p in whole["curve"]] == [0, 2, 4, 6]

    def kill_at_round_4(_: Trial, point: object) -> None:
        if point.round == 4:  # after round 4's point is written, as a kill would leave it
            raise _KilledError

    path, run_dir = tmp_path / "cut.json", tmp_path / "cut"
    with pytest.raises(_KilledError):
        run_trial(trial, path, run_dir, record=True, on_point=kill_at_round_4)
    assert json.loads(path.read_text())["status"] == "running"
    resumed = run_trial(trial, path, run_dir, record=True)
    log = RunLog(run_dir / "runlog")
    start = resumed["resumed"][0]["round"]
    assert 0 < start <= 4
    assert resumed["status"] == "done"
    assert log.iterations() == list(range(6))
    assert [p["round"] for p in resumed["curve"]] == [0, 2, 4, 6]
    # Up to the resume point the policy is the uninterrupted one's, so are its points
    # (the round-4 point was evaluated again if the resume went back to round 4 or before).
    for mine, theirs in zip(resumed["curve"], whole["curve"], strict=True):
        if mine["round"] <= start:
            assert mine["return_mean"] == theirs["return_mean"]
    assert resumed["curve"][-1]["train_cpu_seconds"] > resumed["curve"][-2]["train_cpu_seconds"]
    # The resumed run log replays bit for bit across the resume.
    for k in (start - 1, start):
        assert state_matches(replay_iteration(log, k), log.load_checkpoint(k + 1)[0]) == []
