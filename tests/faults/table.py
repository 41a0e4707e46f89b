"""Run the fault suite and write the fault table, ``docs/faults.md``.

    python -m tests.faults.table            # from the repository root

Runs ``tests/faults`` (each case adds its row once its assertions passed), the existing
tests the table cites for the faults they already cover, and the observations of faults
the suite found (run here, not asserted by the suite; both found so far are fixed and
asserted by tests/record/test_write_failures.py and test_disk_full.py). Exits 1 if a test
failed; the table then says so.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.faults import harness
from tests.faults.harness import ROOT, WRITING, Point, preset, run_child, said, train_argv

COMMAND = "python -m tests.faults.table"
OUT = ROOT / "docs" / "faults.md"

# Faults that existing tests cover: (fault, where, what the tests assert, test file).
CITED = [
    ("two writers", "a second `train --resume` (or `attribute`) while one writes",
     "refused in one `error:` line naming the holder (pid, host, command); the first writer "
     "finishes a run that inspects and replays; the lock goes with a killed holder",
     "tests/training/test_one_writer.py"),
    ("NaN reward", "an environment that returns NaN / inf",
     "`--nonfinite error` stops before the iteration is committed (one `error:` line), "
     "`skip-iteration` discards the rollout, `warn` records it and the replay matches",
     "tests/training/test_nonfinite.py"),
    ("edited metadata", "gamma in run.json, a clip range in iteration.json, checkpoint and "
     "score JSON, a removed checksum",
     "inspect names the file; loading it is refused (checksum of the JSON content)",
     "tests/record/test_runlog_checksums.py"),
    ("read-only directory", "the run on a read-only bind mount",
     "`attribute`, `diagnose`, `formation` refuse before their work, in one line saying "
     "what to do instead; `--no-store` / `--out` elsewhere work",
     "tests/cli/test_readonly.py"),
    ("malicious run directory", "run.json naming `os.system`, a relative class, a package "
     "inside the run, a malformed space, a shadowed module",
     "refused before any import; nothing from the run directory runs",
     "tests/test_allowlist.py"),
    ("kill -9 (long run)", "40 iterations, killed before iteration 6 commits",
     "resume finishes the run; iterations 0..5 unchanged; replays match the logged states; "
     "the learning-rate schedule continues", "tests/training/test_resume.py"),
]  # fmt: skip

SECTIONS = {
    "kill": "kill -9 at every write point (tests/faults/test_kill.py)",
    "disk full": "Disk full (tests/faults/test_disk_full.py)",
    "flip": "A flipped byte in every file kind (tests/faults/test_flip.py)",
    "real": "A real full disk (observed by table.py)",
}


class Collector:
    """Outcome (passed, failed, skipped) of each test, by file."""

    def __init__(self) -> None:
        self.by_file: dict[str, Counter[str]] = {}
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or report.outcome != "passed":
            path = report.nodeid.split("::")[0]
            self.by_file.setdefault(path, Counter())[report.outcome] += 1
            if report.outcome == "failed":
                self.failed.append(report.nodeid)


def observe_queued_write_after_full_disk(folder: Path) -> dict[str, str]:
    """Found: a write that fails (full disk) while the next iteration's write is queued."""
    from rlattr import RunLog

    run_dir = folder / "run"
    preset_file = preset(folder, 1)
    point = Point("queued", WRITING, "iterations/000001/records.safetensors", "")
    failed = run_child(
        train_argv(preset_file, run_dir, 4), folder / "full", point, run_dir, "enospc-queued"
    )
    log = RunLog(run_dir)
    committed, report = log.iterations(), log.verify()
    inspected = run_child(["inspect", str(run_dir)], folder / "inspect")
    resumed = run_child(train_argv(preset_file, run_dir, 4, resume=True), folder / "resume")
    after = RunLog(run_dir)
    gaps = after.verify().gaps
    lost = (
        f"found: iteration{'s' if len(gaps) > 1 else ''} {', '.join(map(str, gaps))} lost for "
        "good (later ones committed after the failed write; resume does not write "
        "it again); not fixed yet"
        if gaps
        else "nothing"
    )
    return {
        "section": "found",
        "fault": "ENOSPC (disk full) on a slow disk",
        "where": "train: records of iteration 1, failing only once iteration 2's write is "
        "queued behind it (background writer)",
        "outcome": f"`train`: exit {failed.status}, {said(failed)}; committed: {committed}; "
        f"gaps: {report.gaps}; inspect: exit {inspected.status}; `train --resume`: exit "
        f"{resumed.status}, {_resumed_at(resumed.stdout)}; committed after: "
        f"{after.iterations()}",
        "lost": lost,
    }


def _resumed_at(stdout: str) -> str:
    """Where ``train --resume`` said it resumed (without the temporary path)."""
    words = " ".join(stdout.split())
    found = re.search(r"resuming \S+ at (iteration \d+)", words)
    return f"resumed at {found.group(1)}" if found else "did not say where it resumed"


# A real full disk: a tmpfs of 600 KiB in a private mount namespace (unshare), training
# into it until a write fails; then the tmpfs grows and the run resumes.
REAL_DISK = """
set -u
mount -t tmpfs -o size=600k tmpfs "$1"
"$2" -m rlattr.cli train "$3" --timesteps 2560 --run-dir "$1/run" --no-progress --seed 3 \
    > "$4/full.out" 2> "$4/full.err"; echo $? > "$4/full.status"
"$2" -c 'import json, sys; from rlattr import RunLog; log = RunLog(sys.argv[1]); \
print(json.dumps({"committed": log.iterations(), "gaps": log.verify().gaps}))' "$1/run" \
    > "$4/committed.json"
mount -o remount,size=64m "$1"
"$2" -m rlattr.cli train "$3" --timesteps 2560 --run-dir "$1/run" --no-progress --seed 3 \
    --resume > "$4/resume.out" 2> "$4/resume.err"; echo $? > "$4/resume.status"
"$2" -m rlattr.cli inspect "$1/run" > /dev/null 2>&1; echo $? > "$4/inspect.status"
"$2" -m rlattr.cli replay "$1/run" > /dev/null 2>&1; echo $? > "$4/replay.status"
"$2" -c 'import json, sys; from rlattr import RunLog; log = RunLog(sys.argv[1]); \
print(json.dumps({"committed": log.iterations(), "gaps": log.verify().gaps}))' "$1/run" \
    > "$4/after.json"
"""


