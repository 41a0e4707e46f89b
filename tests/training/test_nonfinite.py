"""Non-finite values caught where they enter (``nonfinite``), NaN-aware replay checks, and
one set of bounds for PPO's fields whichever door they come through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from rlattr.cli.main import build_parser, main
from rlattr.errors import ConfigError, NonFiniteError, PresetError, RunLogError
from rlattr.record.replay import replay_iteration, same_bits, state_matches
from rlattr.record.runlog import RunLog
from rlattr.run.presets import Preset
from rlattr.training import AttributedPPO, RecordRun
from rlattr.training.nonfinite import NonFiniteWarning
from tests.training.nonfinite_envs import InfObservationAt, NaNRewardAt

SMALL = {"n_steps": 16, "batch_size": 8, "n_epochs": 2, "seed": 0, "device": "cpu"}


def _envs(*wrapped: Any) -> DummyVecEnv:
    """One CartPole per entry; an entry ``(Wrapper, at_step)`` wraps its CartPole."""

    def factory(entry: Any) -> Any:
        if entry is None:
            return lambda: gym.make("CartPole-v1")
        wrapper, at_step = entry
        return lambda: wrapper(gym.make("CartPole-v1"), at_step=at_step)

    return DummyVecEnv([factory(entry) for entry in wrapped])


def _model(run: Path | None, env: Any, **kwargs: Any) -> AttributedPPO:
    return AttributedPPO("MlpPolicy", env, run_dir=run, **{**SMALL, **kwargs})


def _replays(log: RunLog) -> None:
    for k in log.iterations():
        assert state_matches(replay_iteration(log, k), log.load_checkpoint(k + 1)[0]) == [], k


# ---------------------------------------------------------------------- AttributedPPO
def test_a_nan_reward_stops_before_its_iteration_is_committed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # Env 1's step 21 is iteration 1's rollout step 5 (16-step rollouts).
    model = _model(run, _envs(None, (NaNRewardAt, 21)))
    with pytest.raises(NonFiniteError) as caught:
        model.learn(96)
    message = str(caught.value)
    assert message.startswith("iteration 1: non-finite reward (nan) at env 1, rollout step 5 ")
    assert "(1 of 32 rewards non-finite)" in message and "nothing of iteration 1" in message
    log = RunLog(run)
    assert log.iterations() == [0]  # the last committed iteration is the one before
    assert log.meta["config"]["nonfinite"] == "error"
    assert log.verify().ok
    _replays(log)
    # The update never ran: the model is still at θ_1.
    assert state_matches(model.policy, log.load_checkpoint(1)[0]) == []
    assert main(["inspect", str(run)]) == 0


def test_an_infinite_observation_is_named_with_its_field(tmp_path: Path) -> None:
    # The observation returned by step 3 is the one rollout step 4 acts on.
    model = _model(tmp_path / "run", _envs((InfObservationAt, 3)))
    expected = r"^iteration 0: non-finite observation \(inf\) at env 0, rollout step 4 "
    with pytest.raises(NonFiniteError, match=expected):
        model.learn(16)
    assert RunLog(tmp_path / "run").iterations() == []


def test_skip_iteration_discards_the_rollout_and_trains_on(tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = _model(run, _envs(None, (NaNRewardAt, 21)), nonfinite="skip-iteration")
    with pytest.warns(NonFiniteWarning, match=r"iteration 1: non-finite reward .* discarded"):
        model.learn(96)  # three rollouts, the second discarded
    log = RunLog(run)
    assert log.iterations() == [0, 1] and model.iteration == 2
    assert log.meta["config"]["nonfinite"] == "skip-iteration"
    for k in log.iterations():
        records = log.load_records(k)
        assert bool(torch.isfinite(records.rewards).all()), k
    _replays(log)


def test_warn_records_and_trains_on_it_and_the_replay_matches(tmp_path: Path) -> None:
    """The issue's run: one NaN reward, one update step; committed with NaN θ_1."""
    run = tmp_path / "run"
    model = _model(run, _envs((NaNRewardAt, 5)), nonfinite="warn", batch_size=16, n_epochs=1)
    with pytest.warns(NonFiniteWarning) as warned:
        model.learn(16)
    said = [str(w.message) for w in warned if issubclass(w.category, NonFiniteWarning)]
    assert said[0].startswith("iteration 0: non-finite reward (nan) at env 0, rollout step 5")
    assert any("non-finite loss at optimiser step 0 (epoch 0)" in text for text in said)
    log = RunLog(run)
    assert log.iterations() == [0]
    after = log.load_checkpoint(1)[0]
    assert not bool(torch.isfinite(after["policy.action_net.weight"]).all())
    # A faithful replay of a NaN-holding state matches (NaN is compared by its bits) ...
    replayed = replay_iteration(log, 0)
    assert state_matches(replayed, after) == []
    # ... and one that differs still differs: a finite entry changed, or another NaN payload.
    changed = dict(after)
    bias = changed["policy.value_net.bias"].clone()
    bias.view(torch.int32)[0] ^= 1  # NaN with another payload (or another number)
    changed["policy.value_net.bias"] = bias
    assert state_matches(replayed, changed) == ["value_net.bias"]
    # rlattr replay says so too.
    assert main(["replay", str(run), "--iteration", "0"]) == 0


