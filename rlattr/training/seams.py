"""The seams of AttributedPPO: record hooks and keep-mask filters receive an iteration
context and *return* what they computed; nothing is written onto the model for another
part to read.

- A **record hook** is called with an ``IterationContext`` before every update and returns
  the scores it wants stored with the iteration (``{name: StoredScores}``) or None.
- A **keep-mask filter** subclasses ``KeepMaskFilter``: it declares what it needs as typed
  attributes (``needs_plan``, ``minibatching``, ``uses_generator``, ``seed``) and returns a
  ``FilterDecision`` (keep mask, scores to store, TensorBoard scalars).

- After the update, what the iteration did comes back as an ``IterationResult`` (records,
  executed plan, keep mask, loss weights, scores, filter scalars, ground truth), delivered
  to every callback passed to ``learn`` that has an ``on_iteration(result)`` method
  (``IterationResults`` collects them; ``EvalEveryRound`` reads its dropped share there).

Old-style callables ``fn(model, records)`` are still accepted for both seams (see
``call_record_hook`` and ``as_keep_mask_filter``).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.record.loss import PPOLossConfig
from rlattr.record.plan import MINIBATCHING, Minibatching, UpdatePlan
from rlattr.record.records import Records
from rlattr.record.replay import IterationData
from rlattr.scoring.targets import ReturnTarget, Target, TargetContext


@dataclass(frozen=True)
class IterationContext:
    """What a hook or filter may read about iteration k, just before its update.

    Attributes:
        iteration: k (0-based).
        records: the buffer θ_k collected.
        policy: the policy at θ_k, with its optimiser. Read it; do not step it (a scorer
            that must move it, such as a replay, restores it before returning).
        loss_config: the loss hyperparameters of this iteration (schedules evaluated).
        gamma, gae_lambda: the discount and GAE λ the advantages were computed with.
        plan: the update plan drawn before filtering, when the filter declared
            ``needs_plan`` (its norms are NaN: no step has run); else None.
        generator: the filter's own random generator, when it declared
            ``uses_generator`` (seeded once, checkpointed with the run); else None.
        ground_truth: per-record ground truth the environments reported, by ``info`` key
            (the keys starting with ``rlattr_``, e.g. ``rlattr_fault``): ``[N]`` tensors
            aligned with ``records`` (bool, or float64 with NaN where a step lacked the
            key); None when no step reported any.
    """

    iteration: int
    records: Records
    policy: ActorCriticPolicy
    loss_config: PPOLossConfig
    gamma: float
    gae_lambda: float
    plan: UpdatePlan | None = None
    generator: torch.Generator | None = None
    ground_truth: Mapping[str, torch.Tensor] | None = None

    def target_context(self) -> TargetContext:
        """The ``TargetContext`` targets are evaluated with."""
        return TargetContext(self.records, self.gamma, self.gae_lambda)


# The TensorBoard prefix of the return target's scores: the board adds the advantage
# diagnosis, images, record tables and the fidelity check, all made for that target.
PRIMARY_PREFIX = "scores"


def score_prefix(target: Target, method: str = "") -> str:
    """The TensorBoard prefix of scores on ``target``: ``scores`` only for the return
    target on the iteration's own buffer with GAE advantages (what the board's advantage
    diagnosis and fidelity check assume), ``scores_<target>[_<method>]`` otherwise, so that
    two kinds of scores never share one curve."""
    if not method and isinstance(target, ReturnTarget) and target.identity == "return":
        return PRIMARY_PREFIX
    name = target.identity if isinstance(target, ReturnTarget) else target.name
    name = f"scores_{name}".replace("-", "_")
    return f"{name}_{method.replace('-', '_')}" if method else name


@dataclass(frozen=True)
class StoredScores:
    """Per-record scores a hook or filter hands back, stored with the iteration.

    Attributes:
        scores: ``[N]`` scores aligned with the iteration's records.
        meta: JSON-serialisable metadata stored beside them (method, target, ...).
        log_as: TensorBoard prefix under which AttributedPPO logs them (quantiles, share
            negative, correlation with the advantage, a normalised histogram; under
            ``scores`` — the return target's — also the advantage diagnosis, images and
            record tables: ``rlattr.training.board``); None logs nothing.
    """

    scores: torch.Tensor
    meta: Mapping[str, Any] = field(default_factory=dict)
    log_as: str | None = "scores"


class ScorePrefixes:
    """The TensorBoard prefix of every stored score set, fixed for the run.

    Two sets can ask for one prefix (a ``ScoreHook`` and IIF each scoring the return
    target with different params both ask for ``scores``). The first set seen under a
    prefix keeps it for the whole run, and a later one moves to ``<prefix>_<its name>``
    (numbered if that is taken too), so no curve ever mixes two sets and none is lost.
    Within one iteration the filter's set is seen first (its scores drove the drops the
    board shows beside them); a filter that stores nothing yet (metagradients warming up)
    finds the prefix taken.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, str] = {}

    def assign(self, stored: Mapping[str, StoredScores]) -> dict[str, torch.Tensor]:
        """This iteration's scores by prefix, from its stored sets in the order they were
        made (hooks, then the filter, then update observers)."""
        by_prefix: dict[str, torch.Tensor] = {}
        for name, value in reversed(list(stored.items())):
            if value.log_as is None:
                continue
            prefix = self._by_name.get(name)
            if prefix is None:
                prefix = self._free(value.log_as, name)
                self._by_name[name] = prefix
            by_prefix[prefix] = value.scores
        return by_prefix

    def _free(self, wanted: str, name: str) -> str:
        taken = set(self._by_name.values())
        if wanted not in taken:
            return wanted
        base = f"{wanted}_{name}".replace("-", "_")
        candidate, number = base, 2
        while candidate in taken:
            candidate, number = f"{base}_{number}", number + 1
        return candidate


