"""The seams return values: hooks return scores, filters return decisions; nothing is
written onto the model for another part to read; old-style callables still work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EveryNTimesteps
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlattr import IIF, AttributedPPO, RunLog, ScoreHook
from rlattr.training import IterationResult, IterationResults
from rlattr.training.seams import (
    FilterDecision,
    IterationContext,
    KeepMaskFilter,
    ScorePrefixes,
    StoredScores,
    as_keep_mask_filter,
)
from tests.conftest import assert_same_parameters

SMALL = {"n_steps": 64, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}


def _tags(run_dir: Path) -> dict[str, list[str]]:
    event_dir = next((run_dir / "tb").rglob("events.out.tfevents.*")).parent
    accumulator = EventAccumulator(str(event_dir))
    accumulator.Reload()
    return accumulator.Tags()


def test_a_hook_returns_scores_that_are_stored_and_logged(run_dir: Path) -> None:
    seen: list[IterationContext] = []

    def advantage_hook(context: IterationContext) -> dict[str, StoredScores]:
        seen.append(context)
        scores = context.records.advantages.double()
        return {"advantage": StoredScores(scores, {"method": "advantage"}, log_as="mine")}

    model = AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, record_hooks=[advantage_hook], **SMALL
    ).learn(128)
    log = RunLog(run_dir)
    assert [c.iteration for c in seen] == [0, 1]
    context = seen[-1]
    assert context.policy is model.policy and context.plan is None and context.generator is None
    assert context.loss_config == model.loss_config()
    assert (context.gamma, context.gae_lambda) == (model.gamma, model.gae_lambda)
    for k in log.iterations():
        scores, meta = log.load_scores(k, "advantage")
        assert torch.equal(scores, log.load_records(k).advantages.double())
        assert meta["method"] == "advantage"
    tags = _tags(run_dir)
    assert "mine/fraction_negative" in tags["scalars"] and "mine/normalized" in tags["histograms"]
    # Only the return target's set ("scores") gets the advantage diagnosis.
    assert not any(tag.startswith("diagnosis/") for tag in tags["scalars"])
    # Nothing was left on the model for another part to read.
    for name in ("pending_scores", "draft_plan"):
        assert not hasattr(model, name)


class DropFirstQuarter(KeepMaskFilter):
    """A filter that re-cuts minibatches, uses its generator and reports a scalar."""

    minibatching = "recut"
    uses_generator = True
    seed = 11

    def __init__(self) -> None:
        self.generators: list[torch.Generator | None] = []

    def __call__(self, context: IterationContext) -> FilterDecision:
        self.generators.append(context.generator)
        mask = torch.ones(len(context.records), dtype=torch.bool)
        mask[: len(mask) // 4] = False
        scores = {"index": StoredScores(torch.arange(len(mask), dtype=torch.float64), {})}
        return FilterDecision(mask, scores, {"custom/dropped": float((~mask).sum())})


def test_a_filter_returns_its_decision(run_dir: Path) -> None:
    keep_filter = DropFirstQuarter()
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, keep_mask_fn=keep_filter, **SMALL
    ).learn(128)
    log = RunLog(run_dir)
    for k in log.iterations():
        plan = log.load_plan(k)
        assert plan.keep_mask.tolist() == [False] * 16 + [True] * 48
        assert plan.minibatch_sizes.tolist() == [16, 16, 16] * 2  # re-cut as declared
        assert log.score_names(k) == ["index"]
    generator = keep_filter.generators[0]
    assert isinstance(generator, torch.Generator)
    assert keep_filter.generators == [generator, generator]  # one generator, drawn on
    assert "custom/dropped" in _tags(run_dir)["scalars"]


def test_plain_context_functions_and_old_style_callables_are_adapted() -> None:
    def new_style(context: IterationContext) -> torch.Tensor:
        return torch.ones(len(context.records), dtype=torch.bool)

    def old_style(model, records):
        return None

    old_style.minibatching = "recut"  # type: ignore[attr-defined]
    assert isinstance(as_keep_mask_filter(new_style, None), KeepMaskFilter)
    adapted = as_keep_mask_filter(old_style, None)
    assert adapted.minibatching == "recut" and not adapted.needs_plan
    results = IterationResults()
    AttributedPPO("MlpPolicy", "CartPole-v1", keep_mask_fn=new_style, **SMALL).learn(
        64, callback=results
    )
    assert results.last.keep_mask is not None and bool(results.last.keep_mask.all())


def test_bad_hook_results_are_refused() -> None:
    model = AttributedPPO(
        "MlpPolicy", "CartPole-v1", record_hooks=[lambda context: torch.zeros(3)], **SMALL
    )
    with pytest.raises(TypeError, match="StoredScores"):
        model.learn(64)
    model = AttributedPPO("MlpPolicy", "CartPole-v1", keep_mask_fn=lambda c: "all", **SMALL)
    with pytest.raises(TypeError, match="FilterDecision"):
        model.learn(64)


class KeepAll(KeepMaskFilter):
    def __call__(self, context: IterationContext) -> FilterDecision:
        return FilterDecision(torch.ones(len(context.records), dtype=torch.bool))


def test_new_style_seams_that_keep_everything_do_not_perturb_training() -> None:
    reference = PPO("MlpPolicy", "CartPole-v1", **SMALL).learn(192)
    seamed = AttributedPPO(
        "MlpPolicy", "CartPole-v1", record_hooks=[ScoreHook()], keep_mask_fn=KeepAll(), **SMALL
    ).learn(192)
    assert_same_parameters(reference.policy, seamed.policy)


def test_a_run_with_an_explicit_iif_seed_resumes_with_the_default(run_dir: Path) -> None:
    # The generator resumes from the checkpoint, so seed=None accepts what the run used
    # (runs written before the default changed stored seed 0).
    kwargs = {"run_dir": run_dir, **SMALL}
    AttributedPPO("MlpPolicy", "CartPole-v1", iif=IIF(rule="random", seed=0), **kwargs).learn(64)
    resumed = AttributedPPO(
        "MlpPolicy", "CartPole-v1", iif=IIF(rule="random"), resume=True, **kwargs
    ).learn(64, reset_num_timesteps=False)
    assert resumed.iteration == 2


def test_two_score_sets_on_one_prefix_are_both_logged(run_dir: Path) -> None:
    # A hook and IIF both ask for the "scores" prefix: the filter's set keeps it (its
    # scores drove the drops), the hook's moves to "scores_<its name>".
    def advantage_hook(context: IterationContext) -> dict[str, StoredScores]:
        return {"advantage": StoredScores(context.records.advantages.double(), {}, "scores")}

    AttributedPPO(
        "MlpPolicy",
        "CartPole-v1",
        run_dir=run_dir,
        record_hooks=[advantage_hook],
        iif=IIF(fraction=0.5),
        **SMALL,
    ).learn(128)
    log = RunLog(run_dir)
    last = log.iterations()[-1]
    assert log.score_names(last) == ["advantage", "snapshot-return"]
    event_dir = next((run_dir / "tb").rglob("events.out.tfevents.*")).parent
    accumulator = EventAccumulator(str(event_dir))
    accumulator.Reload()
    shares = {}
    for prefix, name in [("scores", "snapshot-return"), ("scores_advantage", "advantage")]:
        scores, _ = log.load_scores(last, name)
        shares[prefix] = float((scores < 0).double().mean())
        logged = accumulator.Scalars(f"{prefix}/fraction_negative")[-1].value
        assert logged == pytest.approx(shares[prefix], abs=1e-6)
    assert shares["scores"] != shares["scores_advantage"]  # two sets, not one twice


def test_a_prefix_keeps_its_owner_for_the_whole_run() -> None:
    def sets(**wanted: str) -> dict[str, StoredScores]:
        return {
            name: StoredScores(torch.full((2,), float(i)), {}, prefix)
            for i, (name, prefix) in enumerate(wanted.items())
        }

    prefixes = ScorePrefixes()
    # A metagradient filter warming up stores nothing: the hook's set takes "scores" ...
    assert list(prefixes.assign(sets(hook="scores"))) == ["scores"]
    # ... and keeps it once the filter's set arrives, which moves aside, iteration after
    # iteration (no curve switches from one set to the other).
    for _ in range(2):
        logged = prefixes.assign(sets(hook="scores", iif="scores"))
        assert float(logged["scores"][0]) == 0.0 and float(logged["scores_iif"][0]) == 1.0
    # A moved name that another set asks for as its own prefix: numbered, nothing lost.
    fresh = ScorePrefixes()
    logged = fresh.assign(sets(a="scores", b="scores", c="scores_a"))
    assert {p: float(v[0]) for p, v in logged.items()} == {
        "scores_a": 2.0,  # c's own prefix, seen first
        "scores": 1.0,  # b, seen before a (the later-made set, e.g. the filter's)
        "scores_a_2": 0.0,
    }


class _Listener(BaseCallback):
    """Notes, at each delivery, the result's iteration and the model's next iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def _on_step(self) -> bool:
        return True

    def on_iteration(self, result: IterationResult) -> None:
        self.seen.append((result.iteration, self.model.iteration))


