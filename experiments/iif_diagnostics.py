"""What IIF drops, read back from a recorded IIF run: is it the records with wrong
advantages (the paper's explanation), or something else?

For every filtered iteration of a run trained with ``rlattr train P --iif`` (scores and
keep masks are in its run log) this compares dropped with kept records: advantage (raw
GAE, before the minibatch normalisation), |GAE − Monte-Carlo| advantage error where the
episode ends inside the buffer, and the correlation of the snapshot score with the
advantage and with the advantage error. Reported per quarter of training.

    python experiments/iif_diagnostics.py runs/demo      # e.g. after `make demo`
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, markdown_header, provenance
from rlattr import RunLog
from rlattr.scoring import episode_ends_in_buffer, monte_carlo_advantages


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    if len(a) < 3:
        return float("nan")
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def iteration_stats(log: RunLog, k: int, gamma: float) -> dict | None:
    names = [n for n in log.score_names(k) if n.endswith("-return")]
    if not names:
        return None
    scores, _ = log.load_scores(k, names[0])
    records = log.load_records(k)
    keep = log.load_plan(k).keep_mask
    dropped = ~keep
    if not bool(dropped.any()):
        return None
    advantages = records.advantages.double()
    exact = episode_ends_in_buffer(records)
    error = (advantages - monte_carlo_advantages(records, gamma).double()).abs()
    return {
        "iteration": k,
        "fraction_negative": float((scores < 0).double().mean()),
        "fraction_dropped": float(dropped.double().mean()),
        "dropped_mean_advantage": float(advantages[dropped].mean()),
        "kept_mean_advantage": float(advantages[keep].mean()),
        "dropped_mean_abs_advantage": float(advantages[dropped].abs().mean()),
        "kept_mean_abs_advantage": float(advantages[keep].abs().mean()),
        "dropped_advantage_error": float(error[dropped & exact].mean())
        if bool((dropped & exact).any())
        else float("nan"),
        "kept_advantage_error": float(error[keep & exact].mean())
        if bool((keep & exact).any())
        else float("nan"),
        "score_advantage_corr": _corr(scores, advantages),
        "score_abs_advantage_corr": _corr(scores, advantages.abs()),
        "score_advantage_error_corr": _corr(scores[exact], error[exact]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--name", help="result name (default: the run directory's name)")
    args = parser.parse_args()
    log = RunLog(args.run)
    gamma = float(log.meta["algorithm"]["gamma"])
    rows = [s for k in log.iterations() if (s := iteration_stats(log, k, gamma)) is not None]
    if not rows:
        raise SystemExit(f"{args.run} has no filtered iterations with stored return scores")
    quarters = np.array_split(np.arange(len(rows)), 4)
    keys = [k for k in rows[0] if k != "iteration"]
    summary = []
    for q, index in enumerate(quarters):
        part = [rows[i] for i in index]
        summary.append(
            {
                "quarter": q + 1,
                "iterations": f"{part[0]['iteration']}–{part[-1]['iteration']}",
                **{key: float(np.nanmean([r[key] for r in part])) for key in keys},
            }
        )
    name = args.name or Path(args.run).name
    meta = provenance()
    out = RESULTS / "iif" / f"diagnostics-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "summary": summary, "rows": rows}, indent=2) + "\n")
    columns = [
        ("fraction_negative", "neg."),
        ("fraction_dropped", "dropped"),
        ("dropped_mean_advantage", "Â dropped"),
        ("kept_mean_advantage", "Â kept"),
        ("dropped_mean_abs_advantage", "|Â| dropped"),
        ("kept_mean_abs_advantage", "|Â| kept"),
        ("dropped_advantage_error", "err dropped"),
        ("kept_advantage_error", "err kept"),
        ("score_abs_advantage_corr", "corr(score, |Â|)"),
        ("score_advantage_error_corr", "corr(score, err)"),
    ]
    lines = [
        *markdown_header(f"What IIF dropped: {name}", meta),
        f"Run: preset `{log.meta['config'].get('preset', {}).get('name', '?')}`, seed "
        f"{log.meta.get('seed')}, trained with `rlattr train PRESET --iif --seed SEED` "
        f"(IIF config: {json.dumps(log.meta['config'].get('iif', {}), sort_keys=True)}).",
        "",
        "Means over the filtered iterations of each quarter of training. Â: raw GAE "
        "advantage; err: |GAE − Monte-Carlo advantage| for records whose episode ends "
        "inside the buffer.",
        "",
        "| quarter | iterations | " + " | ".join(c for _, c in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for s in summary:
        cells = " | ".join(f"{s[key]:.3g}" for key, _ in columns)
        lines.append(f"| {s['quarter']} | {s['iterations']} | {cells} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
