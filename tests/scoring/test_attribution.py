"""The attribution facade, score storage, training-time scoring and the CLI commands."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlattr import (
    ActionTarget,
    AttributedPPO,
    CallableTarget,
    ReturnTarget,
    RunLog,
    ScoreHook,
    attribute,
    fidelity,
)
from rlattr.cli.main import main
from rlattr.errors import RunLogError
from rlattr.scoring.attribute import score_name

SMALL = {"n_steps": 32, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}


@pytest.fixture
def scored_run(run_dir: Path) -> tuple[Path, ScoreHook]:
    hook = ScoreHook()
    AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=run_dir, record_hooks=[hook], **SMALL).learn(
        96
    )
    return run_dir, hook


def test_training_scores_are_stored_and_match_post_hoc_scores(scored_run) -> None:
    run_dir, hook = scored_run
    log = RunLog(run_dir)
    assert log.score_names(2) == ["snapshot-return"]
    during, meta = log.load_scores(2, "snapshot-return")
    assert meta["during"] == "training"
    torch.testing.assert_close(during, hook.last_scores.double())
    after = attribute(log, 2, ReturnTarget(), "snapshot", store=False)
    torch.testing.assert_close(after, during, rtol=1e-6, atol=1e-9)
    assert log.verify().ok


def test_training_scores_reach_tensorboard(scored_run) -> None:
    run_dir, _ = scored_run
    event_dir = next((run_dir / "tb").rglob("events.out.tfevents.*")).parent
    accumulator = EventAccumulator(str(event_dir))
    accumulator.Reload()
    assert "scores/fraction_negative" in accumulator.Tags()["scalars"]
    assert "scores/spearman_vs_advantage" in accumulator.Tags()["scalars"]
    assert "diagnosis/known_fraction" in accumulator.Tags()["scalars"]
    assert "scores/normalized" in accumulator.Tags()["histograms"]


def test_attribute_stores_scores_and_verify_checks_them(scored_run) -> None:
    run_dir, _ = scored_run
    log = RunLog(run_dir)
    scores = attribute(log, 1, ReturnTarget(), "tracin")
    stored, meta = log.load_scores(1, "tracin-return")
    assert torch.equal(stored, scores) and meta["method"] == "tracin"
    path = log.iteration_dir(1) / "scores" / "tracin-return.safetensors"
    path.write_bytes(path.read_bytes()[:-3])
    assert not log.verify().ok
    with pytest.raises(RunLogError, match="no scores 'nope'"):
        log.load_scores(1, "nope")


def test_nan_scores_are_refused(scored_run) -> None:
    run_dir, _ = scored_run

    def broken(policy, context):
        return policy.evaluate_actions(
            context.records.observations, context.records.actions.long().flatten()
        )[1].mean() * float("nan")

    with pytest.raises(ValueError, match="NaN or inf"):
        attribute(run_dir, 1, CallableTarget(broken, "broken"), store=False)


def test_fidelity_report(scored_run) -> None:
    run_dir, _ = scored_run
    report = fidelity(run_dir, 1, ReturnTarget(), "snapshot", n_subsets=12, fraction=0.2, orders=2)
    assert len(report.actual) == 12 and len(report.actual_by_order) == 1
    assert -1 <= report.lds <= 1 and -1 <= report.ceiling <= 1
    assert 0 <= report.sign_agreement <= 1


def test_cli_attribute_and_fidelity(scored_run, tmp_path: Path, capsys) -> None:
    run_dir, _ = scored_run
    assert (
        main(["attribute", str(run_dir), "--iteration", "1", "--method", "tracin", "--top", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "most harmful records" in out and "stored as 'tracin-return'" in out

    records = RunLog(run_dir).load_records(0)
    action_file = tmp_path / "pairs.safetensors"
    save_file(
        {"observations": records.observations[:4], "actions": records.actions[:4, 0]}, action_file
    )
    assert (
        main(["attribute", str(run_dir), "--iteration", "1", "--target", f"action:{action_file}"])
        == 0
    )
    pairs = ActionTarget(records.observations[:4], records.actions[:4, 0])
    stored_as = f"stored as '{score_name('snapshot', pairs)}'"
    assert stored_as in capsys.readouterr().out
    from_safetensors, _ = RunLog(run_dir).load_scores(1, score_name("snapshot", pairs))
    # The same pairs through the Python API: the CLI reads the file as given.
    direct = attribute(run_dir, 1, pairs, store=False)
    assert torch.equal(from_safetensors, direct.to(from_safetensors.dtype))
    assert from_safetensors.abs().max() > 0

    def attribute_npz(name: str, rows: slice) -> tuple[str, torch.Tensor]:
        np.savez(
            tmp_path / name,
            observations=records.observations[rows].numpy(),
            actions=records.actions[rows, 0].numpy(),
        )
        argv = ["attribute", str(run_dir), "--iteration", "1", "--target"]
        assert main([*argv, f"action:{tmp_path / name}"]) == 0
        stored = re.search(r"stored as '([^']+)'", capsys.readouterr().out).group(1)
        return stored, RunLog(run_dir).load_scores(1, stored)[0]

    # The same pairs as .npz: the same target identity and the same scores, bit for bit ...
    stored, from_npz = attribute_npz("pairs.npz", slice(0, 4))
    assert stored == score_name("snapshot", pairs)
    assert torch.equal(from_npz, from_safetensors)
    # ... and other pairs do not (the file's contents reach the target).
    stored, other = attribute_npz("other.npz", slice(4, 8))
    assert stored != score_name("snapshot", pairs)
    assert not torch.allclose(other, from_safetensors)

    assert (
        main(["fidelity", str(run_dir), "--iteration", "1", "--subsets", "8", "--orders", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "snapshot" in out and "tracin" in out and "metagrad" in out
    assert main(["attribute", str(run_dir), "--iteration", "1", "--method", "metagrad"]) == 0
    assert "stored as 'metagrad-return'" in capsys.readouterr().out

    assert main(["attribute", str(run_dir), "--iteration", "1", "--target", "banana"]) == 2
    assert "unknown target" in capsys.readouterr().err
