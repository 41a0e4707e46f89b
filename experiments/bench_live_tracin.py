"""TracIn during training: the cost of live TracIn inside AttributedPPO's real update.

For each preset, AttributedPPO trains one iteration, collects the next rollout, and then
times ``train()`` on that same buffer from the same start state (parameters, optimiser
and RNG restored before every repeat, so every arm trains the identical update) in
several arms, interleaved (the arms' order rotates every repeat):

- ``plain``: no hook (the denominator of every ratio);
- ``live, ∇f per epoch``: ``ScoreHook(snapshot=False, live_tracin=LiveTracIn("epoch"))``;
- ``live, ∇f per epoch, subsample``: the same with ∇f on 256 buffer records;
- ``live, ∇f every step``: ``LiveTracIn(refresh=1)`` (replay TracIn's definition);
- replay TracIn of the same update, ∇f per epoch and at every step (for reference; not
  a ``train()``: the time to score the logged update afterwards).

Every arm's final parameters are checked bit-identical to ``plain``'s, and every live
arm's scores against replay TracIn with the same ∇f schedule.

    python experiments/bench_live_tracin.py [--presets lunarlander hopper] [--repeats 7]
    python experiments/bench_live_tracin.py --render   (the Markdown from the committed JSON)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.bench_common import parse_args, rollout_steps, table, write_markdown
from experiments.common import RESULTS, markdown_header, provenance, write_json
from rlattr import LiveTracIn, Preset, ReturnTarget, ScoreHook
from rlattr.record import capture_checkpoint, restore_checkpoint
from rlattr.run import build_model
from rlattr.scoring import SubsampledTarget, TargetContext, tracin_scores

SUBSAMPLE = 256
STATISTICS = ("overhead_over_plain_train", "paired_overhead_median")
LIVE_ARMS: dict[str, LiveTracIn | None] = {
    "plain": None,
    "live_epoch": LiveTracIn(refresh="epoch"),
    "live_epoch_sub": LiveTracIn(refresh="epoch", target_subsample=SUBSAMPLE),
    "live_step": LiveTracIn(refresh=1),
}
LABELS = {
    "plain": "train(), no hook",
    "live_epoch": "train() + live TracIn, ∇f per epoch",
    "live_epoch_sub": f"train() + live TracIn, ∇f per epoch on {SUBSAMPLE} records",
    "live_step": "train() + live TracIn, ∇f every step",
    "replay_epoch": "replay TracIn, ∇f per epoch (after training)",
    "replay_step": "replay TracIn, ∇f every step (after training)",
}


def bench(name: str, repeats: int, replay_repeats: int, per_step: bool) -> dict[str, Any]:
    preset = Preset.load(name)
    # Two iterations; ``start``: the state (policy, optimiser, RNG) at the start of iteration
    # 1's update. Restored, ``train()`` runs that update again on the buffer, which still
    # holds iteration 1's rollout (AttributedPPO's update does not consume it).
    captured: dict[str, Any] = {}

    def remember(context: Any) -> None:
        if context.iteration == 1:
            captured["start"] = capture_checkpoint(context.policy, with_rng=True)

    model = build_model(preset, seed=0, device="cpu")
    model.record_hooks = [remember]
    model.learn(2 * rollout_steps(preset))
    iteration, n_updates = 1, model._n_updates
    hooks = {arm: ScoreHook(snapshot=False, live_tracin=cfg) for arm, cfg in LIVE_ARMS.items()}
    times: dict[str, list[float]] = {arm: [] for arm in LABELS}
    parts: dict[str, dict[str, list[float]]] = {arm: {} for arm in LIVE_ARMS if arm != "plain"}
    final, scores, data, steps_per_epoch = {}, {}, None, 1
    # ∇f at every step costs a full target pass per optimiser step: optional for big models.
    arms = [arm for arm in LABELS if per_step or not arm.endswith("_step")]
    for repeat in range(repeats):
        order = arms[repeat % len(arms) :] + arms[: repeat % len(arms)]
        for arm in order:
            if arm.startswith("replay"):
                if data is None or repeat >= replay_repeats:
                    continue
                every = steps_per_epoch if arm == "replay_epoch" else 1
                context = TargetContext(data.records, model.gamma, model.gae_lambda)
                began = time.perf_counter()
                scores[arm] = tracin_scores(
                    data, model.workspace_policy(), ReturnTarget(), context, target_every=every
                )
                times[arm].append(time.perf_counter() - began)
                continue
            restore_checkpoint(model.policy, *captured["start"], restore_rng=True)
            model.iteration, model._n_updates = iteration, n_updates
            hook = hooks[arm]
            model.record_hooks = [hook] if LIVE_ARMS[arm] is not None else []
            began = time.perf_counter()
            model.train()
            times[arm].append(time.perf_counter() - began)
            final[arm] = {k: v.clone() for k, v in model.policy.state_dict().items()}
            if hook.last_live_scores is not None:
                scores[arm] = hook.last_live_scores
                for part, seconds in (hook.last_live_seconds or {}).items():
                    parts[arm].setdefault(part, []).append(seconds)
            if data is None:
                data = model.iteration_data(iteration)
                steps_per_epoch = int((data.plan.step_epochs == 0).sum())
        done = [f"{arm} {times[arm][-1]:.3f}s" for arm in order if len(times[arm]) > repeat]
        print(f"{name} repeat {repeat + 1}/{repeats}: " + ", ".join(done), flush=True)
    assert data is not None
    identical = {
        arm: all(torch.equal(final[arm][k], v) for k, v in final["plain"].items()) for arm in final
    }
    # Exactness in the run itself: each live arm against replay with its own ∇f schedule.
    context = TargetContext(data.records, model.gamma, model.gae_lambda)
    sub_target = SubsampledTarget(ReturnTarget(), SUBSAMPLE, 0)
    reference = {
        "live_epoch": scores["replay_epoch"],
        **({"live_step": scores["replay_step"]} if per_step else {}),
        "live_epoch_sub": tracin_scores(
            data, model.workspace_policy(), sub_target, context, target_every=steps_per_epoch
        ),
    }
    medians = {arm: statistics.median(t) for arm, t in times.items() if t}
    base, fastest = medians["plain"], min(times["plain"])
    live = [arm for arm in medians if arm.startswith("live")]
    row = {
        "preset": name,
        "records": len(data.records),
        "optimizer_steps": data.plan.n_steps,
        "steps_per_epoch": steps_per_epoch,
        "optimizer": type(model.policy.optimizer).__name__,
        "policy_parameters": sum(p.numel() for p in model.policy.parameters()),
        "seconds": times,
        "median_s": medians,
        "over_plain_train": {arm: t / base for arm, t in medians.items()},
        # Fastest repeat of each arm: less exposed to other jobs' bursts than the median.
        "min_s": {arm: min(t) for arm, t in times.items() if t},
        "overhead_of_fastest": {arm: (min(times[arm]) - fastest) / fastest for arm in live},
        "overhead_over_plain_train": {arm: (medians[arm] - base) / base for arm in live},
        "live_part_seconds": parts,
        "live_part_median_over_plain_train": {
            arm: {part: statistics.median(v) / base for part, v in by_part.items()}
            for arm, by_part in parts.items()
            if by_part
        },
        "bit_identical_to_plain": identical,
        "max_rel_diff_vs_replay": {
            arm: float((scores[arm] - ref).abs().max() / ref.abs().max())
            for arm, ref in reference.items()
        },
        "load_average_1min_after": round(os.getloadavg()[0], 2),
    }
    print(f"{name}: {json.dumps(row['overhead_over_plain_train'])}, identical {identical}")
    return row


def _paired_overheads(seconds: dict[str, list[float]]) -> dict[str, float]:
    """Median over repeats of (arm ÷ plain − 1) within each repeat: the arms of one repeat
    run minutes apart at most, so slow drifts of the machine's load cancel."""
    plain = seconds["plain"]
    return {
        arm: statistics.median(t / p - 1 for t, p in zip(times, plain, strict=False))
        for arm, times in seconds.items()
        if arm.startswith("live") and times
    }


