"""Memory of a differentiated replay: measure autograd graphs, choose a segment length.

A metagradient (``rlattr.scoring.metagrad``) differentiates through every optimiser step
of an update. Keeping every step's graph costs memory linear in the number of steps T;
recomputing segments of S steps during the backward pass (checkpointing) keeps only one
segment's graph plus the state at every segment start. This module measures the pieces
and picks S under a byte budget.

What is measured: the bytes of the tensors autograd saves for the backward pass, each
storage counted once while some graph holds it (``SavedTensorMeter``). That is the memory
a graph keeps alive; it leaves out the transient buffers of the backward pass itself and
the allocator's slack, which RSS or ``torch.cuda.max_memory_allocated`` would include.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from rlattr.argtypes import format_memory_size, parse_memory_size

MIB = 1024**2
# The default budget of one metagradient computation's graphs. 256 MiB keeps the MLP
# presets' update graph whole (LunarLander: ~200 MiB, no recomputation, no slowdown) and
# makes the CNN and long-update presets segment (MiniGrid CNN: ~700 MiB whole); it is a
# small share of a laptop's RAM or a GPU's memory, so scoring inside training (IIF) does
# not compete with the rollout buffers and environments for memory.
DEFAULT_MEMORY_BUDGET = 256 * MIB

MemoryBudget = int | str | None
"""Bytes (an int), a size string (``"256MiB"``, ``"1GiB"``, ``"none"``), or None: no limit."""


def budget_bytes(budget: MemoryBudget) -> int | None:
    """``budget`` in bytes, None for no limit.

    Raises:
        ValueError: not a positive number of bytes, nor a size ``parse_memory_size`` reads.
    """
    if budget is None:
        return None
    if isinstance(budget, str):
        return parse_memory_size(budget)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(
            f"memory_budget must be a number of bytes >= 1, a size such as '256MiB', or None "
            f"(no limit), got {budget!r}"
        )
    return budget


def tensor_bytes(tensors: Any) -> int:
    """Bytes of the tensors among ``tensors`` (an iterable; other values are skipped)."""
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class _Saved:
    """A tensor saved for backward; tells the meter when the graph lets it go."""

    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class SavedTensorMeter:
    """Bytes held by autograd graphs for the backward pass, now and at the peak.

    A context manager: inside it, every tensor an operation saves for backward (forward
    graphs and, with ``create_graph``, the graphs of backward passes) is counted until the
    graph that saved it is freed. A storage saved several times is counted once, in full
    (a saved view keeps its whole storage alive).

    Attributes:
        live: bytes held now.
        peak: the most bytes held at once since entering.
        total: bytes of every distinct save (storages counted once per save while held).
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.total = 0
        # storage key → [saves holding it, its bytes]
        self._held: dict[tuple[str, int], list[int]] = {}
        self._hooks: Any = None

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor) -> _Saved:
        try:
            storage = tensor.untyped_storage()
            key, size = (str(tensor.device), storage.data_ptr()), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # a tensor without a plain storage
            key, size = ("id", id(tensor)), tensor.numel() * tensor.element_size()
        entry = self._held.setdefault(key, [0, size])
        if entry[0] == 0:
            self.live += size
            self.total += size
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        # An alias without autograd history: an op's saved output would otherwise point
        # back at the node that saves it (node → _Saved → tensor → node), a cycle that
        # keeps the graph alive after it is done with.
        saved = _Saved(tensor.detach())
        weakref.finalize(saved, self._release, key)
        return saved

    @staticmethod
    def _unpack(saved: _Saved) -> torch.Tensor:
        return saved.tensor

    def _release(self, key: tuple[str, int]) -> None:
        entry = self._held[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._held[key]


@dataclass(frozen=True)
class ReplayMemory:
    """The memory of a differentiated replay of ``steps`` optimiser steps, by piece.

    Attributes:
        steps: optimiser steps replayed (T).
        step_bytes: graph bytes each further step of a chain adds (g; measured on the
            largest minibatch, so a bound for every step).
        state_bytes: bytes of one stored segment start (parameters and optimiser state).
        target_bytes: graph bytes of the target f(θ) (held while its gradient is taken).
        base_bytes: graph bytes a chain holds besides g per step (a: the first step's
            excess over the next).
        transient_bytes: bytes a step holds while it is built, above what it keeps (h).
    """

    steps: int
    step_bytes: int
    state_bytes: int
    target_bytes: int
    base_bytes: int = 0
    transient_bytes: int = 0

    def chain(self, steps: int) -> int:
        """Peak bytes while a chain of ``steps`` steps is built and held: a + n·g + h."""
        return self.base_bytes + steps * self.step_bytes + self.transient_bytes

    def peak(self, segment_steps: int | None) -> int:
        """Estimated peak bytes: the whole graph (None), or segments of ``segment_steps``.

        Whole: the chain of all T steps with the target's graph on top, a + T·g +
        max(h, t) (the last step's transient is gone before the target is evaluated).
        Segmented: the ⌈T/S⌉ stored starts, plus the larger of the target's graph (the
        first backward) and one segment's chain (each recomputed segment's backward):
        ⌈T/S⌉·c + max(t, a + S·g + h).
        """
        if segment_steps is None:
            held = self.base_bytes + self.steps * self.step_bytes
            return held + max(self.transient_bytes, self.target_bytes)
        length = min(segment_steps, self.steps)
        starts = math.ceil(self.steps / length)
        return starts * self.state_bytes + max(self.target_bytes, self.chain(length))


@dataclass(frozen=True)
class SegmentChoice:
    """How a replay is differentiated under a budget.

    Attributes:
        segment_steps: None (one graph of every step) or the segment length S.
        estimated_peak: ``ReplayMemory.peak`` of that choice, in bytes.
        fits: whether the estimate is within the budget (False: no segment length fits,
            and the one with the smallest peak was taken).
    """

    segment_steps: int | None
    estimated_peak: int
    fits: bool


def choose_segments(memory: ReplayMemory, budget: int | None) -> SegmentChoice:
    """The fastest way to differentiate the replay within ``budget`` bytes.

    The whole graph if it fits (no recomputation). Otherwise the longest segment that
    fits: every segmented run recomputes the forward pass once whatever S is, so time
    barely depends on S, while fewer, longer segments mean fewer backward calls and
    stored starts to pay for; memory ⌈T/S⌉·c + S·g is smallest near S = √(T·c/g) (the
    classic √T checkpointing), which is where this lands when the budget is tight. When
    nothing fits, the segment length with the smallest estimate is returned, ``fits``
    False (the caller warns).
    """
    if budget is None or memory.peak(None) <= budget:
        return SegmentChoice(None, memory.peak(None), True)
    best: SegmentChoice | None = None
    for length in range(memory.steps - 1, 0, -1):  # S = T is the whole graph, recomputed
        peak = memory.peak(length)
        if peak <= budget:
            return SegmentChoice(length, peak, True)
        if best is None or peak < best.estimated_peak:
            best = SegmentChoice(length, peak, False)
    if best is None:  # a single step: nothing to segment
        return SegmentChoice(None, memory.peak(None), False)
    return best


def describe(choice: SegmentChoice, budget: int | None) -> str:
    """A one-line account of ``choice`` (for warnings and logs)."""
    how = "one graph" if choice.segment_steps is None else f"segments of {choice.segment_steps}"
    return (
        f"{how}, estimated peak {format_memory_size(choice.estimated_peak)} of a "
        f"{format_memory_size(budget)} budget"
    )
