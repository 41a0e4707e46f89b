"""One iteration's rollout buffer as flat tensors with integer record ids."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer

# Fields stored per record, in the order SB3's ``RolloutBuffer.get`` flattens them
# (env-major: flat index = env * n_steps + step).
_RECORD_FIELDS = (
    "observations",
    "actions",
    "rewards",
    "episode_starts",
    "values",
    "log_probs",
    "advantages",
    "returns",
)


class RecordingRolloutBuffer(RolloutBuffer):
    """SB3's ``RolloutBuffer`` that also keeps the bootstrap inputs of GAE.

    ``compute_returns_and_advantage`` receives the value of the observation after the
    last step and whether that step ended an episode; both are needed to recompute
    advantages (e.g. Monte-Carlo returns) from the stored records alone.
    """

    last_values: np.ndarray
    last_dones: np.ndarray

    def compute_returns_and_advantage(self, last_values: torch.Tensor, dones: np.ndarray) -> None:
        self.last_values = last_values.detach().clone().cpu().numpy().flatten()
        self.last_dones = np.asarray(dones, dtype=np.float32).copy()
        super().compute_returns_and_advantage(last_values, dones)


class Minibatch(NamedTuple):
    """The tensors one PPO optimiser step reads, as ``RolloutBufferSamples`` has them."""

    observations: torch.Tensor
    actions: torch.Tensor
    old_values: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


@dataclass
class Records:
    """The N = n_steps × n_envs records of iteration ``iteration``, flattened env-major.

    Attributes:
        observations: ``[N, *obs_shape]`` float32, as SB3's buffer stores them.
        actions: ``[N, action_dim]`` float32 (discrete actions as floats, like SB3).
        rewards, episode_starts, values, log_probs, advantages, returns: ``[N]`` float32.
        last_values, last_dones: ``[n_envs]`` float32 bootstrap inputs of GAE.
        iteration: the PPO iteration (0-based) that collected the buffer.
        n_envs, n_steps: buffer layout; record ``i`` is env ``i // n_steps``, step
            ``i % n_steps``.
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    episode_starts: torch.Tensor
    values: torch.Tensor
    log_probs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    last_values: torch.Tensor
    last_dones: torch.Tensor
    iteration: int
    n_envs: int
    n_steps: int

    def __len__(self) -> int:
        return self.n_envs * self.n_steps

    @property
    def device(self) -> torch.device:
        return self.observations.device

    @property
    def env_index(self) -> torch.Tensor:
        return torch.arange(len(self), device=self.device) // self.n_steps

    @property
    def step_index(self) -> torch.Tensor:
        return torch.arange(len(self), device=self.device) % self.n_steps

    @property
    def record_ids(self) -> torch.Tensor:
        """Globally unique int64 ids: ``iteration * N + env * n_steps + step``."""
        n = len(self)
        return torch.arange(n, device=self.device, dtype=torch.int64) + self.iteration * n

    @classmethod
    def from_rollout_buffer(cls, buffer: RolloutBuffer, iteration: int) -> Records:
        """Snapshot a full buffer without modifying it (SB3 flattens it in place on ``get``)."""
        if not buffer.full:
            raise ValueError("the rollout buffer is not full: collect a rollout first")
        if buffer.generator_ready:
            raise ValueError("the rollout buffer was already flattened by get(); snapshot it first")

        def flat(name: str) -> torch.Tensor:
            array = RolloutBuffer.swap_and_flatten(getattr(buffer, name))
            if name != "observations" and name != "actions":
                array = array.reshape(-1)
            return torch.tensor(array, device=buffer.device)

        tensors = {name: flat(name) for name in _RECORD_FIELDS}
        tensors["actions"] = tensors["actions"].to(torch.float32)
        last_values = getattr(buffer, "last_values", np.full(buffer.n_envs, np.nan, np.float32))
        last_dones = getattr(buffer, "last_dones", np.full(buffer.n_envs, np.nan, np.float32))
        return cls(
            **tensors,
            last_values=torch.tensor(last_values, dtype=torch.float32, device=buffer.device),
            last_dones=torch.tensor(last_dones, dtype=torch.float32, device=buffer.device),
            iteration=iteration,
            n_envs=buffer.n_envs,
            n_steps=buffer.buffer_size,
        )

    def minibatch(self, indices: torch.Tensor) -> Minibatch:
        """Gather the records at ``indices`` (a LongTensor on ``self.device``)."""
        return Minibatch(
            observations=self.observations[indices],
            actions=self.actions[indices],
            old_values=self.values[indices],
            old_log_prob=self.log_probs[indices],
            advantages=self.advantages[indices],
            returns=self.returns[indices],
        )

    def to(self, device: torch.device | str) -> Records:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return Records(**moved, iteration=self.iteration, n_envs=self.n_envs, n_steps=self.n_steps)

    def tensor_dict(self, observation_space: spaces.Space | None = None) -> dict[str, torch.Tensor]:
        """Tensors to store. Integer-valued image observations are stored as uint8 (exact)."""
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        if _stores_as_uint8(observation_space):
            out["observations"] = out["observations"].to(torch.uint8)
        out["record_ids"] = self.record_ids
        return out

    @classmethod
    def from_tensor_dict(
        cls, tensors: dict[str, torch.Tensor], iteration: int, n_envs: int, n_steps: int
    ) -> Records:
        expected = {f.name for f in fields(cls)} - {"iteration", "n_envs", "n_steps"}
        missing = expected - tensors.keys()
        if missing:
            raise KeyError(f"records file lacks {sorted(missing)}")
        values = {name: tensors[name] for name in expected}
        values["observations"] = values["observations"].to(torch.float32)
        return cls(**values, iteration=iteration, n_envs=n_envs, n_steps=n_steps)


def recompute_gae(
    records: Records, gamma: float, gae_lambda: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(advantages, returns) recomputed from the rewards, values, episode starts and GAE's
    bootstrap inputs by SB3's own ``RolloutBuffer.compute_returns_and_advantage``, so in the
    same float32 arithmetic as training; None when the bootstrap inputs were not kept.

    A run log (format 2) stores neither when this gives them back bit for bit: they are a
    quarter of a record's bytes on low-dimensional tasks.
    """
    if bool(torch.isnan(records.last_values).any() or torch.isnan(records.last_dones).any()):
        return None

    def by_step(values: torch.Tensor) -> np.ndarray:
        # Records are env-major (env * n_steps + step); the buffer is [n_steps, n_envs].
        grid = values.detach().cpu().numpy().reshape(records.n_envs, records.n_steps)
        return np.ascontiguousarray(grid.T)

    buffer = RolloutBuffer.__new__(RolloutBuffer)  # only the arrays GAE reads
    buffer.buffer_size = records.n_steps
    buffer.gamma, buffer.gae_lambda = gamma, gae_lambda
    buffer.rewards = by_step(records.rewards)
    buffer.values = by_step(records.values)
    buffer.episode_starts = by_step(records.episode_starts)
    buffer.advantages = np.zeros_like(buffer.values)
    last_dones = records.last_dones.detach().cpu().numpy()
    RolloutBuffer.compute_returns_and_advantage(buffer, records.last_values.cpu(), last_dones)

    def flat(grid: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(grid.T).reshape(-1), device=records.device)

    return flat(buffer.advantages), flat(buffer.returns)


def _stores_as_uint8(space: spaces.Space | None) -> bool:
    # SB3 keeps every observation as float32; uint8 images round-trip exactly through uint8.
    return isinstance(space, spaces.Box) and space.dtype == np.uint8
