"""Sweep specs (validation, YAML, planning) and the results table, on hand-made inputs."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest

from rlattr.errors import RlattrError
from rlattr.run import arm_iif
from rlattr.run.presets import Preset, resolve_preset_path
from rlattr.sweep import report
from rlattr.sweep.engine import plan_jobs
from rlattr.sweep.report import mean_spread, result_path, trial_row, write_report
from rlattr.sweep.spec import (
    ArmName,
    SweepError,
    SweepSpec,
    SweepSpecError,
    TaskSpec,
    parse_arm,
    plan_trials,
)

EXAMPLE = """
tasks:
  - cartpole
  - {preset: acrobot_paper, name: acrobot, rounds: 5, eval_episodes: 20}
  - my_preset.yaml
arms: [ppo, iif, random_like]
seeds: 2
rounds: 3
eval_episodes: 10
out: results
retries: 1
"""


def test_a_yaml_spec_is_read_with_paths_from_its_folder(tmp_path: Path) -> None:
    (tmp_path / "my_preset.yaml").write_text(resolve_preset_path("cartpole").read_text())
    (tmp_path / "sweep.yaml").write_text(EXAMPLE)
    spec = SweepSpec.load(tmp_path / "sweep.yaml")
    assert [t.name for t in spec.tasks] == ["cartpole", "acrobot", "my_preset"]
    assert spec.tasks[2].preset == str(tmp_path / "my_preset.yaml")
    assert spec.seeds == (0, 1) and spec.out == str(tmp_path / "results")
    trials = plan_trials(spec)
    assert len(trials) == 3 * 3 * 2
    # Per task: PPO and IIF on every seed first, then the ablation.
    assert [(t.arm, t.seed) for t in trials[:6]] == [
        ("ppo", 0), ("iif", 0), ("ppo", 1), ("iif", 1), ("random_like", 0), ("random_like", 1),
    ]  # fmt: skip
    acrobot = [t for t in trials if t.task == "acrobot"]
    assert {(t.rounds, t.episodes) for t in acrobot} == {(5, 20)}
    assert {(t.rounds, t.episodes) for t in trials if t.task == "cartpole"} == {(3, 10)}


def test_eval_every_reaches_the_trials_a_task_value_first() -> None:
    spec = SweepSpec(
        tasks=("cartpole", {"preset": "frozenlake", "eval_every": 5}), arms=("ppo",), seeds=(0,),
        eval_every=3,
    )  # fmt: skip
    assert [trial.eval_every for trial in plan_trials(spec)] == [3, 5]


def test_without_rounds_a_trial_runs_the_presets_budget() -> None:
    (trial,) = plan_trials(SweepSpec(tasks=("frozenlake",), arms=("ppo",), seeds=(0,)))
    assert trial.rounds == 50  # 102400 steps in rounds of 2048


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arms": ["ppo", "dqn"]}, "unknown arm 'dqn'"),
        ({"arms": ["ppo", "ppo_p25"]}, "unknown arm 'ppo_p25'"),
        ({"arms": ["iif_p0"]}, "unknown arm 'iif_p0'"),
        ({"arms": ["iif_p150"]}, "unknown arm 'iif_p150'"),
        ({"arms": ["iif_p-5"]}, "unknown arm 'iif_p-5'"),
        ({"arms": ["iif_pabc"]}, "unknown arm 'iif_pabc'"),
        ({"arms": ["iif", "iif"]}, "arms must be distinct names of"),
        ({"arms": ["iif_p25", "iif_p25.0"]}, "arms must be distinct names of"),
        ({"seeds": [0, 0]}, "seeds must be distinct"),
        ({"seeds": -1}, "seeds must be a whole number >= 1"),
        ({"rounds": 0}, "rounds must be a whole number >= 1"),
        ({"eval_episodes": 2.5}, "eval_episodes must be a whole number"),
        ({"retries": -1}, "retries must be a whole number >= 0"),
        ({"eval_every": 0}, "eval_every must be a whole number >= 1"),
        ({"allow_modules": "tests"}, "allow_modules must be a list of module names"),
        ({"allow_modules": [""]}, "allow_modules must be a list of module names"),
        ({"tasks": [{"preset": "cartpole", "eval_every": 0}]}, "'cartpole' eval_every must be"),
        ({"tasks": []}, "tasks is empty"),
        ({"tasks": ["cartpole", "cartpole"]}, "task names repeat"),
        ({"tasks": [{"name": "x"}]}, "a task mapping needs 'preset'"),
        ({"record": "yes"}, "record must be true or false"),
        ({"epochs": 3}, "unknown key(s) ['epochs']"),
    ],
)
def test_bad_specs_name_the_key_and_the_rule(changes: dict[str, Any], message: str) -> None:
    payload = {"tasks": ["cartpole"], **changes}
    with pytest.raises(SweepSpecError) as err:
        SweepSpec.from_dict(payload)
    assert message in str(err.value)
    assert isinstance(err.value, RlattrError)


@pytest.mark.parametrize(
    ("arm", "base", "fraction"),
    [("iif", "iif", None), ("iif_p25", "iif", 0.25), ("random_like_p12.5", "random_like", 0.125),
     ("advantage_like_p100", "advantage_like", 1.0), ("iif_metagrad_p50", "iif_metagrad", 0.5)],
)  # fmt: skip
def test_an_arm_may_name_its_drop_fraction_in_percent(
    arm: str, base: str, fraction: float | None
) -> None:
    assert parse_arm(arm) == ArmName(base, fraction)


def test_a_percent_suffix_sets_the_filters_fraction_and_its_ablations() -> None:
    preset = Preset.load("frozenlake")
    assert preset.iif_config().fraction == 0.5  # the preset's own p, which the suffix replaces
    assert arm_iif(preset, "iif_p25", seed=3).fraction == 0.25
    assert arm_iif(preset, "iif_p25", seed=3).rule == preset.iif_config().rule
    like = arm_iif(preset, "random_like_p12.5", seed=3)
    assert (like.rule, like.like, like.like_fraction) == ("random_like", "neg_bottom", 0.125)
    assert arm_iif(preset, "iif", seed=3).fraction == 0.5
    assert arm_iif(preset, "ppo", seed=3) is None


def test_an_unreadable_spec_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(SweepSpecError, match="cannot read the sweep spec"):
        SweepSpec.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("tasks: [cartpole\n")
    with pytest.raises(SweepSpecError, match="not valid YAML"):
        SweepSpec.load(tmp_path / "bad.yaml")


def test_a_finished_result_of_other_settings_stops_the_sweep(tmp_path: Path) -> None:
    spec = SweepSpec(
        tasks=(TaskSpec("cartpole"),), arms=("ppo",), seeds=(0,), rounds=2, out=str(tmp_path)
    )
    path = result_path(tmp_path, "cartpole", "ppo", 0)
    path.parent.mkdir(parents=True)
    stored = {"status": "done", "task": "cartpole", "arm": "ppo", "seed": 0, "rounds": 2}
    path.write_text(json.dumps({**stored, "evaluation": {"episodes": 100}}))
    jobs, skipped = plan_jobs(spec)
    assert (jobs, skipped) == ([], ["cartpole/ppo-s0"])
    path.write_text(json.dumps({**stored, "rounds": 7, "evaluation": {"episodes": 100}}))
    with pytest.raises(SweepError, match="choose another out folder"):
        plan_jobs(spec)


def _payload(arm: str, returns: list[float], seconds: list[float]) -> dict[str, Any]:
    curve = [
        {
            "round": r,
            "return_mean": value,
            "train_seconds": seconds[r],
            "train_cpu_seconds": seconds[r],
            "fraction_dropped": None if arm == "ppo" or r == 0 else 0.25,
        }
        for r, value in enumerate(returns)
    ]
    return {"task": "t", "arm": arm, "seed": 0, "curve": curve}


def test_trial_metrics_against_ppo_by_hand() -> None:
    ppo = _payload("ppo", [0.0, 1.0, 3.0, 2.0], [0.0, 1.0, 2.0, 3.0])
    iif = _payload("iif", [0.0, 3.0, 3.0, 3.0], [0.0, 2.0, 4.0, 6.0])
    row = trial_row(iif, ppo)
    # PPO's levels: 1 (round 1) and 3 (round 2); IIF reaches both at round 1.
    assert row["rounds_to_ppo_peak"] == 1 and row["ppo_peak"] == 3.0
    assert row["se_peak"] == pytest.approx(50.0)  # 1 - 1/2
    assert row["se_ave"] == pytest.approx(25.0)  # mean of 1 - 1/1 and 1 - 1/2
    assert row["rt_peak"] == pytest.approx(100 * (1 - 2.0 / 3.0))  # IIF at 2 s, PPO's run 3 s
    assert row["auc"] == pytest.approx(9 / 4) and row["final_return"] == 3.0
    assert row["seconds_per_round"] == pytest.approx(2.0)
    assert row["fraction_dropped"] == pytest.approx(0.25)
    ppo_row = trial_row(ppo, ppo)
    assert ppo_row["rounds_to_ppo_peak"] == 2 and math.isnan(ppo_row["se_ave"])
    # A peak never reached counts right after the budget (round R + 1 = 4).
    never = trial_row(_payload("iif", [0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 3.0]), ppo)
    assert never["rounds_to_ppo_peak"] == 4 and never["ppo_peak_reached"] is False
    alone = trial_row(iif, None)
    assert math.isnan(alone["rounds_to_ppo_peak"]) and alone["final_return"] == 3.0


def test_trial_rows_count_rounds_not_evaluations() -> None:
    # Evaluated every 5 rounds (eval_every): rounds 0, 5, 10, 15.
    ppo = _payload("ppo", [0.0, 1.0, 3.0, 2.0], [0.0, 1.0, 2.0, 3.0])
    iif = _payload("iif", [0.0, 3.0, 3.0, 3.0], [0.0, 5.0, 10.0, 15.0])
    for point in (*ppo["curve"], *iif["curve"]):
        point["round"] *= 5
    row = trial_row(iif, ppo)
    assert row["rounds"] == 15 and row["rounds_to_ppo_peak"] == 5
    assert row["seconds_per_round"] == pytest.approx(1.0)  # 15 s over 15 rounds
    never = _payload("iif", [0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 3.0])
    for point in never["curve"]:
        point["round"] *= 5
    assert trial_row(never, ppo)["rounds_to_ppo_peak"] == 16  # R + 1


def test_cells_are_mean_and_sample_sd() -> None:
    assert mean_spread([1.0, 2.0, 3.0], 2) == "2.00 ± 1.00"
    assert mean_spread([5.0], 1) == "5.0"
    assert mean_spread([math.nan], 1) == "n/a"


def test_a_missing_preset_stops_the_sweep_before_it_starts(tmp_path: Path) -> None:
    spec = SweepSpec(tasks=("no_such_preset",), rounds=1, out=str(tmp_path))
    with pytest.raises(RlattrError, match="no preset 'no_such_preset'"):
        plan_trials(spec)


# rliable's bootstrap (arch) warns that its random_state argument is deprecated.
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_final_report_adds_iqm_and_a_plot_from_three_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rliable")
    monkeypatch.setattr(report, "BOOTSTRAP_REPS", 100)  # the test checks the table, not CIs
    spec = SweepSpec(tasks=("cartpole",), seeds=3, rounds=3, out=str(tmp_path))
    for arm, gain in (("ppo", 0.0), ("iif", 5.0)):
        for seed in spec.seeds:
            payload = _payload(
                arm, [10.0 + seed, 12.0 + gain, 11.0 + gain, 13.0 + gain], [0, 1, 2, 3]
            )
            payload.update(
                status="done", seed=seed, task="cartpole", rounds=3, steps_per_round=256,
                preset={"name": "cartpole"}, evaluation={"episodes": 8}, git_commit="abc",
            )  # fmt: skip
            path = result_path(tmp_path, "cartpole", arm, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(payload))
    paths = write_report(spec, final=True)
    table = paths["markdown"].read_text()
    assert "| iif | 3 | 18.0 ± 0.0 |" in table  # final return 13 + 5 on every seed
    assert "| iif | 18 [18, 18] |" in table  # IQM [CI] of identical finals
    assert "1.00 [1.00, 1.00]" in table  # IIF's final return beats PPO's on every pair
    if importlib.util.find_spec("matplotlib") is None:  # the one reason for no plot
        assert "plot:cartpole" not in paths
        pytest.skip("matplotlib is not installed: the final report has no plot to check")
    plot = paths["plot:cartpole"]
    assert plot == tmp_path / "cartpole.png"
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and plot.stat().st_size > 1000


def test_runs_keeps_run_directories_out_of_the_results_folder(tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(
        "tasks: [cartpole]\narms: [ppo]\nseeds: 1\nrounds: 2\nout: results\nruns: tb\n"
    )
    spec = SweepSpec.load(tmp_path / "sweep.yaml")
    assert spec.runs == str(tmp_path / "tb")
    (job,) = plan_jobs(spec)[0]
    assert job.result_path == str(tmp_path / "results" / "cartpole" / "ppo-s0.json")
    assert job.run_dir == str(tmp_path / "tb" / "cartpole" / "ppo-s0")
    # Without runs, run directories sit beside the results (as before).
    (job,) = plan_jobs(_without_runs(spec))[0]
    assert job.run_dir == str(tmp_path / "results" / "cartpole" / "ppo-s0")
    with pytest.raises(SweepSpecError, match="runs must be text or null"):
        SweepSpec(tasks=("cartpole",), runs="")


def _without_runs(spec: SweepSpec) -> SweepSpec:
    import dataclasses

    return dataclasses.replace(spec, runs=None)


def test_a_task_may_name_its_own_arms_and_seeds(tmp_path: Path) -> None:
    spec = SweepSpec(
        tasks=("cartpole", {"preset": "frozenlake", "arms": ["ppo"], "seeds": 1}),
        arms=("ppo", "iif"), seeds=(0, 1), rounds=2, out=str(tmp_path),
    )  # fmt: skip
    keys = [t.key for t in plan_trials(spec)]
    assert keys == [
        "cartpole/ppo-s0", "cartpole/iif-s0", "cartpole/ppo-s1", "cartpole/iif-s1",
        "frozenlake/ppo-s0",
    ]  # fmt: skip
    # The report reads each task's own arms and seeds only.
    for key in ("frozenlake/ppo-s0", "frozenlake/iif-s0"):
        task, name = key.split("/")
        arm, seed = name.split("-s")
        path = result_path(tmp_path, task, arm, int(seed))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"status": "done", "task": task, "arm": arm}))
    assert list(report.load_results(spec)["frozenlake"]) == ["ppo"]
    with pytest.raises(SweepSpecError, match="'frozenlake' seeds must be distinct"):
        SweepSpec(tasks=({"preset": "frozenlake", "seeds": [1, 1]},))
    with pytest.raises(SweepSpecError, match="unknown arm 'dqn'"):
        SweepSpec(tasks=({"preset": "frozenlake", "arms": ["dqn"]},))


def test_ppo_against_itself_and_the_wall_clock_by_hand() -> None:
    ppo = _payload("ppo", [0.0, 1.0, 3.0, 2.0], [0.0, 1.0, 2.0, 3.0])
    iif = _payload("iif", [0.0, 1.0, 1.0, 1.0], [0.0, 2.0, 4.0, 6.0])
    for point, wall in zip(iif["curve"], [0.0, 1.0, 1.5, 9.0], strict=True):
        point["train_seconds"] = wall  # the wall clock differs from the CPU clock
    row = trial_row(iif, ppo)
    assert row["levels"] == 2 and row["censored_levels"] == 1  # level 3 never reached
    # Never reached: counted at round R + 1 = 4, on the clock's last value of the run.
    assert row["rt_peak"] == pytest.approx(100 * (1 - 6.0 / 3.0))
    assert row["rt_peak_wall"] == pytest.approx(100 * (1 - 9.0 / 3.0))
    itself = trial_row(ppo, ppo, ppo_itself=True)
    assert itself["se_ave"] == 0.0 and itself["se_peak"] == 0.0
    assert itself["rt_peak"] == pytest.approx(100 * (1 - 2.0 / 3.0))  # peak at 2 s of 3 s
    assert math.isnan(trial_row(ppo, ppo)["rt_peak_wall"])
