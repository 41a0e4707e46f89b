"""Every preset in agents/ loads and builds; bad presets fail with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlattr import Preset, PresetError
from rlattr.training.presets import LinearSchedule

AGENTS = Path(__file__).resolve().parents[2] / "agents"
ALL_PRESETS = sorted(p.stem for p in AGENTS.glob("*.yaml"))


def test_the_issue_presets_exist() -> None:
    assert {
        "cartpole",
        "acrobot",
        "lunarlander",
        "lunarlander_sgd",
        "minigrid_empty",
        "hopper",
    } <= set(ALL_PRESETS)


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_preset_builds(name: str) -> None:
    preset = Preset.load(name)
    assert preset.sources, f"{name} must cite the source of its hyperparameters"
    model = preset.build(seed=0, device="cpu")
    assert model.n_steps == preset.ppo.get("n_steps", 2048)
    assert model.n_envs == preset.n_envs
    model.env.close()


def test_paper_settings_of_lunarlander() -> None:
    model = Preset.load("lunarlander").build(seed=0, device="cpu")
    assert (model.n_steps, model.batch_size, model.n_epochs) == (2048, 64, 10)
    assert model.max_grad_norm == float("inf")
    assert type(model.policy.optimizer).__name__ == "Adam"
    assert model.policy.optimizer.param_groups[0]["lr"] == 1e-3
    sgd = Preset.load("lunarlander_sgd").build(seed=0, device="cpu")
    assert type(sgd.policy.optimizer).__name__ == "SGD"
    assert sgd.policy.optimizer.param_groups[0]["lr"] == 5e-3


def test_unknown_key_is_named(tmp_path: Path) -> None:
    payload = yaml.safe_load((AGENTS / "cartpole.yaml").read_text())
    payload["learning_rat"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(payload))
    with pytest.raises(PresetError, match=r"unknown key\(s\) \['learning_rat'\]"):
        Preset.load(path)


def test_unknown_ppo_key_is_named() -> None:
    with pytest.raises(PresetError, match=r"unknown key\(s\) \['n_step'\] in preset 'x' ppo"):
        Preset.from_dict(
            {"name": "x", "env_id": "CartPole-v1", "total_timesteps": 10, "ppo": {"n_step": 3}}
        )


def test_bad_schedule() -> None:
    with pytest.raises(PresetError, match="lin_<number>"):
        Preset.from_dict(
            {
                "name": "x",
                "env_id": "CartPole-v1",
                "total_timesteps": 10,
                "ppo": {"learning_rate": "cos_1"},
            }
        )


def test_missing_required_key() -> None:
    with pytest.raises(PresetError, match=r"lacks required key\(s\) \['env_id'\]"):
        Preset.from_dict({"name": "x", "total_timesteps": 10})


def test_unknown_preset_name_lists_known_ones() -> None:
    with pytest.raises(PresetError, match="cartpole"):
        Preset.load("no-such-preset")


def test_linear_schedule() -> None:
    schedule = LinearSchedule(0.002)
    assert schedule(1.0) == 0.002 and schedule(0.25) == 0.0005


def test_iif_section_is_validated() -> None:
    base = {"name": "x", "env_id": "CartPole-v1", "total_timesteps": 10}
    assert (
        Preset.from_dict({**base, "iif": {"rule": "bottom", "fraction": 0.2}}).iif_config().rule
        == "bottom"
    )
    with pytest.raises(PresetError, match=r"unknown key\(s\) \['p'\]"):
        Preset.from_dict({**base, "iif": {"p": 0.2}})
    with pytest.raises(PresetError, match="rule must be one of"):
        Preset.from_dict({**base, "iif": {"rule": "nope"}})
