"""Metagradient memory under a budget (issue 16.3): peak memory and time ÷ SB3's train().

For each preset: SB3's ``PPO.train()`` is timed on its own rollouts; a run of the preset
is recorded with AttributedPPO, and on its iteration 1 one metagradient (return target)
is computed four ways:

- ``whole``: ``memory_budget=None``, the graph of every optimiser step kept (as before);
- ``default``: ``memory_budget`` left at its default (256 MiB), the segment length
  chosen from the measured step and target graphs;
- ``64MiB``: a tighter budget, to see the choice follow it;
- ``sqrtT``: segments of round(√T) steps, given by hand (the earlier benchmark's setting).

Memory, two ways: the saved-tensor peak (bytes autograd graphs hold for the backward,
``SavedTensorMeter``: what the budget bounds), measured in this process; and the growth
of the resident set (RSS) in a fresh process (``peak_rss_growth_mib``), which adds the
backward's transient buffers and the allocator's slack. Time: median over repeats, ÷ the
median train() of the same preset, measured side by side in this one process.

    python experiments/bench_metagrad_memory.py [--presets lunarlander minigrid_empty] [--repeats 3]
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.bench_common import (
    median_seconds,
    metagrad_rss_growth_mib,
    parse_args,
    recorded_iteration,
    sb3_train_seconds,
    table,
    write_markdown,
)
from experiments.common import RESULTS, markdown_header, provenance, write_json
from rlattr import Preset, ReturnTarget
from rlattr.argtypes import format_memory_size
from rlattr.scoring import DEFAULT_MEMORY_BUDGET, metagradient_scores
from rlattr.scoring.graph_memory import SavedTensorMeter

OUT = RESULTS / "metagrad_memory"
MIB = 1024**2


def bench(name: str, repeats: int) -> dict[str, Any]:
    preset = Preset.load(name)
    train_s = statistics.median(sb3_train_seconds(preset, iterations=repeats + 1)[1:])
    with recorded_iteration(preset, "bench-metagrad-memory-") as (run_dir, scoring):
        data, policy, context = scoring
        steps = data.plan.n_steps
        modes: dict[str, dict[str, Any]] = {
            "whole": {"memory_budget": None},
            "default": {},
            "64MiB": {"memory_budget": 64 * MIB},
            "sqrtT": {"segment_steps": max(1, round(math.sqrt(steps))), "memory_budget": None},
        }
        reference, rows = None, {}
        for mode, options in modes.items():

            def score(o: dict[str, Any] = options) -> Any:
                return metagradient_scores(data, policy, ReturnTarget(), context, **o)

            with SavedTensorMeter() as meter:
                result = score()
            reference = result.scores if reference is None else reference
            seconds = median_seconds(score, repeats)
            memory, segments = result.memory, result.segment_steps
            rows[mode] = r = {
                "options": options,
                "segment_steps": segments,
                "saved_peak_mib": meter.peak / MIB,
                "estimated_peak_mib": None if memory is None else memory.peak(segments) / MIB,
                "measured": None
                if memory is None
                else {
                    "step_mib": memory.step_bytes / MIB,
                    "state_mib": memory.state_bytes / MIB,
                    "target_mib": memory.target_bytes / MIB,
                },
                "rss_growth_mib": metagrad_rss_growth_mib(run_dir, options),
                "seconds": seconds,
                "over_train": seconds / train_s,
                "max_abs_diff_vs_whole_over_max": float(
                    (result.scores - reference).abs().max() / reference.abs().max()
                ),
            }
            print(
                f"{name} {mode:8s} S={r['segment_steps']} saved peak {r['saved_peak_mib']:.1f} "
                f"MiB (estimate {r['estimated_peak_mib']}), RSS +{r['rss_growth_mib']:.0f} MiB, "
                f"{seconds:.3f}s = {r['over_train']:.2f}× train",
                flush=True,
            )
    return {
        "preset": name,
        "records": len(data.records),
        "optimizer_steps": steps,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "sb3_train_s": train_s,
        "modes": rows,
    }


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    header = (
        "preset | T | mode | segment S | saved peak MiB | estimate MiB | RSS growth MiB "
        "| time (s) | **÷ train** | max |Δscore| ÷ max |score|"
    )
    modes = [
        f"{row['preset']} | {row['optimizer_steps']} | {mode} | {r['segment_steps'] or 'whole'} "
        f"| {r['saved_peak_mib']:.0f} | "
        + ("–" if r["estimated_peak_mib"] is None else f"{r['estimated_peak_mib']:.0f}")
        + f" | {r['rss_growth_mib']:.0f} | {r['seconds']:.3f} | **{r['over_train']:.2f}** "
        f"| {r['max_abs_diff_vs_whole_over_max']:.1e}"
        for row in rows
        for mode, r in row["modes"].items()
    ]
    pieces = [
        f"{row['preset']} | {row['sb3_train_s']:.3f} | {m['step_mib']:.2f} | {m['state_mib']:.3f} "
        f"| {m['target_mib']:.1f}"
        for row in rows
        for m in [row["modes"]["default"]["measured"]]
    ]
    return [
        *markdown_header("Metagradient memory under a budget (issue 16.3)", meta),
        "One metagradient (return target) of iteration 1; time = median over repeats ÷ the "
        "median SB3 `train()` of the same preset, side by side in one process. **saved "
        "peak**: the most bytes autograd graphs held at once (`SavedTensorMeter`, what the "
        "budget bounds); **estimate**: the memory model's peak for the choice (graph + stored "
        "segment starts); **RSS**: resident-set growth in a fresh process (adds the backward's "
        "transient buffers and allocator slack). Default budget "
        f"{format_memory_size(DEFAULT_MEMORY_BUDGET)}.",
        "",
        *table(header, modes),
        "",
        "Measured pieces of the memory model (default budget run):",
        "",
        *table(
            "preset | SB3 train() (s) | one step's graph MiB | one start MiB | target graph MiB",
            pieces,
        ),
    ]


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    modes = list(rows[0]["modes"])
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        xs = [j + i * width for j in range(len(modes))]
        for ax, key in zip(axes, ("saved_peak_mib", "over_train"), strict=True):
            ax.bar(xs, [row["modes"][m][key] for m in modes], width, label=row["preset"])
    axes[0].axhline(DEFAULT_MEMORY_BUDGET / MIB, color="k", ls="--", lw=1, label="default budget")
    axes[0].set_ylabel("saved-tensor peak (MiB)")
    axes[1].set_ylabel("time ÷ SB3 train()")
    for ax in axes:
        ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(modes))], modes)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args(__doc__, presets=["lunarlander", "minigrid_empty"], repeats=3)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name in args.presets:
        rows.append(bench(name, args.repeats))
        meta = provenance()  # written after every preset: a killed run keeps what it did
        payload = {"rows": rows, "default_memory_budget": DEFAULT_MEMORY_BUDGET, **meta}
        write_json("metagrad_memory/bench.json", payload)
        write_markdown(OUT / "bench.md", _markdown(rows, meta))
    _plot(rows, OUT / "bench.png")


if __name__ == "__main__":
    main()
