"""The board's score-against-advantage image: points land where their values say, in the
colour their advantage error says; dropped records are ringed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlattr.training.score_plot import (
    AREA,
    GREY,
    RED,
    VIRIDIS,
    ScoreAdvantagePlot,
    data_range,
    nice_ticks,
    viridis,
)
from tests.scoring.test_diagnosis import _records


def test_nice_ticks_are_round_and_inside_the_range() -> None:
    assert nice_ticks(-0.3, 10.2) == [0.0, 2.5, 5.0, 7.5, 10.0]
    assert nice_ticks(-17.0, 3.0) == [-15.0, -10.0, -5.0, 0.0]
    assert nice_ticks(0.0012, 0.0049) == pytest.approx([0.002, 0.003, 0.004])
    assert nice_ticks(1.0, 1.0) == [1.0]


def test_data_range_widens_by_five_percent_and_keeps_zero() -> None:
    assert data_range(np.array([1.0, 3.0, np.nan]), include=0.0) == pytest.approx((-0.15, 3.15))
    assert data_range(np.array([2.0, 2.0])) == (1.5, 2.5)


def test_viridis_hits_its_anchors() -> None:
    anchors = viridis(np.linspace(0.0, 1.0, len(VIRIDIS)))
    assert (anchors == VIRIDIS.astype(np.uint8)).all()


def test_points_are_drawn_where_and_how_their_values_say() -> None:
    records = _records(rewards=[0, 0, 0, 0], starts=[1, 0, 0, 0], values=[0.0] * 4, last_done=0.0)
    records.advantages = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    scores = torch.tensor([-5.0, 4.0, 1.0, -1.0])
    # Ā known for records 0 (error 0: viridis' low end) and 1 (error 2: its high end).
    reference = torch.tensor([-2.0, 2.0, float("nan"), float("nan")], dtype=torch.float64)
    keep = torch.tensor([True, True, True, False])
    plot = ScoreAdvantagePlot()
    image = plot.render(records, scores, reference, keep)
    assert image.shape == (400, 560, 3) and image.dtype == np.uint8
    columns, rows = plot.to_pixels(records.advantages.numpy(), scores.numpy())
    left, top, right, bottom = AREA
    assert (left < columns).all() and (columns < right).all()
    assert (top < rows).all() and (rows < bottom).all()
    # Higher score, higher on the image; larger Â, further right.
    assert rows[1] < rows[2] < rows[3] < rows[0] and columns[0] < columns[1] < columns[3]

    def pixel(i: int) -> tuple[int, ...]:
        return tuple(int(c) for c in image[round(rows[i]), round(columns[i])])

    assert pixel(0) == tuple(VIRIDIS[0].astype(int))
    assert pixel(1) == tuple(VIRIDIS[-1].astype(int))
    assert pixel(2) == GREY
    # Record 3 was dropped: a red ring ~4.5 px around its (grey) dot.
    assert pixel(3) == GREY
    ring = image[
        round(rows[3]) - 6 : round(rows[3]) + 7, round(columns[3]) - 6 : round(columns[3]) + 7
    ]
    assert (ring == np.array(RED, dtype=np.uint8)).all(axis=-1).sum() >= 12
    for i in (0, 1, 2):
        around = image[
            round(rows[i]) - 6 : round(rows[i]) + 7, round(columns[i]) - 6 : round(columns[i]) + 7
        ]
        assert not (around == np.array(RED, dtype=np.uint8)).all(axis=-1).any()
