"""Policy + optimiser state (+ RNG and counters) as a flat tensor dict and a JSON dict."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy

_POLICY = "policy."
_OPTIM = "optim."
_RNG_TORCH = "rng.torch"
_RNG_CUDA = "rng.cuda"
_RNG_NUMPY_KEYS = "rng.numpy_keys"


def capture_checkpoint(
    policy: ActorCriticPolicy, counters: dict[str, Any] | None = None, with_rng: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Copy the policy and optimiser state into (tensors, json) without touching them.

    Args:
        policy: the SB3 policy; its ``optimizer`` is captured too.
        counters: JSON-serialisable training counters (iteration, num_timesteps, ...).
        with_rng: also capture NumPy's global and torch's RNG states, for resuming.
    """
    tensors: dict[str, torch.Tensor] = {
        _POLICY + name: value.detach().clone() for name, value in policy.state_dict().items()
    }
    optim_state = policy.optimizer.state_dict()
    optim_scalars: dict[str, dict[str, Any]] = {}
    for param_id, state in optim_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIM}{param_id}.{key}"] = value.detach().clone()
            else:
                optim_scalars.setdefault(str(param_id), {})[key] = value
    meta: dict[str, Any] = {
        "optimizer_class": type(policy.optimizer).__module__
        + "."
        + type(policy.optimizer).__qualname__,
        "param_groups": optim_state["param_groups"],
        "optimizer_scalars": optim_scalars,
        "counters": dict(counters or {}),
    }
    if with_rng:
        tensors[_RNG_TORCH] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors[_RNG_CUDA] = torch.cuda.get_rng_state()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        tensors[_RNG_NUMPY_KEYS] = torch.from_numpy(keys.astype(np.int64))
        meta["numpy_rng"] = {
            "name": name,
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return tensors, meta


def restore_checkpoint(
    policy: ActorCriticPolicy,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    restore_rng: bool = False,
) -> None:
    """Load a checkpoint made by ``capture_checkpoint`` into ``policy`` and its optimiser."""
    device = next(policy.parameters()).device
    policy_state = {
        name[len(_POLICY) :]: value.to(device)
        for name, value in tensors.items()
        if name.startswith(_POLICY)
    }
    policy.load_state_dict(policy_state)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(_OPTIM):
            param_id, key = name[len(_OPTIM) :].split(".", 1)
            # A copy: the optimiser keeps the tensors it is given and updates them in
            # place (Adam's moments and step), which would alter the checkpoint itself.
            state.setdefault(int(param_id), {})[key] = value.clone()
    for param_id, scalars in meta["optimizer_scalars"].items():
        state.setdefault(int(param_id), {}).update(scalars)
    param_groups = [_groups_from_json(group) for group in meta["param_groups"]]
    # load_state_dict moves state tensors to the parameters' device (and keeps "step" as is).
    policy.optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    if restore_rng:
        torch.set_rng_state(tensors[_RNG_TORCH].to("cpu", torch.uint8))
        if _RNG_CUDA in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors[_RNG_CUDA].to("cpu", torch.uint8))
        rng = meta["numpy_rng"]
        keys = tensors[_RNG_NUMPY_KEYS].cpu().numpy().astype(np.uint32)
        np.random.set_state(
            (rng["name"], keys, rng["pos"], rng["has_gauss"], rng["cached_gaussian"])
        )


def _groups_from_json(group: dict[str, Any]) -> dict[str, Any]:
    # JSON turns tuples (Adam's betas) into lists; give optimisers back what they stored.
    return {
        key: tuple(value) if isinstance(value, list) and key != "params" else value
        for key, value in group.items()
    }
