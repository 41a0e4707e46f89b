"""Stage-effect study: FO and SO estimates against the data-fixed ground truth.

Reuses the recorded runs of the fidelity study (experiments/runs/<preset>-s<seed>, every
iteration recorded; trained there if missing). Stages: K equal spans. Behaviours: the
return surrogate on the run's last recorded buffer, and the action target of the fidelity
study (the final policy's own actions in 64 states). Each preset writes
experiments/results/stages/<preset>.csv (+ .json with command and versions, + a PNG bar
chart of estimate vs ground truth per stage), and the bar chart is also added to the
run's TensorBoard as an image. Cost is reported relative to one replay of the run.

    python experiments/stage_effects.py --preset cartpole [--stages 4] [--timesteps N]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, peak_rss_growth_mib, provenance
from experiments.fidelity import _action_target, _train
from rlattr import ReturnTarget
from rlattr.attribution import target_context
from rlattr.groundtruth import pearson, spearman
from rlattr.presets import Preset
from rlattr.replay import build_policy, load_iteration, replay
from rlattr.stages import parse_stages, stage_effects

OUT = RESULTS / "stages"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--timesteps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the CSV")
    args = parser.parse_args()
    if args.replot:
        with open(OUT / f"{args.preset}.csv") as handle:
            rows = [
                {
                    k: (v if k in ("preset", "behaviour", "stage") else float(v))
                    for k, v in r.items()
                }
                for r in csv.DictReader(handle)
            ]
        _plot(args.preset, rows).savefig(OUT / f"{args.preset}.png", dpi=110)
        return
    torch.set_num_threads(1)
    preset = Preset.load(args.preset)
    if args.timesteps:
        preset = preset.with_overrides(total_timesteps=args.timesteps)
    log = _train(preset, args.seed)
    recorded = log.iterations()
    iterations = [load_iteration(log, k) for k in recorded]
    final_state, _ = log.load_checkpoint(len(recorded))
    policy = build_policy(log)
    context = target_context(log, iterations[-1].records)
    spans = parse_stages(args.stages, len(recorded))

    start = time.perf_counter()
    for data in iterations:
        replay(data, policy)
    replay_seconds = time.perf_counter() - start

    rows = []
    behaviours = {
        "return": ReturnTarget(validation=iterations[-1].records),
        "action": _action_target(log),
    }
    for name, behaviour in behaviours.items():
        timings = {}
        for order, second in (("fo", False), ("so", True)):
            start = time.perf_counter()
            timings[order + "_peak_mib"] = peak_rss_growth_mib(
                lambda second=second, behaviour=behaviour: stage_effects(
                    iterations,
                    final_state,
                    policy,
                    behaviour,
                    context,
                    spans,
                    second_order=second,
                    ground_truth=False,
                )
            )
            timings[order] = time.perf_counter() - start
        start = time.perf_counter()
        truth = stage_effects(
            iterations, final_state, policy, behaviour, context, spans,
            second_order=True, ground_truth=True,
        )  # fmt: skip
        timings["all_with_truth"] = time.perf_counter() - start
        for effect in truth:
            rows.append(
                {
                    "preset": preset.name,
                    "behaviour": name,
                    "stage": str(effect.stage),
                    "fo": effect.fo,
                    "so": effect.so,
                    "fo_difference": effect.fo_difference,
                    "so_difference": effect.so_difference,
                    "ground_truth": effect.ground_truth,
                    "fo_seconds": timings["fo"],
                    "so_seconds": timings["so"],
                    "fo_peak_mib": timings["fo_peak_mib"],
                    "so_peak_mib": timings["so_peak_mib"],
                    "replay_seconds": replay_seconds,
                }
            )
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{preset.name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {}
    for name in behaviours:
        sel = [r for r in rows if r["behaviour"] == name]
        truth = np.array([r["ground_truth"] for r in sel])
        summary[name] = {
            order: {
                "pearson": pearson(np.array([r[order] for r in sel]), truth),
                "spearman": spearman(np.array([r[order] for r in sel]), truth),
            }
            for order in ("fo", "so")
        }
    (OUT / f"{preset.name}.json").write_text(
        json.dumps({**provenance(), "summary": summary}, indent=2) + "\n"
    )
    figure = _plot(preset.name, rows)
    figure.savefig(OUT / f"{preset.name}.png", dpi=110)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log.tb_dir / "stage_effects")) as writer:
        writer.add_figure("stage_effects", figure)
    print(json.dumps(summary, indent=2))


def _plot(preset: str, rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    behaviours = sorted({r["behaviour"] for r in rows})
    fig, axes = plt.subplots(1, len(behaviours), figsize=(5 * len(behaviours), 3.6), squeeze=False)
    for ax, name in zip(axes[0], behaviours, strict=True):
        sel = [r for r in rows if r["behaviour"] == name]
        x = np.arange(len(sel))
        for offset, key, label in (
            (-0.27, "fo", "FO"),
            (0.0, "so", "SO"),
            (0.27, "ground_truth", "ground truth"),
        ):
            ax.bar(x + offset, [r[key] for r in sel], width=0.27, label=label)
        ax.set_xticks(x, [r["stage"] for r in sel])
        # Estimates and truths span many orders of magnitude (SO can diverge): symlog.
        values = [abs(float(r[k])) for r in sel for k in ("fo", "so", "ground_truth")]
        ax.set_yscale("symlog", linthresh=max(1e-12, min(v for v in values if v > 0)))
        top = max(float(r[k]) for r in sel for k in ("fo", "so", "ground_truth"))
        if top > 0:
            ax.set_ylim(top=top * 10)
        ax.set_xlabel("stage (iterations)")
        ax.set_title(f"{preset}: {name}")
        ax.axhline(0, color="grey", lw=0.5)
    axes[0, 0].set_ylabel("effect on f(θ_T)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
