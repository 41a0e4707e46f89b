"""Are the bottom-scored records the ones with a planted advantage error? (issue 12)

``rlattr/DelayedCredit-v0`` plants the error: with one-step GAE (λ = 0) the decision step
loses the delayed reward's credit and the payoff step gains it; ``info["rlattr_fault"]``
flags exactly those steps (``rlattr_cause``: the decision, ``rlattr_payoff``: the payoff
step), and AttributedPPO records the flags per record. Each iteration the records are
scored on the return target (snapshot scores, ``ScoreHook``). For each flag kind we take
the k most harmful (lowest-scored) and the k most helpful (highest-scored) records, k = the
number of records of that kind, and measure precision@k = the share of them that carry the
flag, against the base rate (flagged / N); lift = precision@k ÷ base rate. Goal (issue 12):
precision@k of the most harmful records ≥ 2 × the base rate.

The kinds carry errors of opposite sign, so they need not sit at the same end of the
ranking: the decision's Â is too small when it invested (its delayed reward is missing), the
payoff step's Â is too large when the reward is paid (it gets a reward its action did not
cause). The decisions are also split by the action taken (invest / cash in), the payoff
steps by whether the reward was paid. Control: the same enrichment when the records are
ranked by Â alone instead of by score.

    python experiments/planted_advantage_error.py [--seeds 3] [--iterations 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rlattr.envs  # noqa: F401  (registers rlattr/DelayedCredit-v0)

from experiments.common import RESULTS, markdown_header, provenance, write_json
from rlattr import AttributedPPO, IterationResults, ScoreHook

ENV = "rlattr.envs:rlattr/DelayedCredit-v0"
#: The flag kinds whose enrichment is measured, in table order.
KINDS = (
    "fault", "cause", "payoff", "cause_invest", "cause_cash_in", "payoff_paid", "payoff_unpaid"
)  # fmt: skip
ENDS = ("bottom", "top")
PARTIAL = RESULTS / "planted_advantage_error"


def flag_kinds(ground_truth: dict[str, torch.Tensor], records: object) -> dict[str, torch.Tensor]:
    """``[N]`` bool masks of every kind in ``KINDS`` for one iteration's buffer."""
    cause = ground_truth["rlattr_cause"].cpu().bool()
    payoff = ground_truth["rlattr_payoff"].cpu().bool()
    invest = records.actions.reshape(-1).cpu() == 1  # DelayedCredit's INVEST
    paid = records.rewards.reshape(-1).cpu() > 0
    return {
        "fault": ground_truth["rlattr_fault"].cpu().bool(),
        "cause": cause,
        "payoff": payoff,
        "cause_invest": cause & invest,
        "cause_cash_in": cause & ~invest,
        "payoff_paid": payoff & paid,
        "payoff_unpaid": payoff & ~paid,
    }


def enrichment(scores: torch.Tensor, flagged: torch.Tensor) -> dict[str, float] | None:
    """precision@k and lift of the k lowest- and k highest-scored records, k = flagged
    count; plus the flagged records' mean score percentile (0 = most harmful). None when
    nothing is flagged."""
    k = int(flagged.sum())
    if k == 0:
        return None
    order = torch.argsort(scores, stable=True)
    base = k / len(flagged)
    ranks = torch.empty(len(scores), dtype=torch.float64)
    ranks[order] = torch.arange(len(scores), dtype=torch.float64) / max(len(scores) - 1, 1)
    out = {"k": k, "base_rate": base, "mean_percentile": float(ranks[flagged].mean())}
    for end, picked in (("bottom", order[:k]), ("top", order.flip(0)[:k])):
        precision = float(flagged[picked].double().mean())
        out[f"precision_{end}"] = precision
        out[f"lift_{end}"] = precision / base
    return out


def run(seed: int, iterations: int) -> list[dict[str, object]]:
    """Per iteration and flag kind: the enrichment of the score ranking, and (the control)
    of ranking by the advantage Â alone (``<kind>_by_advantage``)."""
    hook = ScoreHook()
    model = AttributedPPO(
        "MlpPolicy", ENV, seed=seed, device="cpu", n_steps=256, batch_size=64, n_epochs=4,
        gae_lambda=0.0, record_hooks=[hook],
    )  # fmt: skip
    rows = []
    results = IterationResults(keep=1)
    for k in range(iterations):
        model.learn(256, reset_num_timesteps=k == 0, callback=results)
        result = results.last
        scores = result.scores["snapshot-return"].scores.detach().cpu().double()
        advantages = result.records.advantages.detach().cpu().double()
        kinds = flag_kinds(result.ground_truth, result.records)
        row: dict[str, object] = {"iteration": k}
        for name, mask in kinds.items():
            row[name] = enrichment(scores, mask)
            row[f"{name}_by_advantage"] = enrichment(advantages, mask)
        if row["fault"] is not None:
            rows.append(row)
    return rows