def _verdict(overheads: list[float], goal: float) -> str:
    if all(v <= goal for v in overheads):
        return "met"
    if all(v > goal for v in overheads):
        return "NOT met"
    return "unclear (the two statistics disagree)"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any], goal: float) -> list[str]:
    def cell(r: dict[str, Any], arm: str) -> str:
        if arm not in r["median_s"]:
            return "—"
        over, paired = r["overhead_over_plain_train"][arm], r["paired_overhead_median"][arm]
        return f"{r['median_s'][arm]:.3f} s, **{over:+.2f}×** ({paired:+.2f}×)"

    def ratio(r: dict[str, Any], arm: str) -> str:
        return f"{r['over_plain_train'][arm]:.2f}" if arm in r["over_plain_train"] else "—"

    header = (
        "preset | records | steps | optimiser | plain train() (s) | live, ∇f per epoch "
        f"| live, ∇f per epoch on {SUBSAMPLE} records | live, ∇f every step "
        "| replay TracIn, ∇f per epoch ÷ plain | replay TracIn, ∇f every step ÷ plain "
        "| bit-identical | max rel. diff vs replay"
    )
    cost = [
        f"{r['preset']} | {r['records']} | {r['optimizer_steps']} | {r['optimizer']} "
        f"| {r['median_s']['plain']:.3f} | {cell(r, 'live_epoch')} | {cell(r, 'live_epoch_sub')} "
        f"| {cell(r, 'live_step')} | {ratio(r, 'replay_epoch')} | {ratio(r, 'replay_step')} "
        f"| {all(r['bit_identical_to_plain'].values())} "
        f"| {max(r['max_rel_diff_vs_replay'].values()):.1e}"
        for r in rows
    ]
    parts = [
        f"{r['preset']} | {LABELS[arm]} | {p['gradient_refresh']:.2f} | {p['finish']:.2f} "
        f"| {r['overhead_over_plain_train'][arm] - sum(p.values()):.2f} "
        f"| {r['overhead_of_fastest'][arm]:+.2f}×"
        for r in rows
        for arm, p in r["live_part_median_over_plain_train"].items()
    ]
    verdicts = [
        f"{LABELS[arm]}: "
        + "; ".join(
            f"{r['preset']} " + _verdict([r[k][arm] for k in STATISTICS], goal) for r in rows
        )
        + "."
        for arm in ("live_epoch", "live_epoch_sub")
    ]
    return [
        *markdown_header("TracIn during training: live TracIn's cost inside train()", meta),
        "Medians over interleaved repeats (arm order rotates each repeat) of AttributedPPO's "
        "`train()` on one buffer (iteration 1 of the preset, seed 0), from the same start "
        "state each time; the return target on the same buffer; `params=policy`; "
        "float32; one torch thread. Each live cell: median seconds, **overhead of the "
        "medians** (arm − plain) ÷ plain, and in brackets the median of the per-repeat "
        "paired overheads (arm ÷ plain − 1 within a repeat).",
        "",
        *table(header, cost),
        "",
        "Where live TracIn's time goes (medians ÷ plain train()): `refresh` = the ∇f "
        "recomputations; `finish` = after the update, the optimiser multipliers u_t (Adam: "
        "per coordinate and step, from the one optimiser model) and the ghost contractions; "
        "the rest of the overhead is capture inside the update (hooks, Adam's v per step).",
        "",
        *table("preset | arm | refresh | finish | rest | overhead of the fastest repeats", parts),
        "",
        f"Goal: live TracIn adds ≤ {goal:g} × train() (both statistics). " + " ".join(verdicts),
        "",
        "Load: the machine is shared (2 cores, other jobs running); the 1-minute load "
        "average after each preset: "
        + ", ".join(f"{r['preset']} {r['load_average_1min_after']}" for r in rows)
        + ". Per-repeat seconds are in the JSON.",
    ]