def test_same_bits() -> None:
    nan = torch.tensor([1.0, float("nan")])
    assert same_bits(nan, nan.clone()) and not torch.equal(nan, nan.clone())
    other_payload = nan.clone()
    other_payload.view(torch.int32)[1] ^= 1
    assert not same_bits(nan, other_payload)
    assert not same_bits(nan, torch.tensor([2.0, float("nan")]))
    assert not same_bits(nan, nan.double())
    assert same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))  # as torch.equal


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_nan_scores_are_one_error_line(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    model = _model(run, _envs((NaNRewardAt, 5)), nonfinite="warn", batch_size=16, n_epochs=1)
    with pytest.warns(NonFiniteWarning):
        model.learn(16)
    line = _error_line(capsys, ["attribute", str(run), "--iteration", "0", "--no-store"])
    assert "snapshot scores of iteration 0 contain NaN or inf" in line


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # One minibatch: the update ends; its trace shows the non-finite loss.
        ({"batch_size": 16, "n_epochs": 1}, "non-finite loss at optimiser step 0 (epoch 0)"),
        # Several: torch refuses the next minibatch's distribution over NaN parameters.
        ({}, "the parameters turned non-finite during the update (by optimiser step 0)"),
    ],
)
def test_a_non_finite_loss_restores_theta_k(tmp_path: Path, kwargs: dict, expected: str) -> None:
    run = tmp_path / "run"
    # An entropy coefficient beyond float32: a finite rollout, an infinite loss.
    model = _model(run, _envs(None), ent_coef=1e39, **kwargs)
    with pytest.raises(NonFiniteError) as caught:
        model.learn(16)
    assert str(caught.value).startswith(f"iteration 0: {expected}")
    log = RunLog(run)
    assert log.iterations() == []
    assert state_matches(model.policy, log.load_checkpoint(0)[0]) == []


def test_skip_iteration_on_a_non_finite_loss_keeps_theta_k(tmp_path: Path) -> None:
    model = _model(tmp_path / "run", _envs(None), ent_coef=1e39, nonfinite="skip-iteration")
    with pytest.warns(NonFiniteWarning, match="iteration 0: the parameters turned non-finite"):
        model.learn(32)
    log = RunLog(tmp_path / "run")
    assert log.iterations() == [] and model.iteration == 0
    assert state_matches(model.policy, log.load_checkpoint(0)[0]) == []


def test_warn_still_stops_an_update_that_cannot_go_on(tmp_path: Path) -> None:
    model = _model(tmp_path / "run", _envs(None), ent_coef=1e39, nonfinite="warn")
    with pytest.raises(NonFiniteError, match=r"turned non-finite .* the update cannot go on"):
        model.learn(16)
    assert RunLog(tmp_path / "run").iterations() == []


