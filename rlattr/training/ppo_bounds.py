"""What each PPO hyperparameter may be: one table, checked by every door.

A preset (``rlattr.run.presets``) and ``AttributedPPO(...)`` take the same PPO fields; both
check them here, so ``gamma: 1.5`` in a YAML file and ``AttributedPPO(gamma=1.5)`` are
refused with the same words. Layer 3 (training), so the run layer above imports it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlattr.errors import ConfigError


class LinearSchedule:
    """``initial × progress_remaining`` (progress goes 1 → 0), like the RL Zoo's ``lin_``."""

    def __init__(self, initial: float):
        self.initial = initial

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.initial

    def __repr__(self) -> str:
        return f"lin_{self.initial}"


def parse_schedule(value: Any, where: str, error: type[Exception] = ConfigError) -> Any:
    """A number as it is, ``lin_<number>`` as a ``LinearSchedule``; else ``error``."""
    if isinstance(value, str):
        if value.startswith("lin_"):
            try:
                return LinearSchedule(float(value[4:]))
            except ValueError:
                pass
        raise error(f"{where}: {value!r} is neither a number nor 'lin_<number>'")
    if value is None or isinstance(value, int | float):
        if isinstance(value, float) and math.isnan(value):
            raise error(f"{where} is NaN")
        return value
    raise error(f"{where}: {value!r} is neither a number nor 'lin_<number>'")


@dataclass(frozen=True)
class Bound:
    """What one numeric value may be; ``check`` names the key and the rule broken.

    Attributes:
        low, high: the interval's ends (None: unbounded).
        low_open: exclude ``low`` itself (``> low`` instead of ``>= low``).
        integer: a whole number (YAML ``64``, not ``64.0`` or ``"64"``).
        nullable: ``null`` is allowed (SB3's "off").
        schedule: ``lin_<number>`` is allowed, the number obeying the same bound.
        infinite: ``.inf`` is allowed (e.g. ``max_grad_norm``: no clipping).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    integer: bool = False
    nullable: bool = False
    schedule: bool = False
    infinite: bool = False

    def describe(self) -> str:
        """The rule in words, e.g. ``a number in (0, 1]`` or ``a whole number >= 1``."""
        kind = "a whole number" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            text = f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = kind
        if self.schedule:
            text += " or 'lin_<number>' with such a number"
        if self.infinite:
            text += " or .inf"
        return text + (" or null" if self.nullable else "")

    def check(self, value: Any, where: str, error: type[Exception] = ConfigError) -> None:
        """Raise ``error`` (a ``ConfigError`` unless told) if ``value`` breaks the rule."""
        if value is None and self.nullable:
            return
        number = value
        if self.schedule and isinstance(value, str) and value.startswith("lin_"):
            number = parse_schedule(value, where, error).initial
        if not _is_number(number, self.integer) or (math.isinf(number) and not self.infinite):
            hint = ""
            if isinstance(value, str) and _parses_as_float(value):
                hint = f" (YAML reads {value} as text: write it with a dot, e.g. 1.0e-3)"
            raise error(f"{where} must be {self.describe()}, got {value!r}{hint}")
        too_low = self.low is not None and (
            number <= self.low if self.low_open else number < self.low
        )
        too_high = self.high is not None and number > self.high
        if too_low or too_high:
            raise error(f"{where} must be {self.describe()}, got {value!r}")


def _is_number(value: Any, integer: bool) -> bool:
    """A real number (an int where ``integer``); bools are not numbers here, NaN is not.
    NumPy's scalars count (``numbers.Integral``, ``numbers.Real``)."""
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, numbers.Integral)
    return isinstance(value, numbers.Real) and not math.isnan(value)


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


AT_LEAST_ONE = Bound(1, integer=True)
#: The bounds of every numeric PPO field (SB3's meaning); normalize_advantage is a bool.
PPO_BOUNDS: dict[str, Bound] = {
    "learning_rate": Bound(0, low_open=True, schedule=True),
    "n_steps": AT_LEAST_ONE,
    "batch_size": AT_LEAST_ONE,
    "n_epochs": AT_LEAST_ONE,
    "gamma": Bound(0, 1, low_open=True),
    # lambda = 0 is legitimate: one-step TD advantages.
    "gae_lambda": Bound(0, 1),
    "clip_range": Bound(0, low_open=True, schedule=True),
    "clip_range_vf": Bound(0, low_open=True, schedule=True, nullable=True),
    "ent_coef": Bound(0),
    "vf_coef": Bound(0),
    "max_grad_norm": Bound(0, low_open=True, infinite=True),
    "target_kl": Bound(0, low_open=True, nullable=True),
}


def check_ppo_values(
    values: Mapping[str, Any],
    prefix: str,
    error: type[Exception] = ConfigError,
) -> None:
    """Every PPO field in ``values`` within SB3's meaning (a gamma of 1.7 would train,
    wrongly); fields outside ``PPO_BOUNDS`` and ``normalize_advantage`` are not looked at.

    Args:
        values: field → value, as a preset's ``ppo`` section or ``PPO(**kwargs)`` has them.
        prefix: what the message puts before the field's name (``"preset 'x' ppo."``).
        error: the exception to raise.

    ``lin_<number>`` (text) and a ``LinearSchedule`` are checked through their initial
    value; other callable schedules are taken as given.
    """
    for key, value in values.items():
        if key == "normalize_advantage":
            if not isinstance(value, bool):
                raise error(f"{prefix}{key} must be true or false, got {value!r}")
            continue
        bound = PPO_BOUNDS.get(key)
        if bound is None:
            continue
        if isinstance(value, LinearSchedule):
            value = value.initial
        elif callable(value) and bound.schedule:
            continue
        bound.check(value, f"{prefix}{key}", error)
    if values.get("normalize_advantage", True) and values.get("batch_size", 64) < 2:
        raise error(
            f"{prefix}batch_size must be >= 2 with normalize_advantage (the advantages of one "
            "record cannot be normalised); raise it or set normalize_advantage: false"
        )


#: The PPO fields that may be a schedule (a number, ``lin_<number>`` or a callable).
SCHEDULED_FIELDS = tuple(key for key, bound in PPO_BOUNDS.items() if bound.schedule)


def ppo_values_of(model: Any) -> dict[str, Any]:
    """The PPO fields of a built SB3 ``PPO`` model, as ``check_ppo_values`` reads them
    (SB3 holds schedules as callables, which are taken as given)."""
    values: dict[str, Any] = {key: getattr(model, key) for key in PPO_BOUNDS}
    values["normalize_advantage"] = model.normalize_advantage
    return values
