"""Record hooks for AttributedPPO: score each iteration during training and log diagnostics.

A record hook runs before the update (``ScoreHook``'s snapshot scores). A hook may also
observe the update itself: ``observe_update(context)`` returns an ``UpdateObserver`` whose
callbacks run inside the update and whose ``finish(plan)`` returns scores of the update
that just ran (``ScoreHook(live_tracin=LiveTracIn(...))``: TracIn during training).
``UpdateObservers`` is the one object AttributedPPO's update talks to.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import torch

from rlattr.record.plan import UpdatePlan
from rlattr.record.update import StepCallback
from rlattr.scoring.attribute import score_name
from rlattr.scoring.grads import Backend, ParamSelection
from rlattr.scoring.influence import snapshot_scores
from rlattr.scoring.live_tracin import METHOD, LiveTracIn, LiveTracInScorer
from rlattr.scoring.targets import ReturnTarget, Target
from rlattr.training.seams import IterationContext, StoredScores, score_prefix

Epochs = Iterable[tuple[int, Iterable[torch.Tensor]]]


@runtime_checkable
class UpdateObserver(Protocol):
    """Watches one PPO update from inside (attached before its first loss forward pass)."""

    def epochs(self, epochs: Epochs) -> Iterator[tuple[int, Iterable[torch.Tensor]]]:
        """The update's epochs, passed through (the observer learns when each starts)."""
        ...

    def collect(self, step: int, indices: torch.Tensor) -> None:
        """At θ_t, right after the minibatch's loss forward pass: read what it left. Every
        observer collects before any observer's ``before_step`` runs."""
        ...

    def before_step(self, step: int, indices: torch.Tensor) -> None:
        """At θ_t, before the backward pass (may run the policy, e.g. on a target)."""
        ...

    def after_step(self, step: int, indices: torch.Tensor) -> None:
        """After the optimiser step."""
        ...

    def detach(self) -> None:
        """Stop observing (idempotent; called when the update ends, also on error)."""
        ...

    def finish(self, plan: UpdatePlan) -> Mapping[str, StoredScores]:
        """Scores of the update that ran (its executed plan), to store with the iteration."""
        ...


@dataclass
class ScoreHook:
    """Score each iteration's records during training (a record hook for AttributedPPO).

    Snapshot scores are computed at θ_k before the update; live TracIn scores
    (``live_tracin``) are taken inside the update from its own backward pass and describe
    the update that just ran. Both are returned to AttributedPPO, which stores them with
    the iteration (``snapshot-return``, ``tracin-live-epoch-return``, ...; see
    ``rlattr.scoring.attribute.score_name``) and shows them in TensorBoard
    (``rlattr.training.board``).

    Attributes:
        target: what to score against (default: the return target on the same buffer);
            also live TracIn's target unless ``live_tracin.target`` names its own.
        params, backend: of the snapshot scores; see ``rlattr.scoring.grads``.
        snapshot: compute snapshot scores (False: only live TracIn, if configured).
        live_tracin: TracIn during training (``rlattr.scoring.live_tracin.LiveTracIn``);
            None computes none.
        last_scores: the latest iteration's snapshot scores (the hook's own record).
        last_live_scores: the latest iteration's live TracIn scores.
        last_live_seconds: the latest live TracIn's own time, by part (``gradient_refresh``:
            the ∇f recomputations; ``finish``: multipliers and contractions after the update).
    """

    target: Target | None = None
    params: ParamSelection = "policy"
    backend: Backend = "auto"
    snapshot: bool = True
    live_tracin: LiveTracIn | None = None
    last_scores: torch.Tensor | None = field(default=None, init=False)
    last_live_scores: torch.Tensor | None = field(default=None, init=False)
    last_live_seconds: dict[str, float] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.live_tracin is not None and not isinstance(self.live_tracin, LiveTracIn):
            raise TypeError(
                f"live_tracin must be a LiveTracIn, got {type(self.live_tracin).__name__}"
            )

    def __call__(self, context: IterationContext) -> dict[str, StoredScores]:
        if not self.snapshot:
            return {}
        target = self.target or ReturnTarget()
        scores = snapshot_scores(
            context.policy,
            context.records,
            target,
            context.loss_config,
            context.target_context(),
            self.params,
            self.backend,
        ).detach()
        self.last_scores = scores
        meta = {
            "method": "snapshot",
            "target": target.name,
            "params": self.params,
            "during": "training",
        }
        return {
            score_name("snapshot", target, self.params): StoredScores(
                scores.cpu(), meta, score_prefix(target)
            )
        }

    def observe_update(self, context: IterationContext) -> UpdateObserver | None:
        """Live TracIn's observer of this iteration's update (None without ``live_tracin``)."""
        if self.live_tracin is None:
            return None
        config = self.live_tracin
        if config.target is None and self.target is not None:
            config = replace(config, target=self.target)
        scorer = LiveTracInScorer(context.policy, context.target_context(), config)
        return _LiveTracInObserver(scorer, config, self)


