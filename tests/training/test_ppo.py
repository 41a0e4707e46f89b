"""AttributedPPO trains exactly like SB3's PPO: same seed ⇒ bit-identical parameters."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import pytest
import torch
from minigrid.wrappers import ImgObsWrapper
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from rlattr import AttributedPPO, IterationResults, RunLog
from rlattr.extractors import SmallImageCNN
from rlattr.record import Records
from tests.conftest import assert_same_parameters

SMALL = {"n_steps": 64, "batch_size": 16, "n_epochs": 3, "device": "cpu"}


def _minigrid_env(seed: int) -> Any:
    import minigrid  # noqa: F401  (registers MiniGrid ids)

    return make_vec_env("MiniGrid-Empty-5x5-v0", n_envs=1, seed=seed, wrapper_class=ImgObsWrapper)


CASES: dict[str, dict[str, Any]] = {
    "discrete": {"env": "CartPole-v1"},
    "gaussian_log_std": {"env": "Pendulum-v1", "kwargs": {"max_grad_norm": math.inf}},
    "multidiscrete": {"env": "rlattr.envs:rlattr/ToyMultiDiscrete-v0"},
    "multibinary": {"env": "rlattr.envs:rlattr/ToyMultiBinary-v0"},
    "n_envs_4_lr_schedule": {
        "env": "CartPole-v1",
        "n_envs": 4,
        "kwargs": {"learning_rate": lambda p: 3e-3 * p, "clip_range": lambda p: 0.1 + 0.1 * p},
    },
    "clip_range_vf": {"env": "Pendulum-v1", "kwargs": {"clip_range_vf": 0.2}},
    "target_kl_early_stop": {
        "env": "CartPole-v1",
        "kwargs": {"target_kl": 1e-4, "learning_rate": 1e-2, "n_epochs": 10},
    },
    "no_advantage_normalisation": {
        "env": "CartPole-v1",
        "kwargs": {"normalize_advantage": False},
    },
    "max_grad_norm_inf": {"env": "CartPole-v1", "kwargs": {"max_grad_norm": math.inf}},
    "max_grad_norm_tight": {"env": "CartPole-v1", "kwargs": {"max_grad_norm": 0.05}},
    "sgd_momentum_weight_decay": {
        "env": "CartPole-v1",
        "kwargs": {
            "policy_kwargs": {
                "optimizer_class": torch.optim.SGD,
                "optimizer_kwargs": {"momentum": 0.9, "weight_decay": 1e-3},
            }
        },
    },
    "cnn_minigrid": {
        "env": "minigrid",
        "policy": "CnnPolicy",
        "kwargs": {
            "policy_kwargs": {
                "features_extractor_class": SmallImageCNN,
                "optimizer_class": torch.optim.SGD,
                "optimizer_kwargs": {},
            },
            "learning_rate": 5e-3,
            "max_grad_norm": math.inf,
        },
    },
}


def _make_env(case: dict[str, Any], seed: int) -> Any:
    if case["env"] == "minigrid":
        return _minigrid_env(seed)
    return make_vec_env(case["env"], n_envs=case.get("n_envs", 1), seed=seed)


def _train_pair(case: dict[str, Any], run_dir: Any, seed: int = 7, timesteps: int = 256):
    kwargs = {**SMALL, **case.get("kwargs", {}), "seed": seed}
    policy = case.get("policy", "MlpPolicy")
    reference = PPO(policy, _make_env(case, seed), **kwargs).learn(timesteps)
    attributed = AttributedPPO(policy, _make_env(case, seed), run_dir=run_dir, **kwargs)
    attributed.learn(timesteps)
    return reference, attributed


@pytest.mark.parametrize("name", sorted(CASES))
def test_bit_identical_to_sb3_ppo(name: str, run_dir: Any) -> None:
    reference, attributed = _train_pair(CASES[name], run_dir)
    assert_same_parameters(reference.policy, attributed.policy)
    # The optimiser state must match too, or the next update would diverge.
    ref_state = reference.policy.optimizer.state_dict()["state"]
    att_state = attributed.policy.optimizer.state_dict()["state"]
    for key in ref_state:
        for slot, value in ref_state[key].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, att_state[key][slot]), (key, slot)
    assert reference._n_updates == attributed._n_updates
    assert attributed.iteration == len(RunLog(run_dir).iterations())


def test_target_kl_case_really_stops_early(run_dir: Any) -> None:
    _, attributed = _train_pair(CASES["target_kl_early_stop"], run_dir)
    log = RunLog(run_dir)
    stopped = [log.iteration_meta(k)["plan"]["early_stopped"] for k in log.iterations()]
    assert any(stopped), "the target_kl case must exercise early stopping"
    plan = log.load_plan(log.iterations()[-1])
    n_records = len(log.load_records(log.iterations()[-1]))
    full = attributed.n_epochs * (n_records // attributed.batch_size)
    assert any(log.load_plan(k).n_steps < full for k in log.iterations())
    assert plan.n_steps <= full


def test_logged_grad_norms_and_clip_coefficients_are_what_sb3_applied(
    run_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan's pre-clip norm and clip coefficient of every step, against what SB3's own
    training did to its gradients: a wrapper around torch's clip_grad_norm_ (which SB3's
    PPO.train calls) measures, in float64, the gradient norm before the call and the factor
    by which the call actually scaled the gradient (after / before, element by element).
    Training is bit-identical, so SB3's step t and the logged step t see the same gradient."""
    original = torch.nn.utils.clip_grad_norm_
    seen: list[tuple[float, float]] = []

    def measuring_clip(parameters: Any, max_norm: float, *args: Any, **kwargs: Any) -> Any:
        parameters = [p for p in parameters if p.grad is not None]
        before = torch.cat([p.grad.detach().flatten().double() for p in parameters])
        total = original(parameters, max_norm, *args, **kwargs)
        after = torch.cat([p.grad.detach().flatten().double() for p in parameters])
        nonzero = before != 0
        factors = after[nonzero] / before[nonzero]
        # One scalar multiplies the whole gradient (float32 rounding aside).
        assert float((factors - factors.median()).abs().max()) <= 1e-6 * float(factors.median())
        seen.append((float(before.norm()), float(factors.median())))
        return total

    case = CASES["max_grad_norm_tight"]
    kwargs = {**SMALL, **case["kwargs"], "seed": 7}
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", measuring_clip)
    PPO("MlpPolicy", _make_env(case, 7), **kwargs).learn(256)
    monkeypatch.undo()
    AttributedPPO("MlpPolicy", _make_env(case, 7), run_dir=run_dir, **kwargs).learn(256)
    log = RunLog(run_dir)
    plans = [log.load_plan(k) for k in log.iterations()]
    norms = torch.cat([plan.grad_norms for plan in plans])
    coefs = torch.cat([plan.clip_coefs for plan in plans])
    assert len(seen) == len(norms) == 4 * 3 * (64 // 16)
    applied_norms = torch.tensor([n for n, _ in seen], dtype=torch.float64)
    applied_factors = torch.tensor([f for _, f in seen], dtype=torch.float64)
    assert bool((applied_factors < 0.9).all()), "max_grad_norm 0.05 must clip every step"
    torch.testing.assert_close(norms, applied_norms, rtol=1e-6, atol=0)  # measured 1.1e-7
    torch.testing.assert_close(coefs, applied_factors, rtol=1e-7, atol=0)  # measured 1.2e-9
    # And where nothing is clipped, the coefficient is exactly 1.
    unclipped = run_dir.parent / "unclipped"
    loose = {**kwargs, "max_grad_norm": 1e9}
    AttributedPPO("MlpPolicy", _make_env(case, 7), run_dir=unclipped, **loose).learn(64)
    assert bool((RunLog(unclipped).load_plan(0).clip_coefs == 1).all())


def test_hooks_and_all_true_mask_do_not_perturb(run_dir: Any) -> None:
    seen: list[int] = []

    def hook(model: AttributedPPO, records: Records) -> None:
        seen.append(records.iteration)

    def keep_all(model: AttributedPPO, records: Records) -> torch.Tensor:
        return torch.ones(len(records), dtype=torch.bool)

    kwargs = {**SMALL, "seed": 3}
    reference = PPO("MlpPolicy", "CartPole-v1", **kwargs).learn(256)
    attributed = AttributedPPO(
        "MlpPolicy", "CartPole-v1", record_hooks=[hook], keep_mask_fn=keep_all, **kwargs
    ).learn(256)
    assert seen == [0, 1, 2, 3]
    assert_same_parameters(reference.policy, attributed.policy)


def test_keep_mask_restricts_minibatches_to_kept_records(run_dir: Any) -> None:
    def keep_first_half(model: AttributedPPO, records: Records) -> torch.Tensor:
        mask = torch.zeros(len(records), dtype=torch.bool)
        mask[: len(records) // 2] = True
        return mask

    results = IterationResults()
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", keep_mask_fn=keep_first_half, run_dir=run_dir, seed=1, **SMALL
    ).learn(128, callback=results)
    plan = RunLog(run_dir).load_plan(1)
    assert int(plan.minibatch_indices.max()) < 32
    # By default the dropped records leave PPO's minibatches as drawn: each of the 4
    # minibatches of 16 an epoch keeps its kept records, each record once an epoch.
    for epoch, permutation in enumerate(plan.epoch_permutations):
        drawn = [chunk[chunk < 32].tolist() for chunk in permutation.split(16)]
        in_epoch = (plan.step_epochs == epoch).nonzero().flatten().tolist()
        assert [plan.minibatch(t).tolist() for t in in_epoch] == [c for c in drawn if c]
        assert sorted(i for chunk in drawn for i in chunk) == list(range(32))
    assert results.last.keep_mask is not None


class KeepFirst40:
    """A keep-mask function that asks for re-cut minibatches."""

    minibatching = "recut"

    def __call__(self, model: AttributedPPO, records: Records) -> torch.Tensor:
        mask = torch.zeros(len(records), dtype=torch.bool)
        mask[:40] = True
        return mask


def test_keep_mask_recut_leaves_a_partial_last_minibatch(run_dir: Any) -> None:
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", keep_mask_fn=KeepFirst40(), run_dir=run_dir, seed=1, **SMALL
    ).learn(64)
    plan = RunLog(run_dir).load_plan(0)
    assert plan.minibatch_sizes.tolist() == [16, 16, 8] * 3
    for epoch, permutation in enumerate(plan.epoch_permutations):
        kept_order = permutation[permutation < 40]
        in_epoch = (plan.step_epochs == epoch).nonzero().flatten().tolist()
        assert torch.equal(torch.cat([plan.minibatch(t) for t in in_epoch]), kept_order)


