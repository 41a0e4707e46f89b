"""IIF: each rule drops exactly the records it should; the update touches only kept ones."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rlattr import AttributedPPO, CallableTarget, RunLog
from rlattr.errors import RunLogError
from rlattr.record import load_iteration, replay
from rlattr.record.records import Records
from rlattr.record.replay import build_policy, state_matches
from rlattr.scoring.diagnosis import episode_ends_in_buffer
from rlattr.scoring.rules import drop_count
from rlattr.training.filters import IIF, keep_mask
from rlattr.training.seams import IterationResults, filter_seed

SCORES = torch.tensor([0.5, -3.0, -1.0, 2.0, -0.5, -2.0, 0.1, -4.0, 1.0, -0.25])
# Negatives, most negative first: idx 7 (-4), 1 (-3), 5 (-2), 2 (-1), 4 (-0.5), 9 (-0.25).


def _kept(rule: str, fraction: float = 0.5, model_seed: int = 0, **kwargs) -> list[int]:
    """The records ``rule`` drops, drawing (random rules) from the generator AttributedPPO
    gives the filter: seeded by ``IIF.seed``, or from the model's seed when that is None."""
    config = IIF(rule=rule, fraction=fraction, **kwargs)
    generator = torch.Generator().manual_seed(filter_seed(config.seed, model_seed))
    mask = keep_mask(SCORES, len(SCORES), config, generator, min_kept=1)
    return torch.nonzero(~mask).flatten().tolist()


def test_neg_bottom_drops_a_fraction_of_the_negatives() -> None:
    assert sorted(_kept("neg_bottom", 0.5)) == [1, 5, 7]  # floor(0.5 × 6) = 3 most negative
    assert sorted(_kept("neg_bottom", 0.34)) == [1, 7]  # floor(0.34 × 6) = 2
    assert _kept("neg_bottom", 0.125) == []  # floor(0.125 × 6) = 0
    # p = 100 % (the paper's Table 2) is every negative, as drop_negative.
    assert sorted(_kept("neg_bottom", 1.0)) == [1, 2, 4, 5, 7, 9]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "neg_bottom", "fraction": 1.5}, r"fraction of neg_bottom must be in \[0, 1\]"),
        ({"rule": "bottom", "fraction": 1.0}, r"fraction of bottom must be in \[0, 1\)"),
        ({"rule": "random", "fraction": 1.0}, r"fraction of random must be in \[0, 1\)"),
        (
            {"rule": "random_like", "like": "bottom", "like_fraction": 1.0},
            r"like_fraction of bottom",
        ),
    ],
)
def test_a_fraction_that_would_drop_the_whole_buffer_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IIF(**kwargs)


def test_drop_negative_drops_every_negative() -> None:
    assert sorted(_kept("drop_negative")) == [1, 2, 4, 5, 7, 9]


def test_bottom_drops_the_lowest_of_all() -> None:
    assert sorted(_kept("bottom", 0.2)) == [1, 7]
    assert sorted(_kept("bottom", 0.45)) == [1, 2, 5, 7]


def test_random_rules_drop_the_same_count_at_random() -> None:
    assert len(_kept("random", 0.3)) == 3
    dropped = _kept("random_like", like="neg_bottom", like_fraction=0.5)
    assert len(dropped) == drop_count(SCORES, "neg_bottom", 0.5) == 3
    assert len(_kept("random_like", like="drop_negative")) == 6
    # Reproducible from the IIF seed, different for another seed, and the global RNG is
    # not touched. (4 and 5 draw different triples of 10 records; checked once.)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    assert _kept("random", 0.3, seed=4) == _kept("random", 0.3, seed=4, model_seed=9)
    assert _kept("random", 0.3, seed=4) != _kept("random", 0.3, seed=5)
    assert torch.equal(state, torch.get_rng_state())
    # Without an IIF seed, the model's seed decides.
    assert _kept("random", 0.3, model_seed=0) == _kept("random", 0.3, model_seed=0)
    assert _kept("random", 0.3, model_seed=0) != _kept("random", 0.3, model_seed=1)


def _first_drop(iif: IIF, seed: int) -> list[int]:
    model = AttributedPPO("MlpPolicy", "CartPole-v1", iif=iif, **{**SMALL, "seed": seed})
    results = IterationResults()
    model.learn(64, callback=results)
    assert results.last.keep_mask is not None
    return torch.nonzero(~results.last.keep_mask).flatten().tolist()


def test_random_drops_follow_the_training_seed_unless_iif_has_one() -> None:
    by_model_seed = IIF(rule="random", fraction=0.25)  # seed None: from the model's seed
    assert _first_drop(by_model_seed, 0) == _first_drop(by_model_seed, 0)
    assert _first_drop(by_model_seed, 0) != _first_drop(by_model_seed, 1)
    fixed = IIF(rule="random", fraction=0.25, seed=3)  # the same stream for every seed
    assert _first_drop(fixed, 0) == _first_drop(fixed, 1)


