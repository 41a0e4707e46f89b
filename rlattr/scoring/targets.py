"""Targets: the scalar behaviours f(θ) that scores explain (to be *maximised*).

docs/science.md §1: the return target is the importance-sampled policy-gradient surrogate
f_R(θ) = mean_j [π_θ(a_j|s_j) / π_{θ_k}(a_j|s_j)] · A_j over validation records, whose
gradient at θ_k is the policy-gradient estimate of the return; the action target is the
mean log-probability (log-density) of analyst-given (state, action) pairs.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.record.records import Records
from rlattr.scoring.grads import policy_actions


@dataclass(frozen=True)
class TargetContext:
    """What a target may need besides the policy.

    Attributes:
        records: the iteration's own buffer (collected by θ_k).
        gamma, gae_lambda: the run's discount and GAE parameters.
    """

    records: Records
    gamma: float
    gae_lambda: float


def tensor_digest(*tensors: torch.Tensor) -> str:
    """Eight hex digits of SHA-256 over the tensors' dtypes, shapes and values.

    Names a target's data in a score name, so that two action files (or validation sets)
    never share one stored score; the same values give the same digest whatever file
    format carried them.
    """
    digest = hashlib.sha256()
    for tensor in tensors:
        cpu = tensor.detach().to("cpu").contiguous()
        digest.update(f"{cpu.dtype}{tuple(cpu.shape)}".encode())
        digest.update(cpu.view(torch.uint8).numpy().tobytes() if cpu.numel() else b"")
    return digest.hexdigest()[:8]


class Target(ABC):
    """A differentiable scalar f(policy) to be explained.

    ``name`` is the kind of target (shown to people); ``identity`` tells apart targets of
    one kind that score differently (advantage estimator, data), and names stored scores.
    """

    name: str = "target"

    @property
    def identity(self) -> str:
        """A file-name-safe string that differs whenever the target's value would."""
        return self.name

    @abstractmethod
    def value(self, policy: ActorCriticPolicy, context: TargetContext) -> torch.Tensor:
        """f at the policy's current parameters (a scalar tensor with a graph)."""


def monte_carlo_advantages(records: Records, gamma: float) -> torch.Tensor:
    """Discounted return-to-go minus V(s), per record (GAE with λ = 1).

    An episode that runs past the end of the buffer is bootstrapped with the stored
    value of the next observation, exactly as SB3 bootstraps GAE.
    """
    return gae_advantages(records, gamma, 1.0)


