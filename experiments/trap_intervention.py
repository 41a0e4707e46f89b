"""Suppressing a learnt reward-hacking trap by targeted intervention (issue 13, item 5).

``rlattr/TrapGrid-v0`` (envs/trap_grid.py): a bonus tile next to the start pays a little on
every entry; looping on it lowers the return, yet plain PPO learns the loop (the
``trap_grid`` preset, unchanged). The unwanted behaviour is the set of (state, action) pairs
that step onto the trap (``trap_state_actions()``), as an ``ActionTarget``:
f(θ) = mean log π(trap action | trap-adjacent state). Four arms, on the same 5 seeds
(paired: same initial policy and environment seeds per seed):

- ``ppo``: plain PPO (with a record hook that stores the return-target snapshot scores, for
  the what-if of ``rlattr intervene``; it observes and does not change training);
- ``intervention``: ``Intervention(target=trap pairs, rule="top", budget=BUDGET)``: each
  iteration drops the records whose snapshot score on f is most positive (at most
  BUDGET of the buffer, only positively scored ones);
- ``random_like``: drops as many records as ``intervention``'s rule would, at random;
- ``matching``: the naive rule, drops every record that took a trap action in a trap
  state (``rule="matching"``, no budget).

Measured per iteration: the unwanted behaviour's frequency in the training rollout (trap
entries per step, from the environment's per-record ground truth ``rlattr_fault``; a perfect
loop is 0.5), π(trap action | trap state) of θ_k (mean over the pairs), and the true
(undiscounted) return of the stochastic policy on 32 fixed evaluation episodes per round
(``EvalEveryRound``, common to all arms); the final return on 500 fixed episodes
(``evaluate_policy_batched``). "Suppressed at iteration t": the first iteration from which
the trap frequency stays at or below 0.05 entries per step (10 % of the perfect loop's 0.5)
until the end of training; a run that never gets there is censored at the run's length
(reported as "never").

A second phase (``--whatif``) runs ``rlattr intervene``'s analysis (rlattr.analysis.whatif)
on the PPO runs: per iteration, drop the negatively scored records of that iteration,
retrain it from θ_k, and compare the return of θ_{k+1} and θ'_{k+1} against a random drop
of the same count (the paper's box plots).

    python experiments/trap_intervention.py [--seeds 5] [--budget 0.1]
    python experiments/trap_intervention.py --whatif   (after the first; reads its PPO runs)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rlattr.envs  # noqa: F401  (registers rlattr/TrapGrid-v0)

from experiments.bench_common import table, write_csv, write_markdown
from experiments.common import RESULTS, ROOT, markdown_header, provenance
from rlattr import ActionTarget, Intervention, Preset, RunLog, ScoreHook
from rlattr.analysis import WhatIfConfig, whatif_iterations, write_whatif_report
from rlattr.record import atomic_write_json, atomic_write_text, build_policy, restore_checkpoint
from rlattr.run import build_model
from rlattr.training import EvalEveryRound, evaluate_policy_batched

NAME = "trap_intervention"
OUT = RESULTS / NAME
RUNS = ROOT / "experiments" / "runs" / NAME
ARMS = ("ppo", "intervention", "random_like", "matching")
EVAL_SEED, EVAL_EPISODES = 10_000, 32
FINAL_SEED, FINAL_EPISODES = 50_000, 500
#: "suppressed": trap entries per step at or below 10 % of the perfect loop's 0.5, to the
#: end of training (also about the random initial policy's rate, 0.05-0.08). A fixed level,
#: not a share of each run's own peak: PPO's peak differs by seed (some seeds never loop).
SUPPRESSED_LEVEL = 0.05
N_ITERATIONS = 80  # the preset's run length, where a run that never suppresses is censored
#: Iterations the what-if retrains (the trap forms over iterations ~5-20 of 80).
WHATIF_ITERATIONS = (1, 5, 10, 15, 20, 30, 40, 60, 79)
WHATIF_EPISODES = 200


def trap_target(preset: Preset) -> ActionTarget:
    env = preset.env_factory()()
    observations, actions = env.unwrapped.trap_state_actions()
    env.close()
    return ActionTarget(torch.as_tensor(observations), torch.as_tensor(actions))


def arm_options(arm: str, target: ActionTarget, budget: float, seed: int) -> dict[str, Any]:
    """The AttributedPPO keyword arguments of an arm (``intervention-b0.05``: the
    intervention at another budget, for the budget sweep)."""
    if arm == "ppo":
        return {"record_hooks": [ScoreHook()]}
    if arm == "matching":
        return {"intervention": Intervention(target=target, rule="matching", budget=None)}
    if arm.startswith("intervention-b"):
        arm, budget = "intervention", float(arm.removeprefix("intervention-b"))
    rule = "top" if arm == "intervention" else "random_like"
    return {"intervention": Intervention(target=target, rule=rule, budget=budget, seed=seed)}


def dropped_breakdown(arm: str, seed: int, target: ActionTarget) -> dict[str, float]:
    """What the arm dropped over the run: shares of trap entries, of records in a
    trap-adjacent state, with a negative advantage, and of each action (read from the kept
    run directory)."""
    log = RunLog(RUNS / f"{arm}-s{seed}")
    trap_cells = set(target.observations.argmax(1).tolist())
    counts = dict.fromkeys(("all", "trap_entry", "trap_state", "negative_advantage", *"LDRU"), 0)
    for k in log.iterations():
        removed = ~log.load_plan(k).keep_mask.cpu()
        if not bool(removed.any()):
            continue
        records = log.load_records(k)
        cells = records.observations[removed].argmax(1).tolist()
        counts["all"] += len(cells)
        counts["trap_entry"] += int(log.load_ground_truth(k)["rlattr_fault"].bool()[removed].sum())
        counts["trap_state"] += sum(c in trap_cells for c in cells)
        counts["negative_advantage"] += int((records.advantages[removed] < 0).sum())
        for a in records.actions[removed].flatten().long().tolist():
            counts["LDRU"[a]] += 1
    total = max(counts["all"], 1)
    return {"dropped": counts["all"], **{k: v / total for k, v in counts.items() if k != "all"}}


def trap_probability(policy: Any, target: ActionTarget) -> float:
    """Mean over the trap pairs of π(trap action | state)."""
    with torch.no_grad():
        obs, _ = policy.obs_to_tensor(target.observations.numpy())
        log_prob = policy.get_distribution(obs).log_prob(target.actions.to(obs.device))
    return float(log_prob.exp().mean())


def train_one(preset: Preset, arm: str, seed: int, budget: float) -> dict[str, Any]:
    """Train one (arm, seed), return its curves; the run directory stays for the what-if."""
    target = trap_target(preset)
    run_dir = RUNS / f"{arm}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a half-finished run from a killed job
    make_env = preset.env_factory()
    evaluation = EvalEveryRound(make_env, episodes=EVAL_EPISODES, seed=EVAL_SEED, dump=False)
    start, start_cpu = time.perf_counter(), time.process_time()
    options = arm_options(arm, target, budget, seed)
    model = build_model(preset, run_dir=run_dir, seed=seed, device="cpu", **options)
    model.learn(preset.total_timesteps, callback=evaluation)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    final = evaluate_policy_batched(model.policy, make_env, FINAL_EPISODES, FINAL_SEED)
    log = RunLog(run_dir)
    policy = build_policy(log)
    frequency, dropped, dropped_trap, probability = [], [], [], []
    for k in log.iterations():
        entered = log.load_ground_truth(k)["rlattr_fault"].bool()
        removed = ~log.load_plan(k).keep_mask.cpu()
        frequency.append(float(entered.double().mean()))
        dropped.append(int(removed.sum()))
        dropped_trap.append(int((removed & entered).sum()))
        restore_checkpoint(policy, *log.load_checkpoint(k))
        probability.append(trap_probability(policy, target))
    return {
        "arm": arm,
        "seed": seed,
        "iterations": len(frequency),
        "trap_frequency": frequency,
        "trap_probability": probability,
        "dropped": dropped,
        "dropped_trap_entries": dropped_trap,
        "eval_return": [p.return_mean for p in evaluation.result()],
        "final_return": float(final.mean()),
        "final_return_se": float(final.std(ddof=1) / np.sqrt(len(final))),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


def left_on_the_way_to_the_goal(arm: str, seed: int) -> float:
    """Final π(LEFT) averaged over the bottom row right of the goal: the moves the way to
    the goal needs share their action with the trap move from the start (LEFT)."""
    log = RunLog(RUNS / f"{arm}-s{seed}")
    policy = build_policy(log)
    restore_checkpoint(policy, *log.load_checkpoint(log.checkpoints()[-1]))
    env = Preset.load("trap_grid").env_factory()().unwrapped
    cells = [(env.size - 1, col) for col in range(1, env.size)]
    observations = torch.as_tensor(np.stack([env.observation_of(c) for c in cells]))
    with torch.no_grad():
        probs = policy.get_distribution(observations).distribution.probs
    return float(probs[:, 0].mean())  # action 0 is LEFT (envs/trap_grid.py)


def suppressed_at(frequency: list[float], threshold: float) -> int | None:
    """The first iteration from which the frequency stays <= threshold; None if never."""
    at = None
    for k, value in enumerate(frequency):
        at = (k if at is None else at) if value <= threshold else None
    return at


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def summarise(
    results: dict[tuple[str, int], dict[str, Any]], seeds: list[int], arms: list[str]
) -> dict[str, Any]:
    per_seed = {}
    for seed in seeds:
        peak = max(results[("ppo", seed)]["trap_frequency"])
        for arm in arms:
            run = results[(arm, seed)]
            frequency, dropped = run["trap_frequency"], sum(run["dropped"])
            at = suppressed_at(frequency, SUPPRESSED_LEVEL)
            per_seed[(arm, seed)] = {
                "arm": arm,
                "seed": seed,
                "ppo_peak_frequency": peak,
                "threshold": SUPPRESSED_LEVEL,
                "suppressed_at": at,
                "censored": at is None,
                "peak_frequency": max(frequency),
                "mean_frequency": statistics.fmean(frequency),
                "final_frequency": statistics.fmean(frequency[-5:]),
                "final_trap_probability": run["trap_probability"][-1],
                "final_return": run["final_return"],
                "final_return_se": run["final_return_se"],
                "dropped_per_iteration": statistics.fmean(run["dropped"]),
                "dropped_trap_share": sum(run["dropped_trap_entries"]) / dropped
                if dropped
                else float("nan"),
                "cpu_seconds": run["cpu_seconds"],
            }
    by_arm = {}
    for arm in arms:
        chosen = [per_seed[(arm, s)] for s in seeds]
        returns = [r["final_return"] for r in chosen]
        diffs = [r["final_return"] - per_seed[("ppo", r["seed"])]["final_return"] for r in chosen]
        by_arm[arm] = {
            "final_return_mean": statistics.fmean(returns),
            "final_return_sd": sd(returns),
            "paired_diff_vs_ppo_mean": statistics.fmean(diffs),
            "paired_diff_vs_ppo_sd": sd(diffs),
            "suppressed_runs": sum(not r["censored"] for r in chosen),
            "suppressed_at": [r["suppressed_at"] for r in chosen],
            "mean_frequency": statistics.fmean(r["mean_frequency"] for r in chosen),
            "final_frequency": statistics.fmean(r["final_frequency"] for r in chosen),
            "cpu_seconds": sum(r["cpu_seconds"] for r in chosen),
        }
    rows = [per_seed[(arm, seed)] for seed in seeds for arm in arms]
    return {"rows": rows, "arms": by_arm}


def figure(results: dict[tuple[str, int], dict[str, Any]], seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ppo": "C0", "intervention": "C3", "random_like": "C7", "matching": "C2"}
    panels = (
        ("trap_frequency", "trap entries per step (rollout)"),
        ("trap_probability", "π(trap action | trap state)"),
        ("eval_return", "return (32 eval episodes)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for arm in ARMS:
            curves = np.array([results[(arm, s)][key] for s in seeds])
            x = np.arange(curves.shape[1])
            ax.plot(x, curves.mean(0), color=colours[arm], label=arm)
            for curve in curves:
                ax.plot(x, curve, color=colours[arm], alpha=0.15, lw=0.8)
        ax.set_xlabel("iteration (512 steps)" if key != "eval_return" else "round")
        ax.set_ylabel(label)
    axes[0].legend()
    fig.suptitle(f"TrapGrid-v0: mean over {len(seeds)} seeds (faint: each seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def goal_lines(summary: dict[str, Any], seeds: list[int], arms: list[str]) -> list[str]:
    """Issue 13's goal, checked per arm: suppressed >= 2x faster than PPO (same seed; a run
    that never suppresses counts as suppressing at the run's end, which favours PPO) at no
    more than 5 % loss of PPO's mean final return."""
    at = {(r["arm"], r["seed"]): r["suppressed_at"] for r in summary["rows"]}
    out = [
        "**Goal (issue 13):** suppress the unwanted behaviour at least 2× faster than PPO at "
        "no more than 5 % loss of final return. Per seed, an arm is 2× faster when it "
        "suppresses by half of PPO's iteration (PPO never suppressing counts as "
        f"{N_ITERATIONS}, the run's end: a bound that favours PPO).",
        "",
    ]
    ppo_mean = summary["arms"]["ppo"]["final_return_mean"]
    for arm in (a for a in arms if a != "ppo"):
        faster = sum(
            at[(arm, s)] is not None
            and 2 * at[(arm, s)] <= (N_ITERATIONS if at[("ppo", s)] is None else at[("ppo", s)])
            for s in seeds
        )
        mean = summary["arms"][arm]["final_return_mean"]
        loss = (ppo_mean - mean) / abs(ppo_mean)
        met = faster == len(seeds) and loss <= 0.05
        out.append(
            f"- {arm}: 2× faster than PPO on {faster}/{len(seeds)} seeds; final return "
            f"{mean:+.3f} vs PPO {ppo_mean:+.3f} (change {-loss:+.0%} of |PPO|): goal "
            f"{'met' if met else 'not met'}."
        )
    return out