@dataclass(frozen=True)
class FilterDecision:
    """What a keep-mask filter decided for one iteration.

    Attributes:
        keep_mask: ``[N]`` bool, True = the update trains on the record; None trains on
            every record.
        scores: scores to store with the iteration, by name.
        scalars: TensorBoard scalars (``"filter/fraction_dropped"``, ...) to record.
        weights: ``[N]`` per-record loss weights in [0, 1] (records outside ``keep_mask``
            count as 0), or None. Weights that are all 0 or 1 act as a keep mask (weight 0
            is removal, weight 1 plain PPO, bit for bit); fractional ones train with the
            weighted loss (``rlattr.record.loss.weighted_minibatch_loss``: Σwℓ/Σw and
            w-weighted advantage statistics), and the plan stores them for replay.
    """

    keep_mask: torch.Tensor | None
    scores: Mapping[str, StoredScores] = field(default_factory=dict)
    scalars: Mapping[str, float] = field(default_factory=dict)
    weights: torch.Tensor | None = None


@runtime_checkable
class RecordHook(Protocol):
    """``hook(context) -> {name: StoredScores} | None``, called before every update."""

    def __call__(self, context: IterationContext) -> Mapping[str, StoredScores] | None: ...


class KeepMaskFilter(ABC):
    """Base class of keep-mask filters: declared needs, and a decision per iteration.

    Subclasses override the class attributes they need (plain attributes or properties):

    Attributes:
        needs_plan: draw every epoch's permutation before calling the filter and pass the
            drafted plan as ``context.plan``; the kept records are then taken out of those
            minibatches (requires ``minibatching="as_drawn"``).
        minibatching: ``"as_drawn"`` or ``"recut"``: how the update forms minibatches
            around dropped records (``rlattr.record.plan.sample_epoch_minibatches``).
        uses_generator: give the filter its own ``torch.Generator`` as
            ``context.generator`` (checkpointed, so a resumed run draws on).
        seed: that generator's seed; None derives it from the model's seed
            (``filter_seed``), so random filters differ across training seeds.
    """

    needs_plan: bool = False
    minibatching: Minibatching = "as_drawn"
    uses_generator: bool = False
    seed: int | None = None

    @abstractmethod
    def __call__(self, context: IterationContext) -> FilterDecision:
        """The decision for iteration ``context.iteration``."""


