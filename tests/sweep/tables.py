"""Reading a sweep's tables back, and the metrics recomputed from a trial's JSON by their
definitions (docs/science.md): final return = the last round's evaluation return; AUC = the
mean evaluation return over every evaluated round, round 0 included; dropped = the mean of
the rounds' dropped shares."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


def trial_metrics(path: Path) -> dict[str, float]:
    payload: dict[str, Any] = json.loads(path.read_text())
    returns = [float(point["return_mean"]) for point in payload["curve"]]
    shares = [p["fraction_dropped"] for p in payload["curve"] if p["fraction_dropped"] is not None]
    return {
        "final_return": returns[-1],
        "auc": sum(returns) / len(returns),
        "fraction_dropped": sum(shares) / len(shares) if shares else 0.0,
    }


def markdown_rows(path: Path) -> dict[str, dict[str, str]]:
    """arm → {column title → cell} of the (one task's) Markdown table."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] in ("arm", "---") or len(cells) != len(header):
            continue
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def numbers(cell: str) -> list[float]:
    """The numbers of a cell: ``"21.5 ± 3.0"`` → [21.5, 3.0]."""
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", cell)]
