"""The LLM run log has the PPO run log's protections: one writer at a time (a second process
is refused, naming the holder, and writes nothing), JSON files checksummed and checked on
read (an edited file is named), and runs written before the checksums still read and
replay bit for bit (unverified)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from rlattr.errors import CorruptRunLogError, RunLogError
from rlattr.llm import LLMIIF, IIFGRPOTrainer, LLMRunLog, replay_round
from rlattr.record.io import JSON_CHECKSUM_KEY, LOCK_FILE, RunLockedError, sha256_file
from tests.llm.conftest import grpo_config

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
IIF = LLMIIF(target="batch")

HOLD = """
import sys
from rlattr.llm.runlog import LLMRunLog
log = LLMRunLog.open_for_writing(sys.argv[1])
print("holding", flush=True)
sys.stdin.read()
"""


def _trainer(model, tokenizer, task, out, **kwargs):
    return IIFGRPOTrainer(
        model=model,
        reward_funcs=task.reward,
        args=grpo_config(out),
        train_dataset=Dataset.from_dict({"prompt": task.prompts(32)}),
        processing_class=tokenizer,
        iif=IIF,
        **kwargs,
    )


@pytest.fixture(scope="module")
def recorded_run(tokenizer, task, pretrained_state, tmp_path_factory) -> Path:
    """A finished two-round GRPO+IIF run (each test works on its own copy)."""
    from rlattr.llm.toy import tiny_causal_lm

    model = tiny_causal_lm(tokenizer, seed=0)
    model.load_state_dict(pretrained_state)
    root = tmp_path_factory.mktemp("trust")
    trainer = _trainer(model, tokenizer, task, root / "out", run_dir=root / "run")
    assert trainer.runlog.is_writer
    trainer.train()
    trainer.runlog.release_writer()
    return root / "run"


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _snapshot(run: Path) -> dict[str, str]:
    """Every file of the run but the lock file, with its hash."""
    return {
        str(p.relative_to(run)): sha256_file(p)
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def _json_files(run: Path) -> list[Path]:
    return sorted(p for p in run.rglob("*.json") if p.name != LOCK_FILE)


def _edit(path: Path, change) -> None:
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def test_a_second_process_is_refused_naming_the_holder(
    recorded_run, pretrained_model, tokenizer, task, tmp_path
) -> None:
    run = _copy(recorded_run, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)],
        cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        before = _snapshot(run)
        named = f"pid {holder.pid} on host {socket.gethostname()}"
        with pytest.raises(RunLockedError, match=named):
            LLMRunLog.open_for_writing(run)
        # A trainer recording into the directory is refused before it writes anything.
        with pytest.raises(RunLockedError, match=named):
            _trainer(pretrained_model, tokenizer, task, tmp_path / "out", run_dir=run)
        log = LLMRunLog(run)  # reading takes no lock
        record = log.read_round(0)
        with pytest.raises(RunLockedError, match=named):
            log.write_final(record.parameters)
        with pytest.raises(RunLockedError, match=named):
            log.write_start(2, record.inputs, record.extras, record.parameters, _optimizer())
        assert not log.is_writer
        assert _snapshot(run) == before  # the refused writers wrote nothing
        assert not (run / "rounds" / "000002").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    # The lock went with its holder: this process may now write, and the run is sound.
    log = LLMRunLog.open_for_writing(run)
    assert log.is_writer
    log.release_writer()
    report = log.verify()
    assert report.ok and not report.leftovers and report.metadata_verified, report
    assert report.rounds == [0, 1]


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def test_edited_json_files_are_named_on_read(recorded_run, tmp_path) -> None:
    run = _copy(recorded_run, tmp_path)
    files = _json_files(run)
    assert [str(p.relative_to(run)) for p in files] == [
        "final.json", "rounds/000000/round.json", "rounds/000001/round.json", "run.json",
    ]  # fmt: skip
    assert all(JSON_CHECKSUM_KEY in json.loads(p.read_text()) for p in files)
    log = LLMRunLog(run)
    assert log.metadata_checksummed and log.meta["settings"]["learning_rate"] == 3e-3
    assert log.verify().ok
    # Re-indenting changes no content: still verified.
    round0 = run / "rounds" / "000000" / "round.json"
    round0.write_text(json.dumps(json.loads(round0.read_text())) + "\n")
    assert LLMRunLog(run).read_round(0).max_grad_norm == 1.0
    assert LLMRunLog(run).verify().ok

    # An edited setting in run.json: the run's rounds are refused, naming the file.
    _edit(run / "run.json", lambda p: p["settings"].update(learning_rate=1e-2))
    log = LLMRunLog(run)
    for read in (lambda: log.meta, lambda: log.read_round(0), lambda: log.end_parameters(1)):
        with pytest.raises(CorruptRunLogError, match=r"run\.json does not match its recorded"):
            read()
    problems = log.verify().problems
    assert len(problems) == 1 and "run.json" in problems[0]
    shutil.copy(recorded_run / "run.json", run / "run.json")

    # An edited round.json (its gradient clipping) is named when the round is read.
    _edit(round0, lambda p: p.update(max_grad_norm=2.0))
    with pytest.raises(CorruptRunLogError, match=r"000000/round\.json does not match"):
        LLMRunLog(run).read_round(0)
    assert LLMRunLog(run).read_round(1).round == 1  # the other round still reads
    problems = LLMRunLog(run).verify().problems
    assert len(problems) == 1 and "000000/round.json" in problems[0]
    # The next round's start (round 0's end state) is read through round 1's round.json.
    _edit(
        run / "rounds" / "000001" / "round.json",
        lambda p: p["micro_steps"][0].update(accumulation=3),
    )
    with pytest.raises(CorruptRunLogError, match=r"000001/round\.json does not match"):
        LLMRunLog(run).end_parameters(0)

    # A checksum removed from a run that stores them is not taken as an older run.
    _edit(run / "final.json", lambda p: p.pop(JSON_CHECKSUM_KEY))
    with pytest.raises(CorruptRunLogError, match=r"final\.json lacks its checksum"):
        LLMRunLog(run).end_parameters(1)

    # verify also recomputes the safetensors checksums the JSON files recorded.
    run2 = tmp_path / "run2"
    shutil.copytree(recorded_run, run2)
    plan = run2 / "rounds" / "000001" / "plan.safetensors"
    data = bytearray(plan.read_bytes())
    data[-1] ^= 0xFF
    plan.write_bytes(bytes(data))
    problems = LLMRunLog(run2).verify().problems
    assert problems == [f"{plan}: checksum mismatch (truncated or altered)"]


def test_a_committed_round_is_never_overwritten(recorded_run, tmp_path) -> None:
    run = _copy(recorded_run, tmp_path)
    before = _snapshot(run)
    log = LLMRunLog.open_for_writing(run)
    record = log.read_round(1)
    with pytest.raises(RunLogError, match="round 1 is already committed"):
        log.write_start(1, record.inputs, record.extras, record.parameters, _optimizer())
    with pytest.raises(RunLogError, match="round 1 is already committed"):
        log.commit_round(1, record.micro_steps, record.max_grad_norm, {})
    with pytest.raises(RunLogError, match="already holds a run"):
        LLMRunLog.create(run, {})
    log.release_writer()
    assert _snapshot(run) == before


def test_a_run_without_checksums_reads_and_replays(
    recorded_run, tokenizer, task, pretrained_state, tmp_path
) -> None:
    """A run written before the checksums: the same files without ``json_sha256`` and
    ``format_minor`` (the rest of the layout is unchanged)."""
    from rlattr.llm.toy import tiny_causal_lm

    run = _copy(recorded_run, tmp_path)
    for path in _json_files(run):
        _edit(path, lambda p: [p.pop(key, None) for key in (JSON_CHECKSUM_KEY, "format_minor")])
    log = LLMRunLog(run)
    assert not log.metadata_checksummed and log.format_minor == 0
    report = log.verify()
    assert report.ok and not report.metadata_verified and report.rounds == [0, 1], report

    model = tiny_causal_lm(tokenizer, seed=0)
    model.load_state_dict(pretrained_state)
    replayer = _trainer(model, tokenizer, task, tmp_path / "re")
    replayer.create_optimizer_and_scheduler(num_training_steps=8)
    for index in log.rounds():
        replayed = replay_round(replayer, run, index)
        expected = log.end_parameters(index)
        different = [n for n in expected if not torch.equal(replayed[n], expected[n])]
        assert not different, f"round {index}: {different}"