def _values(per_seed: dict[int, list[dict]], kind: str, key: str) -> list[float]:
    return [r[kind][key] for rows in per_seed.values() for r in rows if r[kind] is not None]


def _cell(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    return f"{statistics.mean(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    PARTIAL.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    for seed in range(args.seeds):
        per_seed[seed] = run(seed, args.iterations)
        # Written per seed: a killed run keeps what it finished.
        (PARTIAL / f"seed{seed}.json").write_text(json.dumps(per_seed[seed], indent=1) + "\n")
        print(f"seed {seed} done", flush=True)
    summary = {}
    for kind in [*KINDS, *(f"{k}_by_advantage" for k in KINDS)]:
        for end in ENDS:
            lifts = _values(per_seed, kind, f"lift_{end}")
            if lifts:
                summary[f"{kind}_{end}"] = {
                    "lift_mean": statistics.mean(lifts),
                    "lift_median": statistics.median(lifts),
                    "share_lift_2": sum(x >= 2 for x in lifts) / len(lifts),
                    "per_seed_lift_mean": [
                        statistics.mean(r[kind][f"lift_{end}"] for r in rows if r[kind])
                        for rows in per_seed.values()
                        if any(r[kind] for r in rows)
                    ],
                }
    meta = provenance()
    write_json("planted_advantage_error.json", {"per_seed": per_seed, "summary": summary, **meta})
    lines = [
        *markdown_header("Planted advantage error: precision@k of the most harmful records", meta),
        "Environment `rlattr/DelayedCredit-v0`, PPO with GAE λ = 0 (256 steps × 4 epochs × 64), "
        "snapshot scores on the return target. For each flag kind, k = the number of records "
        "of that kind in the iteration; *bottom* = the k lowest scores (most harmful), *top* = "
        "the k highest (most helpful); lift = precision@k ÷ base rate; percentile = the "
        "kind's mean score rank (0 = most harmful, 0.5 = no enrichment). Means over "
        f"{args.seeds} seeds × the iterations where the kind occurs.",
        "",
        "| flag kind | its Â error | iterations | base rate | precision@k bottom "
        "| **lift bottom** | lift ≥ 2 (bottom) | precision@k top | **lift top** "
        "| lift ≥ 2 (top) | mean percentile | per-seed lift bottom | per-seed lift top "
        "| control: lift bottom / top ranking by Â |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # With λ = 0, Â_t = r_t + γV(s_t+1) − V(s_t), and V cannot see the choice.
    error_sign = {
        "fault": "both signs",
        "cause": "invest: too small; cash in: too large",
        "payoff": "paid: too large; unpaid: too small",
        "cause_invest": "too small by ≈ γ^delay − γV(s₁) (delayed reward missing)",
        "cause_cash_in": "too large by γV(s₁) (small while investing is rare)",
        "payoff_paid": "too large by ≈ 1 − V (reward its action did not cause)",
        "payoff_unpaid": "too small by V(s) (the reward V expected never comes)",
    }
    for kind in KINDS:
        n = len(_values(per_seed, kind, "k"))
        if n == 0:
            continue
        b, t = summary[f"{kind}_bottom"], summary[f"{kind}_top"]
        lines.append(
            f"| {kind} | {error_sign[kind]} | {n} "
            f"| {_cell(_values(per_seed, kind, 'base_rate'), 3)} "
            f"| {_cell(_values(per_seed, kind, 'precision_bottom'), 3)} | **{b['lift_mean']:.2f}** "
            f"| {b['share_lift_2']:.0%} | {_cell(_values(per_seed, kind, 'precision_top'), 3)} "
            f"| **{t['lift_mean']:.2f}** | {t['share_lift_2']:.0%} "
            f"| {_cell(_values(per_seed, kind, 'mean_percentile'), 3)} "
            f"| {', '.join(f'{x:.2f}' for x in b['per_seed_lift_mean'])} "
            f"| {', '.join(f'{x:.2f}' for x in t['per_seed_lift_mean'])} "
            f"| {summary[f'{kind}_by_advantage_bottom']['lift_mean']:.2f} / "
            f"{summary[f'{kind}_by_advantage_top']['lift_mean']:.2f} |"
        )
    (RESULTS / "planted_advantage_error.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(KINDS) - 2 :]))


if __name__ == "__main__":
    main()