def test_each_iteration_returns_its_result_to_every_callback_that_wants_it(
    run_dir: Path,
) -> None:
    collected, nested, listener = IterationResults(), IterationResults(keep=1), _Listener()
    # Inside SB3's CallbackList and an event callback's child too.
    callbacks = [collected, CallbackList([EveryNTimesteps(10**9, nested), listener])]
    model = AttributedPPO(
        "MlpPolicy",
        "CartPole-v1",
        run_dir=run_dir,
        record_hooks=[ScoreHook()],
        iif=IIF(rule="bottom", fraction=0.25),
        **SMALL,
    )
    model.learn(3 * 64, callback=callbacks)
    assert [r.iteration for r in collected] == [0, 1, 2]
    assert listener.seen == [(0, 1), (1, 2), (2, 3)]  # after the update, once
    assert len(nested) == 1 and nested.last is collected.last
    log = RunLog(run_dir)
    for result in collected:
        k = result.iteration
        records = log.load_records(k)
        assert torch.equal(result.records.observations, records.observations)
        assert result.num_timesteps == 64 * (k + 1)
        plan = log.load_plan(k)
        assert result.keep_mask is not None and torch.equal(result.keep_mask, plan.keep_mask)
        assert int((~result.keep_mask).sum()) == 16  # IIF's bottom quarter of 64
        assert result.fraction_dropped == 0.25 and result.weights is None
        assert result.filtering
        assert sorted(result.scores) == log.score_names(k)
        for name, stored in result.scores.items():
            assert torch.equal(stored.scores, log.load_scores(k, name)[0])
        assert result.n_epochs_run == 2 and "train/loss" in result.losses
        start, _ = log.load_checkpoint(k)
        assert all(torch.equal(value, start[name]) for name, value in result.start[0].items())
    # The model keeps nothing for other parts to read back.
    assert not [name for name in vars(model) if name.startswith("last_")]
    # Outside learn() no callback receives anything.
    before = len(collected)
    model.train()  # one more update on the last rollout, outside learn()
    assert len(collected) == before


