"""Rebuilding sparse checkpoints: the one place that needs both the run log and replay.

A format-2 run directory keeps the tensors of only every ``checkpoint_every``-th
start-of-iteration state; the others are rebuilt on demand by replaying the logged updates
from the previous full checkpoint. Replay (``rlattr.record.replay``) reads the run log, and
the run log (``rlattr.record.runlog``) stores and reads files only; this module sits above
both, so neither imports the other back. Importing ``rlattr.record`` (which any import of
one of its modules does first) installs ``rebuild_checkpoint`` into the run log, so
``RunLog(path).load_checkpoint(k)`` rebuilds a sparse checkpoint as it always has.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.errors import CorruptRunLogError, RunLogError
from rlattr.record.checkpoint import capture_checkpoint
from rlattr.record.replay import IterationData, build_policy, replay
from rlattr.record.runlog import RunLog, install_checkpoint_rebuilder, is_sparse_checkpoint


@dataclass
class _RebuildCache:
    """What one run log's rebuilds keep between loads."""

    # The newest state a rebuild reached, (iteration, device, tensors, meta): loading
    # iterations in order then costs one replay each, not one per iteration since the last
    # full checkpoint.
    rebuilt: tuple[int, str, dict[str, torch.Tensor], dict[str, Any]] | None = None
    # One workspace policy per device, built once: replay overwrites its state.
    workspaces: dict[str, ActorCriticPolicy] = field(default_factory=dict)


# Per RunLog object, dropped with it.
_caches: weakref.WeakKeyDictionary[RunLog, _RebuildCache] = weakref.WeakKeyDictionary()


def rebuild_checkpoint(
    log: RunLog, iteration: int, device: torch.device | str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The (tensors, meta) of the sparse checkpoint at the start of ``iteration``, rebuilt by
    replaying from the nearest full (or already rebuilt) state.

    Replay is bit-exact on the device that trained (float kernels differ between devices):
    the rebuild runs there and the result is handed over on ``device``. The meta has
    ``"rebuilt": True``; the tensors hold the policy and optimiser state, no RNG state.
    """
    trained_on = log.meta.get("algorithm", {}).get("device")
    if trained_on is not None and torch.device(trained_on).type != torch.device(device).type:
        if torch.device(trained_on).type == "cuda" and not torch.cuda.is_available():
            raise RunLogError(
                f"{log.path}: checkpoint {iteration} is sparse and is rebuilt by replay "
                f"on the device the run trained on ({trained_on}), which this machine "
                "lacks; load it where that device exists, or record with "
                "Retention(checkpoint_every=1) to keep every checkpoint full"
            )
        tensors, meta = rebuild_checkpoint(log, iteration, trained_on)
        return {name: value.to(device) for name, value in tensors.items()}, meta
    cache = _caches.setdefault(log, _RebuildCache())
    where = str(torch.device(device))
    start = iteration
    while is_sparse_checkpoint(log.checkpoint_meta(start)):
        if cache.rebuilt is not None and cache.rebuilt[:2] == (start, where):
            break
        if start == 0:
            raise CorruptRunLogError(
                f"{log.path}: checkpoint {iteration} is sparse but no full checkpoint "
                "precedes it: the run directory is damaged"
            )
        start -= 1
    if cache.rebuilt is not None and cache.rebuilt[:2] == (start, where):
        tensors, meta = cache.rebuilt[2], cache.rebuilt[3]
    else:
        tensors, meta = log.load_checkpoint(start, device, cache=False)
    if where not in cache.workspaces:
        cache.workspaces[where] = build_policy(log, device)
    policy = cache.workspaces[where]
    for k in range(start, iteration):
        if not (log.iteration_dir(k) / "iteration.json").exists():
            raise CorruptRunLogError(
                f"{log.path}: checkpoint {iteration} is rebuilt by replaying iteration "
                f"{k}, which is not recorded: the run directory is damaged"
            )
        data = IterationData(
            k, log.load_records(k, device), log.load_plan(k, device), tensors, meta
        )
        replay(data, policy)
        tensors, _ = capture_checkpoint(policy)
        # The JSON holds what training captured besides tensors (counters, the optimiser's
        # hyperparameters as the next iteration starts with them).
        meta = {**log.checkpoint_meta(k + 1), "rebuilt": True}
        cache.rebuilt = (k + 1, where, tensors, meta)
    # Callers own what they get (the cache keeps its own copy).
    return {name: value.clone() for name, value in tensors.items()}, dict(meta)


install_checkpoint_rebuilder(rebuild_checkpoint)