def test_advantage_like_drops_the_matched_count_of_worst_advantages() -> None:
    advantages = torch.tensor([0.3, 2.0, -5.0, 0.0, -1.0, 1.0, -7.0, 0.5, -0.1, 4.0])
    config = IIF(rule="advantage_like", like="neg_bottom", like_fraction=0.5)
    mask = keep_mask(SCORES, len(SCORES), config, torch.Generator(), 1, advantages)
    # neg_bottom 0.5 drops 3 records; here the 3 most negative advantages: idx 6, 2, 4.
    assert sorted(torch.nonzero(~mask).flatten().tolist()) == [2, 4, 6]
    with pytest.raises(ValueError, match="advantages"):
        keep_mask(SCORES, len(SCORES), config, torch.Generator(), 1)


def test_min_kept_caps_the_drop() -> None:
    config = IIF(rule="drop_negative")
    mask = keep_mask(SCORES, len(SCORES), config, torch.Generator(), min_kept=7)
    assert int(mask.sum()) == 7
    assert sorted(torch.nonzero(~mask).flatten().tolist()) == [1, 5, 7]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "top"}, "rule must be one of"),
        ({"fraction": 1.5}, r"fraction of neg_bottom must be in \[0, 1\]"),
        ({"rule": "random_like"}, "random_like needs like"),
        ({"rule": "advantage_like"}, "advantage_like needs like"),
        ({"scorer": "tracin"}, "throw-away update"),
        ({"greedy_blocks": 2}, "greedy_blocks needs scorer='metagrad'"),
        ({"min_kept": 0}, "min_kept"),
        ({"minibatching": "merge"}, "minibatching must be one of"),
        ({"scorer": "metagrad", "minibatching": "recut"}, "needs minibatching='as_drawn'"),
    ],
)
def test_config_is_validated(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        IIF(**kwargs)


SMALL = {"n_steps": 64, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}


def test_update_touches_only_kept_records(run_dir: Path) -> None:
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, iif=IIF(rule="bottom", fraction=0.25), **SMALL
    ).learn(192)
    log = RunLog(run_dir)
    policy = build_policy(log)
    for k in log.iterations():
        data = load_iteration(log, k)
        kept = data.plan.keep_mask
        assert int((~kept).sum()) == 16
        scores, _ = log.load_scores(k, "snapshot-return")
        assert float(scores[~kept].max()) <= float(scores[kept].min())
        assert set(data.plan.minibatch_indices.tolist()) == set(
            torch.nonzero(kept).flatten().tolist()
        )
        # Poison the dropped records: the logged update must not notice.
        for name in ("advantages", "returns", "log_probs", "values"):
            getattr(data.records, name)[~kept] = float("nan")
        replay(data, policy)
        assert state_matches(policy, log.load_checkpoint(k + 1)[0]) == []


def _trained_iterations(run_dir: Path, iif: IIF):
    """Train a small filtered run and yield (log, policy, k, data) for each iteration."""
    AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=run_dir, iif=iif, **SMALL).learn(128)
    log = RunLog(run_dir)
    policy = build_policy(log)
    for k in log.iterations():
        yield log, policy, k, load_iteration(log, k)


def _expected_minibatches(permutation: torch.Tensor, kept: torch.Tensor, how: str) -> list:
    """The minibatches one epoch should train on, built from the logged permutation."""
    size = SMALL["batch_size"]
    if how == "recut":
        return [chunk.tolist() for chunk in permutation[kept[permutation]].split(size)]
    chunks = [chunk[kept[chunk]] for chunk in permutation.split(size)]
    return [chunk.tolist() for chunk in chunks if chunk.numel()]


@pytest.mark.parametrize("minibatching", ["recut", "as_drawn"])
def test_minibatching_around_dropped_records(run_dir: Path, minibatching: str) -> None:
    # 6 of 64 records dropped: re-cutting leaves a last minibatch of 10; as drawn, each of
    # PPO's four minibatches loses the dropped records it held.
    iif = IIF(rule="bottom", fraction=0.1, minibatching=minibatching)
    for log, policy, k, data in _trained_iterations(run_dir, iif):
        kept = data.plan.keep_mask
        assert int((~kept).sum()) == 6
        expected = [
            batch
            for permutation in data.plan.epoch_permutations
            for batch in _expected_minibatches(permutation, kept, minibatching)
        ]
        assert [m.tolist() for m in data.plan.minibatches()] == expected
        sizes = data.plan.minibatch_sizes.tolist()
        if minibatching == "recut":
            assert sizes == [16, 16, 16, 10] * SMALL["n_epochs"]
        else:
            assert len(sizes) == 4 * SMALL["n_epochs"]
            assert sum(sizes) == 58 * SMALL["n_epochs"]
        replay(data, policy)
        assert state_matches(policy, log.load_checkpoint(k + 1)[0]) == []