def test_an_unfiltered_result_has_no_mask_and_no_dropped_share() -> None:
    results = IterationResults()
    with pytest.raises(LookupError, match="no iteration"):
        _ = results.last
    AttributedPPO("MlpPolicy", "CartPole-v1", **SMALL).learn(64, callback=results)
    (result,) = results
    assert result.keep_mask is None and not result.filtering
    assert result.fraction_dropped is None and result.scores == {}
    assert result.ground_truth is None
    with pytest.raises(ValueError, match="keep"):
        IterationResults(keep=0)


class _HalfWeights(KeepMaskFilter):
    """Drops record 0, trains records 1-7 at weight 0.5, and reports the iteration."""

    def __call__(self, context: IterationContext) -> FilterDecision:
        weights = torch.ones(len(context.records))
        weights[0], weights[1:8] = 0.0, 0.5
        return FilterDecision(None, scalars={"custom/k": context.iteration}, weights=weights)


def test_a_result_carries_the_filters_weights_and_scalars(run_dir: Path) -> None:
    results = IterationResults()
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, keep_mask_fn=_HalfWeights(), **SMALL
    ).learn(2 * 64, callback=results)
    log = RunLog(run_dir)
    for result in results:
        assert result.scalars == {"custom/k": result.iteration}
        assert result.weights is not None
        assert torch.equal(result.weights, log.load_plan(result.iteration).record_weights)
        assert result.keep_mask is not None and result.keep_mask.tolist() == [False] + [True] * 63
        assert result.fraction_dropped == 1 / 64
