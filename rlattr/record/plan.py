"""UpdatePlan: everything that fixes one PPO update besides θ_k, the optimiser and the data."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from rlattr.record.loss import PPOLossConfig


@dataclass
class UpdatePlan:
    """The optimiser steps of one iteration, as they were (or will be) executed.

    Step ``t`` trains on ``minibatch(t)`` (record indices into the iteration's ``Records``)
    at learning rate ``learning_rates[t]``. ``grad_norms[t]`` is the total gradient norm
    before clipping and ``clip_coefs[t]`` = min(1, max_grad_norm / (norm + 1e-6)), both as
    torch computed them. Steps that ``target_kl`` prevented are not in the plan.

    Attributes:
        loss_config: the loss hyperparameters of this iteration.
        n_epochs, batch_size: the configured update shape.
        epoch_permutations: ``[E_drawn, N]`` int64, one permutation per epoch started.
        keep_mask: ``[N]`` bool, the records the update was restricted to.
        step_epochs: ``[T]`` int64, epoch of each step.
        minibatch_indices: concatenated record indices of all steps.
        minibatch_sizes: ``[T]`` int64 sizes, so step t is a slice of ``minibatch_indices``.
        learning_rates, grad_norms, clip_coefs: ``[T]`` float64 per-step quantities.
        early_stopped: whether ``target_kl`` ended the update before all epochs ran.
        record_weights: ``[N]`` float32 per-record loss weights the update trained with
            (``rlattr.record.loss.weighted_minibatch_loss``), or None for PPO's own loss.
            Optional in ``plan.safetensors``: plans written without it still load.
    """

    loss_config: PPOLossConfig
    n_epochs: int
    batch_size: int
    epoch_permutations: torch.Tensor
    keep_mask: torch.Tensor
    step_epochs: torch.Tensor
    minibatch_indices: torch.Tensor
    minibatch_sizes: torch.Tensor
    learning_rates: torch.Tensor
    grad_norms: torch.Tensor
    clip_coefs: torch.Tensor
    early_stopped: bool
    record_weights: torch.Tensor | None = None
    minibatching: Minibatching | None = "as_drawn"

    @property
    def n_optimizer_steps(self) -> int:
        """T, the optimiser steps the update takes (not the rollout length ``Records.n_steps``)."""
        return int(self.minibatch_sizes.numel())

    @property
    def n_steps(self) -> int:
        """Deprecated alias of ``n_optimizer_steps`` (it read like the rollout length)."""
        return self.n_optimizer_steps

    @property
    def n_records(self) -> int:
        return int(self.keep_mask.numel())

    def minibatches(self) -> Iterator[torch.Tensor]:
        """The record indices of each executed step, in order."""
        start = 0
        for size in self.minibatch_sizes.tolist():
            yield self.minibatch_indices[start : start + size]
            start += size

    def minibatch(self, step: int) -> torch.Tensor:
        offsets = torch.cumsum(self.minibatch_sizes, 0)
        start = 0 if step == 0 else int(offsets[step - 1])
        return self.minibatch_indices[start : int(offsets[step])]

    def epochs(
        self, keep_mask: torch.Tensor | None = None
    ) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """(epoch, minibatches) of the executed steps, each minibatch restricted to
        ``keep_mask`` by ``mask_minibatches`` (None keeps every record)."""
        epochs = self.step_epochs.tolist()
        minibatches = list(self.minibatches())
        for epoch in sorted(set(epochs)):
            batches = [mb for e, mb in zip(epochs, minibatches, strict=True) if e == epoch]
            yield epoch, mask_minibatches(batches, keep_mask)

    def to(self, device: torch.device | str) -> UpdatePlan:
        """The same plan with its tensors on ``device``."""
        moved = {name: getattr(self, name).to(device) for name in self.tensor_names()}
        weights = None if self.record_weights is None else self.record_weights.to(device)
        return replace(self, **moved, record_weights=weights)

    def tensor_dict(self) -> dict[str, torch.Tensor]:
        tensors = {
            "epoch_permutations": self.epoch_permutations,
            "keep_mask": self.keep_mask,
            "step_epochs": self.step_epochs,
            "minibatch_indices": self.minibatch_indices,
            "minibatch_sizes": self.minibatch_sizes,
            "learning_rates": self.learning_rates,
            "grad_norms": self.grad_norms,
            "clip_coefs": self.clip_coefs,
        }
        if self.record_weights is not None:
            tensors["record_weights"] = self.record_weights
        return tensors

    def json_dict(self) -> dict[str, Any]:
        return {
            "loss_config": self.loss_config.to_json(),
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "n_optimizer_steps": self.n_optimizer_steps,
            "early_stopped": self.early_stopped,
            "minibatching": self.minibatching,
        }

    @classmethod
    def from_stored(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> UpdatePlan:
        """The plan stored as ``json_dict`` and ``tensor_dict`` (or ``stored_tensor_dict``,
        whose derivable minibatches are cut again from the permutations here)."""
        derived = meta.get("minibatches") == DERIVED
        stored = (
            {name: tensors[name] for name in cls.tensor_names() if name not in _DERIVABLE}
            if derived
            else {name: tensors[name] for name in cls.tensor_names()}
        )
        if derived:
            # Placeholders of the right length until the cut below replaces them.
            steps = int(meta["n_optimizer_steps"])
            empty = torch.zeros(steps, dtype=torch.int64, device=tensors["keep_mask"].device)
            stored.update(minibatch_indices=empty, minibatch_sizes=empty, step_epochs=empty)
        plan = cls(
            loss_config=PPOLossConfig.from_json(meta["loss_config"]),
            n_epochs=int(meta["n_epochs"]),
            batch_size=int(meta["batch_size"]),
            early_stopped=bool(meta["early_stopped"]),
            **stored,
            record_weights=tensors.get("record_weights"),
            # None: written before plans said how their minibatches were formed.
            minibatching=meta.get("minibatching"),
        )
        if derived:
            cut = plan.derived_minibatches()
            if cut is None:
                raise KeyError("minibatching (needed to cut the stored permutations)")
            indices, sizes, epochs = cut
            plan = replace(
                plan, minibatch_indices=indices, minibatch_sizes=sizes, step_epochs=epochs
            )
        return plan

    def stored_tensor_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON) as run-log format 2 stores the plan: every index in int64 (the
        run log narrows them when written), the minibatches left out when they are the
        permutations cut again (checked here, so what is loaded is what the update used)."""
        tensors = self.tensor_dict()
        meta = self.json_dict()
        if self.minibatches_derivable():
            for name in _DERIVABLE:
                del tensors[name]
            meta["minibatches"] = DERIVED
        return tensors, meta

    @classmethod
    def draft(
        cls,
        loss_config: PPOLossConfig,
        batch_size: int,
        epoch_minibatches: list[list[torch.Tensor]],
        permutations: list[np.ndarray],
        learning_rate: float,
        n_records: int,
    ) -> UpdatePlan:
        """A plan drawn before the update runs (no step has happened: norms unknown)."""
        flat = [mb for batches in epoch_minibatches for mb in batches]
        device = flat[0].device
        steps = len(flat)
        return cls(
            loss_config=loss_config,
            n_epochs=len(epoch_minibatches),
            batch_size=batch_size,
            epoch_permutations=torch.as_tensor(np.stack(permutations), device=device),
            keep_mask=torch.ones(n_records, dtype=torch.bool, device=device),
            step_epochs=torch.tensor(
                [e for e, batches in enumerate(epoch_minibatches) for _ in batches], device=device
            ),
            minibatch_indices=torch.cat(flat),
            minibatch_sizes=torch.tensor([len(mb) for mb in flat], device=device),
            learning_rates=torch.full((steps,), learning_rate, dtype=torch.float64, device=device),
            grad_norms=torch.full((steps,), float("nan"), dtype=torch.float64, device=device),
            clip_coefs=torch.full((steps,), float("nan"), dtype=torch.float64, device=device),
            early_stopped=False,
        )

    def derived_minibatches(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(minibatch_indices, minibatch_sizes, step_epochs) cut again from the epoch
        permutations, as training cut them (``cut_minibatches`` around ``keep_mask``), and
        cut short where the plan's steps end (a target-KL stop). None when the plan's
        minibatching is unknown (plans written before it was stored)."""
        if self.minibatching is None:
            return None
        kept_all = bool(self.keep_mask.all())
        indices, sizes, epochs = [], [], []
        for epoch, order in enumerate(self.epoch_permutations):
            batches = cut_minibatches(
                order, self.batch_size, None if kept_all else self.keep_mask, self.minibatching
            )
            indices += batches
            sizes += [len(batch) for batch in batches]
            epochs += [epoch] * len(batches)
        steps = self.n_optimizer_steps
        device = self.epoch_permutations.device
        flat = torch.cat(indices[:steps]) if steps else torch.zeros(0, dtype=torch.int64)
        return (
            flat.to(device, torch.int64),
            torch.tensor(sizes[:steps], dtype=torch.int64, device=device),
            torch.tensor(epochs[:steps], dtype=torch.int64, device=device),
        )

    def minibatches_derivable(self) -> bool:
        """Whether ``derived_minibatches`` gives back this plan's minibatches exactly (so a
        run log may store only the permutations; run-log format 2 checks this per plan)."""
        derived = self.derived_minibatches()
        if derived is None:
            return False
        stored = (self.minibatch_indices, self.minibatch_sizes, self.step_epochs)
        return all(
            a.shape == b.shape and torch.equal(a.to(torch.int64), b.to(torch.int64))
            for a, b in zip(derived, stored, strict=True)
        )

    @staticmethod
    def tensor_names() -> tuple[str, ...]:
        return (
            "epoch_permutations",
            "keep_mask",
            "step_epochs",
            "minibatch_indices",
            "minibatch_sizes",
            "learning_rates",
            "grad_norms",
            "clip_coefs",
        )


# Plan tensors that format 2 may leave out (cut again from the permutations on load).
_DERIVABLE = ("minibatch_indices", "minibatch_sizes", "step_epochs")
DERIVED = "cut from epoch_permutations"

Minibatching = Literal["recut", "as_drawn"]
MINIBATCHING = ("recut", "as_drawn")


def stored_optimizer_steps(plan_meta: dict[str, Any]) -> int:
    """T from an ``iteration.json``'s plan metadata (runs written before the rename stored it
    as ``n_steps``)."""
    return int(plan_meta.get("n_optimizer_steps", plan_meta.get("n_steps", 0)))


def mask_minibatches(
    minibatches: Iterable[torch.Tensor], keep_mask: torch.Tensor | None
) -> list[torch.Tensor]:
    """Remove the records outside ``keep_mask`` from each minibatch (order kept).

    A minibatch left empty is dropped: an empty mean is NaN, and no data means no step
    (so an optimiser's step count can then differ from the unmasked plan's). With
    ``keep_mask`` None the minibatches are returned as they are. Training, replay and
    filters all form masked minibatches through this one function.
    """
    if keep_mask is None:
        return list(minibatches)
    masked = [batch[keep_mask[batch]] for batch in minibatches]
    return [batch for batch in masked if batch.numel() > 0]


def cut_minibatches(
    order: torch.Tensor,
    batch_size: int,
    keep_mask: torch.Tensor | None = None,
    minibatching: Minibatching = "as_drawn",
) -> list[torch.Tensor]:
    """Cut one epoch's record order into minibatches of ``batch_size``, as SB3's
    ``RolloutBuffer.get`` does (the last one keeps the remainder), around ``keep_mask``
    (see ``sample_epoch_minibatches`` for what ``minibatching`` means)."""
    if minibatching not in MINIBATCHING:
        raise ValueError(f"minibatching must be one of {MINIBATCHING}, got {minibatching!r}")
    if keep_mask is not None and minibatching == "recut":
        return list(torch.split(order[keep_mask[order]], batch_size))
    return mask_minibatches(torch.split(order, batch_size), keep_mask)


def sample_epoch_minibatches(
    n_records: int,
    batch_size: int,
    keep_mask: torch.Tensor | None,
    device: torch.device,
    permutations: list[np.ndarray],
    minibatching: Minibatching = "as_drawn",
) -> list[torch.Tensor]:
    """Draw one epoch's permutation and cut it into minibatches.

    The permutation comes from NumPy's global generator, exactly as SB3's
    ``RolloutBuffer.get`` draws it, so an unfiltered update consumes the same random
    numbers as SB3 and stays bit-identical. With a keep mask, ``minibatching`` says what
    the dropped records leave behind:

    - ``"as_drawn"``: the permutation of *all* records is cut as in plain PPO and the
      dropped records are removed from their minibatches: the update takes as many steps
      as PPO's (minus minibatches left empty), each on slightly fewer records. This is
      the counterfactual that replay-based ground truth and metagradient scores price.
    - ``"recut"``: the dropped records are removed from the permutation and the kept ones
      are cut into minibatches of ``batch_size``; like SB3, the last minibatch keeps
      whatever is left, so it can be tiny (a few records) and is still stepped on — with
      one record SB3 does not even normalise its advantage.

    The drawn permutation is appended to ``permutations`` for the log.
    """
    if minibatching not in MINIBATCHING:
        raise ValueError(f"minibatching must be one of {MINIBATCHING}, got {minibatching!r}")
    permutation = np.random.permutation(n_records)
    permutations.append(permutation)
    order = torch.as_tensor(permutation, device=device)
    return cut_minibatches(order, batch_size, keep_mask, minibatching)
