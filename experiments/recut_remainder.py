"""How small is the last minibatch when IIF re-cuts the kept records?

``IIF(minibatching="recut")`` cuts the kept records into minibatches of ``batch_size``; the
last one keeps the remainder. This replays a recorded PPO run's buffers at their θ_k,
applies the IIF rule (snapshot scores, return target on the same buffer) and counts the
size of that last minibatch over the run's iterations. On Hopper (512 records, batch 32)
the paper rule drops about 30 records, just under one minibatch, so the remainder is a
handful of records: the suspect behind re-cut IIF's collapse there (README, IIF).

    python experiments/recut_remainder.py experiments/runs/hopper-s0 --every 2
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, markdown_header, provenance, write_json
from rlattr import RunLog
from rlattr.record import build_policy, load_iteration, restore_checkpoint
from rlattr.scoring import ReturnTarget, snapshot_scores, target_context
from rlattr.training import IIF, keep_mask


def remainders(log: RunLog, every: int, config: IIF) -> list[dict]:
    """Per iteration: records dropped by ``config`` and the re-cut last minibatch's size."""
    policy = build_policy(log)
    rows = []
    for k in log.iterations()[::every]:
        data = load_iteration(log, k)
        restore_checkpoint(policy, data.start_tensors, data.start_meta)
        scores = snapshot_scores(
            policy,
            data.records,
            ReturnTarget(),
            data.plan.loss_config,
            target_context(log, data.records),
        )
        mask = keep_mask(scores, len(scores), config, torch.Generator(), 1)
        kept = int(mask.sum())
        remainder = kept % data.plan.batch_size
        rows.append({"iteration": k, "dropped": len(scores) - kept, "last_minibatch": remainder})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--every", type=int, default=1, help="use every N-th iteration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    log = RunLog(args.run_dir)
    batch_size = int(log.meta["algorithm"]["batch_size"])
    rows = remainders(log, args.every, IIF())
    # A remainder of 0 means every minibatch is full: no small last step.
    sizes = collections.Counter(r["last_minibatch"] for r in rows)
    name = f"recut_remainder-{args.run_dir.name}"
    meta = provenance()
    write_json(f"iif/{name}.json", {**meta, "batch_size": batch_size, "iterations": rows})
    tiny = sum(n for size, n in sizes.items() if 0 < size <= 4)
    lines = [
        *markdown_header(f"Re-cut IIF: size of the last minibatch ({args.run_dir.name})", meta),
        f"Paper rule (neg_bottom, p = 0.125) on {len(rows)} iterations of a recorded PPO run "
        f"(scores at each θ_k); batch_size {batch_size}. Dropped records per iteration: "
        f"{min(r['dropped'] for r in rows)}–{max(r['dropped'] for r in rows)}. "
        f"Last minibatch of 1–4 records in {tiny} of {len(rows)} iterations.",
        "",
        "| records in the last minibatch (0 = none) | iterations |",
        "|---|---|",
        *[f"| {size} | {count} |" for size, count in sorted(sizes.items())],
    ]
    (RESULTS / "iif" / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
