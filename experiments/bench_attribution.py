"""Attribution cost, side by side with the PPO update it explains.

For each preset: SB3's ``PPO.train()`` is timed on its own rollouts (a ``PPO`` subclass
that only wraps ``train`` with a clock); a run of the same preset is recorded with
AttributedPPO, and on its iteration 1 (same buffer size, same network) we time snapshot
scoring, replay TracIn, and every per-record dot-product backend against the naive loop.

    python experiments/bench_attribution.py [--presets lunarlander minigrid_empty] [--repeats 3]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

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
from rlattr.record import restore_checkpoint
from rlattr.record.loss import normalize_advantages
from rlattr.scoring import metagradient_scores, record_loss_fn, snapshot_scores, tracin_scores
from rlattr.scoring.grads import (
    BACKENDS,
    gradient_vector,
    parameter_names,
    per_record_dots,
    policy_actions,
)


def bench(name: str, repeats: int) -> dict:
    preset = Preset.load(name)
    train_s = statistics.median(sb3_train_seconds(preset, iterations=repeats + 1)[1:])
    with recorded_iteration(preset, "bench-attr-") as (run_dir, (data, policy, context)):
        target, config, records = ReturnTarget(), data.plan.loss_config, data.records

        def snapshot() -> None:
            restore_checkpoint(policy, data.start_tensors, data.start_meta)
            snapshot_scores(policy, records, target, config, context)

        def tracin(every: int = 1) -> None:
            tracin_scores(data, policy, target, context, target_every=every)

        steps_per_epoch = max(1, data.plan.n_steps // max(1, data.plan.n_epochs))
        # memory_budget=None: the whole graph (the default budget would segment the CNN).
        segment = max(1, round(data.plan.n_steps**0.5))
        whole, segmented = {"memory_budget": None}, {"segment_steps": segment}
        s = {
            "snapshot": median_seconds(snapshot, repeats),
            "tracin": median_seconds(tracin, repeats),
            "tracin_target_per_epoch": median_seconds(lambda: tracin(steps_per_epoch), repeats),
            "metagrad": median_seconds(
                lambda: metagradient_scores(data, policy, target, context, **whole), repeats
            ),
            "metagrad_segmented": median_seconds(
                lambda: metagradient_scores(data, policy, target, context, **segmented), repeats
            ),
        }
        peaks = [
            metagrad_rss_growth_mib(run_dir, {"segment_steps": steps, "memory_budget": None})
            for steps in (None, segment)
        ]
        restore_checkpoint(policy, data.start_tensors, data.start_meta)
        names = parameter_names(policy, "policy")
        vector = gradient_vector(target.value(policy, context), policy, names)
        advantages = normalize_advantages(records.advantages, config)
        fn = record_loss_fn(records, torch.arange(len(records)), advantages, config)
        actions = policy_actions(records.actions, policy.action_space)
        backend_s = {
            backend: median_seconds(
                lambda b=backend: per_record_dots(
                    policy, records.observations, actions, fn, vector, b
                ),
                1 if backend == "naive" else repeats,
            )
            for backend in BACKENDS
        }
    row = {
        "preset": name,
        "records": len(records),
        "optimizer_steps": data.plan.n_steps,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "sb3_train_s": train_s,
        **{f"{k}_s": v for k, v in s.items()},
        **{f"{k}_over_train": v / train_s for k, v in s.items()},
        "metagrad_peak_rss_growth_mib": peaks[0],
        "metagrad_segment_steps": segment,
        "metagrad_segmented_peak_rss_growth_mib": peaks[1],
        "backend_s": backend_s,
        "backend_speedup_over_naive": {b: backend_s["naive"] / t for b, t in backend_s.items()},
    }
    print(
        f"{name}: train {train_s:.3f}s | "
        + ", ".join(f"{k} {v:.3f}s ({v / train_s:.2f}× train)" for k, v in s.items())
        + f" | metagrad peak {peaks[0]:.0f} MiB, segmented {peaks[1]:.0f} MiB | backends: "
        + ", ".join(f"{b} {t:.4f}s" for b, t in backend_s.items()),
        flush=True,
    )
    return row


def main() -> None:
    args = parse_args(__doc__, presets=["lunarlander", "minigrid_empty"], repeats=3)
    torch.set_num_threads(1)
    rows = [bench(name, args.repeats) for name in args.presets]
    meta = provenance()
    write_json("bench_attribution.json", {"rows": rows, **meta})
    header = (
        "preset | records | steps | SB3 train() (s) | snapshot (s) | **snapshot ÷ train** "
        "| TracIn (s) | **TracIn ÷ train** | TracIn, ∇f once per epoch ÷ train | metagrad (s) "
        "| **metagrad ÷ train** | metagrad peak MiB | segmented (√T steps) ÷ train "
        "| segmented peak MiB"
    )
    cost = [
        f"{r['preset']} | {r['records']} | {r['optimizer_steps']} | {r['sb3_train_s']:.3f} "
        f"| {r['snapshot_s']:.4f} | **{r['snapshot_over_train']:.4f}** | {r['tracin_s']:.3f} "
        f"| **{r['tracin_over_train']:.2f}** | {r['tracin_target_per_epoch_over_train']:.2f} "
        f"| {r['metagrad_s']:.3f} | **{r['metagrad_over_train']:.2f}** "
        f"| {r['metagrad_peak_rss_growth_mib']:.0f} "
        f"| {r['metagrad_segmented_over_train']:.2f} (S={r['metagrad_segment_steps']}) "
        f"| {r['metagrad_segmented_peak_rss_growth_mib']:.0f}"
        for r in rows
    ]
    backends = [
        f"{r['preset']} | "
        + " | ".join(
            f"{r['backend_s'][b]:.4f} ({r['backend_speedup_over_naive'][b]:.0f}×)" for b in BACKENDS
        )
        for r in rows
    ]
    title = "Attribution cost ÷ PPO update cost (side by side, one process)"
    write_markdown(
        RESULTS / "bench_attribution.md",
        [
            *markdown_header(title, meta),
            "Times are medians over repeats; the return target on the same buffer; "
            "`params=policy`; auto backend (hooks).",
            "",
            *table(header, cost),
            "",
            "Per-record dot products ⟨∇f, ∇ℓ_i⟩ over the whole buffer, by backend "
            "(seconds; speed-up over the naive loop):",
            "",
            *table(" | ".join(["preset", *BACKENDS]), backends),
            "",
            "Goals: snapshot ÷ train ≤ 0.02; TracIn ÷ train ≤ 0.5; metagrad ÷ train ≤ 3.",
        ],
    )


if __name__ == "__main__":
    main()