class _PlainFilter(KeepMaskFilter):
    """Adapts ``fn(context) -> FilterDecision | BoolTensor | None``."""

    def __init__(self, fn: Callable[[IterationContext], Any]):
        self.fn = fn

    def __call__(self, context: IterationContext) -> FilterDecision:
        return _as_decision(self.fn(context))


class _LegacyFilter(KeepMaskFilter):
    """Adapts an old-style ``fn(model, records) -> BoolTensor | None``.

    Its optional attribute ``minibatching`` is honoured (read once, when adapted).
    """

    def __init__(self, fn: Callable[[Any, Records], Any], model: Any):
        self.fn = fn
        self.model = model
        minibatching = getattr(fn, "minibatching", "as_drawn")
        if minibatching not in MINIBATCHING:
            raise ValueError(f"minibatching must be one of {MINIBATCHING}, got {minibatching!r}")
        self.minibatching = minibatching

    def __call__(self, context: IterationContext) -> FilterDecision:
        return _as_decision(self.fn(self.model, context.records))


def _as_decision(result: Any) -> FilterDecision:
    if isinstance(result, FilterDecision):
        return result
    if result is None or isinstance(result, torch.Tensor):
        return FilterDecision(keep_mask=result)
    raise TypeError(
        "a keep-mask filter must return a FilterDecision, a bool tensor or None, "
        f"got {type(result).__name__}"
    )


