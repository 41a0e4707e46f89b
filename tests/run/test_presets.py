"""Every preset in agents/ loads and builds; bad presets fail with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlattr import Preset, PresetError
from rlattr.run import build_model
from rlattr.run.presets import LinearSchedule

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
    model = build_model(preset, seed=0, device="cpu")
    assert model.n_steps == preset.ppo.get("n_steps", 2048)
    assert model.n_envs == preset.n_envs
    model.env.close()


def test_paper_settings_of_lunarlander() -> None:
    model = build_model(Preset.load("lunarlander"), seed=0, device="cpu")
    assert (model.n_steps, model.batch_size, model.n_epochs) == (2048, 64, 10)
    assert model.max_grad_norm == float("inf")
    assert type(model.policy.optimizer).__name__ == "Adam"
    assert model.policy.optimizer.param_groups[0]["lr"] == 1e-3
    sgd = build_model(Preset.load("lunarlander_sgd"), seed=0, device="cpu")
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


def _with_ppo(**ppo: object) -> dict:
    base = yaml.safe_load((AGENTS / "cartpole.yaml").read_text())
    return {**base, "ppo": {**base["ppo"], **ppo}}


@pytest.mark.parametrize(
    ("ppo", "message"),
    [
        ({"gamma": 1.7}, r"ppo.gamma must be a number in \(0, 1\], got 1.7"),
        ({"gamma": 0}, r"ppo.gamma must be a number in \(0, 1\]"),
        ({"gae_lambda": -0.1}, r"ppo.gae_lambda must be a number in \[0, 1\]"),
        ({"batch_size": "big"}, "ppo.batch_size must be a whole number >= 1, got 'big'"),
        ({"batch_size": 0}, "ppo.batch_size must be a whole number >= 1"),
        ({"batch_size": 64.0}, "ppo.batch_size must be a whole number"),
        ({"n_steps": -8}, "ppo.n_steps must be a whole number >= 1"),
        ({"n_epochs": 0}, "ppo.n_epochs must be a whole number >= 1"),
        ({"learning_rate": 0}, "ppo.learning_rate must be a number > 0"),
        ({"learning_rate": "lin_-0.001"}, "ppo.learning_rate must be a number > 0"),
        ({"learning_rate": "3e-4"}, "YAML reads 3e-4 as text: write it with a dot"),
        ({"clip_range": -0.2}, "ppo.clip_range must be a number > 0"),
        ({"clip_range_vf": 0}, "ppo.clip_range_vf must be a number > 0"),
        ({"ent_coef": -0.01}, "ppo.ent_coef must be a number >= 0"),
        ({"vf_coef": float("nan")}, "ppo.vf_coef must be a number >= 0"),
        ({"max_grad_norm": 0}, "ppo.max_grad_norm must be a number > 0"),
        ({"target_kl": -1}, "ppo.target_kl must be a number > 0"),
        ({"normalize_advantage": "yes"}, "ppo.normalize_advantage must be true or false"),
        ({"batch_size": 1}, "batch_size must be >= 2 with normalize_advantage"),
    ],
)
def test_ppo_values_are_range_checked(ppo: dict, message: str) -> None:
    with pytest.raises(PresetError, match=message):
        Preset.from_dict(_with_ppo(**ppo))


@pytest.mark.parametrize(
    "ppo",
    [
        {"gamma": 1.0, "gae_lambda": 0.0},  # undiscounted, one-step TD advantages
        {"max_grad_norm": float("inf")},  # no clipping
        {"clip_range_vf": None, "target_kl": None},  # SB3's "off"
        {"batch_size": 1, "normalize_advantage": False},
        {"learning_rate": "lin_0.0003", "clip_range": "lin_0.1"},
    ],
)
def test_legitimate_edges_are_accepted(ppo: dict) -> None:
    Preset.from_dict(_with_ppo(**ppo))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_envs": 0}, "n_envs must be a whole number >= 1"),
        ({"total_timesteps": "big"}, "total_timesteps must be a whole number >= 1, got 'big'"),
        ({"total_timesteps": 0.5}, "total_timesteps must be a whole number"),
        ({"recording": {"record_every": 0}}, "recording.record_every must be a whole number >= 1"),
        ({"recording": {"keep_last": "all"}}, "recording.keep_last must be a whole number"),
        ({"recording": {"checkpoint_every": 0}}, "recording.checkpoint_every must be a whole"),
        ({"policy_kwargs": {"net_arch": [64, 0]}}, "net_arch layer width must be a whole"),
        ({"policy_kwargs": {"net_arch": {"pi": 64}}}, "pi and .vf must be lists"),
        ({"policy_kwargs": {"ortho_init": "no"}}, "ortho_init must be true or false"),
        ({"wrappers": "minigrid.wrappers.ImgObsWrapper"}, "wrappers must be a list"),
        ({"iif": {"fraction": "much"}}, "IIF fraction must be a number"),
        ({"iif": {"fraction": 1.5}}, r"fraction of neg_bottom must be in \[0, 1\]"),
        ({"iif": {"rule": "bottom", "fraction": 1.0}}, r"fraction of bottom must be in \[0, 1\)"),
        ({"iif": {"min_kept": 0}}, "min_kept must be >= 1"),
        ({"iif": {"warmup_iterations": 1.5}}, "warmup_iterations must be a whole number"),
    ],
)
def test_other_sections_are_checked(change: dict, message: str) -> None:
    with pytest.raises(PresetError, match=message):
        Preset.from_dict({**_with_ppo(), **change})


def test_total_timesteps_in_yaml_exponent_notation() -> None:
    # YAML 1.1 reads 1e6 (no dot) as text; a budget written that way still means 1e6.
    assert Preset.from_dict({**_with_ppo(), "total_timesteps": "1e6"}).total_timesteps == 10**6


@pytest.mark.sparse_checkpoints  # the run log's own default spacing is checked
def test_a_presets_checkpoint_spacing_reaches_the_run_log(tmp_path: Path) -> None:
    preset = Preset.from_dict({**_with_ppo(), "recording": {"checkpoint_every": 4}})
    model = build_model(preset, run_dir=tmp_path / "run", device="cpu")
    assert model.run_log.retention.checkpoint_every == 4
    # Without it, the run log picks its own spacing (about 8192 environment steps).
    default = build_model(Preset.from_dict(_with_ppo()), run_dir=tmp_path / "default", device="cpu")
    assert default.run_log.retention.checkpoint_every not in (None, 4)