def test_bad_keep_mask_is_refused() -> None:
    model = AttributedPPO(
        "MlpPolicy",
        "CartPole-v1",
        keep_mask_fn=lambda m, r: torch.zeros(len(r), dtype=torch.bool),
        seed=0,
        **SMALL,
    )
    with pytest.raises(ValueError, match="dropped every record"):
        model.learn(64)
    model.keep_mask_fn = lambda m, r: torch.ones(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        model.learn(64)


def test_records_follow_sb3_flattening() -> None:
    model = AttributedPPO(
        "MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), seed=0, **SMALL
    )
    model.learn(128)
    records = model.iteration_data(model.iteration - 1).records
    assert len(records) == 128
    buffer = model.rollout_buffer
    # Record i is env i // n_steps, step i % n_steps.
    env, step = 1, 5
    i = env * records.n_steps + step
    assert torch.equal(records.observations[i], torch.as_tensor(buffer.observations[step, env]))
    assert records.advantages[i].item() == pytest.approx(float(buffer.advantages[step, env]))
    assert records.record_ids[i].item() == records.iteration * 128 + i
    gym.make("CartPole-v1").close()


def test_a_function_callback_works_as_in_sb3(run_dir: Any) -> None:
    # SB3 accepts ``callback=f(locals_, globals_) -> bool``; returning False stops training.
    kwargs = {**SMALL, "seed": 3}
    calls = {"sb3": 0, "rlattr": 0}

    def counting(name: str, limit: int) -> Any:
        def callback(locals_: dict[str, Any], globals_: dict[str, Any]) -> bool:
            calls[name] += 1
            return calls[name] < limit

        return callback

    reference = PPO("MlpPolicy", "CartPole-v1", **kwargs)
    reference.learn(256, callback=counting("sb3", 10**9))
    attributed = AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=run_dir, **kwargs)
    attributed.learn(256, callback=counting("rlattr", 10**9))
    assert calls["sb3"] == calls["rlattr"] > 0
    assert_same_parameters(reference.policy, attributed.policy)
    stopped = AttributedPPO("MlpPolicy", "CartPole-v1", **kwargs)
    calls["rlattr"] = 0
    stopped.learn(256, callback=counting("rlattr", 5))
    assert calls["rlattr"] == 5 and stopped.num_timesteps < 256
