"""A flipped byte in every kind of file a run directory holds: ``inspect`` exits 1 naming
the file, and a command that loads it (``replay``, ``attribute``) stops with one ``error:``
line naming it (exit 2), never a traceback and never a silent wrong result."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.harness import Outcome, add_row, preset, run_child, train_argv

K = 1  # the iteration whose files are flipped (run of 3 iterations)


@dataclass(frozen=True)
class Kind:
    name: str
    path: str  # relative to the run directory; SCORE is the stored score's name
    loaders: tuple[str, ...]  # the commands below that read it: each must refuse it


REPLAY, ATTRIBUTE = "replay", "attribute"
KINDS = [
    Kind("records", f"iterations/{K:06d}/records.safetensors", (REPLAY, ATTRIBUTE)),
    Kind("plan", f"iterations/{K:06d}/plan.safetensors", (REPLAY, ATTRIBUTE)),
    Kind("iteration.json", f"iterations/{K:06d}/iteration.json", (REPLAY, ATTRIBUTE)),
    Kind("checkpoint tensors", f"checkpoints/{K:06d}.safetensors", (REPLAY, ATTRIBUTE)),
    Kind("checkpoint JSON", f"checkpoints/{K:06d}.json", (REPLAY, ATTRIBUTE)),
    Kind("run.json", "run.json", (REPLAY, ATTRIBUTE)),
    Kind("scores", f"iterations/{K:06d}/scores/SCORE.safetensors", (ATTRIBUTE,)),
    Kind("scores JSON", f"iterations/{K:06d}/scores/SCORE.json", (ATTRIBUTE,)),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 3-iteration run with every checkpoint full and scores stored for iteration K."""
    folder = tmp_path_factory.mktemp("flip")
    run_dir = folder / "run"
    done = run_child(train_argv(preset(folder, 1), run_dir, 3), folder / "train")
    assert done.status == 0, done.stderr
    scored = run_child(["attribute", str(run_dir), "--iteration", str(K)], folder / "score")
    assert scored.status == 0, scored.stderr
    [score] = [p.stem for p in (run_dir / "iterations" / f"{K:06d}" / "scores").glob("*.json")]
    return run_dir, score


def flip_middle_byte(path: Path) -> int:
    """XOR the middle byte of ``path`` with 1; returns its offset."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2
    data[offset] ^= 1
    path.write_bytes(bytes(data))
    return offset


def _names(outcome: Outcome, path: Path) -> bool:
    """Whether the output names ``path`` (whitespace aside: long lines are wrapped)."""
    return str(path) in "".join((outcome.stdout + outcome.stderr).split())


def one_error_line(outcome: Outcome) -> bool:
    lines = outcome.stderr.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in outcome.stderr


def flip_case(kind: Kind, trained: tuple[Path, str], tmp_path: Path) -> dict:
    """The row of the fault table for ``kind`` (asserting what it says)."""
    source, score = trained
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    target = run_dir / kind.path.replace("SCORE", score)
    offset = flip_middle_byte(target)
    inspected = run_child(["inspect", str(run_dir)], tmp_path / "inspect")
    assert inspected.status == 1, inspected.stdout + inspected.stderr
    assert _names(inspected, target), inspected.stdout
    score_argv = ["attribute", str(run_dir), "--iteration", str(K), "--no-store"]
    loads = {
        REPLAY: run_child(["replay", str(run_dir), "--iteration", str(K)], tmp_path / "replay"),
        # --out reads the stored scores too (a column each)
        ATTRIBUTE: run_child([*score_argv, "--out", str(tmp_path / "t.csv")], tmp_path / "at"),
    }
    for command in kind.loaders:
        outcome = loads[command]
        assert outcome.status == 2, (command, outcome.stdout, outcome.stderr)
        assert one_error_line(outcome), (command, outcome.stderr)
        assert _names(outcome, target), (command, outcome.stderr)
    for command, outcome in loads.items():  # a command that does not read it is not stopped
        if command not in kind.loaders:
            assert outcome.status == 0, (command, outcome.stdout, outcome.stderr)
    return {"kind": kind, "offset": offset, "inspected": inspected, "loads": loads}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name.replace(" ", "-"))
def test_flipped_byte(kind: Kind, trained: tuple[Path, str], tmp_path: Path) -> None:
    case = flip_case(kind, trained, tmp_path)
    loads = case["loads"]
    add_row(
        "flip",
        f"one byte flipped (offset {case['offset']})",
        f"{kind.name}: `{kind.path.replace('SCORE', trained[1])}`",
        f"inspect: exit {case['inspected'].status}, names the file; "
        + "; ".join(
            f"`{command}`: exit {loads[command].status}"
            + (", one `error:` line naming the file" if command in kind.loaders else "")
            for command in (REPLAY, ATTRIBUTE)
        ),
        "the flipped file only (detected; every load refuses it)",
    )
