"""Evaluation after every round (rollout + update), as the IIF paper measures its curves.

The paper evaluates the *stochastic* policy after every PPO round on many episodes
(1000 for FrozenLake, Acrobot, MiniGrid and LunarLander; 100 for Highway and
BipedalWalker; docs/science.md §6). ``EvalEveryRound`` does that with its own environments on
fixed seeds, so that:

- every arm and every round is evaluated on the same episode seeds (common random numbers:
  differences between arms are not differences between evaluation draws);
- the training run is untouched: the torch RNG is forked (and re-seeded) for the action
  sampling, the evaluation environments are separate objects with their own seeds, and
  neither numpy's nor Python's global RNG is drawn from. Training with and without this
  callback ends with the same parameters (tests/training/test_evaluation.py).

Round r of the curve is the policy after r updates (round 0: the initial policy).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from rlattr.training.seams import IterationResult


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation of the policy after ``round`` updates.

    Attributes:
        round: updates done before this evaluation (0: the initial policy).
        timesteps: the model's ``num_timesteps`` when it was evaluated.
        return_mean: mean undiscounted return over the episodes.
        return_std: standard deviation of the episode returns (ddof 0).
        episodes: how many episodes.
        eval_seconds: wall-clock time the evaluation took.
        train_seconds: wall-clock time spent outside evaluations since training began
            (rollouts, scoring, updates): the clock RT_peak reads.
        train_cpu_seconds: the same span in CPU time of this process (all its threads);
            on a shared machine a steadier clock than the wall, which other jobs slow.
        fraction_dropped: the IIF filter's dropped share in the update just before
            (``IterationResult.fraction_dropped``, delivered to ``on_iteration``), None
            without a filter.
    """

    round: int
    timesteps: int
    return_mean: float
    return_std: float
    episodes: int
    eval_seconds: float
    train_seconds: float
    train_cpu_seconds: float
    fraction_dropped: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_policy_batched(
    policy: Any,
    make_env: Callable[[], gym.Env],
    episodes: int,
    seed: int,
    n_envs: int = 32,
    sampling_seed: int | None = None,
) -> np.ndarray:
    """Undiscounted returns of ``episodes`` stochastic episodes, episode j on seed ``seed + j``.

    ``n_envs`` environments run side by side and the policy acts on them in one batch; an
    environment that finishes starts the next unplayed episode. The actions are sampled
    under a forked torch RNG seeded with ``sampling_seed`` (default ``seed``), so the
    caller's RNG state is unchanged and the result depends only on the policy's parameters.

    Args:
        policy: an SB3 ``BasePolicy`` (its ``predict`` preprocesses, samples and clips).
        make_env: builds one evaluation environment (called ``min(n_envs, episodes)`` times).
        episodes: how many episodes to play.
        seed: seed of episode 0; episode j resets with ``seed + j``.
        n_envs: environments stepped in one batch.
        sampling_seed: seed of the torch generator that samples the actions.

    Returns:
        The returns, ordered by episode index.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    envs = [make_env() for _ in range(min(n_envs, episodes))]
    returns = np.zeros(episodes)
    devices = [policy.device] if torch.device(policy.device).type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed if sampling_seed is None else sampling_seed)
            episode_of = list(range(len(envs)))  # which episode each env plays (-1: idle)
            next_episode = len(envs)
            obs = [env.reset(seed=seed + j)[0] for j, env in enumerate(envs)]
            while any(j >= 0 for j in episode_of):
                active = [i for i, j in enumerate(episode_of) if j >= 0]
                actions, _ = policy.predict(np.stack([obs[i] for i in active]), deterministic=False)
                for action, i in zip(actions, active, strict=True):
                    obs[i], reward, terminated, truncated, _ = envs[i].step(action)
                    returns[episode_of[i]] += float(reward)
                    if terminated or truncated:
                        if next_episode < episodes:
                            episode_of[i] = next_episode
                            obs[i] = envs[i].reset(seed=seed + next_episode)[0]
                            next_episode += 1
                        else:
                            episode_of[i] = -1
    finally:
        for env in envs:
            env.close()
    return returns


class EvalEveryRound(BaseCallback):
    """Evaluate the stochastic policy after every round; log it and keep the curve.

    The evaluations happen at the start of each rollout (the policy after the previous
    update; round 0 is the initial policy) and at the end of training (the final policy).
    Each is recorded to the model's logger as ``eval/return_mean``, ``eval/return_std``
    and ``eval/episodes`` and dumped at the current ``num_timesteps``.

    Args:
        make_env: builds one evaluation environment (e.g. ``lambda: gym.make(id)`` with the
            preset's wrappers); never the training environment.
        episodes: episodes per evaluation (K).
        seed: episode j of every evaluation resets with ``seed + j``.
        n_envs: environments stepped side by side.
        on_point: called with each ``EvalPoint`` as soon as it exists (e.g. to write the
            curve to disk incrementally).
        dump: dump the logger after recording (so the point lands at this
            ``num_timesteps``); False leaves it to SB3's next dump.
        every: evaluate after every ``every``-th round only (rounds 0, every, 2 every, ...)
            and after the last: for long budgets whose evaluations would cost more than
            the training. Level-crossing metrics (SE_ave, SE_peak) then resolve rounds only
            to within ``every``.
        on_round: called after every round's update with (rounds done, training wall
            seconds, training CPU seconds), e.g. to keep the clocks a resume continues.
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        episodes: int = 100,
        seed: int = 10_000,
        n_envs: int = 32,
        on_point: Callable[[EvalPoint], None] | None = None,
        dump: bool = True,
        every: int = 1,
        on_round: Callable[[int, float, float], None] | None = None,
    ):
        super().__init__()
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a whole number >= 1, got {every!r}")
        self.make_env, self.episodes, self.seed, self.n_envs = make_env, episodes, seed, n_envs
        self.on_point, self.dump, self.every = on_point, dump, every
        self.on_round = on_round
        self.curve: list[EvalPoint] = []
        self._rounds = 0
        self._eval_seconds = 0.0
        self._eval_cpu_seconds = 0.0
        self._started = 0.0
        self._started_cpu = 0.0
        self._last_timesteps: int | None = None
        # Training clocks carried over from before a resume (see ``resume``).
        self._clock_offset = (0.0, 0.0)
        self._rollouts = 0
        # The dropped share of the newest update, from its IterationResult; None until an
        # update of this process has been seen.
        self._dropped: float | None = None
        self._seen_update = False

    def resume(self, curve: list[EvalPoint], rounds: int, clock: tuple[float, float]) -> None:
        """Continue a curve after the model resumed with ``rounds`` updates done.

        Args:
            curve: the points evaluated before the stop, each with ``round < rounds`` (the
                policy after ``rounds`` updates is evaluated again: same parameters and
                episode seeds, so the same point).
            rounds: updates the resumed model has done.
            clock: training (wall, CPU) seconds spent before the stop, which later points
                add to their own.
        """
        if any(point.round >= rounds for point in curve):
            raise ValueError(f"a resumed curve holds points from round {rounds} on")
        self.curve = list(curve)
        self._rounds = rounds
        self._clock_offset = clock

    def _on_training_start(self) -> None:
        self._started = time.perf_counter()
        self._started_cpu = time.process_time()
        self._eval_seconds = 0.0
        self._eval_cpu_seconds = 0.0
        self._rollouts = 0

    def _on_step(self) -> bool:
        return True

    def on_iteration(self, result: IterationResult) -> None:
        """Note the update's dropped share, for the evaluation of the policy it made."""
        self._dropped = result.fraction_dropped
        self._seen_update = True

    def _on_rollout_start(self) -> None:
        if self.on_round is not None and self._rollouts > 0:  # an update has just ended
            self.on_round(self._rounds, *self.training_clock())
        self._rollouts += 1
        if self._rounds % self.every == 0:
            self._evaluate()
        self._rounds += 1

    def _on_training_end(self) -> None:
        self._evaluate()

    def _evaluate(self) -> None:
        if self._last_timesteps == self.num_timesteps:  # already evaluated this policy
            return
        start, start_cpu = time.perf_counter(), time.process_time()
        train_seconds = start - self._started - self._eval_seconds + self._clock_offset[0]
        train_cpu_seconds = (
            start_cpu - self._started_cpu - self._eval_cpu_seconds + self._clock_offset[1]
        )
        dropped = self._dropped if self._seen_update else _no_update_yet(self.model)
        returns = evaluate_policy_batched(
            self.model.policy, self.make_env, self.episodes, self.seed, self.n_envs
        )
        seconds = time.perf_counter() - start
        self._eval_seconds += seconds
        self._eval_cpu_seconds += time.process_time() - start_cpu
        point = EvalPoint(
            round=self._rounds,
            timesteps=int(self.num_timesteps),
            return_mean=float(returns.mean()),
            return_std=float(returns.std()),
            episodes=len(returns),
            eval_seconds=seconds,
            train_seconds=train_seconds,
            train_cpu_seconds=train_cpu_seconds,
            fraction_dropped=None if dropped is None or self._rounds == 0 else float(dropped),
        )
        self.curve.append(point)
        self._last_timesteps = self.num_timesteps
        self.logger.record("eval/return_mean", point.return_mean)
        self.logger.record("eval/return_std", point.return_std)
        self.logger.record("eval/episodes", point.episodes)
        if self.dump:
            self.logger.dump(step=self.num_timesteps)
        if self.on_point is not None:
            self.on_point(point)

    def training_clock(self) -> tuple[float, float]:
        """Training (wall, CPU) seconds so far, evaluations excluded, resumes included."""
        return (
            time.perf_counter() - self._started - self._eval_seconds + self._clock_offset[0],
            time.process_time()
            - self._started_cpu
            - self._eval_cpu_seconds
            + self._clock_offset[1],
        )

    def result(self) -> list[EvalPoint]:
        """The curve so far (one point per evaluated round)."""
        return list(self.curve)


def _no_update_yet(model: Any) -> float | None:
    """The dropped share reported before this process has seen an update (a resumed run's
    first point): 0.0 for a filtered AttributedPPO, as before results were delivered, and
    None without a filter (or for a model that is not an AttributedPPO)."""
    from rlattr.training.ppo import AttributedPPO  # late: ppo does not need evaluation

    if not isinstance(model, AttributedPPO) or model.keep_mask_fn is None:
        return None
    return 0.0
