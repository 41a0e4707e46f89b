"""Attribution cost, side by side with the PPO update it explains.

For each preset: SB3's ``PPO.train()`` is timed on its own rollouts (a ``PPO`` subclass
that only wraps ``train`` with a clock); a run of the same preset is recorded with
AttributedPPO, and on its iteration 1 (same buffer size, same network) we time snapshot
scoring, replay TracIn, and every per-record dot-product backend against the naive loop.

    python experiments/bench_attribution.py [--presets lunarlander minigrid_empty] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from stable_baselines3 import PPO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import (
    RESULTS,
    markdown_header,
    provenance,
    write_json,
)
from rlattr import ReturnTarget, RunLog
from rlattr.record.checkpoint import restore_checkpoint
from rlattr.record.loss import normalize_advantages
from rlattr.record.replay import build_policy, load_iteration
from rlattr.scoring.attribute import target_context
from rlattr.scoring.grads import (
    BACKENDS,
    gradient_vector,
    parameter_names,
    per_record_dots,
    policy_actions,
)
from rlattr.scoring.influence import record_loss_fn, snapshot_scores, tracin_scores
from rlattr.scoring.metagrad import metagradient_scores
from rlattr.training.presets import Preset


class TimedPPO(PPO):
    """SB3's PPO with a stopwatch around ``train()`` (nothing else changes)."""

    train_seconds: list[float]

    def train(self) -> None:
        start = time.perf_counter()
        super().train()
        self.train_seconds.append(time.perf_counter() - start)


def _sb3_train_seconds(preset: Preset, iterations: int) -> list[float]:
    model = TimedPPO(
        preset.policy,
        preset.make_env(0),
        seed=0,
        device="cpu",
        policy_kwargs=preset.resolved_policy_kwargs(),
        **preset.ppo_kwargs(),
    )
    model.train_seconds = []
    model.learn(iterations * preset.n_envs * preset.ppo.get("n_steps", 2048))
    return model.train_seconds


_CHILD = """
import sys, torch
sys.path.insert(0, {root!r})
from experiments.common import peak_rss_growth_mib
from rlattr import ReturnTarget, RunLog
from rlattr.scoring.attribute import target_context
from rlattr.scoring.metagrad import metagradient_scores
from rlattr.record.replay import build_policy, load_iteration
torch.set_num_threads(1)
log = RunLog({run!r})
data = load_iteration(log, 1)
policy = build_policy(log)
context = target_context(log, data.records)
print(peak_rss_growth_mib(lambda: metagradient_scores(
    data, policy, ReturnTarget(), context, segment_steps={segment!r}, memory_budget=None)))
"""


