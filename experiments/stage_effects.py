"""Stage-effect study: FO and SO estimates against the data-fixed ground truth.

Reuses the recorded runs of the fidelity study (experiments/runs/<preset>-s<seed>, every
iteration recorded; trained there if missing). Stages: K equal spans. Behaviours: the
return surrogate on held-out rollouts (a fresh buffer collected by the final policy,
used by no update), and the action target of the fidelity study (the final policy's own
actions in 64 states). Each preset writes
experiments/results/stages/<preset>.csv (+ .json with command and versions, + a PNG bar
chart of estimate vs ground truth per stage), and the bar chart is also added to the
run's TensorBoard as an image. Cost is reported relative to one replay of the run.

    python experiments/stage_effects.py --preset cartpole [--stages 4] [--timesteps N]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import (
    RESULTS,
    final_action_target,
    peak_rss_growth_mib,
    provenance,
    recorded_run,
)
from rlattr import ReturnTarget, RunLog
from rlattr.analysis import estimate_stage_effects, parse_stages, pearson, spearman
from rlattr.record import build_policy, load_iteration, replay, restore_checkpoint
from rlattr.scoring import target_context
from rlattr.training import Preset

OUT = RESULTS / "stages"


def _held_out_records(preset, log, final_state, final_meta, seed: int = 12_345):
    """A fresh rollout of the final policy that no update used: a scratch model starts
    from the final checkpoint, records one iteration (environment seed ``seed``), and only
    the buffer it collected before its own update is kept."""
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        model = preset.build(run_dir=run_dir, seed=seed, device="cpu")
        restore_checkpoint(model.policy, final_state, final_meta)
        model.learn(model.n_steps * model.n_envs)
        return RunLog(run_dir).load_records(0)  # read into memory: the directory may go


def _timed(fn):
    """(result, seconds, peak-memory growth in MiB) of ``fn()``."""
    out = {}
    start = time.perf_counter()
    peak = peak_rss_growth_mib(lambda: out.setdefault("result", fn()))
    return out["result"], time.perf_counter() - start, peak


def _retrain_from(preset, log, tensors, meta, iteration: int, n_later: int, seed: int):
    """Continue training for ``n_later`` iterations with *fresh* rollouts from a
    checkpoint taken before ``iteration``; the LR and clip schedules continue where the
    recorded run was (their progress comes from the step counter)."""
    model = preset.build(seed=seed, device="cpu")
    restore_checkpoint(model.policy, tensors, meta)
    per_iteration = model.n_steps * model.n_envs
    model.num_timesteps = iteration * per_iteration
    if n_later:
        model.learn(n_later * per_iteration, reset_num_timesteps=False)
    return model.policy


def _on_policy_truth(preset, log, iterations, final, spans, behaviours, context, seeds):
    """Paired on-policy effects: for seed s, f(retrain from θ_end(k)) − f(retrain from
    θ_start(k)), both retrained for the iterations after the stage with fresh rollouts
    drawn with seed s; mean and std over seeds per stage and behaviour."""
    n_total = len(iterations)
    out = {name: [] for name in behaviours}
    for stage in spans:
        n_later = n_total - stage.end
        start_tensors, start_meta = (
            iterations[stage.start].start_tensors,
            iterations[stage.start].start_meta,
        )
        if stage.end < n_total:
            end_tensors, end_meta = (
                iterations[stage.end].start_tensors,
                iterations[stage.end].start_meta,
            )
        else:
            end_tensors, end_meta = final
        effects = {name: [] for name in behaviours}
        for seed in seeds:
            values = {}
            for which, tensors, meta, at in (
                ("with", end_tensors, end_meta, stage.end),
                ("without", start_tensors, start_meta, stage.start),
            ):
                policy = _retrain_from(preset, log, tensors, meta, at, n_later, seed)
                with torch.no_grad():
                    values[which] = {
                        n: float(b.value(policy, context)) for n, b in behaviours.items()
                    }
            for name in behaviours:
                effects[name].append(values["with"][name] - values["without"][name])
            print(f"on-policy {stage} seed {seed}: {effects}", flush=True)
        for name in behaviours:
            out[name].append((float(np.mean(effects[name])), float(np.std(effects[name]))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--timesteps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument(
        "--on-policy-seeds", type=int, default=0,
        help="also the on-policy ground truth, retraining later stages with this many seeds",
    )  # fmt: skip
    parser.add_argument(
        "--horizons", type=int, nargs="+",
        help="instead: the effect of --horizon-stage on the policy h iterations after it, "
        "for each h (where FO and SO part from the truth)",
    )  # fmt: skip
    parser.add_argument("--horizon-stage", default=None, help="a:b (default: the middle tenth)")
    parser.add_argument(
        "--no-ratio-clip", action="store_true",
        help="horizon study with PPO's ratio clipping switched off in every replayed update "
        "(truth and estimates alike): is clipping what makes the map non-linear?",
    )  # fmt: skip
    parser.add_argument(
        "--from-csv", action="store_true",
        help="only recompute the summary and redraw the PNG from the committed CSV",
    )  # fmt: skip
    args = parser.parse_args()
    if args.from_csv:
        with open(OUT / f"{args.preset}.csv") as handle:
            rows = [
                {
                    k: (v if k in ("preset", "behaviour", "stage") else float(v or "nan"))
                    for k, v in r.items()
                }
                for r in csv.DictReader(handle)
            ]
        path = OUT / f"{args.preset}.json"
        payload = json.loads(path.read_text())
        payload["summary"] = _summary(rows)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        _plot(args.preset, rows).savefig(OUT / f"{args.preset}.png", dpi=110)
        return
    torch.set_num_threads(1)
    preset = Preset.load(args.preset)
    if args.timesteps:
        preset = preset.with_overrides(total_timesteps=args.timesteps)
    log = recorded_run(preset, args.seed)
    recorded = log.iterations()
    iterations = [load_iteration(log, k) for k in recorded]
    final_state, final_meta = log.load_checkpoint(len(recorded))
    policy = build_policy(log)
    context = target_context(log, iterations[-1].records)
    spans = parse_stages(args.stages, len(recorded))
    behaviours = {
        "return": ReturnTarget(validation=_held_out_records(preset, log, final_state, final_meta)),
        "action": final_action_target(log),
    }

    if args.horizons:
        _horizon_study(args, preset, log, iterations, policy, behaviours, context)
        return

    def run(**kwargs):
        return estimate_stage_effects(
            iterations, final_state, policy, behaviours, context, spans, **kwargs
        )

    _, replay_seconds, _ = _timed(lambda: [replay(data, policy) for data in iterations])
    print(f"one replay of {len(iterations)} iterations: {replay_seconds:.1f} s", flush=True)
    fo, fo_seconds, fo_peak = _timed(lambda: run(second_order=False, ground_truth=False))
    print(f"FO: {fo_seconds:.1f} s", flush=True)
    # SO reuses nothing from FO; its time is that of the FO+SO call minus the FO one.
    so, both_seconds, so_peak = _timed(lambda: run(second_order=True, ground_truth=False))
    print(f"FO+SO: {both_seconds:.1f} s", flush=True)
    truth, truth_seconds, _ = _timed(lambda: run(ground_truth=True, estimates=False))
    print(f"ground truth: {truth_seconds:.1f} s", flush=True)
    on_policy = None
    if args.on_policy_seeds:
        on_policy = _on_policy_truth(
            preset, log, iterations, (final_state, final_meta), spans, behaviours, context,
            range(args.on_policy_seeds),
        )  # fmt: skip

    rows = []
    for name in behaviours:
        for index, (f, s, t) in enumerate(zip(fo[name], so[name], truth[name], strict=True)):
            rows.append(
                {
                    "preset": preset.name,
                    "behaviour": name,
                    "stage": str(f.stage),
                    "fo": f.fo,
                    "so": s.so,
                    "fo_difference": f.fo_difference,
                    "so_difference": s.so_difference,
                    "ground_truth": t.ground_truth,
                    "on_policy_mean": on_policy[name][index][0] if on_policy else "",
                    "on_policy_std": on_policy[name][index][1] if on_policy else "",
                    "fo_growth": f.fo_growth,
                    "so_growth": s.so_growth,
                    "fo_seconds": fo_seconds,
                    "so_seconds": both_seconds - fo_seconds,
                    "ground_truth_seconds": truth_seconds,
                    "fo_peak_mib": fo_peak,
                    "so_peak_mib": so_peak,
                    "replay_seconds": replay_seconds,
                }
            )
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{preset.name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = _summary(rows)
    cost = {
        "replay_seconds": replay_seconds,
        "fo_over_replay": fo_seconds / replay_seconds,
        "so_over_replay": (both_seconds - fo_seconds) / replay_seconds,
        "ground_truth_over_replay": truth_seconds / replay_seconds,
        "fo_peak_mib": fo_peak,
        "so_peak_mib": so_peak,
        "n_stages": len(spans),
        "n_behaviours": len(behaviours),
    }
    command = "python experiments/stage_effects.py " + " ".join(sys.argv[1:])
    (OUT / f"{preset.name}.json").write_text(
        json.dumps({**provenance(), "command": command, "cost": cost, "summary": summary}, indent=2)
        + "\n"
    )
    figure = _plot(preset.name, rows)
    figure.savefig(OUT / f"{preset.name}.png", dpi=110)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log.tb_dir / "stage_effects")) as writer:
        writer.add_figure("stage_effects", figure)
    print(json.dumps({"cost": cost, "summary": summary}, indent=2))


ESTIMATES = ("fo", "fo_difference", "so", "so_difference")


def _horizon_study(args, preset, log, iterations, policy, behaviours, context) -> None:
    """Effect of one stage on f(θ_{end+h}) for growing horizons h: FO, SO and the
    data-fixed truth, so one sees after how many later iterations each estimate leaves
    the truth (behaviours are functions of θ, so they apply at any iteration)."""
    n = len(iterations)
    if args.no_ratio_clip:
        for data in iterations:
            config = dataclasses.replace(data.plan.loss_config, clip_range=1e6)
            data.plan = dataclasses.replace(data.plan, loss_config=config)
    if args.horizon_stage:
        [stage] = parse_stages(args.horizon_stage, n)
    else:
        start = n // 2
        [stage] = parse_stages(f"{start}:{start + max(1, n // 10)}", n)
    rows = []
    for h in args.horizons:
        end = stage.end + h
        if end > n:
            break
        state = iterations[end].start_tensors if end < n else log.load_checkpoint(n)[0]
        effects = estimate_stage_effects(
            iterations[:end], state, policy, behaviours, context, [stage], second_order=True
        )
        for name, [effect] in effects.items():
            row = {
                "preset": preset.name,
                "stage": str(stage),
                "horizon": h,
                "behaviour": name,
                **{key: getattr(effect, key) for key in (*ESTIMATES, "ground_truth")},
                "fo_growth": effect.fo_growth,
                "so_growth": effect.so_growth,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    stem = f"{preset.name}-horizon" + ("-noclip" if args.no_ratio_clip else "")
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    command = "python experiments/stage_effects.py " + " ".join(sys.argv[1:])
    (OUT / f"{stem}.json").write_text(
        json.dumps({**provenance(), "command": command, "stage": str(stage)}, indent=2) + "\n"
    )
    _plot_horizon(preset.name, stage, rows).savefig(OUT / f"{stem}.png", dpi=110)


def _plot_horizon(preset: str, stage, rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    behaviours = sorted({r["behaviour"] for r in rows})
    fig, axes = plt.subplots(1, len(behaviours), figsize=(5 * len(behaviours), 3.6), squeeze=False)
    for ax, name in zip(axes[0], behaviours, strict=True):
        sel = [r for r in rows if r["behaviour"] == name]
        h = [r["horizon"] for r in sel]
        for key, label in (("fo", "FO"), ("so", "SO"), ("ground_truth", "data-fixed truth")):
            ax.plot(h, [abs(float(r[key])) for r in sel], marker="o", label=label)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_yscale("log")
        ax.set_xlabel("later iterations h")
        ax.set_title(f"{preset}: stage {stage}, {name}")
    axes[0, 0].set_ylabel("|effect on f(θ_end+h)|")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _summary(rows: list[dict]) -> dict:
    """Per behaviour and reference (data-fixed truth; on-policy truth where measured):
    Pearson and Spearman across stages of each estimate, and, over the stages that have
    later steps (the last one is exact by construction for the difference estimates),
    the median of |estimate| / |truth|."""
    summary = {}
    for name in sorted({r["behaviour"] for r in rows}):
        sel = [r for r in rows if r["behaviour"] == name]
        references = {"data_fixed": "ground_truth"}
        if all(r.get("on_policy_mean") not in ("", None) for r in sel) and not np.isnan(
            float(sel[0]["on_policy_mean"])
        ):
            references["on_policy"] = "on_policy_mean"
        summary[name] = {}
        for reference, key in references.items():
            truth = np.array([float(r[key]) for r in sel])
            estimates = ESTIMATES + (("ground_truth",) if reference == "on_policy" else ())
            block = {}
            for estimate in estimates:
                values = np.array([float(r[estimate]) for r in sel])
                finite = np.isfinite(values)
                ratio = np.abs(values[:-1]) / np.maximum(np.abs(truth[:-1]), 1e-300)
                block[estimate] = {
                    "pearson": pearson(values, truth) if finite.all() else float("nan"),
                    "spearman": spearman(values, truth) if finite.all() else float("nan"),
                    "median_abs_ratio_before_last": float(np.median(ratio))
                    if np.isfinite(ratio).all()
                    else float("nan"),
                }
            summary[name][reference] = block
    return summary


def _plot(preset: str, rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    behaviours = sorted({r["behaviour"] for r in rows})
    fig, axes = plt.subplots(1, len(behaviours), figsize=(5 * len(behaviours), 3.6), squeeze=False)
    for ax, name in zip(axes[0], behaviours, strict=True):
        sel = [r for r in rows if r["behaviour"] == name]
        x = np.arange(len(sel))
        series = [("fo", "FO"), ("so", "SO"), ("ground_truth", "data-fixed truth")]
        if sel[0].get("on_policy_mean") not in ("", None) and not np.isnan(
            float(sel[0]["on_policy_mean"])
        ):
            series.append(("on_policy_mean", "on-policy truth (± std)"))
        width = 0.8 / len(series)
        for i, (key, label) in enumerate(series):
            errors = [float(r["on_policy_std"]) for r in sel] if key == "on_policy_mean" else None
            ax.bar(
                x + (i - (len(series) - 1) / 2) * width,
                [float(r[key]) for r in sel],
                width=width,
                label=label,
                yerr=errors,
            )
        ax.set_xticks(x, [r["stage"] for r in sel])
        # Estimates and truths span many orders of magnitude (SO can diverge): symlog.
        values = [abs(float(r[k])) for r in sel for k, _ in series]
        ax.set_yscale("symlog", linthresh=max(1e-12, min(v for v in values if v > 0)))
        top = max(float(r[k]) for r in sel for k, _ in series)
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