def write_training(
    results: dict[tuple[str, int], dict[str, Any]], seeds: list[int], args: argparse.Namespace
) -> None:
    arms = list(dict.fromkeys(arm for arm, _ in results))
    summary = summarise(results, seeds, arms)
    target = trap_target(Preset.load("trap_grid"))
    breakdown = {
        arm: [dropped_breakdown(arm, s, target) for s in seeds] for arm in arms if arm != "ppo"
    }
    left = {arm: [left_on_the_way_to_the_goal(arm, s) for s in seeds] for arm in arms}
    meta = provenance()
    settings = {
        "preset": "trap_grid (unchanged)",
        "budget": args.budget,
        "seeds": seeds,
        "eval": f"{EVAL_EPISODES} episodes/round from seed {EVAL_SEED}",
        "final": f"{FINAL_EPISODES} episodes from seed {FINAL_SEED}",
        "suppressed_level": SUPPRESSED_LEVEL,
    }
    payload = {**meta, "settings": settings, "summary": summary}
    payload |= {"dropped_breakdown": breakdown, "final_left_probability_bottom_row": left}
    atomic_write_json(
        OUT / f"{NAME}.json", payload | {"runs": [results[k] for k in run_keys(seeds)]}
    )
    write_csv(OUT / f"{NAME}.csv", summary["rows"])
    figure(results, seeds, OUT / f"{NAME}.png")
    write_markdown(OUT / f"{NAME}.md", markdown(summary, breakdown, left, seeds, arms, meta, args))


