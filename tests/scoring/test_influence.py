"""Scorers: snapshot and replay TracIn, against naive loops and against exact replay.

On a model whose per-record loss and target are linear in θ, trained by plain SGD (or SGD
with momentum) without clipping and without advantage normalisation, the first-order
TracIn prediction has no second-order remainder: it must equal the replayed effect of
zeroing a subset's loss terms to float precision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlattr.analysis.groundtruth import random_subsets, subset_effects
from rlattr.record.checkpoint import capture_checkpoint
from rlattr.record.loss import PPOLossConfig, normalize_advantages
from rlattr.record.plan import UpdatePlan
from rlattr.record.records import Records
from rlattr.record.replay import IterationData
from rlattr.scoring.grads import parameter_names
from rlattr.scoring.influence import snapshot_scores, tracin_scores
from rlattr.scoring.targets import ActionTarget, ReturnTarget, TargetContext
from tests.helpers import fp64_observations, trained_model


class LinearProbabilityPolicy(torch.nn.Module):
    """π_θ(a|s) = θ_a·s + b_a + 2: a synthetic policy whose probability is linear in θ.

    Then the PPO ratio ρ = π_θ/π_old and the return target mean ρ·A are linear in θ too.
    It has the interface replay and the scorers use (``evaluate_actions``, ``optimizer``).
    """

    def __init__(self, obs_dim: int, n_actions: int, optimizer: str):
        super().__init__()
        self.action_net = torch.nn.Linear(obs_dim, n_actions, dtype=torch.float64)
        self.value_net = torch.nn.Linear(obs_dim, 1, dtype=torch.float64)
        self.action_space = spaces.Discrete(n_actions)
        if optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        elif optimizer == "momentum":
            self.optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        elif optimizer == "nesterov":
            self.optimizer = torch.optim.SGD(
                self.parameters(), lr=0.05, momentum=0.9, nesterov=True
            )
        else:
            self.optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)

    def set_training_mode(self, mode: bool) -> None:
        self.train(mode)

    def evaluate_actions(self, observations, actions):
        logits = self.action_net(observations)
        probability = logits.gather(1, actions.long().view(-1, 1)).squeeze(1) + 2.0
        return self.value_net(observations), probability.log(), None


def _linear_problem(optimizer: str, n: int = 48, batch_size: int = 16, epochs: int = 3):
    torch.manual_seed(0)
    policy = LinearProbabilityPolicy(4, 3, optimizer)
    with torch.no_grad():
        policy.action_net.weight.mul_(0.1)
    observations = torch.rand(n, 4, dtype=torch.float64) * 2 - 1
    actions = torch.randint(0, 3, (n, 1)).to(torch.float64)
    with torch.no_grad():
        _, log_prob, _ = policy.evaluate_actions(observations, actions.flatten())
    zeros = torch.zeros(n, dtype=torch.float64)
    records = Records(
        observations=observations,
        actions=actions,
        rewards=zeros,
        episode_starts=zeros,
        values=zeros,
        log_probs=log_prob.detach(),
        advantages=torch.randn(n, dtype=torch.float64),
        returns=torch.randn(n, dtype=torch.float64),
        last_values=torch.zeros(1, dtype=torch.float64),
        last_dones=torch.zeros(1, dtype=torch.float64),
        iteration=0,
        n_envs=1,
        n_steps=n,
    )
    config = PPOLossConfig(
        clip_range=1e9,  # no ratio clipping
        clip_range_vf=None,
        normalize_advantage=False,
        ent_coef=0.0,
        vf_coef=0.0,
        max_grad_norm=float("inf"),
        target_kl=None,
        discrete_actions=True,
    )
    generator = torch.Generator().manual_seed(1)
    permutations = torch.stack([torch.randperm(n, generator=generator) for _ in range(epochs)])
    minibatches = [p.split(batch_size) for p in permutations]
    steps = epochs * (n // batch_size)
    plan = UpdatePlan(
        loss_config=config,
        n_epochs=epochs,
        batch_size=batch_size,
        epoch_permutations=permutations,
        keep_mask=torch.ones(n, dtype=torch.bool),
        step_epochs=torch.arange(epochs).repeat_interleave(n // batch_size),
        minibatch_indices=torch.cat([torch.cat(m) for m in minibatches]),
        minibatch_sizes=torch.full((steps,), batch_size),
        learning_rates=torch.full(
            (steps,), policy.optimizer.param_groups[0]["lr"], dtype=torch.float64
        ),
        grad_norms=torch.ones(steps, dtype=torch.float64),
        clip_coefs=torch.ones(steps, dtype=torch.float64),
        early_stopped=False,
    )
    tensors, meta = capture_checkpoint(policy)
    data = IterationData(0, records, plan, tensors, meta)
    context = TargetContext(records, gamma=0.99, gae_lambda=0.95)
    return policy, data, context


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov"])
@pytest.mark.parametrize("backend", ["naive", "hooks", "jvp"])
def test_tracin_is_exact_on_a_linear_model(optimizer: str, backend: str) -> None:
    policy, data, context = _linear_problem(optimizer)
    target = ReturnTarget()
    scores = tracin_scores(data, policy, target, context, params="all", backend=backend)
    removed = random_subsets(len(data.records), 16, 0.1, seed=3)
    predicted = np.array([float(scores[m].sum()) for m in removed])
    actual = subset_effects(data, policy, target, context, removed, removal="zero_weight")
    assert np.abs(actual).max() > 1e-6  # the subsets matter
    np.testing.assert_allclose(predicted, actual, rtol=1e-9, atol=1e-12 * np.abs(actual).max())


def test_dropping_renormalises_so_first_order_is_not_exact() -> None:
    """Dropping records also re-weights the rest of each minibatch (1/|b| → 1/(|b|−r)):
    a first-order effect that TracIn does not describe, even on a linear model."""
    policy, data, context = _linear_problem("sgd")
    target = ReturnTarget()
    scores = tracin_scores(data, policy, target, context, params="all")
    removed = random_subsets(len(data.records), 16, 0.1, seed=3)
    predicted = np.array([float(scores[m].sum()) for m in removed])
    dropped = subset_effects(data, policy, target, context, removed, removal="drop")
    assert np.abs(predicted - dropped).max() > 1e-3 * np.abs(dropped).max()


def test_tracin_with_adam_runs_and_matches_its_own_naive_backend() -> None:
    policy, data, context = _linear_problem("adam")
    target = ReturnTarget()
    fast = tracin_scores(data, policy, target, context, params="all", backend="hooks")
    naive = tracin_scores(data, policy, target, context, params="all", backend="naive")
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-14)
    assert fast.abs().max() > 0


def test_replay_after_tracin_reaches_the_same_parameters() -> None:
    """TracIn replays the logged update: the policy ends where a plain replay ends."""
    from rlattr.record.replay import replay

    policy, data, context = _linear_problem("momentum")
    tracin_scores(data, policy, ReturnTarget(), context, params="all")
    after_tracin = {k: v.clone() for k, v in policy.state_dict().items()}
    replay(data, policy)
    for name, value in policy.state_dict().items():
        assert torch.equal(value, after_tracin[name]), name


@pytest.mark.parametrize("name", ["cartpole", "pendulum_log_std", "cnn_minigrid_shared"])
def test_snapshot_equals_explicit_per_record_gradients(name: str) -> None:
    """−⟨∇f, ∇ℓ_i⟩ with every gradient taken by autograd, record by record (fp64)."""
    model, records = trained_model(name, n_steps=12)
    policy = model.policy.double()
    config = model.loss_config()
    records64 = records.to("cpu")
    for field in ("observations", "actions", "values", "log_probs", "advantages", "returns"):
        setattr(records64, field, getattr(records, field).double())
    context = TargetContext(records64, model.gamma, model.gae_lambda)
    target = ReturnTarget()
    with fp64_observations():
        scores = snapshot_scores(policy, records64, target, config, context, backend="hooks")
        names = parameter_names(policy, "policy")
        params = [dict(policy.named_parameters())[n] for n in names]
        grad_f = torch.autograd.grad(target.value(policy, context), params, allow_unused=True)
        advantages = normalize_advantages(records64.advantages, config)
        expected = []
        for i in range(len(records64)):
            batch = records64.minibatch(torch.tensor([i]))
            actions = batch.actions.long().flatten() if config.discrete_actions else batch.actions
            values, log_prob, entropy = policy.evaluate_actions(batch.observations, actions)
            ratio = torch.exp(log_prob - batch.old_log_prob)
            loss = (
                -(advantages[i] * ratio).sum()
                + config.vf_coef * ((batch.returns - values.flatten()) ** 2).sum()
            )
            loss = loss + config.ent_coef * (-(entropy if entropy is not None else -log_prob)).sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            dot = sum(
                (a * b).sum()
                for a, b in zip(grad_f, grads, strict=True)
                if a is not None and b is not None
            )
            expected.append(-dot)
    torch.testing.assert_close(scores, torch.stack(expected), rtol=1e-10, atol=1e-12)


def test_action_target_and_validation() -> None:
    model, records = trained_model("cartpole")
    context = TargetContext(records, model.gamma, model.gae_lambda)
    target = ActionTarget(records.observations[:3], records.actions[:3])
    value = target.value(model.policy, context)
    assert value.ndim == 0 and value < 0
    with pytest.raises(ValueError, match="as many actions"):
        ActionTarget(records.observations[:3], records.actions[:2])


def test_return_target_gradient_is_the_policy_gradient() -> None:
    """At θ_k (ρ = 1) ∇f_R = mean_j A_j ∇log π(a_j|s_j)."""
    model, records = trained_model("cartpole")
    policy = model.policy
    context = TargetContext(records, model.gamma, model.gae_lambda)
    params = list(policy.parameters())
    grad_target = torch.autograd.grad(
        ReturnTarget().value(policy, context), params, allow_unused=True
    )
    _, log_prob, _ = policy.evaluate_actions(records.observations, records.actions.long().flatten())
    grad_pg = torch.autograd.grad((records.advantages * log_prob).mean(), params, allow_unused=True)
    for a, b in zip(grad_target, grad_pg, strict=True):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_monte_carlo_and_gae_recursion_match_sb3() -> None:
    from rlattr.scoring.targets import gae_advantages, monte_carlo_advantages

    model, records = trained_model("n_envs_2", n_steps=64)
    recomputed = gae_advantages(records, model.gamma, model.gae_lambda)
    # SB3's own recursion, in the same float32 NumPy arithmetic: bit for bit.
    assert torch.equal(recomputed, records.advantages)
    mc = monte_carlo_advantages(records, model.gamma)
    assert not torch.allclose(mc, records.advantages)
