"""save()/load() work as for any SB3 model, with and without a run dir and IIF; SB3's own
PPO.load reads the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from rlattr import IIF, AttributedPPO
from rlattr.training.filters import IIFFilter
from tests.conftest import assert_same_parameters

SMALL = {"n_steps": 64, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}


@pytest.mark.parametrize("with_run_dir", [False, True])
@pytest.mark.parametrize("iif", [None, IIF(rule="random", fraction=0.25)])
def test_save_and_load_like_any_sb3_model(tmp_path: Path, with_run_dir: bool, iif) -> None:
    run_dir = tmp_path / "run" if with_run_dir else None
    model = AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=run_dir, iif=iif, **SMALL)
    model.learn(128)
    path = tmp_path / "model.zip"
    model.save(path)

    observations = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    expected, _ = model.predict(observations, deterministic=True)
    for cls in (AttributedPPO, PPO):
        loaded = cls.load(path, device="cpu")
        assert type(loaded) is cls
        assert_same_parameters(model.policy, loaded.policy)
        actions, _ = loaded.predict(observations, deterministic=True)
        assert np.array_equal(actions, expected)
        optim, loaded_optim = model.policy.optimizer.state_dict(), loaded.policy.optimizer
        for key, slots in optim["state"].items():
            for slot, value in slots.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(
                    loaded_optim.state_dict()["state"][key][slot]
                )), (key, slot)  # fmt: skip

    loaded = AttributedPPO.load(path, env=model.get_env(), device="cpu")
    # Sensible defaults: no run log (the file is not a run), no hooks; IIF rebuilt with its
    # generator where it was, so a loaded model drops on as the saved one would have.
    assert loaded.run_dir is None and loaded.run_log is None and loaded.record_hooks == []
    assert loaded.iteration == model.iteration == 2
    if iif is None:
        assert loaded.keep_mask_fn is None
    else:
        assert isinstance(loaded.keep_mask_fn, IIFFilter) and loaded.iif == iif
        saved_state = model._filter_generator.get_state()
        assert torch.equal(loaded._filter_generator.get_state(), saved_state)
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.iteration == 3
    if with_run_dir:
        assert len(list((tmp_path / "run" / "iterations").iterdir())) == 2  # untouched