def run_keys(seeds: list[int]) -> list[tuple[str, int]]:
    return [(arm, s) for arm in ARMS for s in seeds]


def markdown(
    summary: dict[str, Any],
    breakdown: dict[str, list[dict[str, float]]],
    left: dict[str, list[float]],
    seeds: list[int],
    arms: list[str],
    meta: dict[str, Any],
    args: argparse.Namespace,
) -> list[str]:
    main = [
        f"{arm} | {s['final_return_mean']:+.3f} ± {s['final_return_sd']:.3f} | "
        f"{s['paired_diff_vs_ppo_mean']:+.3f} ± {s['paired_diff_vs_ppo_sd']:.3f} | "
        f"{s['suppressed_runs']}/{len(seeds)} | "
        + ", ".join("never" if a is None else str(a) for a in s["suppressed_at"])
        + f" | {s['mean_frequency']:.3f} | {s['final_frequency']:.3f} | {s['cpu_seconds']:.0f}"
        for arm, s in summary["arms"].items()
    ]
    dropped = []
    for arm, items in breakdown.items():
        total = sum(i["dropped"] for i in items)
        pooled = {
            k: sum(i[k] * i["dropped"] for i in items) / max(total, 1)
            for k in ("trap_entry", "trap_state", "negative_advantage", *"LDRU")
        }
        dropped.append(
            f"{arm} | {total / len(items):.0f} | " + " | ".join(f"{v:.2f}" for v in pooled.values())
        )
    return [
        *markdown_header("Suppressing a learnt trap: intervention vs PPO (TrapGrid-v0)", meta),
        f"Preset `trap_grid` (unchanged), {len(seeds)} paired seeds, intervention budget "
        f"{args.budget:g} of the buffer per iteration. Suppressed = trap frequency stays ≤ "
        f"{SUPPRESSED_LEVEL:g} trap entries per step (10 % of the perfect loop) from that "
        f"iteration to the end ({N_ITERATIONS} iterations); censored runs count as never.",
        "",
        *table(
            "arm | final return, mean ± sd | paired Δ vs PPO, mean ± sd | suppressed (runs) | "
            "suppressed at (iteration per seed) | mean trap freq. | final trap freq. | CPU s",
            main,
        ),
        "",
        *goal_lines(summary, seeds, arms),
        "",
        "",
        "What the arms dropped (all iterations and seeds pooled): share of the dropped "
        "records that entered the trap, that stood in a trap-adjacent state, that had a "
        "negative advantage, and that took each action (L D R U; the trap actions are L "
        "from the start and U from the cell below the trap).",
        "",
        *table(
            "arm | dropped per run | trap entries | in trap states | Â < 0 | L | D | R | U", dropped
        ),
        "",
        "Final π(LEFT) in the bottom row right of the goal (the only way to the goal is "
        "LEFT along it; LEFT is also the trap move from the start), per seed:",
        "",
        *table(
            "arm | π(LEFT), seeds " + " ".join(str(s) for s in seeds),
            (f"{arm} | " + " ".join(f"{v:.3f}" for v in values) for arm, values in left.items()),
            sep="|---|---|",
        ),
        "",
        "Reading (an interpretation of the two tables above, not a separate measurement): "
        "the unwanted behaviour's target, mean log π(trap action | trap-adjacent state), "
        "shares the policy network with every other state, so the records whose training "
        "raises it are mostly not trap entries but records elsewhere with a negative "
        "advantage, mostly DOWN and RIGHT (training on them lowers those actions and so "
        "raises the others, LEFT and UP included). Without them, every update's net push "
        "on the target is downward; the action head serves every state, so π(LEFT) falls "
        "everywhere, the bottom row included, where the goal needs it. The agent settles "
        "on a policy that neither loops nor reaches the goal (return -0.5: 50 steps of step "
        "cost). The naive rule drops only the trap entries themselves and learns the goal "
        "on every seed.",
        "",
        f"![curves]({NAME}.png)",
        "",
    ]


