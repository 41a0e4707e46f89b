"""Run-log size before (format 1) and after (format 2), and the cost of sparse checkpoints.

Each preset is trained once per format, same seed, on CPU: recording does not perturb
training, so both directories log the same run. The script then

- counts the bytes of each run directory by kind of file, per environment step;
- checks that every checkpoint format 2 rebuilds by replay equals format 1's full one
  (policy and optimiser tensors, ``torch.equal``), loading them in order as the analyses
  do (one replay per iteration), and times that pass;
- times reaching the farthest iteration from a full checkpoint (the last before one, from
  a freshly opened log, so with ``checkpoint_every - 1`` replays) against format 1's
  direct load of the same checkpoint;
- projects the bytes per step and that worst-case cost for other ``checkpoint_every``
  (the full checkpoints' measured bytes and the measured seconds per replay).

    python experiments/bench_runlog_size.py [--presets cartpole lunarlander]
        [--timesteps preset=N ...] [--repeats 3]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.bench_common import median_seconds, parse_args, table, write_markdown
from experiments.common import RESULTS, markdown_header, provenance, write_json
from rlattr import Preset, RunLog
from rlattr.record import writing_format

GOAL_BYTES_PER_STEP = 100
KINDS = (
    "checkpoint tensors",
    "checkpoint JSON",
    "records",
    "plan",
    "iteration JSON",
    "scores",
    "ground truth",
    "TensorBoard",
    "run.json",
)
SWEEP = (1, 8, 16, 32, 64, 128)


FILES = {
    "records.safetensors": "records",
    "plan.safetensors": "plan",
    "iteration.json": "iteration JSON",
    "ground_truth.safetensors": "ground truth",
    "run.json": "run.json",
}


def kind_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    if parts[0] == "tb":
        return "TensorBoard"
    if parts[0] == "checkpoints":
        return "checkpoint tensors" if path.suffix == ".safetensors" else "checkpoint JSON"
    return "scores" if "scores" in parts else FILES.get(path.name, "other")


def sizes_by_kind(root: Path) -> dict[str, int]:
    sizes = dict.fromkeys(KINDS, 0)
    for path in (p for p in root.rglob("*") if p.is_file()):
        kind = kind_of(path, root)
        sizes[kind] = sizes.get(kind, 0) + path.stat().st_size
    return sizes


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Policy and optimiser tensors equal (``torch.equal``)."""
    a, b = ({k: v for k, v in t.items() if k.startswith(("policy.", "optim."))} for t in (a, b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train(preset: Preset, run_dir: Path, version: int, timesteps: int, seed: int) -> float:
    with writing_format(version):
        model = preset.build(run_dir=run_dir, seed=seed, device="cpu")
    start = time.perf_counter()
    model.learn(timesteps)
    return time.perf_counter() - start


def measure(preset_name: str, timesteps: int | None, repeats: int, seed: int) -> dict[str, Any]:
    preset = Preset.load(preset_name)
    timesteps = timesteps or preset.total_timesteps
    scratch = Path(tempfile.mkdtemp(prefix="bench-runlog-"))
    try:
        dirs = {version: scratch / f"v{version}" for version in (1, 2)}
        train_seconds = {v: train(preset, d, v, timesteps, seed) for v, d in dirs.items()}
        v1, v2 = RunLog(dirs[1]), RunLog(dirs[2])
        newest = v2.checkpoints()[-1]
        steps = int(v2.checkpoint_meta(newest)["counters"]["num_timesteps"])
        assert steps == int(v1.checkpoint_meta(newest)["counters"]["num_timesteps"])
        sizes = {v: sizes_by_kind(d) for v, d in dirs.items()}
        every = v2.retention.checkpoint_every
        full = [k for k in v2.checkpoints() if v2.is_full_checkpoint(k)]

        # Every checkpoint, in order (one replay each), against format 1's full one.
        start = time.perf_counter()
        mismatched = [
            k
            for k in v2.checkpoints()
            if not _same(v2.load_checkpoint(k)[0], v1.load_checkpoint(k)[0])
        ]
        sequential = time.perf_counter() - start
        sparse = len(v2.checkpoints()) - len(full)
        per_replay = sequential / max(sparse, 1)

        # The farthest checkpoint from a full one, from a freshly opened log.
        sparse_ones = [k for k in v2.checkpoints() if k not in full]
        farthest = max(sparse_ones, key=lambda k: (k % every, k))

        def timed(log_dir: Path) -> float:
            times = []
            for _ in range(repeats):
                log = RunLog(log_dir)  # opened afresh: nothing cached
                times.append(median_seconds(lambda log=log: log.load_checkpoint(farthest), 1))
            return statistics.median(times)

        reach = {"v1_direct_s": timed(dirs[1]), "v2_rebuilt_s": timed(dirs[2])}

        checkpoint_bytes = sizes[2]["checkpoint tensors"] / len(full)
        rest = sum(sizes[2].values()) - sizes[2]["checkpoint tensors"]
        n_checkpoints = len(v2.checkpoints())
        sweep = []
        for m in SWEEP:
            n_full = len({k for k in range(n_checkpoints) if k % m == 0} | {newest})
            total = rest + n_full * checkpoint_bytes
            sweep.append(
                {
                    "checkpoint_every": m,
                    "bytes_per_step": total / steps,
                    "bytes_per_step_without_tb": (total - sizes[2]["TensorBoard"]) / steps,
                    "worst_reach_s": (m - 1) * per_replay,
                }
            )
        return {
            "preset": preset_name,
            "timesteps": steps,
            "iterations": len(v2.iterations()),
            "seed": seed,
            "checkpoint_every": every,
            "train_seconds": train_seconds,
            "bytes": {str(v): s for v, s in sizes.items()},
            "bytes_per_step": {str(v): sum(s.values()) / steps for v, s in sizes.items()},
            "bytes_per_step_without_tb": {
                str(v): (sum(s.values()) - s["TensorBoard"]) / steps for v, s in sizes.items()
            },
            "full_checkpoint_bytes": checkpoint_bytes,
            "rebuilt_checkpoints": sparse,
            "rebuilt_mismatches": mismatched,
            "sequential_rebuild_s": sequential,
            "seconds_per_replay": per_replay,
            "farthest_iteration": farthest,
            "replays_to_farthest": farthest % every,
            "reach": reach,
            "sweep": sweep,
            "same_final_state": _same(v1.load_checkpoint(newest)[0], v2.load_checkpoint(newest)[0]),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    lines = markdown_header("Run-log size: format 1 vs format 2 (issue 16.2)", meta)
    lines += [
        f"Goal: ≤ {GOAL_BYTES_PER_STEP} bytes per environment step, every iteration still "
        "replaying bit for bit. Bytes are the whole run directory (TensorBoard included) "
        "divided by the environment steps trained; each preset is trained once per format "
        "with the same seed on CPU (the two directories log the same run).",
        "",
    ]
    for r in results:
        b1, b2 = r["bytes_per_step"]["1"], r["bytes_per_step"]["2"]
        steps, reach, mismatches = r["timesteps"], r["reach"], r["rebuilt_mismatches"]
        kinds = [
            f"{kind} | {r['bytes']['1'].get(kind, 0) / steps:.2f} "
            f"| {r['bytes']['2'].get(kind, 0) / steps:.2f}"
            for kind in KINDS
            if r["bytes"]["1"].get(kind, 0) or r["bytes"]["2"].get(kind, 0)
        ]
        sweep = [
            f"{row['checkpoint_every']} | {row['bytes_per_step']:.1f} | "
            f"{row['bytes_per_step_without_tb']:.1f} | {row['worst_reach_s']:.2f}"
            for row in r["sweep"]
        ]
        lines += [
            f"## {r['preset']}: {steps} steps, {r['iterations']} iterations, seed {r['seed']}",
            "",
            f"**{b1:.0f} → {b2:.1f} bytes per step ({b1 / b2:.1f}× smaller; goal "
            f"{'met' if b2 <= GOAL_BYTES_PER_STEP else 'NOT met'})**; without TensorBoard "
            f"{r['bytes_per_step_without_tb']['1']:.0f} → "
            f"{r['bytes_per_step_without_tb']['2']:.1f}. Format 2 with "
            f"checkpoint_every = {r['checkpoint_every']}.",
            "",
            *table(
                "file kind | format 1 bytes/step | format 2 bytes/step",
                [*kinds, f"**total** | **{b1:.1f}** | **{b2:.1f}**"],
                sep="|---|---:|---:|",
            ),
            "",
            f"Exactness: {r['rebuilt_checkpoints']} checkpoints rebuilt by replay, "
            f"{'all equal' if not mismatches else f'MISMATCHED at {mismatches}'} "
            "(torch.equal, policy and optimiser tensors) to format 1's full checkpoints; "
            f"final states of the two runs equal: {r['same_final_state']}.",
            "",
            f"Cost of reaching an iteration: loading every checkpoint in order took "
            f"{r['sequential_rebuild_s']:.1f} s ({r['seconds_per_replay'] * 1000:.0f} ms per "
            f"replay). The farthest one from a full checkpoint (iteration "
            f"{r['farthest_iteration']}, {r['replays_to_farthest']} replays), from a freshly "
            f"opened log: {reach['v2_rebuilt_s']:.3f} s in format 2 vs "
            f"{reach['v1_direct_s']:.4f} s direct load in format 1 (median of repeats).",
            "",
            "Other spacings, projected from this run (full checkpoint "
            f"{r['full_checkpoint_bytes'] / 1024:.0f} KiB; worst case = (m − 1) replays):",
            "",
            *table(
                "checkpoint_every m | bytes/step | without TensorBoard | worst reach (s)",
                sweep,
                sep="|---:|---:|---:|---:|",
            ),
            "",
        ]
    return lines


def main() -> None:
    args = parse_args(
        __doc__,
        presets=["cartpole", "lunarlander"],
        timesteps=([], "preset=N overrides (default: the preset's)"),
        repeats=3,
        seed=0,
    )
    torch.set_num_threads(1)
    budgets = {name: int(n) for name, n in (item.split("=") for item in args.timesteps)}
    meta = provenance()
    results = []
    for name in args.presets:
        results.append(measure(name, budgets.get(name), args.repeats, args.seed))
        payload = {**meta, "goal_bytes_per_step": GOAL_BYTES_PER_STEP, "results": results}
        write_json("bench_runlog_size.json", payload)
        write_markdown(RESULTS / "bench_runlog_size.md", markdown(results, meta))
        print(f"{name}: {results[-1]['bytes_per_step']}", flush=True)


if __name__ == "__main__":
    main()
