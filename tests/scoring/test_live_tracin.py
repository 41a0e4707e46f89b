"""Live TracIn equals replay TracIn with the same ∇f schedule, to float precision.

The live scorer takes its per-record products from the update's own forward and backward
passes (ghost contraction); replay TracIn recomputes them with a separate pass per step
(``rlattr.scoring.influence.tracin_scores``, itself checked against a naive per-record
loop). Both use the optimiser model's multipliers. The tight check runs the whole update in
float64; float32 is checked at a stated tolerance.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env

from rlattr import IIF, AttributedPPO
from rlattr.errors import UnsupportedError
from rlattr.extractors import SmallImageCNN
from rlattr.record.replay import IterationData
from rlattr.scoring.influence import tracin_scores
from rlattr.scoring.live_tracin import LiveTracIn, SubsampledTarget, replay_live_tracin
from rlattr.scoring.targets import ActionTarget, ReturnTarget, Target, TargetContext
from tests.helpers import _minigrid, fp64_observations

# fp64: both sides agree to a few ulps of the largest score (measured ≤ 4e-16 relative).
FP64_RTOL = 1e-12
# fp32: the two computations round differently (the live products contract gradients of
# the minibatch's mean loss, replay's the per-record losses; measured ≤ 1.3e-7 relative to
# the largest score over every case here).
FP32_RTOL = 2e-6

CASES: dict[str, dict[str, Any]] = {
    "mlp_discrete": {"env": "CartPole-v1"},
    "box_log_std": {"env": "Pendulum-v1"},
    "cnn_shared": {
        "env": "minigrid",
        "policy": "CnnPolicy",
        "policy_kwargs": {"features_extractor_class": SmallImageCNN},
    },
    "cnn_separate": {
        "env": "minigrid",
        "policy": "CnnPolicy",
        "policy_kwargs": {
            "features_extractor_class": SmallImageCNN,
            "share_features_extractor": False,
        },
    },
}
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adam": {},
    "sgd": {"optimizer_class": torch.optim.SGD},
    "sgd_momentum": {"optimizer_class": torch.optim.SGD, "optimizer_kwargs": {"momentum": 0.9}},
}


def _trained(case: str, optimizer: str, iif: IIF | None = None) -> AttributedPPO:
    """Two short iterations (minibatches of 24 from 64 records: uneven sizes)."""
    spec = CASES[case]
    env = _minigrid(2, 0) if spec["env"] == "minigrid" else make_vec_env(spec["env"], 2, seed=0)
    policy_kwargs = {**spec.get("policy_kwargs", {}), **OPTIMIZERS[optimizer]}
    model = AttributedPPO(
        spec.get("policy", "MlpPolicy"),
        env,
        n_steps=32,
        batch_size=24,
        n_epochs=3,
        learning_rate=1e-2 if optimizer != "adam" else 3e-4,
        seed=0,
        device="cpu",
        policy_kwargs=policy_kwargs,
        iif=iif,
    )
    model.learn(128)
    return model


def _both(
    model: AttributedPPO,
    data: IterationData,
    config: LiveTracIn,
    target_every: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    context = TargetContext(data.records, model.gamma, model.gae_lambda)
    target = config.resolved_target()
    precision = fp64_observations() if dtype == torch.float64 else contextlib.nullcontext()
    with precision:
        live = replay_live_tracin(data, model.workspace_policy().to(dtype), context, config)
        replayed = tracin_scores(
            data,
            model.workspace_policy().to(dtype),
            target,
            context,
            params=config.params,
            target_every=target_every,
        )
    return live, replayed


def _assert_close(live: torch.Tensor, replayed: torch.Tensor, rtol: float) -> None:
    scale = float(replayed.abs().max())
    assert scale > 0
    error = float((live - replayed).abs().max())
    assert error <= rtol * scale, (error, scale)


# Every policy kind with Adam and SGD; momentum on the MLP (its multipliers differ).
PAIRS = [
    ("mlp_discrete", "adam"),
    ("mlp_discrete", "sgd"),
    ("mlp_discrete", "sgd_momentum"),
    ("box_log_std", "adam"),
    ("box_log_std", "sgd"),
    ("cnn_shared", "adam"),
    ("cnn_shared", "sgd"),
    ("cnn_separate", "adam"),
]


@pytest.mark.parametrize(("case", "optimizer"), PAIRS)
def test_live_tracin_equals_replay_tracin(case: str, optimizer: str) -> None:
    model = _trained(case, optimizer)
    data = model.iteration_data(model.iteration - 1)
    steps_per_epoch = int((data.plan.step_epochs == 0).sum())
    assert len(set(data.plan.minibatch_sizes.tolist())) > 1  # uneven minibatches
    for refresh, every in (("epoch", steps_per_epoch), (1, 1), (2, 2)):
        live, replayed = _both(model, data, LiveTracIn(refresh=refresh), every, torch.float64)
        _assert_close(live, replayed, FP64_RTOL)
    live, replayed = _both(model, data, LiveTracIn(), steps_per_epoch, torch.float32)
    _assert_close(live, replayed, FP32_RTOL)
    # Every parameter (value head included), with an action target: its ∇f reaches the
    # value head only through a shared extractor, the return target's not at all.
    records = data.records
    actions = records.actions[:8]
    action = ActionTarget(
        records.observations[:8], actions.squeeze(-1) if "mlp" in case or "cnn" in case else actions
    )
    config = LiveTracIn(refresh=1, params="all", target=action)
    live, replayed = _both(model, data, config, 1, torch.float64)
    _assert_close(live, replayed, FP64_RTOL)


def test_the_refresh_schedule_matters() -> None:
    """A check that can fail: per-epoch and per-step ∇f give different scores here."""
    model = _trained("mlp_discrete", "adam")
    data = model.iteration_data(model.iteration - 1)
    context = TargetContext(data.records, model.gamma, model.gae_lambda)
    with fp64_observations():
        policy = model.workspace_policy().double()
        per_epoch = replay_live_tracin(data, policy, context, LiveTracIn(refresh="epoch"))
        per_step = replay_live_tracin(data, policy, context, LiveTracIn(refresh=1))
    assert float((per_epoch - per_step).abs().max()) > 1e-6 * float(per_step.abs().max())


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_live_tracin_with_iif_dropping_records(optimizer: str) -> None:
    model = _trained("mlp_discrete", optimizer, iif=IIF(rule="bottom", fraction=0.25))
    data = model.iteration_data(model.iteration - 1)
    dropped = ~data.plan.keep_mask
    assert int(dropped.sum()) > 0
    steps_per_epoch = int((data.plan.step_epochs == 0).sum())
    for dtype, rtol in ((torch.float64, FP64_RTOL), (torch.float32, FP32_RTOL)):
        live, replayed = _both(model, data, LiveTracIn(), steps_per_epoch, dtype)
        _assert_close(live, replayed, rtol)
        assert torch.equal(live[dropped], torch.zeros_like(live[dropped]))


@pytest.mark.parametrize(
    "target",
    [None, "action"],
)
def test_live_tracin_on_a_target_subsample(target: str | None) -> None:
    model = _trained("mlp_discrete", "adam")
    data = model.iteration_data(model.iteration - 1)
    inner: Target | None = None
    if target == "action":
        inner = ActionTarget(data.records.observations[:40], data.records.actions[:40, 0])
    config = LiveTracIn(refresh=2, target=inner, target_subsample=16, subsample_seed=3)
    assert config.resolved_target().identity.endswith("-sub16s3")
    live, replayed = _both(model, data, config, 2, torch.float64)
    _assert_close(live, replayed, FP64_RTOL)
    whole, _ = _both(
        model, data, dataclasses.replace(config, target_subsample=None), 2, torch.float64
    )
    assert float((live - whole).abs().max()) > 1e-6 * float(whole.abs().max())


def test_a_subsample_is_fixed_and_a_large_one_is_the_whole_target() -> None:
    model = _trained("mlp_discrete", "adam")
    records = model.iteration_data(model.iteration - 1).records
    context = TargetContext(records, model.gamma, model.gae_lambda)
    policy = model.policy
    whole = ReturnTarget().value(policy, context)
    assert torch.equal(SubsampledTarget(ReturnTarget(), len(records)).value(policy, context), whole)
    sub = SubsampledTarget(ReturnTarget(), 10, seed=1)
    first, again = sub.value(policy, context), sub.value(policy, context)
    assert torch.equal(first, again)
    other = SubsampledTarget(ReturnTarget(), 10, seed=2).value(policy, context)
    assert not torch.equal(first, other)
    with pytest.raises(UnsupportedError, match="Monte-Carlo"):
        SubsampledTarget(ReturnTarget(advantage="mc"), 10)


@pytest.mark.parametrize("refresh", [0, -1, True, 1.5, "step"])
def test_bad_refresh_is_refused(refresh: Any) -> None:
    with pytest.raises(ValueError, match="refresh must be"):
        LiveTracIn(refresh=refresh)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="target_subsample"):
        LiveTracIn(target_subsample=0)
    with pytest.raises(ValueError, match="params"):
        LiveTracIn(params="critic")  # type: ignore[arg-type]


def test_an_optimiser_outside_the_model_is_refused() -> None:
    spec = {"optimizer_class": torch.optim.RMSprop}
    env = make_vec_env("CartPole-v1", 1, seed=0)
    model = AttributedPPO(
        "MlpPolicy",
        env,
        n_steps=16,
        batch_size=8,
        n_epochs=1,
        seed=0,
        device="cpu",
        policy_kwargs=spec,
    )
    model.learn(16)
    data = model.iteration_data(0)
    context = TargetContext(data.records, model.gamma, model.gae_lambda)
    with pytest.raises(UnsupportedError, match=r"live TracIn.*RMSprop"):
        replay_live_tracin(data, model.workspace_policy(), context, LiveTracIn())


def test_a_weighted_update_is_refused() -> None:
    model = _trained("mlp_discrete", "sgd")
    data = model.iteration_data(model.iteration - 1)
    weights = torch.full((len(data.records),), 0.5)
    data = dataclasses.replace(data, plan=dataclasses.replace(data.plan, record_weights=weights))
    context = TargetContext(data.records, model.gamma, model.gae_lambda)
    with pytest.raises(UnsupportedError, match="per-record loss weights"):
        replay_live_tracin(data, model.workspace_policy(), context, LiveTracIn())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("betas", "eps"), [((0.9, 0.999), 1e-8), ((0.5, 0.9), 1e-3), ((0.9, 0.999), 0.0)]
)
def test_stacked_adam_multipliers_are_the_per_step_ones_bit_for_bit(
    dtype: torch.dtype, betas: tuple[float, float], eps: float
) -> None:
    """Live TracIn's in-place multipliers against the optimiser model's per-step path
    (``step_denominator`` then ``displacement_multipliers``, as replay TracIn uses them),
    with exact zeros in v (a parameter that never had a gradient) and varying rates."""
    from rlattr.scoring.optimizers import EXP_AVG_SQ, STEP, OptimizerModel

    model = OptimizerModel("adam", betas=betas, eps=eps)
    generator = torch.Generator().manual_seed(0)
    n_steps = 7
    moments = [torch.rand(5, 3, generator=generator, dtype=dtype) ** 4 for _ in range(n_steps)]
    for v in moments:
        v[0, :] = 0.0
    counts = [float(11 + t) for t in range(n_steps)]
    rates = [3e-4 * (1 + t % 3) for t in range(n_steps)]
    denominators = [
        {"p": model.step_denominator({EXP_AVG_SQ: v, STEP: n})}
        for v, n in zip(moments, counts, strict=True)
    ]
    per_step = model.displacement_multipliers(rates, denominators)
    expected = torch.stack([u["p"] for u in per_step])  # type: ignore[index]
    stacked = model.stacked_displacement_multipliers(rates, moments, counts)
    assert stacked.dtype == dtype
    assert torch.equal(stacked, expected)
