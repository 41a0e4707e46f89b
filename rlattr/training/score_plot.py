"""The board's score-against-advantage image, drawn with Pillow in a few milliseconds.

Every ``details_every`` iterations the board shows each record's score against its
advantage Â, coloured by |Ā − Â| where the better estimate Ā is known (grey elsewhere),
with the dropped records ringed in red. A matplotlib figure of this cost ~30 ms to redraw
and ~0.4 s to import on first use: on CartPole's 50 ms iterations that alone was over the
5 % live-cost budget. This draws the same content (points, zero line, ticks, axis labels,
a colour bar and a one-line key) straight onto a Pillow image: ~2 ms for 256 records.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlattr.record.records import Records

WIDTH, HEIGHT = 560, 400
# The plot area, in pixels: left, top, right, bottom.
AREA = (72, 34, 450, 345)
COLORBAR = (478, 34, 492, 345)
GREY, RED, AXIS = (190, 190, 190), (220, 20, 20), (60, 60, 60)
# viridis at 0, 1/8, …, 1 (matplotlib's values, rounded); linear in between.
VIRIDIS = np.array(
    [
        (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
        (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
    ],
    dtype=np.float64,
)  # fmt: skip


def viridis(values: np.ndarray) -> np.ndarray:
    """``[n, 3]`` uint8 colours of ``values`` in [0, 1] (clipped)."""
    position = np.clip(values, 0.0, 1.0) * (len(VIRIDIS) - 1)
    low = np.minimum(np.floor(position).astype(int), len(VIRIDIS) - 2)
    weight = (position - low)[:, None]
    return np.rint(VIRIDIS[low] * (1 - weight) + VIRIDIS[low + 1] * weight).astype(np.uint8)


def nice_ticks(low: float, high: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 × 10^k apart) inside [low, high]."""
    span = high - low
    if not span > 0:
        return [low]
    raw = span / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9)
    ticks = [(first + i) * step for i in range(int(span / step) + 2)]
    return [t for t in ticks if low - 1e-9 * span <= t <= high + 1e-9 * span]


def data_range(values: np.ndarray, include: float | None = None) -> tuple[float, float]:
    """Finite min and max (and ``include``) widened by 5 % on each side; ±0.5 around a
    single value."""
    finite = values[np.isfinite(values)]
    if include is not None:
        finite = np.append(finite, include)
    if finite.size == 0:
        return -1.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    if high - low <= 1e-12 * max(abs(low), abs(high), 1.0):
        return low - 0.5, high + 0.5
    margin = 0.05 * (high - low)
    return low - margin, high + margin