def _takes_model_and_records(fn: Callable[..., Any]) -> bool:
    """Old-style seams take (model, records); new ones take one context."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: assume the new style
        return False
    try:
        signature.bind(None)
        return False
    except TypeError:
        pass
    try:
        signature.bind(None, None)
        return True
    except TypeError as err:
        raise TypeError(
            f"{fn!r} takes neither (context) nor the old (model, records) arguments"
        ) from err


def as_keep_mask_filter(fn: Any, model: Any) -> KeepMaskFilter:
    """``fn`` as a ``KeepMaskFilter``: subclasses as they are; a plain ``fn(context)`` or an
    old-style ``fn(model, records)`` wrapped (``model`` is what the old style receives)."""
    if isinstance(fn, KeepMaskFilter):
        return fn
    if _takes_model_and_records(fn):
        return _LegacyFilter(fn, model)
    return _PlainFilter(fn)


def call_record_hook(hook: Any, context: IterationContext, model: Any) -> dict[str, StoredScores]:
    """Run one record hook and return the scores it asks to store.

    A hook takes the context (new style) or ``(model, records)`` (old style, whose return
    value is ignored unless it is a mapping of ``StoredScores``).
    """
    if _takes_model_and_records(hook):
        result = hook(model, context.records)
    else:
        result = hook(context)
    if result is None:
        return {}
    if not isinstance(result, Mapping) or not all(
        isinstance(value, StoredScores) for value in result.values()
    ):
        raise TypeError(
            f"record hook {hook!r} must return None or {{name: StoredScores}}, "
            f"got {type(result).__name__}"
        )
    return dict(result)


def filter_seed(seed: int | None, model_seed: int | None) -> int:
    """The seed of a filter's generator: ``seed`` if given, else one derived from the
    model's seed (mixed, so the filter's stream is not torch's global stream of the same
    seed), else a fresh random seed (an unseeded run is random anyway)."""
    if seed is not None:
        return int(seed)
    entropy = None if model_seed is None else [int(model_seed), 0x11F]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class IterationResult:
    """What one AttributedPPO iteration did, returned by its update and handed to callbacks.

    Attributes:
        iteration: k (0-based).
        num_timesteps: the model's ``num_timesteps`` after the rollout of iteration k.
        records: the buffer θ_k collected.
        plan: the executed update plan (minibatches, early stop, norms); its
            ``record_weights`` are the fractional loss weights a filter set, if any.
        start: θ_k and the optimiser state before the update, as ``(tensors, meta)`` of
            ``rlattr.record.checkpoint.capture_checkpoint`` (what replay starts from).
        keep_mask: ``[N]`` bool, the records the update trained on; None: every record.
        filtering: a keep-mask filter was installed (so "dropped nothing" is a value).
        scores: every score set stored with the iteration, by name (record hooks, the
            filter, update observers such as live TracIn), as handed back.
        scalars: the TensorBoard scalars the filter reported (``"iif/..."``, ...).
        ground_truth: per-record ``info["rlattr_*"]`` values of the rollout
            (``IterationContext.ground_truth``), or None.
        n_epochs_run: epochs the update ran (fewer than ``n_epochs`` after a target-KL stop).
        losses: the update's mean losses, by SB3's ``train/...`` key.
    """

    iteration: int
    num_timesteps: int
    records: Records
    plan: UpdatePlan
    start: tuple[dict[str, torch.Tensor], dict[str, Any]]
    keep_mask: torch.Tensor | None
    filtering: bool
    scores: Mapping[str, StoredScores] = field(default_factory=dict)
    scalars: Mapping[str, float] = field(default_factory=dict)
    ground_truth: Mapping[str, torch.Tensor] | None = None
    n_epochs_run: int = 0
    losses: Mapping[str, float] = field(default_factory=dict)

    @property
    def weights(self) -> torch.Tensor | None:
        """The fractional per-record loss weights the update trained with, or None."""
        return self.plan.record_weights

    @property
    def fraction_dropped(self) -> float | None:
        """The share of the buffer the filter left out of the update; None without a filter
        (0.0 when a filter kept every record)."""
        if not self.filtering:
            return None
        if self.keep_mask is None:
            return 0.0
        return float((~self.keep_mask).double().mean())

    def iteration_data(self, device: torch.device | str | None = None) -> IterationData:
        """The iteration as replay and the scorers take it (records, plan, start state),
        moved to ``device`` (default: where it is)."""
        if device is None:
            tensors, meta = self.start
            return IterationData(self.iteration, self.records, self.plan, dict(tensors), meta)
        tensors = {name: value.to(device) for name, value in self.start[0].items()}
        return IterationData(
            self.iteration, self.records.to(device), self.plan.to(device), tensors, self.start[1]
        )


@runtime_checkable
class IterationListener(Protocol):
    """A callback that wants each iteration's result: AttributedPPO calls
    ``on_iteration(result)`` after every update, on every callback given to ``learn``
    (inside ``CallbackList`` and event callbacks too) that has this method."""

    def on_iteration(self, result: IterationResult) -> None: ...


def deliver_result(callback: Any, result: IterationResult) -> None:
    """Call ``on_iteration(result)`` on ``callback`` and on every callback it wraps
    (SB3's ``CallbackList.callbacks``, ``EventCallback.callback``), in list order."""
    if callback is None:
        return
    on_iteration = getattr(callback, "on_iteration", None)
    if callable(on_iteration):
        on_iteration(result)
    for child in getattr(callback, "callbacks", None) or ():
        deliver_result(child, result)
    child = getattr(callback, "callback", None)
    if isinstance(child, BaseCallback):
        deliver_result(child, result)


class IterationResults(BaseCallback):
    """Collects the ``IterationResult`` of every iteration trained while it is passed to
    ``learn`` (``model.learn(n, callback=results)``): how code outside callbacks (tests,
    experiments) reads what an iteration did.

    Args:
        keep: keep only the newest ``keep`` results (each holds its buffer and start
            state); None keeps all.
    """

    def __init__(self, keep: int | None = None, verbose: int = 0):
        super().__init__(verbose)
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 or None, got {keep}")
        self.keep = keep
        self.results: list[IterationResult] = []

    def _on_step(self) -> bool:
        return True

    def on_iteration(self, result: IterationResult) -> None:
        """Keep ``result`` (AttributedPPO calls this after each update)."""
        self.results.append(result)
        if self.keep is not None and len(self.results) > self.keep:
            del self.results[: len(self.results) - self.keep]

    @property
    def last(self) -> IterationResult:
        """The newest result; refuses when no iteration has been trained yet."""
        if not self.results:
            raise LookupError("no iteration has been trained with this callback yet")
        return self.results[-1]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[IterationResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> IterationResult:
        return self.results[index]