def write(rows: list[dict[str, Any]], meta: dict[str, Any], goal: float, rendered: bool) -> None:
    for r in rows:
        r["paired_overhead_median"] = _paired_overheads(r["seconds"])
    write_json("bench_live_tracin.json", {"rows": rows, "goal_overhead": goal, **meta})
    note = [
        "",
        "This file was re-rendered from the JSON by "
        "`python experiments/bench_live_tracin.py --render` (no new timings).",
    ]
    write_markdown(RESULTS / "bench_live_tracin.md", markdown(rows, meta, goal) + note * rendered)


def main() -> None:
    args = parse_args(
        __doc__,
        presets=["lunarlander", "hopper"],
        repeats=7,
        replay_repeats=(3, "repeats of the replay TracIn reference"),
        goal=0.3,
        no_per_step=([], "presets on which the ∇f-every-step arms (live and replay) are skipped"),
        render=(False, "only rewrite the Markdown (and derived numbers) from the committed JSON"),
    )
    if args.render:
        stored = json.loads((RESULTS / "bench_live_tracin.json").read_text())
        rows, goal = stored.pop("rows"), stored.pop("goal_overhead")
        write(rows, stored, goal, rendered=True)
        return
    torch.set_num_threads(1)
    meta = provenance()
    rows: list[dict[str, Any]] = []
    for name in args.presets:
        per_step = name not in args.no_per_step
        rows.append(bench(name, args.repeats, args.replay_repeats, per_step))
        write(rows, meta, args.goal, rendered=False)  # a killed run keeps what it did


if __name__ == "__main__":
    main()