def test_warmup_trains_unfiltered(run_dir: Path) -> None:
    model = AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir,
        iif=IIF(rule="bottom", fraction=0.5, warmup_iterations=2), **SMALL,
    )  # fmt: skip
    model.learn(192)
    log = RunLog(run_dir)
    assert [int(log.load_plan(k).keep_mask.sum()) for k in log.iterations()] == [64, 64, 32]


def test_nan_scores_train_unfiltered_with_a_warning(run_dir: Path) -> None:
    def nan_target(policy, context):
        _, log_prob, _ = policy.evaluate_actions(
            context.records.observations, context.records.actions.long().flatten()
        )
        return log_prob.mean() * float("nan")

    model = AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir,
        iif=IIF(rule="drop_negative", target=CallableTarget(nan_target, "nan")), **SMALL,
    )  # fmt: skip
    with pytest.warns(RuntimeWarning, match="NaN or inf"):
        model.learn(128)
    log = RunLog(run_dir)
    assert all(bool(log.load_plan(k).keep_mask.all()) for k in log.iterations())
    assert all(np.isfinite(p.detach().numpy()).all() for p in model.policy.parameters())


def test_iif_and_keep_mask_fn_are_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        AttributedPPO("MlpPolicy", "CartPole-v1", iif=IIF(), keep_mask_fn=lambda m, r: None)


def test_episode_ends_in_buffer() -> None:
    zeros = torch.zeros(8)
    starts = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0.0])  # env 0: steps 0-3, env 1: steps 0-3
    records = Records(
        observations=torch.zeros(8, 1), actions=torch.zeros(8, 1), rewards=zeros,
        episode_starts=starts, values=zeros, log_probs=zeros, advantages=zeros, returns=zeros,
        last_values=torch.zeros(2), last_dones=torch.tensor([0.0, 1.0]),
        iteration=0, n_envs=2, n_steps=4,
    )  # fmt: skip
    # env 0: a new episode starts at step 3, so steps 0-2 end inside; step 3 runs past.
    # env 1: the buffer's last step ends its episode (last_dones), so all of it ends inside.
    assert episode_ends_in_buffer(records).tolist() == [True, True, True, False] + [True] * 4


@pytest.mark.parametrize("greedy_blocks", [1, 2])
def test_iif_with_metagradient_scores_filters_the_drawn_plan(
    run_dir: Path, greedy_blocks: int
) -> None:
    iif = IIF(rule="bottom", fraction=0.25, scorer="metagrad", greedy_blocks=greedy_blocks)
    for log, policy, k, data in _trained_iterations(run_dir, iif):
        kept = data.plan.keep_mask
        assert int((~kept).sum()) == 16
        scores, meta = log.load_scores(k, "metagrad-return")
        assert meta["method"] == "metagrad"
        if greedy_blocks == 1:
            assert float(scores[~kept].max()) <= float(scores[kept].min())
        # The drawn permutations, cut into minibatches, minus the dropped records.
        expected = [
            batch
            for permutation in data.plan.epoch_permutations
            for batch in _expected_minibatches(permutation, kept, "as_drawn")
        ]
        assert [m.tolist() for m in data.plan.minibatches()] == expected
        replay(data, policy)
        assert state_matches(policy, log.load_checkpoint(k + 1)[0]) == []


def test_resume_needs_the_same_filter(run_dir: Path) -> None:
    iif = IIF(rule="bottom", fraction=0.25)
    AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=run_dir, iif=iif, **SMALL).learn(128)
    for changed in (
        None,
        IIF(rule="bottom", fraction=0.5),
        replace(iif, minibatching="recut"),
    ):
        with pytest.raises(RunLogError, match="resume it with the same IIF settings"):
            AttributedPPO(
                "MlpPolicy", "CartPole-v1", run_dir=run_dir, resume=True, iif=changed, **SMALL
            )
    model = AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, resume=True, iif=iif, **SMALL
    ).learn(64, reset_num_timesteps=False)
    assert model.iteration == 3


def test_random_drop_resumes_exactly(tmp_path: Path) -> None:
    # The random rule's generator is checkpointed: a run stopped after 2 iterations and
    # resumed drops the same records as one that never stopped.
    iif = IIF(rule="random", fraction=0.25, seed=3)
    kwargs = {**SMALL, "seed": 5}
    AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=tmp_path / "whole", iif=iif, **kwargs).learn(
        256
    )
    AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=tmp_path / "cut", iif=iif, **kwargs).learn(
        128
    )
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=tmp_path / "cut", resume=True, iif=iif, **kwargs
    ).learn(128, reset_num_timesteps=False)
    whole, cut = RunLog(tmp_path / "whole"), RunLog(tmp_path / "cut")
    assert cut.iterations() == whole.iterations() == [0, 1, 2, 3]
    for k in whole.iterations():
        assert torch.equal(cut.load_plan(k).keep_mask, whole.load_plan(k).keep_mask), k
