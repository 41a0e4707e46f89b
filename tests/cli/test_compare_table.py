"""The table ``rlattr compare`` and ``rlattr sweep`` print, on hand-made trials whose
figures are known."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from rlattr.cli.sweep import comparison_table
from rlattr.sweep.report import result_path
from rlattr.sweep.spec import SweepSpec


def _trial(out: Path, arm: str, returns: list[float], rounds: list[int]) -> None:
    curve = [
        {
            "round": r,
            "timesteps": 100 * r,
            "return_mean": value,
            "return_std": 0.0,
            "episodes": 10,
            "eval_seconds": 0.1,
            "train_seconds": 2.0 * r,
            "train_cpu_seconds": 1.0 * r,
            "fraction_dropped": None if arm == "ppo" or r == 0 else 0.25,
        }
        for r, value in zip(rounds, returns, strict=True)
    ]
    payload = {"status": "done", "task": "lake", "arm": arm, "seed": 0, "rounds": rounds[-1]}
    path = result_path(out, "lake", arm, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**payload, "curve": curve}))


def _rendered(spec: SweepSpec) -> str:
    console = Console(record=True, width=400)
    console.print(comparison_table(spec, "lake"))
    return console.export_text()


def test_rounds_to_shares_of_ppos_peak_read_the_evaluated_rounds(tmp_path: Path) -> None:
    # Evaluated every 2 rounds. PPO starts at 0.2 and peaks at 1.0: 50 % is 0.6, 90 % is
    # 0.92, 99 % is 0.992. PPO reaches them at rounds 4, 6, 6; IIF at 2, 4 and never.
    rounds = [0, 2, 4, 6]
    _trial(tmp_path, "ppo", [0.2, 0.5, 0.7, 1.0], rounds)
    _trial(tmp_path, "iif", [0.2, 0.61, 0.95, 0.97], rounds)
    spec = SweepSpec(
        tasks=({"preset": "frozenlake", "name": "lake"},), seeds=(0,), out=str(tmp_path)
    )
    lines = {
        line.split("│")[1].strip(): line for line in _rendered(spec).splitlines() if "│" in line
    }
    ppo = [cell.strip() for cell in lines["ppo"].split("│")[1:-1]]
    iif = [cell.strip() for cell in lines["iif"].split("│")[1:-1]]
    assert ppo[2:5] == ["4.0", "6.0", "6.0"]
    assert iif[2:5] == ["2.0", "4.0", ">6"]
    # SE_peak: IIF never reaches PPO's peak (censored one evaluation after its last, the
    # 4th) against PPO's 3rd evaluation: 1 - 4/3, in %; PPO's own cells are dashes.
    assert iif[6] == f"{100 * (1 - 4 / 3):.1f}"
    assert ppo[5] == ppo[6] == "–"