class _LiveTracInObserver:
    """Adapts a ``LiveTracInScorer`` to the observer seam; stores its scores."""

    def __init__(self, scorer: LiveTracInScorer, config: LiveTracIn, hook: ScoreHook):
        self.scorer = scorer
        self.config = config
        self.hook = hook
        self.collect = scorer.collect
        self.after_step = scorer.after_step
        self.epochs = scorer.epochs
        self.detach = scorer.detach
        scorer.attach()

    def before_step(self, step: int, indices: torch.Tensor) -> None:
        self.scorer.refresh(step)

    def finish(self, plan: UpdatePlan) -> dict[str, StoredScores]:
        scores = self.scorer.finish(plan).detach()
        self.hook.last_live_scores = scores
        self.hook.last_live_seconds = dict(self.scorer.seconds)
        target = self.scorer.target
        meta = {**self.config.describe(), "during": "training", "describes": "the update"}
        name = score_name(self.config.method, target, self.config.params)
        return {name: StoredScores(scores.cpu(), meta, score_prefix(target, METHOD))}


class UpdateObservers:
    """The observers of one update, as the callbacks ``run_update`` takes.

    Built from the record hooks that have ``observe_update``; with none, every callback is
    None and ``epochs`` passes the epochs through untouched, so the update runs as before.
    """

    def __init__(self, hooks: Sequence[Any], context: IterationContext):
        self.observers: list[UpdateObserver] = []
        try:
            for hook in hooks:
                observe = getattr(hook, "observe_update", None)
                observer = observe(context) if observe is not None else None
                if observer is not None:
                    self.observers.append(observer)
        except BaseException:
            self.detach()
            raise

    def epochs(self, epochs: Epochs) -> Epochs:
        """The update's epochs, passed through every observer."""
        for observer in self.observers:
            epochs = observer.epochs(epochs)
        return epochs

    @property
    def before_step(self) -> StepCallback | None:
        """``run_update``'s ``before_step``: every observer's ``collect``, then every
        observer's ``before_step`` (None if there are no observers)."""
        if not self.observers:
            return None

        def call(step: int, indices: torch.Tensor) -> None:
            for observer in self.observers:
                observer.collect(step, indices)
            for observer in self.observers:
                observer.before_step(step, indices)

        return call

    @property
    def after_step(self) -> StepCallback | None:
        """``run_update``'s ``after_step``: every observer's, in order (None if none)."""
        if not self.observers:
            return None

        def call(step: int, indices: torch.Tensor) -> None:
            for observer in self.observers:
                observer.after_step(step, indices)

        return call

    def detach(self) -> None:
        """Detach every observer (when the update ends, also on error)."""
        for observer in self.observers:
            observer.detach()

    def finish(self, plan: UpdatePlan) -> dict[str, StoredScores]:
        """Every observer's scores of the update that ran."""
        stored: dict[str, StoredScores] = {}
        for observer in self.observers:
            stored.update(observer.finish(plan))
        return stored