class ScoreAdvantagePlot:
    """Renders score against Â as an ``[H, W, 3]`` uint8 image."""

    def __init__(self) -> None:
        # Imported here, not at module level: only a board that draws pays Pillow's import.
        from PIL import Image, ImageDraw, ImageFont

        self._pil = (Image, ImageDraw)
        font_path = _dejavu()
        if font_path is not None:
            self._font = ImageFont.truetype(str(font_path), 11)
            self._small = ImageFont.truetype(str(font_path), 9)
        else:  # Pillow's own scalable font
            self._font = ImageFont.load_default(size=11)
            self._small = ImageFont.load_default(size=9)
        self.x_range = (-1.0, 1.0)
        self.y_range = (-1.0, 1.0)

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel columns and rows of data points under the last rendered axes."""
        left, top, right, bottom = AREA
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        return (
            left + (np.asarray(x) - x0) / (x1 - x0) * (right - left),
            bottom - (np.asarray(y) - y0) / (y1 - y0) * (bottom - top),
        )

    def render(
        self,
        records: Records,
        scores: torch.Tensor,
        reference: torch.Tensor,
        keep_mask: torch.Tensor | None,
    ) -> np.ndarray:
        """This iteration's records: score (y) against Â (x), coloured by |Ā − Â|."""
        image_module, draw_module = self._pil
        y = scores.detach().cpu().double().numpy().reshape(-1)
        x = records.advantages.detach().cpu().double().numpy().reshape(-1)
        error = np.abs(reference.detach().cpu().double().numpy().reshape(-1) - x)
        dropped = np.zeros(len(x), dtype=bool)
        if keep_mask is not None:
            dropped = ~keep_mask.detach().cpu().numpy().reshape(-1)
        shown = np.isfinite(x) & np.isfinite(y)
        known = shown & np.isfinite(error)
        self.x_range = data_range(x[shown])
        self.y_range = data_range(y[shown], include=0.0)  # the zero line is always shown

        image = image_module.new("RGB", (WIDTH, HEIGHT), "white")
        draw = draw_module.Draw(image)
        self._axes(draw, image_module, image)
        px, py = self.to_pixels(x, y)
        if known.any():
            low, high = float(error[known].min()), float(error[known].max())
            scale = (error[known] - low) / (high - low) if high > low else np.zeros(known.sum())
            colours = viridis(scale)
            self._colorbar(draw, low, high)
        for i in np.flatnonzero(shown & ~known):
            _dot(draw, px[i], py[i], 2.5, GREY)
        for colour, i in zip(colours if known.any() else [], np.flatnonzero(known), strict=True):
            _dot(draw, px[i], py[i], 2.5, tuple(int(c) for c in colour))
        for i in np.flatnonzero(shown & dropped):
            r = 4.5
            draw.ellipse((px[i] - r, py[i] - r, px[i] + r, py[i] + r), outline=RED, width=1)
        return np.asarray(image)

    def _axes(self, draw: Any, image_module: Any, image: Any) -> None:
        left, top, right, bottom = AREA
        font, small = self._font, self._small
        draw.text(
            (left, 8),
            "grey: Ā unknown    colour: |Ā − Â| where Ā is known    red ring: dropped",
            fill=AXIS, font=small,
        )  # fmt: skip
        _, zero = self.to_pixels(np.array([0.0]), np.array([0.0]))
        draw.line((left, float(zero[0]), right, float(zero[0])), fill=(150, 150, 150), width=1)
        for tick in nice_ticks(*self.x_range):
            column = float(self.to_pixels(np.array([tick]), np.array([0.0]))[0][0])
            draw.line((column, bottom, column, bottom + 4), fill=AXIS)
            draw.text((column, bottom + 6), _label(tick), fill=AXIS, font=font, anchor="mt")
        for tick in nice_ticks(*self.y_range):
            row = float(self.to_pixels(np.array([0.0]), np.array([tick]))[1][0])
            draw.line((left - 4, row, left, row), fill=AXIS)
            draw.text((left - 6, row), _label(tick), fill=AXIS, font=font, anchor="rm")
        draw.rectangle(AREA, outline=AXIS, width=1)
        draw.text(
            ((left + right) / 2, bottom + 24), "advantage Â (GAE)", fill=AXIS, font=font,
            anchor="mt",
        )  # fmt: skip
        label = "score (positive = helpful)"
        width = int(draw.textlength(label, font=font)) + 4
        strip = image_module.new("RGB", (width, 16), "white")
        self._pil[1].Draw(strip).text((2, 1), label, fill=AXIS, font=font)
        rotated = strip.rotate(90, expand=True)
        image.paste(rotated, (8, int((top + bottom) / 2 - width / 2)))

    def _colorbar(self, draw: Any, low: float, high: float) -> None:
        left, top, right, bottom = COLORBAR
        rows = np.arange(top, bottom + 1)
        colours = viridis((bottom - rows) / (bottom - top))
        for row, colour in zip(rows, colours, strict=True):
            draw.line((left, int(row), right, int(row)), fill=tuple(int(c) for c in colour))
        draw.rectangle(COLORBAR, outline=AXIS, width=1)
        ticks = nice_ticks(low, high, 4) if high > low else [low]
        for tick in ticks:
            row = bottom - ((tick - low) / (high - low) if high > low else 0.0) * (bottom - top)
            draw.line((right, row, right + 3, row), fill=AXIS)
            draw.text((right + 5, row), _label(tick), fill=AXIS, font=self._font, anchor="lm")
        draw.text((left - 2, top - 4), "|Ā − Â|", fill=AXIS, font=self._small, anchor="ld")


def _dot(draw: Any, x: float, y: float, r: float, colour: tuple[int, ...]) -> None:
    draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def _label(value: float) -> str:
    return f"{value:.3g}".replace("-", "−")


def _dejavu() -> Path | None:
    # matplotlib ships DejaVu Sans (it has Ā and Â); found without importing matplotlib.
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return path
    return None
