"""A keep-mask filter that reads the ground truth: drop the records an environment flagged.

Environments with planted faults say in ``info`` which steps they corrupted
(``info["rlattr_fault"]``; ``rlattr.training.ground_truth`` aligns the values with the
records). ``GroundTruthFilter`` drops every record whose ground-truth key is *set* — True
for a boolean key, non-zero and not NaN for a numeric one — before the update. It knows
what no real run knows, so it is an upper reference for filters that must *find* the bad
records (IIF): "how much would training gain if exactly the planted records were gone?"

    model = AttributedPPO("MlpPolicy", env, keep_mask_fn=GroundTruthFilter(GroundTruthDrop()))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from rlattr.record.plan import MINIBATCHING, Minibatching
from rlattr.training.ground_truth import PREFIX
from rlattr.training.seams import FilterDecision, IterationContext, KeepMaskFilter


@dataclass(frozen=True)
class GroundTruthDrop:
    """Which ground-truth key names the records to drop, and how the update runs without them.

    Attributes:
        key: the ``info`` key (``rlattr_...``) whose set records are dropped.
        minibatching: ``"as_drawn"`` (PPO's minibatches minus the dropped records) or
            ``"recut"`` (see ``rlattr.record.plan.sample_epoch_minibatches``).
        min_kept: never keep fewer records than this (an update needs data); when the key
            flags more, the last records (by index) are kept.
    """

    key: str = field(
        default="rlattr_fault", metadata={"help": "the info key whose set records are dropped"}
    )
    minibatching: Minibatching = field(
        default="as_drawn",
        metadata={"help": "as_drawn: PPO's minibatches minus the dropped records; recut"},
    )
    min_kept: int = field(default=1, metadata={"help": "never keep fewer records than this"})

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key.startswith(PREFIX):
            raise ValueError(
                f"the ground-truth key must be an info key starting with {PREFIX!r}, "
                f"got {self.key!r}"
            )
        if self.minibatching not in MINIBATCHING:
            raise ValueError(
                f"minibatching must be one of {MINIBATCHING}, got {self.minibatching!r}"
            )
        if isinstance(self.min_kept, bool) or not isinstance(self.min_kept, int):
            raise ValueError(f"min_kept must be a whole number, got {self.min_kept!r}")
        if self.min_kept < 1:
            raise ValueError("min_kept must be >= 1")

    def describe(self) -> dict[str, Any]:
        """JSON for ``run.json``."""
        return {"filter": "ground_truth_drop", **asdict(self)}


def flagged(values: torch.Tensor) -> torch.Tensor:
    """Which records a ground-truth column sets: True (bool), or non-zero and not NaN."""
    if values.dtype == torch.bool:
        return values.clone()
    return (values != 0) & ~torch.isnan(values)


class GroundTruthFilter(KeepMaskFilter):
    """Drops, every iteration, exactly the records whose ground-truth ``config.key`` is set.

    Raises:
        ValueError: in an iteration whose environments did not report ``config.key``
            (the environment plants no such fault, or the key is misspelt).
    """

    def __init__(self, config: GroundTruthDrop | None = None):
        self.config = config or GroundTruthDrop()

    @property
    def minibatching(self) -> Minibatching:  # type: ignore[override]
        return self.config.minibatching

    def __call__(self, context: IterationContext) -> FilterDecision:
        key = self.config.key
        truth = context.ground_truth or {}
        if key not in truth:
            reported = ", ".join(sorted(truth)) or "none"
            raise ValueError(
                f"iteration {context.iteration}: the environments reported no {key!r} "
                f"(reported: {reported}); use an environment that plants it, e.g. "
                "rlattr.envs.faults.CorruptRewards"
            )
        drop = flagged(truth[key]).to("cpu")
        n = len(context.records)
        if drop.numel() != n:
            raise ValueError(f"{key!r} has {drop.numel()} values for {n} records")
        keep = ~drop
        short = min(self.config.min_kept, n) - int(keep.sum())
        if short > 0:  # keep the last flagged records rather than train on nothing
            keep[torch.nonzero(drop).flatten()[-short:]] = True
        dropped = int((~keep).sum())
        scalars = {
            "oracle/fraction_dropped": dropped / n,
            "oracle/count_dropped": float(dropped),
        }
        return FilterDecision(keep.to(context.records.device), scalars=scalars)