def _child_peak_mib(run_dir: Path, segment: int | None) -> float:
    """Peak-memory growth of one metagradient computation, in a fresh process (MiB):
    in-process numbers would read 0 whenever an earlier step had peaked higher."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    code = _CHILD.format(root=str(root), run=str(run_dir), segment=segment)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, repeats: int) -> dict:
    preset = Preset.load(name)
    train_seconds = _sb3_train_seconds(preset, iterations=repeats + 1)[1:]
    scratch = Path(tempfile.mkdtemp(prefix="bench-attr-"))
    try:
        model = preset.build(run_dir=scratch / "run", seed=0, device="cpu")
        model.learn(2 * preset.n_envs * preset.ppo.get("n_steps", 2048))
        log = RunLog(scratch / "run")
        data = load_iteration(log, 1)
        policy = build_policy(log)
        context = target_context(log, data.records)
        target = ReturnTarget()
        config = data.plan.loss_config

        def snapshot() -> None:
            restore_checkpoint(policy, data.start_tensors, data.start_meta)
            snapshot_scores(policy, data.records, target, config, context)

        snapshot_s = _timed(snapshot, repeats)
        tracin_s = _timed(lambda: tracin_scores(data, policy, target, context), repeats)
        steps_per_epoch = max(1, data.plan.n_steps // max(1, data.plan.n_epochs))
        tracin_epoch_s = _timed(
            lambda: tracin_scores(data, policy, target, context, target_every=steps_per_epoch),
            repeats,
        )

        # memory_budget=None: the whole graph (the default budget would segment the CNN).
        metagrad_s = _timed(
            lambda: metagradient_scores(data, policy, target, context, memory_budget=None), repeats
        )
        segment = max(1, round(data.plan.n_steps**0.5))
        metagrad_segmented_s = _timed(
            lambda: metagradient_scores(data, policy, target, context, segment_steps=segment),
            repeats,
        )
        metagrad_peak_mib = _child_peak_mib(scratch / "run", None)
        metagrad_segmented_peak_mib = _child_peak_mib(scratch / "run", segment)

        restore_checkpoint(policy, data.start_tensors, data.start_meta)
        names = parameter_names(policy, "policy")
        vector = gradient_vector(target.value(policy, context), policy, names)
        records = data.records
        advantages = normalize_advantages(records.advantages, config)
        indices = torch.arange(len(records))
        fn = record_loss_fn(records, indices, advantages, config)
        actions = policy_actions(records.actions, policy.action_space)
        backend_s = {
            backend: _timed(
                lambda b=backend: per_record_dots(
                    policy, records.observations, actions, fn, vector, b
                ),
                1 if backend == "naive" else repeats,
            )
            for backend in BACKENDS
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    train_s = statistics.median(train_seconds)
    row = {
        "preset": name,
        "records": len(data.records),
        "optimizer_steps": data.plan.n_steps,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "sb3_train_s": train_s,
        "snapshot_s": snapshot_s,
        "tracin_s": tracin_s,
        "snapshot_over_train": snapshot_s / train_s,
        "tracin_over_train": tracin_s / train_s,
        "tracin_target_per_epoch_s": tracin_epoch_s,
        "tracin_target_per_epoch_over_train": tracin_epoch_s / train_s,
        "metagrad_s": metagrad_s,
        "metagrad_over_train": metagrad_s / train_s,
        "metagrad_peak_rss_growth_mib": metagrad_peak_mib,
        "metagrad_segment_steps": segment,
        "metagrad_segmented_s": metagrad_segmented_s,
        "metagrad_segmented_over_train": metagrad_segmented_s / train_s,
        "metagrad_segmented_peak_rss_growth_mib": metagrad_segmented_peak_mib,
        "backend_s": backend_s,
        "backend_speedup_over_naive": {b: backend_s["naive"] / t for b, t in backend_s.items()},
    }
    print(
        f"{name:16s} N={row['records']} T={row['optimizer_steps']}: train {train_s:.3f}s | "
        f"snapshot {snapshot_s:.3f}s ({row['snapshot_over_train']:.3f}× train) | "
        f"tracin {tracin_s:.3f}s ({row['tracin_over_train']:.2f}× train; ∇f per epoch "
        f"{row['tracin_target_per_epoch_over_train']:.2f}×) | metagrad {metagrad_s:.3f}s "
        f"({row['metagrad_over_train']:.2f}× train, {metagrad_peak_mib:.0f} MiB; segments of "
        f"{segment}: {row['metagrad_segmented_over_train']:.2f}×, "
        f"{metagrad_segmented_peak_mib:.0f} MiB) | backends (s): "
        + ", ".join(f"{b} {t:.4f}" for b, t in backend_s.items()),
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["lunarlander", "minigrid_empty"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [bench(name, args.repeats) for name in args.presets]
    meta = provenance()
    write_json("bench_attribution.json", {"rows": rows, **meta})
    lines = [
        *markdown_header("Attribution cost ÷ PPO update cost (side by side, one process)", meta),
        "Times are medians over repeats; the return target on the same buffer; "
        "`params=policy`; auto backend (hooks).",
        "",
        "| preset | records | steps | SB3 train() (s) | snapshot (s) | **snapshot ÷ train** "
        "| TracIn (s) | **TracIn ÷ train** | TracIn, ∇f once per epoch ÷ train "
        "| metagrad (s) | **metagrad ÷ train** | metagrad peak MiB "
        "| segmented (√T steps) ÷ train | segmented peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['records']} | {r['optimizer_steps']} | {r['sb3_train_s']:.3f} "
            f"| {r['snapshot_s']:.4f} | **{r['snapshot_over_train']:.4f}** | {r['tracin_s']:.3f} "
            f"| **{r['tracin_over_train']:.2f}** | {r['tracin_target_per_epoch_over_train']:.2f} "
            f"| {r['metagrad_s']:.3f} | **{r['metagrad_over_train']:.2f}** "
            f"| {r['metagrad_peak_rss_growth_mib']:.0f} "
            f"| {r['metagrad_segmented_over_train']:.2f} (S={r['metagrad_segment_steps']}) "
            f"| {r['metagrad_segmented_peak_rss_growth_mib']:.0f} |"
        )
    lines += [
        "",
        "Per-record dot products ⟨∇f, ∇ℓ_i⟩ over the whole buffer, by backend "
        "(seconds; speed-up over the naive loop):",
        "",
        "| preset | " + " | ".join(BACKENDS) + " |",
        "|---|" + "---|" * len(BACKENDS),
    ]
    for r in rows:
        cells = [
            f"{r['backend_s'][b]:.4f} ({r['backend_speedup_over_naive'][b]:.0f}×)" for b in BACKENDS
        ]
        lines.append(f"| {r['preset']} | " + " | ".join(cells) + " |")
    lines += ["", "Goals: snapshot ÷ train ≤ 0.02; TracIn ÷ train ≤ 0.5; metagrad ÷ train ≤ 3."]
    (RESULTS / "bench_attribution.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
