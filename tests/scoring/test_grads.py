"""Every per-record dot-product backend equals the naive per-record loop."""

from __future__ import annotations

import pytest
import torch

from rlattr.record.loss import PPOLossConfig, normalize_advantages, per_record_ppo_losses
from rlattr.scoring.grads import BACKENDS, parameter_names, per_record_dots, policy_actions
from tests.helpers import MODEL_CASES, fp64_observations, trained_model

FAST_BACKENDS = [b for b in BACKENDS if b != "naive"]


def record_loss_fn(records, config, dtype):
    generator = torch.Generator().manual_seed(0)
    # Perturbed old log-probs: ratios ≠ 1 and some clipped, so every loss branch is used.
    old_log_prob = (records.log_probs + 0.3 * torch.randn(len(records), generator=generator)).to(
        dtype
    )
    advantages = normalize_advantages(records.advantages, config).to(dtype)
    old_values, returns = records.values.to(dtype), records.returns.to(dtype)

    def fn(outputs, index):
        return per_record_ppo_losses(
            outputs,
            old_log_prob[index],
            old_values[index],
            returns[index],
            advantages[index],
            config,
        )

    return fn


CONFIG = PPOLossConfig(
    clip_range=0.2,
    clip_range_vf=0.3,
    normalize_advantage=True,
    ent_coef=0.01,
    vf_coef=0.5,
    max_grad_norm=0.5,
    target_kl=None,
    discrete_actions=True,
)


def _config_for(model):
    from gymnasium import spaces

    return PPOLossConfig(
        **{**CONFIG.__dict__, "discrete_actions": isinstance(model.action_space, spaces.Discrete)}
    )


@pytest.mark.parametrize("params", ["policy", "value", "all"])
@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_backends_equal_naive_loop_fp64(name: str, params: str) -> None:
    model, records = trained_model(name)
    policy = model.policy.double()
    config = _config_for(model)
    observations = records.observations.double()
    actions = policy_actions(records.actions.double(), model.action_space)
    names = parameter_names(policy, params)
    named = dict(policy.named_parameters())
    generator = torch.Generator().manual_seed(1)
    vector = {
        n: torch.randn(named[n].shape, generator=generator, dtype=torch.float64) for n in names
    }
    fn = record_loss_fn(records, config, torch.float64)
    with fp64_observations():
        reference = per_record_dots(policy, observations, actions, fn, vector, "naive")
        assert reference.abs().max() > 0
        for backend in FAST_BACKENDS:
            dots = per_record_dots(policy, observations, actions, fn, vector, backend)
            error = ((dots - reference).abs().max() / reference.abs().max()).item()
            assert error <= 1e-10, f"{backend} on {name}/{params}: relative error {error:.2e}"


@pytest.mark.parametrize("name", ["cartpole", "pendulum_log_std", "cnn_minigrid_shared"])
def test_backends_equal_naive_loop_fp32(name: str) -> None:
    model, records = trained_model(name)
    policy = model.policy
    config = _config_for(model)
    actions = policy_actions(records.actions, model.action_space)
    names = parameter_names(policy, "all")
    named = dict(policy.named_parameters())
    generator = torch.Generator().manual_seed(2)
    vector = {n: torch.randn(named[n].shape, generator=generator) for n in names}
    fn = record_loss_fn(records, config, torch.float32)
    reference = per_record_dots(policy, records.observations, actions, fn, vector, "naive")
    for backend in FAST_BACKENDS:
        dots = per_record_dots(policy, records.observations, actions, fn, vector, backend)
        error = ((dots - reference).abs().max() / reference.abs().max()).item()
        assert error <= 1e-5, f"{backend} on {name}: relative error {error:.2e}"


def test_parameter_selection() -> None:
    model, _ = trained_model("pendulum_log_std")
    policy_names = parameter_names(model.policy, "policy")
    value_names = parameter_names(model.policy, "value")
    assert "log_std" in policy_names and "log_std" not in value_names
    assert any(n.startswith("action_net") for n in policy_names)
    assert all(not n.startswith("action_net") for n in value_names)
    assert set(policy_names) | set(value_names) == set(parameter_names(model.policy, "all"))
    cnn, _ = trained_model("cnn_minigrid_shared")
    shared = [
        n for n in parameter_names(cnn.policy, "policy") if n.startswith("features_extractor")
    ]
    assert shared and set(shared) <= set(parameter_names(cnn.policy, "value"))


def test_unknown_parameter_and_backend_are_refused() -> None:
    model, records = trained_model("cartpole")
    actions = policy_actions(records.actions, model.action_space)
    with pytest.raises(KeyError, match="does not have"):
        per_record_dots(
            model.policy,
            records.observations,
            actions,
            lambda o, i: o.log_prob,
            {"nope": torch.ones(1)},
        )
    with pytest.raises(ValueError, match="unknown backend"):
        per_record_dots(
            model.policy, records.observations, actions, lambda o, i: o.log_prob,
            {"action_net.bias": torch.ones(2)}, backend="magic",  # type: ignore[arg-type]
        )  # fmt: skip