def gae_advantages(records: Records, gamma: float, gae_lambda: float) -> torch.Tensor:
    """GAE(γ, λ) from the stored records, with SB3's recursion (timeouts already folded
    into the rewards by SB3's rollout collection), on ``records.device``.

    The recursion runs backwards over the rollout one step at a time, as SB3's does, in
    NumPy float32 on the host: a step is a handful of operations on ``n_envs`` numbers, so
    per-operation overhead dominates (torch's is ~10× NumPy's on CPU, and on CUDA each step
    would launch kernels); the buffer crosses to the host once.
    """
    n_envs, n_steps = records.n_envs, records.n_steps

    def host(tensor: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
        return tensor.detach().to("cpu", torch.float32).numpy().reshape(shape)

    rewards = host(records.rewards, (n_envs, n_steps))
    values = host(records.values, (n_envs, n_steps))
    starts = host(records.episode_starts, (n_envs, n_steps))
    last_values = host(records.last_values, (n_envs,))
    last_dones = host(records.last_dones, (n_envs,))
    gamma32, gae_lambda32, one = np.float32(gamma), np.float32(gae_lambda), np.float32(1.0)
    advantages = np.zeros((n_envs, n_steps), dtype=np.float32)
    for env in range(n_envs):
        # Scalar float32 arithmetic, in SB3's order: the same bits as its vectorised loop,
        # at a fraction of the cost of per-step array operations on n_envs numbers.
        r, v, s, out = rewards[env], values[env], starts[env], advantages[env]
        last = np.float32(0.0)
        next_value, non_terminal = last_values[env], one - last_dones[env]
        for step in range(n_steps - 1, -1, -1):
            delta = r[step] + gamma32 * next_value * non_terminal - v[step]
            last = delta + gamma32 * gae_lambda32 * non_terminal * last
            out[step] = last
            next_value, non_terminal = v[step], one - s[step]
    return torch.from_numpy(advantages.reshape(-1)).to(records.device)


class ReturnTarget(Target):
    """Importance-sampled policy-gradient surrogate of the return (the paper's target).

    Args:
        validation: records to evaluate on; None uses the iteration's own buffer (the
            paper's choice). A held-out rollout collected by θ_k, or the next iteration's
            buffer, are the alternatives.
        advantage: ``"gae"`` (the stored, raw GAE advantages) or ``"mc"`` (Monte-Carlo).
    """

    name = "return"

    def __init__(self, validation: Records | None = None, advantage: Literal["gae", "mc"] = "gae"):
        if advantage not in ("gae", "mc"):
            raise ValueError(f"advantage must be 'gae' or 'mc', got {advantage!r}")
        self.validation = validation
        self.advantage = advantage

    @property
    def identity(self) -> str:
        """``return`` (GAE, own buffer), ``return-mc``, plus ``-val<digest>`` for other data."""
        parts = [self.name] if self.advantage == "gae" else [self.name, self.advantage]
        if self.validation is not None:
            data = self.validation
            parts.append("val" + tensor_digest(data.observations, data.actions, data.advantages))
        return "-".join(parts)

    def value(self, policy: ActorCriticPolicy, context: TargetContext) -> torch.Tensor:
        records = self.validation if self.validation is not None else context.records
        device = next(policy.parameters()).device
        records = records.to(device)
        if self.advantage == "gae":
            advantages = records.advantages
        else:
            advantages = monte_carlo_advantages(records, context.gamma)
        actions = policy_actions(records.actions, policy.action_space)
        _, log_prob, _ = policy.evaluate_actions(records.observations, actions)
        ratio = torch.exp(log_prob - records.log_probs.to(log_prob.dtype))
        return (ratio * advantages.to(ratio.dtype)).mean()


class ActionTarget(Target):
    """Mean log-probability (log-density) of actions ``actions`` in states ``observations``.

    Args:
        observations: ``[M, *obs_shape]`` as the policy sees them (SB3's preprocessing
            is applied by the policy).
        actions: ``[M]`` (discrete) or ``[M, action_dim]``.
    """

    name = "action"

    def __init__(self, observations: torch.Tensor, actions: torch.Tensor):
        if len(observations) != len(actions) or len(observations) == 0:
            raise ValueError(
                f"{len(actions)} actions for {len(observations)} observations: an action "
                "target needs as many actions as observations (at least one pair)"
            )
        self.observations = observations
        self.actions = actions

    @property
    def identity(self) -> str:
        """``action-<digest of the pairs>``: two sets of pairs never share stored scores."""
        return f"{self.name}-{tensor_digest(self.observations, self.actions)}"

    def check_spaces(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        """Raise ``ValueError`` naming the mismatch if the pairs do not fit the policy's spaces.

        Checked before any scoring so that a wrong file fails with its shapes named rather
        than deep in a matrix product.
        """
        obs_shape = tuple(observation_space.shape or ())
        if tuple(self.observations.shape[1:]) != obs_shape:
            raise ValueError(
                f"observations have shape {tuple(self.observations.shape)}; the run's "
                f"observations have shape {obs_shape}, so they must be "
                f"[M{''.join(f', {n}' for n in obs_shape)}]"
            )
        if isinstance(action_space, spaces.Discrete):
            if not (self.actions.dim() == 1 or tuple(self.actions.shape[1:]) == (1,)):
                raise ValueError(
                    f"actions have shape {tuple(self.actions.shape)}; the run's action space "
                    f"{action_space} needs [M] (one integer per observation)"
                )
            low, high = int(action_space.start), int(action_space.start + action_space.n)
            values = self.actions.flatten().double()
            if bool(((values < low) | (values >= high) | (values != values.round())).any()):
                raise ValueError(f"actions must be integers in [{low}, {high}) for {action_space}")
            return
        expected = tuple(action_space.shape or ())
        if tuple(self.actions.shape[1:]) != expected:
            raise ValueError(
                f"actions have shape {tuple(self.actions.shape)}; the run's action space "
                f"{action_space} needs [M{''.join(f', {n}' for n in expected)}]"
            )

    def value(self, policy: ActorCriticPolicy, context: TargetContext) -> torch.Tensor:
        device = next(policy.parameters()).device
        actions = self.actions.to(device)
        if isinstance(policy.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        observations = self.observations.to(device)
        _, log_prob, _ = policy.evaluate_actions(observations, actions)
        return log_prob.mean()


class CallableTarget(Target):
    """Any differentiable ``fn(policy, context) -> scalar``."""

    def __init__(
        self, fn: Callable[[ActorCriticPolicy, TargetContext], torch.Tensor], name: str = "custom"
    ):
        self.fn = fn
        self.name = name

    def value(self, policy: ActorCriticPolicy, context: TargetContext) -> torch.Tensor:
        result = self.fn(policy, context)
        if not isinstance(result, torch.Tensor) or result.numel() != 1:
            raise ValueError(f"custom target {self.name!r} must return a scalar tensor")
        return result.reshape(())
