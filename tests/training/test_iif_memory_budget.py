"""IIF's ``memory_budget``: validated with the rest of the configuration."""

from __future__ import annotations

import pytest

from rlattr.scoring.graph_memory import DEFAULT_MEMORY_BUDGET
from rlattr.training.filters import IIF


def test_budgets_iif_accepts() -> None:
    assert IIF(scorer="metagrad").memory_budget == DEFAULT_MEMORY_BUDGET
    for budget in (None, "none", "1GiB", 4096):
        assert IIF(scorer="metagrad", memory_budget=budget).memory_budget == budget


@pytest.mark.parametrize(
    ("budget", "message"),
    [("lots", "'lots' is not a memory size"), (0, "a number of bytes >= 1"), (2.5, "got 2.5")],
)
def test_bad_budgets_are_refused_before_training(budget: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^IIF memory_budget: .*{message}"):
        IIF(scorer="metagrad", memory_budget=budget)  # type: ignore[arg-type]
