"""The rlattr command line: train a preset, inspect the run, replay it, TensorBoard output."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlattr import RunLog
from rlattr.cli.main import main


@pytest.mark.sparse_checkpoints  # replay's chain to the next full checkpoint is checked too
def test_train_inspect_replay(run_dir: Path, capsys) -> None:
    assert (
        main(
            ["train", "cartpole", "--timesteps", "1024", "--run-dir", str(run_dir), "--no-progress"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "4 iterations recorded" in out and "tensorboard --logdir" in out
    assert main(["inspect", str(run_dir)]) == 0
    assert "all checksums match" in capsys.readouterr().out
    assert main(["replay", str(run_dir), "--iteration", "1", "--iteration", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("bit-identical") == 2
    # θ_2 and θ_3 are sparse (rebuilt by replay): each check runs on to θ_4, stored in full.
    assert out.count("to the logged θ_4 (replayed on through iteration 3)") == 2
    # A rebuilt checkpoint cached back to disk is full, yet still not what training wrote.
    RunLog(run_dir, cache_checkpoints=True).load_checkpoint(2)
    assert main(["replay", str(run_dir), "--iteration", "1"]) == 0
    assert "to the logged θ_4 (replayed on through iteration 3)" in capsys.readouterr().out

    # TensorBoard: SB3's scalars and rlattr's own, in ordinary event files.
    event_dirs = {p.parent for p in (run_dir / "tb").rglob("events.out.tfevents.*")}
    assert len(event_dirs) == 1
    accumulator = EventAccumulator(str(event_dirs.pop()))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    for tag in (
        "train/value_loss",
        "train/approx_kl",
        "time/run_log_mib",
        "time/rollout_s",
        "time/scoring_s",
        "time/update_s",
    ):
        assert tag in tags, tag
    # Each iteration at the num_timesteps of its own rollout, the last one included.
    steps = [event.step for event in accumulator.Scalars("time/update_s")]
    assert steps == [256, 512, 768, 1024]
    # The learning rate each update used: the run log's plan, and the preset's schedule
    # lin_0.001 at the progress left after iteration k's rollout, 1 − 256 (k + 1) / 1024.
    # SB3 writes its train/ values when it next dumps, after the following rollout: at
    # step 256 (k + 2), and never for the last iteration.
    log = RunLog(run_dir)
    rates = {event.step: event.value for event in accumulator.Scalars("train/learning_rate")}
    assert sorted(rates) == [512, 768, 1024]
    for k in log.iterations():
        planned = float(log.load_plan(k).learning_rates[0])
        assert planned == pytest.approx(0.001 * (1 - 256 * (k + 1) / 1024), abs=1e-12)
        if k < 3:
            assert rates[256 * (k + 2)] == pytest.approx(planned, rel=1e-6)  # float32 event


def test_resume_of_a_finished_run_is_a_no_op(run_dir: Path, capsys) -> None:
    args = ["train", "cartpole", "--timesteps", "512", "--run-dir", str(run_dir), "--no-progress"]
    assert main(args) == 0
    assert main([*args, "--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_resume_with_another_preset_is_refused(run_dir: Path, capsys) -> None:
    assert (
        main(
            ["train", "cartpole", "--timesteps", "256", "--run-dir", str(run_dir), "--no-progress"]
        )
        == 0
    )
    assert main(["train", "acrobot", "--run-dir", str(run_dir), "--resume", "--no-progress"]) == 2
    assert "different preset" in capsys.readouterr().err


def test_errors_are_reported_not_raised(tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(tmp_path)]) == 2
    assert "not an rlattr run directory" in capsys.readouterr().err


def test_train_with_iif(run_dir: Path, capsys) -> None:
    from rlattr import RunLog

    args = ["train", "cartpole", "--timesteps", "512", "--run-dir", str(run_dir), "--no-progress"]
    iif = ["--iif", "--iif-rule", "bottom", "--iif-fraction", "0.25"]
    assert main([*args, *iif, "--iif-minibatching", "recut"]) == 0
    assert "IIF on: rule bottom, fraction 0.25, minibatches recut" in capsys.readouterr().out
    log = RunLog(run_dir)
    assert log.meta["config"]["iif"]["rule"] == "bottom"
    assert log.meta["config"]["iif"]["minibatching"] == "recut"
    assert [int(log.load_plan(k).keep_mask.sum()) for k in log.iterations()] == [192, 192]
    assert log.score_names(1) == ["snapshot-return"]
    # The board's filter scalars, recomputed from the run log: the share dropped (64 of
    # 256: bottom 0.25) and the share of negative stored scores, at each rollout's step.
    [events_dir] = {p.parent for p in (run_dir / "tb").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(events_dir))
    events.Reload()
    dropped = {e.step: e.value for e in events.Scalars("filter/fraction_dropped")}
    negative = {e.step: e.value for e in events.Scalars("scores/fraction_negative")}
    assert sorted(dropped) == sorted(negative) == [256, 512]
    for k in log.iterations():
        keep = log.load_plan(k).keep_mask
        scores = log.load_scores(k, "snapshot-return")[0]
        assert dropped[256 * (k + 1)] == pytest.approx(1 - int(keep.sum()) / 256, abs=1e-7)
        assert dropped[256 * (k + 1)] == pytest.approx(0.25, abs=1e-7)
        share = int((scores < 0).sum()) / 256
        assert negative[256 * (k + 1)] == pytest.approx(share, abs=1e-7)
    # Resuming must keep filtering on.
    assert main([*args, "--timesteps", "1024", "--resume"]) == 2
    assert "trained with --iif" in capsys.readouterr().err


def test_stages_command(run_dir: Path, capsys) -> None:
    assert (
        main(
            ["train", "cartpole", "--timesteps", "768", "--run-dir", str(run_dir), "--no-progress"]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["stages", str(run_dir), "--stages", "0:1,1:3", "--ground-truth"]) == 0
    out = capsys.readouterr().out
    assert "0:1" in out and "1:3" in out and "ground truth" in out
    assert (run_dir / "reports" / "stage_effects.png").stat().st_size > 1000
    images = EventAccumulator(str(run_dir / "tb" / "reports"))
    images.Reload()
    assert "stage_effects" in images.Tags()["images"]
    # From "stage 1:3" to its records: the shares and the remainder add up to its FO effect.
    assert main(["stages", str(run_dir), "--records", "1:3", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "record shares" in out and "records that lowered it most" in out
    from rlattr.analysis.stages import stage_effects, stage_record_scores

    # fp32 run: the two code paths sum in different orders, hence 1e-6 (fp64 exactness of
    # the split is tested in test_stages). Stage 0:2 starts from a fresh Adam and the
    # preset has no weight decay, so the shares alone must carry the whole estimate.
    split = stage_record_scores(run_dir, "0:2")
    [effect] = stage_effects(run_dir, "0:2", second_order=False)
    assert split.estimate == pytest.approx(effect.fo, rel=1e-6)
    shares = sum(float(v.sum()) for v in split.scores.values())
    assert shares == pytest.approx(effect.fo, rel=1e-5)
    assert sorted(split.scores) == [0, 1]
