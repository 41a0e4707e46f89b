"""The diagnostics board: what lands in TensorBoard, at which step, and nothing unlisted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from rlattr.record.plan import UpdatePlan
from rlattr.record.records import Records
from rlattr.training.board import TAGS, Board, BoardConfig, IterationTiming
from rlattr.training.seams import IterationResult
from tests.scoring.test_diagnosis import _records
from tests.scoring.test_grads import CONFIG


def _listed(tag: str) -> bool:
    for pattern in TAGS:
        regex = re.escape(pattern).replace(r"\{q\}", r"p\d\d").replace(r"\{group\}", r"\w+")
        if re.fullmatch(regex, tag):
            return True
    return False


def _result(
    step: int, iteration: int, records: Records, keep: torch.Tensor | None, filtering: bool
) -> IterationResult:
    """What an iteration hands the board; the plan is only read by the fidelity check,
    which these boards do not run."""
    order = torch.arange(len(records))
    plan = UpdatePlan.draft(CONFIG, len(records), [[order]], [order.numpy()], 3e-4, len(records))
    return IterationResult(
        iteration=iteration,
        num_timesteps=step,
        records=records,
        plan=plan,
        start=({}, {}),
        keep_mask=keep,
        filtering=filtering,
    )


def _board_events(tmp_path: Path, details_every: int) -> EventAccumulator:
    # Two short episodes that end in the buffer and one that runs past its end.
    records = _records(
        rewards=[0, 0, 1, 0, 1, 0, 0, 2],
        starts=[1, 0, 0, 1, 0, 1, 0, 0],
        values=[0.5] * 8,
        last_done=0.0,
        states=[0, 1, 2, 0, 1, 0, 1, 2],
        actions=[0, 1, 0, 1, 0, 0, 1, 1],
    )
    records.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.1, 0.3])
    scores = torch.tensor([3.0, -4.0, 1.0, -1.0, 5.0, -6.0, 0.0, 0.2])
    keep = torch.tensor([True, False, True, True, True, False, True, True])
    timing = IterationTiming(rollout_s=1.0, scoring_s=0.1, update_s=0.5, logging_s=0.05)
    with SummaryWriter(str(tmp_path)) as writer:
        board = Board(writer, gamma=0.9, config=BoardConfig(details_every=details_every, top_k=2))
        board.write_configuration({"preset": "toy", "iif": {"rule": "neg_bottom"}}, ("m",))
        board.write_iteration(
            _result(4096, 3, records, keep, True), {"scores": scores}, timing, 2**20
        )
        board.write_iteration(
            _result(6144, 4, records, None, False), {"scores": scores}, timing, 2**21
        )
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    return events


def test_scalars_are_at_the_rollout_step_and_all_listed(tmp_path: Path) -> None:
    events = _board_events(tmp_path, details_every=2)
    tags = events.Tags()["scalars"]
    assert tags and all(_listed(tag) for tag in tags), [t for t in tags if not _listed(t)]
    steps = [event.step for event in events.Scalars("scores/p50")]
    assert steps == [4096, 6144]
    dropped = events.Scalars("filter/fraction_dropped")
    assert [(e.step, e.value) for e in dropped] == [(4096, pytest.approx(0.25))]
    # 3 negative scores (−4, −1, −6; 0 is not negative), 2 of them dropped.
    assert events.Scalars("filter/dropped_of_negative")[0].value == pytest.approx(2 / 3)
    assert events.Scalars("scores/fraction_negative")[0].value == pytest.approx(3 / 8)
    assert events.Scalars("time/run_log_mib")[1].value == pytest.approx(2.0)
    # Â has mean 0.05; squared deviations sum to 10.58 over 8 records (n − 1 = 7).
    sd = events.Scalars("diagnosis/advantage_sd")[0].value
    assert sd == pytest.approx((10.58 / 7) ** 0.5, rel=1e-6)


def test_details_every_n_iterations(tmp_path: Path) -> None:
    events = _board_events(tmp_path, details_every=2)
    # Iteration 4 is a multiple of 2, iteration 3 is not.
    [image] = events.Images("records/score_vs_advantage")
    assert image.step == 6144
    [histogram] = events.Histograms("scores/normalized")
    assert histogram.step == 6144
    [text] = [t for t in events.Tensors("records/most_harmful_and_helpful/text_summary")]
    table = text.tensor_proto.string_val[0].decode()
    # Most harmful first (score −6, env 0 step 5), most helpful first on its side (5, step 4).
    rows = [line for line in table.splitlines() if line.startswith("| harmful")]
    assert rows[0].split("|")[3].strip() == "5" and "-6" in rows[0]
    assert any(line.startswith("| helpful | 0 | 4 |") for line in table.splitlines())


def test_configuration_as_hparams_and_one_layout(tmp_path: Path) -> None:
    events = _board_events(tmp_path, details_every=0)
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins
    assert events.PluginTagToContent("custom_scalars")
    assert not events.Tags()["images"]
