"""Figures (matplotlib, an optional dependency: ``pip install 'rlattr[plots]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlattr.errors import RlattrError


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (the optional extra ``plots``)."""
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise RlattrError("plots need matplotlib: pip install 'rlattr[plots]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def stage_effects_figure(effects: list[Any], title: str) -> Any:
    """Bar chart of each stage's FO / SO estimate and ground truth (where computed)."""
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(effects) + 2), 3.6))
    x = np.arange(len(effects))
    series = [("FO", [e.fo for e in effects])]
    if all(e.so is not None for e in effects):
        series.append(("SO", [e.so for e in effects]))
    if all(e.ground_truth is not None for e in effects):
        series.append(("ground truth", [e.ground_truth for e in effects]))
    width = 0.8 / len(series)
    for index, (label, values) in enumerate(series):
        ax.bar(x + (index - (len(series) - 1) / 2) * width, values, width=width, label=label)
    ax.set_xticks(x, [str(e.stage) for e in effects])
    ax.set_xlabel("stage (iterations, end exclusive)")
    ax.set_ylabel("effect on the behaviour")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: Path, tensorboard_dir: Path | None = None, tag: str = "") -> None:
    """Write ``fig`` as PNG and, if given, as an image into a TensorBoard run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    if tensorboard_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(tensorboard_dir)) as writer:
            writer.add_figure(tag or path.stem, fig)