def observe_real_full_disk(folder: Path) -> dict[str, str] | None:
    """A real ENOSPC (tmpfs); None where private mount namespaces are unavailable."""
    if shutil.which("unshare") is None:
        return None
    mount, out = folder / "mnt", folder / "out"
    mount.mkdir()
    out.mkdir()
    done = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", REAL_DISK, "sh", str(mount),
         sys.executable, str(preset(folder, 1)), str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    if done.returncode != 0 or not (out / "after.json").exists():
        return None

    def read(name: str) -> str:
        return (out / name).read_text().strip()

    failed = harness.Outcome(int(read("full.status")), read("full.out"), read("full.err"))
    before, after = json.loads(read("committed.json")), json.loads(read("after.json"))
    clean = failed.status == 2 and said(failed).startswith("one `error:`")
    found = "" if clean else " — found: not one `error:` line with the resume command"
    lost = "nothing" if not after["gaps"] else f"found: iterations {after['gaps']} lost"
    return {
        "section": "found" if (found or after["gaps"]) else "real",
        "fault": "a real full disk (tmpfs of 600 KiB, `unshare`)",
        "where": "train: whichever write fills it",
        "outcome": f"`train`: exit {failed.status}, {said(failed)}{found}; committed: "
        f"{_span(before['committed'])}, gaps: {before['gaps']}; after making room, "
        f"`train --resume`: exit {read('resume.status')}, {_resumed_at(read('resume.out'))}; "
        f"inspect: exit {read('inspect.status')}; replay: exit {read('replay.status')}; "
        f"committed: {_span(after['committed'])}",
        "lost": lost,
    }


def _span(iterations: list[int]) -> str:
    return f"{iterations[0]}..{iterations[-1]}" if iterations else "none"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict[str, str]], collector: Collector, status: int, seconds: float,
           cited_seconds: float) -> str:  # fmt: skip
    faults = collector.by_file
    suite = Counter()
    for path, counts in faults.items():
        if path.startswith("tests/faults/"):
            suite.update(counts)
    lines = [
        "# Fault table",
        "",
        "What the run directory does under each fault tried: the input, the outcome (exit "
        "status of each command) and what was lost. Generated, not written by hand:",
        "",
        "```sh",
        COMMAND,
        "```",
        "",
        f"Last run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"Python {platform.python_version()}: `tests/faults` "
        f"{', '.join(f'{n} {outcome}' for outcome, n in sorted(suite.items()))} in {seconds:.0f} s "
        f"(the cited tests: {cited_seconds:.0f} s){'' if status == 0 else '; FAILURES below'}. "
        "Each row is written by a case only after its assertions passed; the rows under "
        "*Found* are observed, not asserted. CartPole, 256 steps an iteration, every "
        "checkpoint full unless the row says sparse (so replays compare with the states "
        "training wrote). Exit statuses: 0 done, 1 a check failed (or a traceback), 2 one "
        "`error:` line, -9 killed.",
        "",
    ]
    if collector.failed:
        lines += ["**Failed:** " + ", ".join(f"`{n}`" for n in collector.failed), ""]
    found = ("found", "Found by this suite (the outcome as it is now)")
    for section, title in (*SECTIONS.items(), found):
        chosen = [row for row in rows if row["section"] == section]
        if not chosen:
            continue
        lines += [f"## {title}", "", "| fault | where | outcome | lost |", "|---|---|---|---|"]
        lines += [
            f"| {_cell(r['fault'])} | {_cell(r['where'])} | {_cell(r['outcome'])} | "
            f"{_cell(r['lost'])} |"
            for r in chosen
        ]
        lines.append("")
    lines += [
        "## Covered by existing tests",
        "",
        "Run by the same command; the suite does not repeat them.",
        "",
        "| fault | where | what the tests assert | tests | result |",
        "|---|---|---|---|---|",
    ]
    for fault, where, asserted, path in CITED:
        counts = faults.get(path, Counter())
        result = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "not run"
        lines.append(f"| {fault} | {_cell(where)} | {_cell(asserted)} | `{path}` | {result} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    os.chdir(ROOT)
    collector = Collector()
    started = time.perf_counter()
    status = pytest.main(["-q", "-p", "no:cacheprovider", "tests/faults"], plugins=[collector])
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    cited = [path for *_, path in CITED]
    cited_status = pytest.main(["-q", "-p", "no:cacheprovider", *cited], plugins=[collector])
    cited_seconds = time.perf_counter() - started
    rows = list(harness.ROWS)
    with tempfile.TemporaryDirectory() as folder:
        rows.append(observe_queued_write_after_full_disk(Path(folder)))
    with tempfile.TemporaryDirectory() as folder:
        real = observe_real_full_disk(Path(folder))
        if real is not None:
            rows.append(real)
    failed = int(status) != 0 or int(cited_status) != 0
    OUT.write_text(render(rows, collector, int(failed), seconds, cited_seconds))
    print(f"wrote {OUT.relative_to(ROOT)} ({len(rows)} rows)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
