"""Targeted intervention (docs/science.md §5): during training, drop or down-weight the records
that push the policy towards an unwanted behaviour.

Each iteration the buffer is scored against the unwanted behaviour's target f at θ_k
(snapshot scores; a positive score means training on the record *raises* f), and the
records with the most positive scores are removed from the update (``weight=0``) or
trained on with a smaller loss weight, under a budget. Only positively scored records
qualify. ``with_iif`` adds IIF's own drops on the return target (the union is dropped).

Rules (``Intervention.rule``):
- ``top``: the ``budget`` most positively scored records;
- ``random_like``: as many records as ``top`` would take, drawn at random from the whole
  buffer (the matched random-drop ablation);
- ``matching``: the records whose (observation, action) *is* one of the behaviour's pairs
  (an ``ActionTarget``; exact equality), whatever their score: the naive rule "drop every
  record that did the unwanted thing". Under a budget the most positively scored of them
  go first.

TensorBoard: ``intervention/behavior_value`` (f(θ_k)), ``intervention/dropped`` (records
the rule took) and, when the environments report ``planted_key`` in ``info``,
``intervention/dropped_planted_overlap`` (the share of those that are planted faults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from gymnasium import spaces

from rlattr.record.plan import Minibatching
from rlattr.scoring.attribute import score_name
from rlattr.scoring.grads import ParamSelection
from rlattr.scoring.influence import snapshot_scores
from rlattr.scoring.rules import finite_scores
from rlattr.scoring.targets import ActionTarget, CallableTarget, ReturnTarget, Target
from rlattr.training.filters import IIF, IIFFilter
from rlattr.training.seams import FilterDecision, IterationContext, KeepMaskFilter, StoredScores

InterventionRule = Literal["top", "random_like", "matching"]
INTERVENTION_RULES = ("top", "random_like", "matching")
#: TensorBoard prefix of the unwanted target's scores (``scores_unwanted/p50``, ...).
LOG_AS = "scores_unwanted"


def _is_whole(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass(frozen=True)
class Intervention:
    """Configuration of a targeted intervention: what to suppress, how, and how much.

    Attributes:
        target: the unwanted behaviour: a ``Target`` (e.g. ``ActionTarget`` of the
            unwanted (observation, action) pairs) or ``fn(policy, context) -> scalar``.
        rule: one of ``INTERVENTION_RULES`` (module docstring).
        budget: records per iteration at most: a fraction of the buffer (a float in
            [0, 1)), a count (an int ≥ 0), or None for every positively scored record.
        weight: the loss weight the chosen records train with, in [0, 1]: 0 removes them
            (bit for bit as a keep mask), fractions down-weight them (Σwℓ/Σw and
            w-weighted advantage statistics; the plan stores the weights for replay).
        with_iif: also apply this IIF config (its drops on the return target are added).
        params: which parameters the scores use (``rlattr.scoring.grads``).
        warmup_iterations: iterations trained without intervening (scores still stored).
        min_kept: never leave fewer records than this in the update.
        planted_key: the ``info`` key of the planted fault, whose overlap with the chosen
            records is reported when the environments provide it.
        seed: seed of the filter's own generator (``random_like``, IIF's random rules);
            None derives it from the model's seed.
    """

    # metadata["help"]: one-line help of a command-line flag.
    target: Any = field(
        metadata={"help": "the unwanted behaviour: a Target or fn(policy, context) -> scalar"}
    )
    rule: InterventionRule = field(
        default="top",
        metadata={
            "help": "top (most positive scores), random_like (ablation) or matching (records "
            "that are one of the behaviour's (state, action) pairs)"
        },
    )
    budget: float | int | None = field(
        default=0.05,
        metadata={"help": "per iteration: a fraction of the buffer in [0, 1), or a count"},
    )
    weight: float = field(
        default=0.0, metadata={"help": "loss weight of the chosen records: 0 drops them"}
    )
    with_iif: IIF | None = field(
        default=None, metadata={"help": "also filter with this IIF config (union of drops)"}
    )
    params: ParamSelection = field(
        default="policy", metadata={"help": "the parameters whose gradients score records"}
    )
    warmup_iterations: int = field(
        default=0, metadata={"help": "iterations trained before intervening"}
    )
    min_kept: int = field(default=1, metadata={"help": "never keep fewer records than this"})
    planted_key: str = field(
        default="rlattr_fault",
        metadata={"help": "info key of the planted fault (for the overlap scalar)"},
    )
    seed: int | None = field(
        default=None, metadata={"help": "seed of random_like's generator (None: model's)"}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.target, Target) and not callable(self.target):
            raise ValueError(
                "Intervention target must be a Target (e.g. ActionTarget of the unwanted pairs) "
                f"or a callable fn(policy, context) -> scalar, got {type(self.target).__name__}"
            )
        if self.rule not in INTERVENTION_RULES:
            raise ValueError(
                f"Intervention rule must be one of {INTERVENTION_RULES}, got {self.rule!r}"
            )
        if self.rule == "matching" and not isinstance(self.target, ActionTarget):
            raise ValueError(
                "Intervention rule 'matching' drops the records that are one of the "
                "behaviour's (state, action) pairs, so its target must be an ActionTarget, "
                f"got {type(self.target).__name__}"
            )
        budget = self.budget
        if budget is not None:
            if _is_whole(budget):
                if budget < 0:
                    raise ValueError(f"Intervention budget count must be >= 0, got {budget}")
            elif isinstance(budget, float) and not math.isnan(budget):
                if not 0 <= budget < 1:
                    raise ValueError(
                        f"Intervention budget {budget} as a fraction must be in [0, 1); "
                        "pass an int for a count of records"
                    )
            else:
                raise ValueError(
                    "Intervention budget must be a fraction in [0, 1), a count (int) or None, "
                    f"got {budget!r}"
                )
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1:
            raise ValueError(f"Intervention weight must be a number in [0, 1], got {weight!r}")
        if self.with_iif is not None and not isinstance(self.with_iif, IIF):
            raise ValueError(f"with_iif must be an IIF config, got {type(self.with_iif).__name__}")
        if self.params not in ("policy", "value", "all"):
            raise ValueError(f"params must be 'policy', 'value' or 'all', got {self.params!r}")
        for name in ("warmup_iterations", "min_kept"):
            value = getattr(self, name)
            if not _is_whole(value) or value < (1 if name == "min_kept" else 0):
                raise ValueError(
                    f"Intervention {name} must be a whole number >= "
                    f"{1 if name == 'min_kept' else 0}, got {value!r}"
                )
        if self.seed is not None and not _is_whole(self.seed):
            raise ValueError(f"Intervention seed must be a whole number or None, got {self.seed!r}")

    @property
    def behavior(self) -> Target:
        """The unwanted behaviour as a ``Target`` (a callable is wrapped)."""
        if isinstance(self.target, Target):
            return self.target
        return CallableTarget(self.target, name="unwanted")

    def budget_count(self, n_records: int) -> int | None:
        """The most records one iteration may take (None: no limit)."""
        if self.budget is None:
            return None
        if _is_whole(self.budget):
            return int(self.budget)
        return math.floor(float(self.budget) * n_records)

    def describe(self) -> dict[str, Any]:
        """This config as JSON for ``run.json`` (the target by identity)."""
        from rlattr.training.rundir import describe_iif

        return {
            "target": self.behavior.identity,
            "rule": self.rule,
            "budget": self.budget,
            "weight": self.weight,
            "with_iif": None if self.with_iif is None else describe_iif(self.with_iif),
            "params": self.params,
            "warmup_iterations": self.warmup_iterations,
            "min_kept": self.min_kept,
            "planted_key": self.planted_key,
            "seed": self.seed,
        }


def matching_records(
    observations: torch.Tensor, actions: torch.Tensor, target: ActionTarget
) -> torch.Tensor:
    """``[N]`` bool: the records whose (observation, action) equals one of ``target``'s pairs.

    Exact equality of the flattened observation and action (discrete actions compare as
    numbers: the buffer stores them as floats, targets as integers). Meant for discrete or
    tabular observations; continuous ones rarely repeat exactly.
    """
    n = len(observations)
    if n == 0:
        return torch.zeros(0, dtype=torch.bool)
    record_obs = observations.detach().cpu().reshape(n, -1).double()
    record_act = actions.detach().cpu().reshape(n, -1).double()
    pair_obs = target.observations.detach().cpu().reshape(len(target.observations), -1).double()
    pair_act = target.actions.detach().cpu().reshape(len(target.actions), -1).double()
    if record_obs.shape[1] != pair_obs.shape[1] or record_act.shape[1] != pair_act.shape[1]:
        raise ValueError(
            f"the behaviour's pairs have observations of {pair_obs.shape[1]} and actions of "
            f"{pair_act.shape[1]} numbers; the records have {record_obs.shape[1]} and "
            f"{record_act.shape[1]}"
        )
    # [N, M]: record i equals pair j; pairs are few (a behaviour), so this stays small.
    same_obs = (record_obs[:, None, :] == pair_obs[None, :, :]).all(-1)
    same_act = (record_act[:, None, :] == pair_act[None, :, :]).all(-1)
    return (same_obs & same_act).any(1)


def choose_records(
    scores: torch.Tensor,
    config: Intervention,
    generator: torch.Generator | None,
    limit: int | None = None,
    matched: torch.Tensor | None = None,
) -> torch.Tensor:
    """The records ``config``'s rule takes (``[N]`` bool, True = taken).

    ``top`` takes the most positive scores (ties broken by record index), at most the
    budget and never a record whose score is not positive; ``random_like`` takes as many
    at random from the whole buffer (from ``generator``); ``matching`` takes the records
    flagged in ``matched`` (``matching_records``), the most positive first when the budget
    binds. ``limit`` caps the count further.
    """
    n = scores.numel()
    scores = scores.detach().cpu()
    if config.rule == "matching":
        if matched is None or matched.shape != (n,):
            raise ValueError("the matching rule needs matched, [N] bool (matching_records)")
        matched = matched.detach().cpu()
        n_take = int(matched.sum())
    else:
        n_take = int((scores > 0).sum())
    for cap in (config.budget_count(n), limit):
        if cap is not None:
            n_take = min(n_take, max(cap, 0))
    taken = torch.zeros(n, dtype=torch.bool)
    if n_take == 0:
        return taken
    if config.rule == "random_like":
        if generator is None:
            raise ValueError("random_like needs the filter's generator (uses_generator)")
        taken[torch.randperm(n, generator=generator)[:n_take]] = True
    elif config.rule == "matching":
        assert matched is not None
        # Unmatched records sort last whatever their score; stable: ties by index.
        order = torch.sort(-torch.where(matched, scores, -math.inf), stable=True).indices
        taken[order[:n_take]] = True
    else:
        # The most positive first; a stable sort makes ties deterministic.
        taken[torch.sort(-scores, stable=True).indices[:n_take]] = True
    return taken


def planted(ground_truth: Any, key: str) -> torch.Tensor | None:
    """``[N]`` bool: the records ``ground_truth[key]`` flags (True or a nonzero number)."""
    if not ground_truth or key not in ground_truth:
        return None
    values = ground_truth[key].detach().cpu()
    if values.dtype == torch.bool:
        return values
    return torch.nan_to_num(values.double(), nan=0.0) != 0


class InterventionFilter(KeepMaskFilter):
    """The keep-mask filter AttributedPPO installs for ``intervention=Intervention(...)``.

    It returns per-record weights (``FilterDecision.weights``): ``config.weight`` for the
    records the rule takes, 0 for records IIF drops (``with_iif``), 1 for the rest.
    """

    uses_generator = True

    def __init__(self, config: Intervention):
        self.config = config
        self._iif = IIFFilter(config.with_iif) if config.with_iif is not None else None

    @property
    def needs_plan(self) -> bool:  # type: ignore[override]
        """IIF's metagradient scores price the drafted update."""
        return self._iif is not None and self._iif.needs_plan

    @property
    def minibatching(self) -> Minibatching:  # type: ignore[override]
        return self._iif.minibatching if self._iif is not None else "as_drawn"

    @property
    def seed(self) -> int | None:  # type: ignore[override]
        return self.config.seed

    def unwanted_scores(self, context: IterationContext) -> torch.Tensor:
        """Snapshot scores of the records on the unwanted behaviour at θ_k."""
        return snapshot_scores(
            context.policy,
            context.records,
            self.config.behavior,
            context.loss_config,
            context.target_context(),
            self.config.params,
        ).detach()

    def __call__(self, context: IterationContext) -> FilterDecision:
        config = self.config
        records = context.records
        n = len(records)
        behavior = config.behavior
        with torch.no_grad():
            value = float(behavior.value(context.policy, context.target_context()))
        scores = self.unwanted_scores(context)
        stored = {
            score_name("snapshot", behavior, config.params): StoredScores(
                scores.cpu(),
                {"method": "snapshot", "target": behavior.name, "during": "intervention"},
                log_as=LOG_AS,
            )
        }
        scalars = {"intervention/behavior_value": value}
        iif_keep = None
        if self._iif is not None:
            iif_decision = self._iif(context)
            stored.update(iif_decision.scores)
            scalars.update(iif_decision.scalars)
            iif_keep = iif_decision.keep_mask
        weights = torch.ones(n, dtype=torch.float32)
        if iif_keep is not None:
            weights[~iif_keep.cpu()] = 0.0
        if context.iteration < config.warmup_iterations:
            return FilterDecision(None, stored, scalars, weights)
        when = f"iteration {context.iteration}"
        if not finite_scores(scores, "intervention", when, "this iteration does not intervene"):
            return FilterDecision(None, stored, scalars, weights)
        # Removing records must leave min_kept of those IIF kept; down-weighting keeps them.
        limit = None
        if config.weight == 0:
            limit = int((weights > 0).sum()) - min(config.min_kept, n)
        matched = None
        if config.rule == "matching":
            assert isinstance(behavior, ActionTarget)  # checked by Intervention
            matched = matching_records(records.observations, records.actions, behavior)
        taken = choose_records(scores, config, context.generator, limit, matched)
        weights[taken] = weights[taken].clamp(max=float(config.weight))
        scalars["intervention/dropped"] = float(taken.sum())
        flags = planted(context.ground_truth, config.planted_key)
        if flags is not None and bool(taken.any()):
            scalars["intervention/dropped_planted_overlap"] = float(flags[taken].double().mean())
        return FilterDecision(None, stored, scalars, weights)


