"""A sweep whose spec names ``runs``: the TensorBoard run directories go there, the results
folder (often committed) gets none; a second run finds the results and skips them."""

from __future__ import annotations

from pathlib import Path

from rlattr.sweep import SweepSpec, run_sweep
from rlattr.sweep.trial import read_result


def test_run_directories_go_to_runs_and_none_to_out(tmp_path: Path) -> None:
    out, runs = tmp_path / "results", tmp_path / "tb"
    spec = SweepSpec(
        tasks=("cartpole",), arms=("ppo",), seeds=(0,), rounds=1, eval_episodes=4,
        out=str(out), runs=str(runs),
    )  # fmt: skip
    outcome = run_sweep(spec, "local", show_progress=False)
    assert outcome.finished == ["cartpole/ppo-s0"] and outcome.failed == {}
    payload = read_result(out / "cartpole" / "ppo-s0.json")
    assert payload is not None and payload["status"] == "done"
    assert payload["run_dir"] == str(runs / "cartpole" / "ppo-s0")
    assert list((runs / "cartpole" / "ppo-s0").glob("events.out.tfevents.*"))
    assert not list(out.rglob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "cartpole").iterdir()) == ["ppo-s0.json"]
    again = run_sweep(spec, "local", show_progress=False)
    assert again.skipped == ["cartpole/ppo-s0"] and again.finished == []
