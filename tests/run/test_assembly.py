"""Assembling a run from a preset and options (rlattr.run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlattr import RunLog
from rlattr.errors import PresetError
from rlattr.run import (
    InterventionOptions,
    RunOptions,
    RunOptionsError,
    assemble,
    resume_command,
    run_env_factory,
    whole_rollouts,
)
from rlattr.run.presets import Preset


def test_the_budget_is_rounded_up_to_whole_rollouts() -> None:
    preset = Preset.load("cartpole")  # 8 envs × 32 steps: rollouts of 256 steps
    rounded, before = whole_rollouts(preset.with_overrides(total_timesteps=300))
    assert (rounded.total_timesteps, before) == (512, 300)
    same, before = whole_rollouts(preset.with_overrides(total_timesteps=512))
    assert (same.total_timesteps, before) == (512, None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"iif_overrides": {"rule": "bottom"}}, "--iif-rule only applies with --iif"),
        ({"iif_overrides": {"colour": 1}}, "unknown IIF option(s) ['colour']"),
        ({"resume": True}, "resume continues a run directory"),
    ],
)
def test_contradictory_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(RunOptionsError) as err:
        RunOptions(**options)
    assert message in str(err.value)


def test_assembling_checks_the_run_on_disk_before_writing(tmp_path: Path) -> None:
    preset = Preset.load("cartpole")
    run_dir = tmp_path / "run"
    first = assemble(preset, RunOptions(run_dir=run_dir, timesteps=300, iif=True, device="cpu"))
    assert (first.rounded_from, first.remaining, first.resuming) == (300, 512, False)
    assert first.model.iif is not None and first.model.iif.rule == preset.iif_config().rule
    first.model.learn(256)
    with pytest.raises(RunOptionsError, match="already holds a run: add --resume"):
        assemble(preset, RunOptions(run_dir=run_dir, iif=True))
    with pytest.raises(PresetError, match="was trained with --iif; resume it the same way"):
        assemble(preset, RunOptions(run_dir=run_dir, resume=True, timesteps=512))
    other = preset.with_overrides(n_envs=4)
    with pytest.raises(PresetError, match="with a different preset"):
        assemble(other, RunOptions(run_dir=run_dir, resume=True, iif=True, timesteps=512))
    again = assemble(
        preset, RunOptions(run_dir=run_dir, resume=True, iif=True, timesteps=512, device="cpu")
    )
    assert again.resuming and again.model.num_timesteps == 256 and again.remaining == 256
    # The command a person is shown resumes exactly this run.
    assert resume_command(RunLog(run_dir)).endswith(
        f"train cartpole --run-dir {run_dir} --seed 0 --timesteps 512 --iif --resume"
    )


def test_an_intervention_is_checked_against_the_presets_spaces(tmp_path: Path) -> None:
    import numpy as np

    wrong = tmp_path / "pairs.npz"
    np.savez(wrong, observations=np.zeros((3, 7), np.float32), actions=np.zeros(3, np.int64))
    options = RunOptions(intervention=InterventionOptions(spec=f"action:{wrong}"))
    with pytest.raises(RunOptionsError, match=f"--intervene action:{wrong}: "):
        assemble(Preset.load("cartpole"), options)


def test_a_runs_environment_is_rebuilt_from_its_stored_preset(tmp_path: Path) -> None:
    preset = Preset.load("frozenlake")
    run = assemble(preset, RunOptions(run_dir=tmp_path / "run", device="cpu"))
    run.model.learn(run.model.n_steps * run.model.n_envs)
    env = run_env_factory(RunLog(tmp_path / "run"))()
    assert env.spec.id == preset.env_id
    assert env.observation_space == run.model.observation_space
    log = RunLog(tmp_path / "run")
    log.meta.setdefault("config", {}).pop("preset")
    log.meta.pop("environment", None)
    with pytest.raises(RunOptionsError, match="names neither a preset nor a registered"):
        run_env_factory(log)