# ---------------------------------------------------------------------- command line
def check_action_file(path: str | Path) -> Path:
    """``path`` if it is a file, before anything reads it.

    Raises:
        ValueError: a folder (with what to give instead) or a path that does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"action target {path} is a folder: give the .npz or .safetensors file in it "
            "that holds the observations and actions"
        )
    if not path.is_file():
        raise ValueError(f"action target file {path} does not exist")
    return path


def read_action_pairs(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(observations, actions) from a ``.npz`` or safetensors file holding both.

    Raises:
        ValueError: the file cannot be read or lacks one of the two arrays.
    """
    path = check_action_file(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                tensors = {k: torch.as_tensor(arrays[k]) for k in arrays.files}
        else:
            from safetensors.torch import load_file

            tensors = load_file(str(path))
    except Exception as err:  # any reader error is the same user error
        raise ValueError(
            f"{path} is not a readable .npz or safetensors file ({err}); save the observations "
            "and actions with numpy.savez or safetensors.torch.save_file"
        ) from err
    missing = {"observations", "actions"} - tensors.keys()
    if missing:
        raise ValueError(
            f"{path} lacks {sorted(missing)}: an action target file holds observations "
            "[M, *obs_shape] and actions [M, ...]"
        )
    return tensors["observations"].float(), tensors["actions"]


def intervention_from_spec(
    spec: str,
    budget: float | int | None = 0.05,
    observation_space: spaces.Space | None = None,
    action_space: spaces.Space | None = None,
    **options: Any,
) -> Intervention:
    """An ``Intervention`` from a command-line target spec, e.g. ``--intervene action:FILE``.

    Args:
        spec: ``action:FILE`` (the unwanted (observation, action) pairs, ``.npz`` or
            safetensors with ``observations`` and ``actions``), or ``return`` /
            ``return:mc`` (suppress what raises the return surrogate: a sanity check).
        budget: ``Intervention.budget`` (a fraction in [0, 1) or a count).
        observation_space, action_space: the run's spaces; when given, the pairs are
            checked against them before training starts.
        **options: the other ``Intervention`` fields (``rule``, ``weight``, ``with_iif``...).

    Raises:
        ValueError: the spec, the file or an option is wrong (the message says how).
    """
    kind, _, argument = spec.partition(":")
    target: Target
    if kind == "action":
        if not argument:
            raise ValueError("action needs a file: action:FILE (.npz or .safetensors)")
        observations, actions = read_action_pairs(argument)
        target = ActionTarget(observations, actions)
        if observation_space is not None and action_space is not None:
            target.check_spaces(observation_space, action_space)
    elif kind == "return" and argument in ("", "gae", "mc"):
        target = ReturnTarget(advantage="mc" if argument == "mc" else "gae")
    else:
        raise ValueError(f"unknown intervention target {spec!r}: use action:FILE or return")
    return Intervention(target=target, budget=budget, **options)
