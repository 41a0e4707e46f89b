"""Replay from the run log alone reproduces θ_{k+1} bit for bit; masks remove records."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlattr import Preset, RunLog, replay_iteration
from rlattr.record import build_policy, load_iteration, replay
from rlattr.record.replay import state_matches
from rlattr.run import build_model

# Presets shrunk to a few seconds each; everything else (optimiser, clipping, schedules,
# policy architecture, wrappers) is the preset's own.
SHRUNK = {
    "cartpole": {"n_steps": 16},
    "lunarlander": {"n_steps": 128, "batch_size": 32, "n_epochs": 2},
    "lunarlander_sgd": {"n_steps": 128, "batch_size": 32, "n_epochs": 2},
    "minigrid_empty": {"n_steps": 64, "batch_size": 16, "n_epochs": 2},
    "hopper": {"n_steps": 64, "batch_size": 16, "n_epochs": 2},
    "acrobot": {"n_steps": 8},
}


def _train_shrunk(name: str, run_dir: Path, iterations: int = 3) -> RunLog:
    preset = Preset.load(name)
    ppo = {**preset.ppo, **SHRUNK[name]}
    rollout = ppo["n_steps"] * preset.n_envs
    preset = preset.with_overrides(ppo=ppo, total_timesteps=iterations * rollout)
    model = build_model(preset, run_dir=run_dir, seed=5, device="cpu")
    model.learn(preset.total_timesteps)
    return RunLog(run_dir)


@pytest.mark.parametrize("name", sorted(SHRUNK))
def test_replay_is_bit_exact(name: str, run_dir: Path) -> None:
    log = _train_shrunk(name, run_dir)
    assert log.iterations() == [0, 1, 2]
    for k in log.iterations():
        policy = replay_iteration(log, k)
        expected, _ = log.load_checkpoint(k + 1)
        assert state_matches(policy, expected) == [], f"iteration {k} of {name}"


def test_replay_also_matches_optimizer_state(run_dir: Path) -> None:
    log = _train_shrunk("lunarlander", run_dir)
    policy = replay_iteration(log, 1)
    expected, _ = log.load_checkpoint(2)
    optim_state = policy.optimizer.state_dict()["state"]
    for param_id, slots in optim_state.items():
        for slot, value in slots.items():
            assert torch.equal(value.cpu(), expected[f"optim.{param_id}.{slot}"]), (param_id, slot)


def test_replay_does_not_touch_caller_rng(run_dir: Path) -> None:
    log = _train_shrunk("cartpole", run_dir)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    replay_iteration(log, 0)
    assert torch.equal(before, torch.get_rng_state())


def test_removed_records_do_not_influence_the_update(run_dir: Path) -> None:
    """Records outside the keep mask may hold anything: the replay never reads them."""
    log = _train_shrunk("lunarlander", run_dir)
    data = load_iteration(log, 1)
    keep = torch.ones(len(data.records), dtype=torch.bool)
    keep[::3] = False
    policy = build_policy(log)
    replay(data, policy, keep)
    clean = {k: v.clone() for k, v in policy.state_dict().items()}

    poisoned = load_iteration(log, 1)
    for field in ("advantages", "returns", "log_probs", "values"):
        getattr(poisoned.records, field)[~keep] = float("nan")
    poisoned.records.observations[~keep] = 1e6
    replay(poisoned, policy, keep)
    for name, value in policy.state_dict().items():
        assert torch.equal(value, clean[name]), name


def test_mask_changes_the_update_and_full_mask_does_not(run_dir: Path) -> None:
    log = _train_shrunk("cartpole", run_dir)
    # Not the last iteration: with the preset's linear schedule its learning rate is 0.
    data = load_iteration(log, 1)
    assert float(data.plan.learning_rates[0]) > 0
    policy = build_policy(log)
    expected, _ = log.load_checkpoint(2)
    replay(data, policy, torch.ones(len(data.records), dtype=torch.bool))
    assert state_matches(policy, expected) == []
    keep = torch.ones(len(data.records), dtype=torch.bool)
    keep[:10] = False
    replay(data, policy, keep)
    assert state_matches(policy, expected) != []


def test_training_with_a_keep_mask_replays_exactly(run_dir: Path) -> None:
    preset = Preset.load("cartpole")
    preset = preset.with_overrides(ppo={**preset.ppo, "n_steps": 16}, total_timesteps=3 * 128)

    def drop_odd(model, records):
        mask = torch.ones(len(records), dtype=torch.bool)
        mask[1::2] = False
        return mask

    model = build_model(preset, run_dir=run_dir, seed=2, device="cpu", keep_mask_fn=drop_odd)
    model.learn(preset.total_timesteps)
    log = RunLog(run_dir)
    for k in log.iterations():
        plan = log.load_plan(k)
        assert not bool((plan.minibatch_indices % 2 == 1).any())
        assert state_matches(replay_iteration(log, k), log.load_checkpoint(k + 1)[0]) == []


def test_bad_mask_shape_is_refused(run_dir: Path) -> None:
    log = _train_shrunk("cartpole", run_dir)
    data = load_iteration(log, 0)
    with pytest.raises(ValueError, match="keep_mask must be a bool tensor"):
        replay(data, build_policy(log), torch.ones(3, dtype=torch.bool))


def test_replay_leaves_the_start_checkpoint_untouched(run_dir: Path) -> None:
    """Optimisers update their state in place; replaying must not alter the checkpoint."""
    log = _train_shrunk("lunarlander", run_dir)
    data = load_iteration(log, 1)
    before = {k: v.clone() for k, v in data.start_tensors.items()}
    policy = build_policy(log)
    replay(data, policy)
    first = {k: v.clone() for k, v in policy.state_dict().items()}
    for name, value in before.items():
        assert torch.equal(value, data.start_tensors[name]), name
    replay(data, policy)  # a second replay from the same data is identical
    for name, value in policy.state_dict().items():
        assert torch.equal(value, first[name]), name
