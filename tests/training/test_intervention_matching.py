"""The ``matching`` intervention rule: drop every record that *is* one of the behaviour's
(state, action) pairs, whatever its score (the naive baseline of issue 13's trap
experiment). Checked on hand-made records and, in a real run, against the environment's own
ground truth (TrapGrid flags the steps that enter the trap)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env

from rlattr import ActionTarget, AttributedPPO, Intervention, ReturnTarget, RunLog
from rlattr.training.intervention import choose_records, matching_records

TRAP = "rlattr.envs:rlattr/TrapGrid-v0"
SMALL = {"n_steps": 64, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}


def _trap_target() -> ActionTarget:
    env = make_vec_env(TRAP, n_envs=1, seed=0)
    observations, actions = env.envs[0].unwrapped.trap_state_actions()
    return ActionTarget(torch.as_tensor(observations), torch.as_tensor(actions))


def _one_hot(cells: list[int], size: int = 4) -> torch.Tensor:
    return torch.eye(size)[cells]


def test_matching_records_flags_exactly_the_pairs() -> None:
    target = ActionTarget(_one_hot([1, 2]), torch.tensor([0, 3]))  # (cell 1, 0), (cell 2, 3)
    observations = _one_hot([1, 1, 2, 2, 0, 3])
    actions = torch.tensor([[0.0], [3.0], [3.0], [0.0], [0.0], [3.0]])  # as SB3 stores them
    flags = matching_records(observations, actions, target)
    assert flags.tolist() == [True, False, True, False, False, False]


def test_matching_refuses_pairs_of_another_shape() -> None:
    target = ActionTarget(_one_hot([1], size=5), torch.tensor([0]))
    with pytest.raises(ValueError, match="observations of 5"):
        matching_records(_one_hot([1]), torch.tensor([[0.0]]), target)


def test_choose_takes_every_match_whatever_its_score_and_the_best_under_a_budget() -> None:
    scores = torch.tensor([0.5, -3.0, -1.0, 2.0, -0.5, 0.1])
    matched = torch.tensor([True, True, False, False, True, True])
    target = ActionTarget(_one_hot([1]), torch.tensor([0]))
    everything = Intervention(target=target, rule="matching", budget=None)
    taken = choose_records(scores, everything, None, matched=matched)
    assert taken.tolist() == matched.tolist()  # negatively scored matches too
    two = Intervention(target=target, rule="matching", budget=2)
    # the two most positively scored matches (0.5 at 0, 0.1 at 5); 2.0 at 3 is no match
    assert torch.nonzero(choose_records(scores, two, None, matched=matched)).flatten().tolist() == [
        0,
        5,
    ]
    assert choose_records(scores, everything, None, limit=1, matched=matched).tolist() == [
        True,
        False,
        False,
        False,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="needs matched"):
        choose_records(scores, everything, None)


def test_matching_needs_an_action_target() -> None:
    with pytest.raises(ValueError, match="must be an ActionTarget"):
        Intervention(target=ReturnTarget(), rule="matching")


def test_a_run_drops_exactly_the_steps_that_entered_the_trap(run_dir: Path) -> None:
    # TrapGrid's ground truth (info["rlattr_fault"]) flags the steps that enter the trap,
    # which are exactly the records whose (state, action) is a trap pair: an independent check.
    config = Intervention(target=_trap_target(), rule="matching", budget=None)
    AttributedPPO("MlpPolicy", TRAP, run_dir=run_dir, intervention=config, **SMALL).learn(192)
    log = RunLog(run_dir)
    dropped_any = False
    for k in log.iterations():
        dropped = ~log.load_plan(k).keep_mask
        entered = log.load_ground_truth(k)["rlattr_fault"].bool()
        assert torch.equal(dropped, entered)
        dropped_any |= bool(dropped.any())
    assert dropped_any  # a random policy enters the trap within 64 steps
