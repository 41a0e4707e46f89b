"""Arms of a comparison: PPO, the preset's IIF rule, and the rule's matched ablations.

An arm is named ``ppo``, ``iif``, ``random_like``, ``advantage_like`` or ``iif_metagrad``;
any but ``ppo`` may end in ``_p<percent>`` for its own drop fraction (``iif_p25``).
``arm_iif`` turns a name into the filter a run is assembled with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rlattr.run.assembly import RunOptionsError


class UnknownArmError(RunOptionsError):
    """A name that is not an arm (the message lists the arms)."""


ARMS = ("ppo", "iif", "random_like", "advantage_like", "iif_metagrad")
# Any arm but ppo may name its own drop fraction p as a percent suffix: ``iif_p25`` is the
# preset's rule at p = 25 %, ``random_like_p12.5`` drops as many as the rule would at 12.5 %
# (the paper's p sweep, docs/science.md §6).
_PERCENT_SUFFIX = "_p"


@dataclass(frozen=True)
class ArmName:
    """A parsed arm name: its base arm (one of ``ARMS``) and, optionally, the drop fraction
    p that replaces the preset's (``iif_p25`` → ``ArmName("iif", 0.25)``)."""

    base: str
    fraction: float | None = None


def parse_arm(name: str) -> ArmName:
    """``ARMS`` member, or a member other than ``ppo`` with a ``_p<percent>`` suffix
    (0 < percent <= 100); raises ``UnknownArmError`` otherwise."""
    if not isinstance(name, str):
        raise UnknownArmError(f"an arm is a name, got {name!r}")
    if name in ARMS:
        return ArmName(name)
    base, sep, percent = name.rpartition(_PERCENT_SUFFIX)
    if sep and base in ARMS and base != "ppo":
        try:
            value = float(percent)
        except ValueError:
            value = math.nan
        if 0 < value <= 100 and percent.replace(".", "", 1).isdigit():
            return ArmName(base, value / 100)
    raise UnknownArmError(
        f"unknown arm {name!r}: arms are {', '.join(ARMS)}, and any but ppo may end in "
        "_p<percent> for its drop fraction (e.g. iif_p25)"
    )


def arm_iif(preset: Any, arm: str, seed: int) -> Any:
    """The filter of an arm: None for PPO, the preset's rule, or its matched ablations.

    ``random_like`` and ``advantage_like`` drop as many records as the preset's rule would
    (at random; those with the most negative advantages); ``iif_metagrad`` is the preset's
    rule on exact metagradient scores of the coming update instead of snapshot scores. A
    ``_p<percent>`` suffix replaces the preset's drop fraction (``parse_arm``).
    """
    from rlattr.training.filters import IIF  # late: presets are read without torch work

    name = parse_arm(arm)
    if name.base == "ppo":
        return None
    base = preset.iif_config(seed=seed, fraction=name.fraction)
    if name.base == "iif":
        return base
    if name.base == "iif_metagrad":
        return preset.iif_config(seed=seed, fraction=name.fraction, scorer="metagrad")
    return IIF(
        rule=name.base,
        like=base.rule,
        like_fraction=base.fraction,
        warmup_iterations=base.warmup_iterations,
        minibatching=base.minibatching,
        seed=seed,
    )