def run_whatif(seeds: list[int]) -> None:
    """``rlattr intervene``'s analysis on the PPO runs: drop_negative vs random, same count."""
    make_env = Preset.load("trap_grid").env_factory()

    def evaluate(policy: Any, episodes: int, seed: int) -> np.ndarray:
        return evaluate_policy_batched(policy, make_env, episodes, seed)

    config = WhatIfConfig(rule="drop_negative", episodes=WHATIF_EPISODES, eval_seed=EVAL_SEED)
    results = {}
    for seed in seeds:
        log = RunLog(RUNS / f"ppo-s{seed}")
        results[f"ppo-s{seed}"] = whatif_iterations(log, WHATIF_ITERATIONS, config, evaluate)
        print(f"what-if ppo-s{seed} done", flush=True)
    out = OUT / "whatif"
    title = "TrapGrid PPO: drop_negative what-if vs a random drop of the same count"
    write_whatif_report(results, out, title)
    meta = provenance()
    text = (out / "whatif.md").read_text()
    header = markdown_header("What-if on the trap runs (rlattr intervene)", meta)
    atomic_write_text(out / "whatif.md", "\n".join(header) + "\n" + text.split("\n", 2)[2])
    stored = {k: [r.to_dict() for r in v] for k, v in results.items()}
    payload = {**meta, "config": config.__dict__, "iterations": list(WHATIF_ITERATIONS)}
    atomic_write_json(out / "whatif.json", payload | {"results": stored})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument(
        "--sweep-budgets", type=float, nargs="*", default=[0.02, 0.05, 0.2],
        help="extra intervention arms at these budgets (the budget sweep)",
    )  # fmt: skip
    parser.add_argument("--whatif", action="store_true", help="run the what-if phase only")
    parser.add_argument("--timesteps", type=int, default=None, help="override the preset's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    preset = Preset.load("trap_grid").with_overrides(total_timesteps=args.timesteps)
    seeds = list(range(args.seeds))
    if args.whatif:
        run_whatif(seeds)
        return
    arms = [*args.arms, *(f"intervention-b{b:g}" for b in args.sweep_budgets)]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for seed in seeds:
        for arm in arms:
            path = OUT / "partial" / f"{arm}-s{seed}.json"
            if not path.exists():
                result = train_one(preset, arm, seed, args.budget)
                atomic_write_json(path, result, compact=True)
                print(f"{arm} s{seed}: final return {result['final_return']:+.3f}", flush=True)
            results[(arm, seed)] = json.loads(path.read_text())
    if set(args.arms) == set(ARMS):
        write_training(results, seeds, args)


if __name__ == "__main__":
    main()
