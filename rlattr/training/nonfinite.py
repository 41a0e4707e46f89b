"""Non-finite values caught where they enter a run: rewards, observations, advantages, loss.

One NaN reward makes NaN advantages, a NaN loss and NaN parameters; without a check the
iteration is committed and training dies later inside torch. ``AttributedPPO`` and
``RecordRun`` check each rollout before its update and each update before it is
committed, and do what ``nonfinite`` says:

- ``"error"`` (default): raise ``NonFiniteError`` naming the iteration, the field and the
  env and rollout step of the first non-finite value, before anything of the iteration is
  committed;
- ``"skip-iteration"``: warn, discard the rollout (no update, nothing recorded) and go on;
- ``"warn"``: warn, and record and train on it as without the check.

The checks only read tensors (one synchronisation per field per iteration).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rlattr.errors import ConfigError, NonFiniteError
from rlattr.record.records import Records

NonFinite = Literal["error", "skip-iteration", "warn"]
NONFINITE_MODES: tuple[str, ...] = ("error", "skip-iteration", "warn")

# The inputs of a rollout, checked first (the cause), then what is derived from them.
_INPUTS = (("observations", "observation"), ("rewards", "reward"))
_DERIVED = (("advantages", "advantage"),)


class NonFiniteWarning(RuntimeWarning):
    """A non-finite value trained on (``nonfinite="warn"``) or skipped (``"skip-iteration"``)."""


def check_nonfinite_mode(mode: Any, where: str = "nonfinite") -> NonFinite:
    """``mode`` if it is one of ``NONFINITE_MODES``; else a ``ConfigError``."""
    if mode not in NONFINITE_MODES:
        raise ConfigError(f"{where} must be one of {', '.join(NONFINITE_MODES)}, got {mode!r}")
    return mode  # type: ignore[no-any-return]


@dataclass(frozen=True)
class NonFiniteFinding:
    """Where a non-finite value is: ``what`` says it in words (field, env, step, count)."""

    iteration: int
    field: str
    what: str

    def message(self) -> str:
        return f"iteration {self.iteration}: {self.what}"


def find_in_records(records: Records) -> NonFiniteFinding | None:
    """The first non-finite observation or reward (earliest rollout step, then env; an
    observation before the reward of its step), else the first non-finite advantage;
    None when all are finite."""
    earliest: tuple[tuple[int, int, int], str] | None = None
    for order, (name, label) in enumerate(_INPUTS):
        found = _first_bad(records, name, label)
        if found is not None and (earliest is None or (*found[0], order) < earliest[0]):
            earliest = ((*found[0], order), found[1])
    if earliest is None:
        for name, label in _DERIVED:
            found = _first_bad(records, name, label)
            if found is not None:
                return NonFiniteFinding(records.iteration, name, found[1])
        return None
    field = _INPUTS[earliest[0][2]][0]
    return NonFiniteFinding(records.iteration, field, earliest[1])


def _first_bad(records: Records, name: str, label: str) -> tuple[tuple[int, int], str] | None:
    """((step, env), words) of the earliest non-finite value of one field, or None."""
    values = getattr(records, name)
    if not (values.is_floating_point() or values.is_complex()):
        return None  # integer observations (images stored as uint8) are always finite
    n = len(values)
    flat = values.reshape(n, -1)
    bad = ~torch.isfinite(flat).all(dim=1)
    if not bool(bad.any()):
        return None
    indices = torch.nonzero(bad).flatten()
    # Record i is env i // n_steps, rollout step i % n_steps; the earliest step first.
    steps, envs = indices % records.n_steps, indices // records.n_steps
    first = int(torch.argmin(steps * records.n_envs + envs))
    index, step, env = int(indices[first]), int(steps[first]), int(envs[first])
    row = flat[index]
    value = float(row[~torch.isfinite(row)][0])
    return (step, env), (
        f"non-finite {label} ({value}) at env {env}, rollout step {step} "
        f"({len(indices)} of {n} {name} non-finite)"
    )


def find_in_update(iteration: int, trace: Any, stats: Any) -> NonFiniteFinding | None:
    """The first optimiser step whose loss terms or gradient norm are non-finite (read from
    ``run_update``'s trace and statistics), else None."""
    if not trace.grad_norms:
        return None
    terms = {
        "policy loss": stats.pg_losses,
        "value loss": stats.value_losses,
        "entropy loss": stats.entropy_losses,
    }
    n_steps = len(trace.grad_norms)
    columns = {name: torch.stack(values[:n_steps]).float() for name, values in terms.items()}
    columns["gradient norm"] = torch.stack(trace.grad_norms).float()
    table = torch.stack([column.to(columns["gradient norm"].device) for column in columns.values()])
    bad = ~torch.isfinite(table).all(dim=0)
    if not bool(bad.any()):
        return None
    step = int(torch.nonzero(bad)[0])
    shown = ", ".join(f"{name} {float(column[step]):.4g}" for name, column in columns.items())
    return NonFiniteFinding(
        iteration,
        "loss",
        f"non-finite loss at optimiser step {step} (epoch {trace.epochs[step]}): {shown}",
    )


def parameters_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter of ``module`` is finite (one synchronisation)."""
    flags = [torch.isfinite(p).all() for p in module.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def crashed_update(iteration: int, last_step: int | None) -> NonFiniteFinding:
    """What to say when the update stopped because its parameters turned non-finite."""
    after = "before its first step" if last_step is None else f"by optimiser step {last_step}"
    return NonFiniteFinding(
        iteration,
        "loss",
        f"the parameters turned non-finite during the update ({after}): a non-finite loss or "
        "gradient",
    )


def act_on(finding: NonFiniteFinding, mode: NonFinite, stacklevel: int = 3) -> bool:
    """Do what ``mode`` says about ``finding``; True when the iteration is to be skipped.

    Raises:
        NonFiniteError: ``mode`` is ``"error"``.
    """
    if mode == "error":
        raise NonFiniteError(
            f"{finding.message()}; nothing of iteration {finding.iteration} was recorded. "
            "Find where it comes from (the environment, a wrapper, a reward scale), or set "
            "nonfinite to 'skip-iteration' (rlattr train --nonfinite skip-iteration) to "
            "discard such rollouts, or 'warn' to train on them"
        )
    if mode == "skip-iteration":
        warnings.warn(
            f"{finding.message()}; rollout discarded, no update (nonfinite='skip-iteration')",
            NonFiniteWarning,
            stacklevel=stacklevel,
        )
        return True
    warnings.warn(
        f"{finding.message()}; recorded and trained on (nonfinite='warn')",
        NonFiniteWarning,
        stacklevel=stacklevel,
    )
    return False