def test_a_resume_keeps_the_runs_choice(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _model(run, _envs(None), nonfinite="skip-iteration").learn(16)
    resumed = _model(run, _envs(None), resume=True)
    assert resumed.nonfinite == "skip-iteration"
    with pytest.raises(RunLogError, match="trained with nonfinite='skip-iteration'"):
        _model(run, _envs(None), resume=True, nonfinite="warn")


def test_an_unknown_choice_is_refused() -> None:
    with pytest.raises(ConfigError, match="nonfinite must be one of error, skip-iteration, warn"):
        AttributedPPO("MlpPolicy", "CartPole-v1", nonfinite="ignore")
    with pytest.raises(ConfigError, match="nonfinite must be one of"):
        RecordRun("never", nonfinite="ignore")


# ---------------------------------------------------------------------- RecordRun
def _sb3(env: Any, **kwargs: Any) -> PPO:
    return PPO("MlpPolicy", env, **{**SMALL, **kwargs})


def test_record_run_stops_before_the_iteration_is_committed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = _sb3(_envs(None, (NaNRewardAt, 21)))
    with pytest.raises(NonFiniteError, match=r"^iteration 1: non-finite reward \(nan\) at env 1"):
        model.learn(96, callback=RecordRun(run))
    log = RunLog(run)
    assert log.iterations() == [0] and log.verify().ok
    assert log.meta["config"]["nonfinite"] == "error"
    _replays(log)


def test_record_run_skip_iteration_keeps_sb3_from_training_on_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = _sb3(_envs(None, (NaNRewardAt, 21)))
    with pytest.warns(NonFiniteWarning, match="iteration 1: non-finite reward"):
        model.learn(96, callback=RecordRun(run, nonfinite="skip-iteration"))
    log = RunLog(run)
    assert log.iterations() == [0, 1]
    assert model._n_updates == 2 * SMALL["n_epochs"]  # the discarded rollout trained nothing
    assert "train" not in model.__dict__
    _replays(log)
    assert state_matches(model.policy, log.load_checkpoint(2)[0]) == []


def test_record_run_refuses_a_non_finite_loss_and_restores_theta_k(tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = _sb3(_envs(None), ent_coef=1e39, batch_size=16, n_epochs=1)
    with pytest.raises(NonFiniteError, match=r"^iteration 0: non-finite loss at optimiser step 0"):
        model.learn(16, callback=RecordRun(run))
    log = RunLog(run)
    assert log.iterations() == [] and model._n_updates == 0
    assert state_matches(model.policy, log.load_checkpoint(0)[0]) == []


def test_record_run_warn_records_a_nan_state_that_replays(tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = _sb3(_envs((NaNRewardAt, 5)), batch_size=16, n_epochs=1)
    with pytest.warns(NonFiniteWarning):
        model.learn(16, callback=RecordRun(run, nonfinite="warn"))
    log = RunLog(run)
    assert log.iterations() == [0]
    assert not bool(torch.isfinite(log.load_checkpoint(1)[0]["policy.action_net.weight"]).all())
    _replays(log)


# ---------------------------------------------------------------------- the same bounds
BAD_VALUES = [
    ("gamma", 1.5),
    ("gamma", 0.0),
    ("gae_lambda", -0.1),
    ("clip_range", 0.0),
    ("clip_range_vf", -0.2),
    ("n_epochs", 0),
    ("batch_size", 0),
    ("batch_size", 64.0),
    ("n_steps", -8),
    ("learning_rate", -1e-3),
    ("learning_rate", "lin_-0.1"),
    ("ent_coef", -0.01),
    ("vf_coef", -0.5),
    ("max_grad_norm", 0.0),
    ("target_kl", 0.0),
    ("normalize_advantage", "yes"),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_a_bad_ppo_value_is_refused_by_every_door_in_the_same_words(
    tmp_path: Path, key: str, value: Any
) -> None:
    with pytest.raises(PresetError) as preset_door:
        Preset.from_dict(
            {"name": "x", "env_id": "CartPole-v1", "total_timesteps": 64, "ppo": {key: value}}
        )
    with pytest.raises(ConfigError) as api_door:
        AttributedPPO("MlpPolicy", "CartPole-v1", **{key: value})
    preset_words = str(preset_door.value).removeprefix("preset 'x' ppo.")
    api_words = str(api_door.value).removeprefix("AttributedPPO ")
    assert preset_words.startswith(f"{key} must be ")
    assert api_words == preset_words


@pytest.mark.parametrize(("key", "value"), [("gamma", 1.5), ("gae_lambda", 2.0), ("n_epochs", 0)])
def test_record_run_refuses_the_same_values(tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(PresetError) as preset_door:
        Preset.from_dict(
            {"name": "x", "env_id": "CartPole-v1", "total_timesteps": 64, "ppo": {key: value}}
        )
    model = _sb3(_envs(None), **{key: value})
    run = tmp_path / "run"
    with pytest.raises(ConfigError) as record_door:
        model.learn(16, callback=RecordRun(run))
    assert str(record_door.value).removeprefix("RecordRun: PPO ") == str(
        preset_door.value
    ).removeprefix("preset 'x' ppo.")
    assert not run.exists()


def test_batch_size_one_with_normalized_advantages_is_refused_by_both_doors() -> None:
    preset = {"name": "x", "env_id": "CartPole-v1", "total_timesteps": 64}
    with pytest.raises(PresetError, match="batch_size must be >= 2 with normalize_advantage"):
        Preset.from_dict({**preset, "ppo": {"batch_size": 1}})
    with pytest.raises(ConfigError, match="batch_size must be >= 2 with normalize_advantage"):
        AttributedPPO("MlpPolicy", "CartPole-v1", batch_size=1)


def test_good_values_and_text_schedules_pass_the_api_door() -> None:
    model = AttributedPPO(
        "MlpPolicy", "CartPole-v1", learning_rate="lin_0.001", gamma=1.0, gae_lambda=0.0,
        max_grad_norm=float("inf"), target_kl=None, device="cpu", n_steps=16, batch_size=8,
    )  # fmt: skip
    assert repr(model.learning_rate) == "lin_0.001"
    assert model.policy.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


# ---------------------------------------------------------------------- the command line
def _allow_tests(command: str = "train") -> list[str]:
    """``--allow-module tests`` where ``command`` has the option (the wrapper below is a
    module of this test suite, which an allow-list may refuse to import otherwise)."""
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    parser = subparsers.choices[command]  # type: ignore[index]
    known = {option for action in parser._actions for option in action.option_strings}
    return ["--allow-module", "tests"] if "--allow-module" in known else []


def _nan_preset(tmp_path: Path) -> Path:
    payload = {
        "name": "nan_cartpole",
        "env_id": "CartPole-v1",
        "total_timesteps": 64,
        "n_envs": 1,
        "ppo": {"n_steps": 16, "batch_size": 8, "n_epochs": 2},
        "wrappers": ["tests.training.nonfinite_envs.LateNaNReward"],
    }
    path = tmp_path / "nan_cartpole.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


def test_train_on_a_nan_reward_is_one_error_line(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    argv = ["train", str(_nan_preset(tmp_path)), "--run-dir", str(run), "--no-progress"]
    line = _error_line(capsys, argv + _allow_tests())
    assert line.startswith("error: iteration 1: non-finite reward (nan) at env 0, rollout step 5")
    assert RunLog(run).iterations() == [0]
    assert main(["inspect", str(run), *_allow_tests("inspect")]) == 0


def test_train_nonfinite_skip_iteration_trains_on(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    argv = ["train", str(_nan_preset(tmp_path)), "--run-dir", str(run), "--no-progress"]
    with pytest.warns(NonFiniteWarning, match="iteration 1"):
        assert main([*argv, "--nonfinite", "skip-iteration", *_allow_tests()]) == 0
    log = RunLog(run)
    assert log.iterations() == [0, 1, 2]  # four rollouts, one discarded
    assert log.meta["config"]["nonfinite"] == "skip-iteration"
