"""TrapGrid: the trap lures (pays at once) but costs return; its pairs are the trap steps."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from rlattr.envs.trap_grid import DOWN, LEFT, RIGHT, UP, TrapGridEnv

# From the start (0, 1) right to the gap in the wall, down, then left to the far goal (5, 0).
GOAL_PATH = [RIGHT] * 4 + [DOWN] * 5 + [LEFT] * 5
NEAR_GOAL_PATH = [RIGHT] * 4 + [DOWN] * 5  # to the near goal (5, 5)


def _run(
    actions: list[int], gamma: float = 1.0, env_id: str = "rlattr/TrapGrid-v0"
) -> tuple[float, list[bool], bool, bool]:
    """Play ``actions`` in the registered env (50-step limit) until the episode ends."""
    env = gym.make(env_id)
    env.reset(seed=0)
    ret, faults, terminated, truncated = 0.0, [], False, False
    for t, action in enumerate(actions):
        _, reward, terminated, truncated, info = env.step(action)
        ret += gamma**t * float(reward)
        faults.append(info["rlattr_fault"])
        if terminated or truncated:
            break
    env.close()
    return ret, faults, terminated, truncated


def test_walking_to_the_goal_pays_goal_minus_step_costs() -> None:
    ret, faults, terminated, _ = _run(GOAL_PATH)
    assert terminated and len(faults) == 14 and not any(faults)
    assert ret == pytest.approx(1.0 - 14 * 0.01)  # 0.86
    near, faults, terminated, _ = _run(NEAR_GOAL_PATH, env_id="rlattr/TrapGridNear-v0")
    assert terminated and len(faults) == 9 and near == pytest.approx(0.91)
    # The wall: going straight down from the start never reaches the far goal.
    _, _, terminated, truncated = _run([DOWN] * 5 + [LEFT] * 45)
    assert truncated and not terminated


def test_looping_on_the_trap_pays_less_than_the_goal_but_more_than_wandering() -> None:
    ret, faults, terminated, truncated = _run([LEFT, RIGHT] * 30)
    assert truncated and not terminated and len(faults) == 50
    assert faults == [True, False] * 25  # every entry, and only entries, is a trap step
    assert ret == pytest.approx(25 * 0.015 - 50 * 0.01)  # -0.125
    wander, *_ = _run([UP] * 50)  # bump the wall: never trap, never goal
    assert wander == pytest.approx(-0.5)
    assert wander < ret < 0.86
    # The lure: entering the trap is the only first move with a positive reward.
    first_rewards = [_run([a])[0] for a in (LEFT, DOWN, RIGHT, UP)]
    assert first_rewards[LEFT] == pytest.approx(0.005)
    assert all(r == pytest.approx(-0.01) for r in first_rewards[1:])


@pytest.mark.parametrize("env_id", ["rlattr/TrapGrid-v0", "rlattr/TrapGridNear-v0"])
@pytest.mark.parametrize("gamma", [1.0, 0.99, 0.9, 0.8])
def test_every_detour_through_the_trap_lowers_the_return(gamma: float, env_id: str) -> None:
    path = GOAL_PATH if env_id == "rlattr/TrapGrid-v0" else NEAR_GOAL_PATH
    direct, *_ = _run(path, gamma, env_id)
    previous = direct
    for loops in range(1, 6):
        ret, faults, terminated, _ = _run([LEFT, RIGHT] * loops + path, gamma, env_id)
        assert terminated and sum(faults) == loops
        assert ret < previous  # see the module docstring: holds for gamma ≥ 0.8
        previous = ret


def test_trap_state_actions_are_exactly_the_steps_that_enter_the_trap() -> None:
    env = TrapGridEnv()
    observations, actions = env.trap_state_actions()
    assert observations.shape == (2, 36) and observations.dtype == np.float32
    assert actions.dtype == np.int64
    assert {(c, a) for c, a in zip(_cells(observations), actions.tolist(), strict=True)} == {
        ((0, 1), LEFT),
        ((1, 0), UP),
    }
    # Exhaustively: a (cell, action) is a trap step iff it is one of the pairs.
    pairs = set(zip(_cells(observations), actions.tolist(), strict=True))
    for row in range(6):
        for col in range(6):
            if (row, col) == env.goal or (row, col) in env.walls:
                continue
            for action in (LEFT, DOWN, RIGHT, UP):
                obs, _ = env.reset(options={"cell": (row, col)})
                assert obs.argmax() == row * 6 + col
                _, reward, _, _, info = env.step(action)
                assert info["rlattr_fault"] == (((row, col), action) in pairs)
                if info["rlattr_fault"]:
                    assert reward == pytest.approx(0.015 - 0.01)


def _cells(observations: np.ndarray) -> list[tuple[int, int]]:
    return [divmod(int(np.argmax(o)), 6) for o in observations]


def test_rendering_and_bad_arguments() -> None:
    env = TrapGridEnv(render_mode="ansi")
    env.reset()
    assert env.render().splitlines()[0] == "T A . . . ."
    image = TrapGridEnv(render_mode="rgb_array")
    image.reset()
    assert image.render().shape == (48, 48, 3)
    with pytest.raises(ValueError, match="size"):
        TrapGridEnv(size=2)
    with pytest.raises(ValueError, match="goal"):
        TrapGridEnv(goal="middle")
    with pytest.raises(ValueError, match="needs the wall"):
        TrapGridEnv(wall=False)
    open_grid = TrapGridEnv(goal="near", wall=False)
    assert not open_grid.walls and open_grid.goal == (5, 5)
    with pytest.raises(ValueError, match="non-goal cell"):
        TrapGridEnv().reset(options={"cell": (5, 0)})
    with pytest.raises(ValueError, match="free"):
        TrapGridEnv().reset(options={"cell": (2, 0)})
