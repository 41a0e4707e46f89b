"""Names the user chose show as text in the Markdown reports: no HTML, one row per entry."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rlattr.analysis.markup import markdown_text
from rlattr.analysis.whatif import WhatIfResult, write_whatif_report
from rlattr.sweep.report import result_path, write_report
from rlattr.sweep.spec import SweepSpec

# Markup a folder name may hold: an HTML tag with a handler, a table pipe, a code span,
# a link. (A run path holds no "/" inside one folder's name, a task name none at all.)
PLANTED = "<img src=x onerror=alert(1)>|`x`|[a](javascript:alert(2))&amp;"
# Each planted piece as it must not appear in the report's text: the tag, and the pipe,
# backtick, link bracket and entity without their escapes.
RAW = (r"<img", r"alert\(1\)>", r"(?<!\\)\|`", r"(?<!\\)`x", r"(?<!\\)\[a\]", r"\)&amp;(?!amp;)")


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row (a backslash-escaped pipe stays in its cell)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def _table(text: str) -> list[list[str]]:
    return [_cells(line) for line in text.splitlines() if line.startswith("|")]


def _unescaped(text: str) -> list[str]:
    return [raw for raw in RAW if re.search(raw, text)]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("plain_name-1.0", "plain_name-1.0"),
        ("a|b", "a\\|b"),
        ("`x`", "\\`x\\`"),
        ("<b>&", "&lt;b&gt;&amp;"),
        ("[l](u)", "\\[l\\](u)"),
        ("C:\\runs", "C:\\\\runs"),
        ("two\nlines\r\n", "two lines "),
    ],
)
def test_markdown_text(name: str, expected: str) -> None:
    assert markdown_text(name) == expected


def _whatif(iteration: int) -> WhatIfResult:
    return WhatIfResult(
        iteration=iteration, rule="drop_negative", n_records=64, n_eligible=64, n_dropped=8,
        return_logged=1.0, return_counterfactual=1.5, delta=0.5, delta_se=0.1,
        control_delta=0.1, control_delta_se=0.1, episodes=3, eval_seed=0, seconds=1.0,
    )  # fmt: skip


def test_the_whatif_report_shows_a_run_path_as_text(tmp_path: Path) -> None:
    run = tmp_path / PLANTED / "run"  # as `rlattr intervene` names a run: its path
    results = {str(run): [_whatif(0), _whatif(1)], "other": [_whatif(0)]}
    write_whatif_report(results, tmp_path / "report", title=f"What-if on {PLANTED}\nsecond")
    text = (tmp_path / "report" / "whatif.md").read_text()
    assert not _unescaped(text), text
    assert markdown_text(str(run)) in text  # the path itself, escaped
    assert text.splitlines()[0] == f"# What-if on {markdown_text(PLANTED)} second"
    rows = _table(text)
    assert [row[0] for row in rows[2:]] == ["0", "1"]  # one row per iteration
    assert {len(row) for row in rows} == {7}


def _payload(task: str, arm: str, seed: int, preset: str) -> dict:
    curve = [
        {"round": r, "return_mean": float(10 * r + seed), "fraction_dropped": None if r == 0
         else 0.1, "train_seconds": float(r), "train_cpu_seconds": float(r)}
        for r in range(3)
    ]  # fmt: skip
    return {
        "status": "done", "task": task, "arm": arm, "seed": seed, "curve": curve,
        "rounds": 2, "evaluation": {"episodes": 5}, "steps_per_round": 64,
        "preset": {"name": preset}, "git_commit": f"abc{PLANTED}",
    }  # fmt: skip


def test_the_sweep_report_shows_task_and_preset_names_as_text(tmp_path: Path) -> None:
    spec = SweepSpec(
        tasks=({"preset": "cartpole", "name": PLANTED},), arms=("ppo", "iif"), seeds=(0, 1),
        out=str(tmp_path / "results"),
    )  # fmt: skip
    for arm in spec.arms:
        for seed in spec.seeds:
            path = result_path(Path(spec.out), PLANTED, arm, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_payload(PLANTED, arm, seed, f"preset {PLANTED}")))
    text = write_report(spec)["markdown"].read_text()
    assert not _unescaped(text), text
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        f"## {markdown_text(PLANTED)} (preset {markdown_text(PLANTED)}: 2 rounds of 64 steps, "
        "5 evaluation episodes)"
    ]
    rows = _table(text)
    assert [row[0] for row in rows[2:]] == ["ppo", "iif"]  # one row per arm
    assert len({len(row) for row in rows}) == 1  # every row as wide as the header
