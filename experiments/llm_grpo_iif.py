"""GRPO against GRPO+IIF (and the matched random drop) on a tiny offline language-model task.

The task (``rlattr.llm.toy.SentimentTask``): a 2-layer, width-64 Qwen2 model with a
character tokenizer, both built in code, is pretrained in process on sentences
``"<subject> was <adjective> and <subject> was <adjective>."`` whose adjectives are mostly
negative; RL continues prompts ``"<subject> was "`` and is rewarded by the lexicon
sentiment of the continuation (a stand-in for the paper's detoxification run).

Arms, each from the same pretrained weights and the same GRPO seed for a given seed:

- ``grpo``: TRL's GRPO (through ``IIFGRPOTrainer`` with ``iif=None``, which trains bit for
  bit like ``GRPOTrainer``; it only times the phases);
- ``iif``: the paper's RLHF variant: drop every pair with a negative snapshot score on the
  sequence target of validation prompts (sequence log-probability × group-normalised
  advantage);
- ``random``: drop as many pairs as ``iif`` would, at random (same scoring cost);
- ``iif_batch``: ``iif`` with the same-batch surrogate target (no validation sampling).

After every round the policy is evaluated on fixed prompts with sampled completions (a
fixed seed, outside the timed training; training RNG untouched). Per run, one CSV row per
round goes to experiments/results/llm/runs/<arm>-s<seed>.csv (an interrupted study resumes
with the runs still missing); ``--summarize`` writes summary.json, summary.md, rounds.csv
and curves.png. The efficiency metrics are ``rlattr.analysis.efficiency``'s.

    python experiments/llm_grpo_iif.py --seeds 5
    python experiments/llm_grpo_iif.py --summarize
    python experiments/llm_grpo_iif.py --fidelity     # scores vs replay ground truth
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.bench_common import parse_args, table, write_csv, write_markdown
from experiments.common import RESULTS, markdown_header, provenance
from rlattr.analysis import efficiency
from rlattr.analysis.efficiency import first_reach
from rlattr.provenance import describe_git
from rlattr.record import atomic_write_json

OUT = RESULTS / "llm"
ARMS = ("grpo", "iif", "random", "iif_batch")
LEVELS = (0.5, 0.8)  # fixed reward levels whose first round is reported too
SMOOTH = 3  # rounds in the running mean that levels are read from
PHASES = ("generation", "target", "scoring", "update")
FIELDS = (
    *("arm", "seed", "round", "eval_reward", "train_reward", "validation_reward"),
    *("fraction_negative", "fraction_dropped"),
    *(f"{p}_s" for p in (*PHASES, "round", "cumulative")),
    *(f"{p}_cpu_s" for p in (*PHASES, "round", "cumulative")),
)
#: GRPO's settings in every arm: 4 completions per prompt, 4 micro-batches × 2 iterations
GRPO = {"num_generations": 4, "steps_per_generation": 4, "num_iterations": 2, "beta": 0.0}
GRPO |= {"lr_scheduler_type": "constant"}
STEPS_PER_ROUND = GRPO["steps_per_generation"] * GRPO["num_iterations"]
LLM_PACKAGES = ("transformers", "trl", "peft", "accelerate", "datasets", "tokenizers")


def llm_provenance() -> dict[str, Any]:
    """``provenance()`` with the versions of the LLM stack added."""
    meta = provenance()
    for name in LLM_PACKAGES:
        try:
            meta["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            meta["versions"][name] = "not installed"
    return meta


def settings(args: argparse.Namespace) -> dict[str, Any]:
    fixed = {"loss_type": "dapo", "validation_prompts": 4, "eval_prompts": 7, "clauses": 2}
    fixed |= {"eval_samples_per_prompt": 16, "pretrain_positive_share": 0.3}
    return (
        GRPO
        | fixed
        | {
            "rounds": args.rounds,
            "prompts_per_round": args.prompts_per_round,
            "max_completion_length": args.max_completion_length,
            "learning_rate": args.lr,
            "pretrain_steps": args.pretrain_steps,
        }
    )


class RoundEvaluator:
    """Mean reward of sampled completions for fixed prompts, with a fixed seed.

    The global RNG is forked, so training draws the same random numbers with or without
    evaluation; the time spent here is outside every timed phase. (The language-model
    counterpart of ``rlattr.training.evaluation.EvalEveryRound``, which evaluates SB3
    policies on Gymnasium environments.)
    """

    def __init__(self, tokenizer, task, prompts: list[str], samples: int, max_new_tokens: int):
        self.tokenizer, self.task = tokenizer, task
        encoded = tokenizer(
            [p for p in prompts for _ in range(samples)], return_tensors="pt", padding=True
        )
        self.input_ids, self.attention_mask = encoded["input_ids"], encoded["attention_mask"]
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def __call__(self, model) -> float:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(12345)
            out = model.generate(
                input_ids=self.input_ids.to(device),
                attention_mask=self.attention_mask.to(device),
                max_new_tokens=self.max_new_tokens,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
            )
        model.train(was_training)
        texts = self.tokenizer.batch_decode(
            out[:, self.input_ids.shape[1] :], skip_special_tokens=True
        )
        return statistics.fmean(self.task.score(t) for t in texts)


def toy(seed: int) -> tuple[Any, Any]:
    """The character tokenizer (left padding) and the sentiment task of a seed."""
    from rlattr.llm import SentimentTask, char_tokenizer

    tokenizer = char_tokenizer()
    tokenizer.padding_side = "left"
    return tokenizer, SentimentTask(positive_share=0.3, clauses=2, seed=seed)


def build_trainer(
    iif: Any,
    seed: int,
    args: argparse.Namespace,
    pretrained: dict,
    rounds: int,
    callbacks: tuple = (),
    run_dir: Path | None = None,
):
    """The study's GRPO trainer, from the pretrained weights."""
    from datasets import Dataset
    from trl import GRPOConfig

    from rlattr.llm import IIFGRPOTrainer, tiny_causal_lm

    tokenizer, task = toy(seed)
    model = tiny_causal_lm(tokenizer, seed=seed)
    model.load_state_dict(pretrained)
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix=f"llm-s{seed}-"),  # nothing is saved there
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        per_device_train_batch_size=args.prompts_per_round,  # 4 micro-batches per round
        max_completion_length=args.max_completion_length,
        max_steps=rounds * STEPS_PER_ROUND,
        learning_rate=args.lr,
        seed=seed,
        **GRPO,
    )
    validation = [{"prompt": p} for p in task.prompts(4, offset=2)]
    return IIFGRPOTrainer(
        model=model,
        reward_funcs=task.reward,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": task.prompts(70)}),
        processing_class=tokenizer,
        iif=iif,
        validation_dataset=validation if iif is not None else None,
        callbacks=list(callbacks),
        run_dir=run_dir,
    )


def run_one(arm: str, seed: int, args: argparse.Namespace, pretrained: dict) -> list[dict]:
    from transformers import TrainerCallback

    from rlattr.llm import LLMIIF

    iif = {
        "grpo": None,
        "iif": LLMIIF(rule="drop_negative", target="validation", seed=seed),
        "random": LLMIIF(rule="random_like", like="drop_negative", target="validation", seed=seed),
        "iif_batch": LLMIIF(rule="drop_negative", target="batch", seed=seed),
    }[arm]
    tokenizer, task = toy(seed)
    evaluate = RoundEvaluator(tokenizer, task, task.prompts(7), 16, args.max_completion_length)
    evals: list[float] = []

    class EvaluateEachRound(TrainerCallback):
        def on_train_begin(self, a, state, control, model=None, **kwargs):
            evals.append(evaluate(model))

        def on_step_end(self, a, state, control, model=None, **kwargs):
            if state.global_step % STEPS_PER_ROUND == 0:
                evals.append(evaluate(model))

    trainer = build_trainer(
        iif, seed, args, pretrained, args.rounds, callbacks=(EvaluateEachRound(),)
    )
    trainer.train()
    rows = [{"arm": arm, "seed": seed, "round": 0, "eval_reward": evals[0]}]
    rows[0] |= {"cumulative_s": 0.0, "cumulative_cpu_s": 0.0}
    for stats, value in zip(trainer.round_stats, evals[1:], strict=True):
        row = {"arm": arm, "seed": seed, "round": stats.round + 1, "eval_reward": value}
        row |= {
            "train_reward": stats.reward_mean,
            "validation_reward": stats.validation_reward_mean,
        }
        row |= {k: getattr(stats, k) for k in FIELDS[6:] if hasattr(stats, k)}
        for clock in ("_s", "_cpu_s"):  # the round's training time, and the total so far
            row["round" + clock] = sum(getattr(stats, p + clock) for p in PHASES)
            row["cumulative" + clock] = rows[-1]["cumulative" + clock] + row["round" + clock]
        rows.append(row)
    return rows


def random_masks(n: int, size: int, count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``count`` random boolean masks over ``n`` pairs, each with ``size`` set."""
    masks = []
    for _ in range(count):
        drop = torch.zeros(n, dtype=torch.bool)
        drop[torch.randperm(n, generator=generator)[:size]] = True
        masks.append(drop)
    return masks


def fidelity_study(args: argparse.Namespace) -> dict[str, Any]:
    """Scores against leave-subset-out replay of the same plan, and the drop-negatives what-if.

    Per seed: GRPO trained ``--fidelity-rounds`` rounds while scoring on the validation
    target and dropping nothing (rule ``bottom`` with q = 0); then, for some rounds,
    32 random subsets of 10 % of the pairs are removed by replay (LDS, sign agreement),
    and the negatives are removed against 16 random subsets of the same size.
    """
    from rlattr.llm import LLMIIF, LLMRunLog, subset_effects

    iif = LLMIIF(rule="bottom", fraction=0.0, target="validation")
    rounds, results = args.fidelity_rounds, []
    for seed in range(args.fidelity_seeds):
        weights = pretrained_weights(seed, args.pretrain_steps)
        run_dir = Path(tempfile.mkdtemp(prefix=f"llm-fidelity-s{seed}-")) / "run"
        build_trainer(iif, seed, args, weights, rounds, run_dir=run_dir).train()
        replayer = build_trainer(iif, seed, args, weights, rounds)
        replayer.create_optimizer_and_scheduler(num_training_steps=rounds * STEPS_PER_ROUND)
        for index in args.fidelity_check:
            scores = LLMRunLog(run_dir).read_round(index).extras["scores"]
            n, generator = len(scores), torch.Generator().manual_seed(1000 * seed + index)
            size = max(1, round(0.1 * n))
            started = time.perf_counter()
            effects = subset_effects(replayer, run_dir, index, random_masks(n, size, 32, generator))
            negatives = scores < 0
            n_neg = int(negatives.sum())
            matched = random_masks(n, n_neg, 16, generator)
            what_if = subset_effects(replayer, run_dir, index, [negatives, *matched])
            # Gain of the target from removing a subset: f(θ^{−S}) − f(θ) = −Δ_S.
            results.append(
                row := {
                    "seed": seed,
                    "round": index,
                    "pairs": n,
                    "subset_size": size,
                    "lds": effects.lds,
                    "sign_agreement": effects.sign_agreement,
                    "negatives": n_neg,
                    "target_gain_dropping_negatives": float(-what_if.actual[0]),
                    "target_gain_dropping_random_same_count": spread(
                        (-what_if.actual[1:]).tolist()
                    ),
                    "predicted_gain_dropping_negatives": float(-what_if.predicted[0]),
                    "replay_seconds": time.perf_counter() - started,
                }
            )
            print(f"fidelity seed {seed} round {index}: LDS {row['lds']:.2f}", flush=True)
    payload = {
        "meta": {**llm_provenance(), "settings": settings(args)},
        "rows": results,
        "lds": spread([r["lds"] for r in results]),
        "sign_agreement": spread([r["sign_agreement"] for r in results]),
        "negatives_beat_random": sum(
            r["target_gain_dropping_negatives"] > r["target_gain_dropping_random_same_count"]["max"]
            for r in results
        ),
    }
    atomic_write_json(OUT / "fidelity.json", payload)
    write_markdown(OUT / "fidelity.md", fidelity_markdown(payload))
    return payload


def fidelity_markdown(payload: dict[str, Any]) -> list[str]:
    lds, sign, rows = payload["lds"], payload["sign_agreement"], payload["rows"]
    cells = [
        f"{r['seed']} | {r['round']} | {r['lds']:.2f} | {r['sign_agreement']:.2f} | "
        f"{r['negatives']}/{r['pairs']} | {r['target_gain_dropping_negatives']:+.5f} | "
        f"{rand['mean']:+.5f} ± {rand['std']:.5f}, {rand['max']:+.5f}"
        for r in rows
        for rand in [r["target_gain_dropping_random_same_count"]]
    ]
    return [
        *markdown_header("Score fidelity by replay on the tiny offline LM task", payload["meta"]),
        "GRPO scored on the validation target while dropping nothing; each checked round is",
        "replayed from its record with the same plan and pairs removed (docs/science.md §2). LDS:",
        "Spearman of Σ scores against the actual change of the target over 32 random",
        "subsets of 10 % of the pairs. What-if: the target's change when the negatively",
        "scored pairs are removed, against 16 random subsets of the same size. One plan is",
        "replayed, so no order-noise ceiling is measured here.",
        "",
        *table(
            "seed | round | LDS | sign agreement | negatives | target gain, drop negatives | "
            "target gain, random same count (mean ± sd, max)",
            cells,
        ),
        "",
        f"LDS {lds['mean']:.2f} ± {lds['std']:.2f} (min {lds['min']:.2f}); sign agreement "
        f"{sign['mean']:.2f} ± {sign['std']:.2f}; dropping the negatives raised the target "
        f"more than every matched random drop in {payload['negatives_beat_random']} of "
        f"{len(rows)} rounds.",
        "",
    ]


def pretrained_weights(seed: int, steps: int) -> dict:
    from rlattr.llm import SentimentTask, char_tokenizer, pretrain, tiny_causal_lm

    tokenizer = char_tokenizer()
    model = tiny_causal_lm(tokenizer, seed=seed)
    task = SentimentTask(positive_share=0.3, clauses=2, seed=seed)
    pretrain(model, tokenizer, task.corpus(4000), steps=steps, batch_size=32, seed=seed)
    return {k: v.clone() for k, v in model.state_dict().items()}


def read_rows(path: Path) -> list[dict]:
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row |= {k: float(row[k]) if row.get(k) else float("nan") for k in FIELDS[1:]}
        row["seed"], row["round"] = int(row["seed"]), int(row["round"])
    return rows


# -- summary -------------------------------------------------------------------------------


def smoothed(values: list[float], window: int = SMOOTH) -> list[float]:
    """Trailing running mean (the first rounds average what there is)."""
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def se_ave(curve: list[float], base_curve: list[float]) -> tuple[float | None, int, int]:
    """SE_ave against GRPO (``rlattr.analysis.efficiency``: levels = GRPO's running maxima),
    averaged here over the levels the arm reaches only (not counting a missed level at
    R + 1, as the library's upper bound does). Returns (that mean, levels, levels missed)."""
    result = efficiency(base_curve, curve)
    reached = [
        r
        for level, r in zip(result.levels, result.reductions, strict=True)
        if first_reach(curve, level) is not None
    ]
    return (
        (statistics.fmean(reached) if reached else None),
        len(result.levels),
        len(result.levels) - len(reached),
    )


def spread(values: list[float]) -> dict[str, float]:
    clean = [v for v in values if v == v]
    if not clean:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {
        "mean": statistics.fmean(clean),
        "std": statistics.stdev(clean) if len(clean) > 1 else 0.0,
        "min": min(clean),
        "max": max(clean),
        "n": len(clean),
    }


def seed_metrics(arm: str, rows: list[dict], base: list[dict]) -> dict[str, Any]:
    """One arm's run against GRPO's on the same seed."""
    base_curve = smoothed([r["eval_reward"] for r in base])
    curve = smoothed([r["eval_reward"] for r in rows])
    level = base_curve[-1]  # GRPO's final reward (running mean of the last rounds)
    reach, base_round = first_reach(curve, level), first_reach(base_curve, level)
    trained = rows[1:]
    se, n_levels, missed = se_ave(curve, base_curve)
    auc, base_auc = (statistics.fmean(r["eval_reward"] for r in x[1:]) for x in (rows, base))

    def at_reach(key: str) -> float | None:
        return None if reach is None else rows[reach][key]

    def saved(key: str) -> float | None:  # RT_peak-like: 1 − time to reach ÷ GRPO's whole run
        return None if reach is None else 1 - rows[reach][key] / base[-1][key]

    def per_round(*keys: str) -> float:
        return statistics.fmean(sum(r[k] for k in keys) for r in trained)

    return {
        **{f"rounds_to_{v}": first_reach(curve, v) for v in LEVELS},
        # Mean evaluation reward over the rounds (area under the curve), and its
        # difference from GRPO's on the same seed.
        "auc": auc,
        "auc_minus_grpo": auc - base_auc,
        "se_ave": se,
        "se_levels": n_levels,
        "se_levels_unreached": missed,
        "seed": rows[0]["seed"],
        "grpo_final_reward": level,
        "final_reward": curve[-1],
        "rounds_to_grpo_final": reach,
        "grpo_rounds_to_own_final": base_round,
        "round_reduction": None if reach is None or not base_round else 1 - reach / base_round,
        "seconds_to_grpo_final": at_reach("cumulative_s"),
        "time_reduction_vs_grpo_run": saved("cumulative_s"),
        "cpu_seconds_to_grpo_final": at_reach("cumulative_cpu_s"),
        "cpu_time_reduction_vs_grpo_run": saved("cumulative_cpu_s"),
        "update_s_per_round": per_round("update_s"),
        "update_cpu_s_per_round": per_round("update_cpu_s"),
        "round_cpu_s": per_round("round_cpu_s"),
        "round_s": per_round("round_s"),
        "scoring_s_per_round": per_round("scoring_s", "target_s"),
        "fraction_dropped": per_round("fraction_dropped") if arm != "grpo" else 0.0,
    }


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[tuple[str, int], list[dict]] = {}
    for path in sorted((OUT / "runs").glob("*.csv")):
        rows = read_rows(path)
        runs[(rows[0]["arm"], rows[0]["seed"])] = rows
    if not runs and (OUT / "rounds.csv").exists():
        # runs/ is git-ignored; a fresh clone rebuilds the summary from rounds.csv.
        for row in read_rows(OUT / "rounds.csv"):
            runs.setdefault((row["arm"], row["seed"]), []).append(row)
    seeds = sorted({s for a, s in runs if a == "grpo"})
    per_seed = {
        arm: [
            seed_metrics(arm, runs[(arm, s)], runs[("grpo", s)]) for s in seeds if (arm, s) in runs
        ]
        for arm in ARMS
    }
    grpo = {r["seed"]: r for r in per_seed["grpo"]}
    for r in (r for arm in ARMS for r in per_seed[arm]):
        for key, saved in (("update_s", "update_time_saved"), ("update_cpu_s", "update_cpu_saved")):
            r[saved] = 1 - r[f"{key}_per_round"] / grpo[r["seed"]][f"{key}_per_round"]
    not_tabled = ("seed", "se_levels", "grpo_final_reward", "grpo_rounds_to_own_final")
    table_ = {
        arm: {
            "seeds": len(entries),
            "reached_grpo_final": sum(e["rounds_to_grpo_final"] is not None for e in entries),
            **{
                key: spread([float("nan") if e[key] is None else float(e[key]) for e in entries])
                for key in entries[0]
                if key not in not_tabled
            },
        }
        for arm, entries in per_seed.items()
        if entries
    }
    meta = llm_provenance()
    made_by: dict[str, list[str]] = {}
    for path in sorted((OUT / "runs").glob("*.json")):
        run_meta = json.loads(path.read_text())
        made_by.setdefault(f"{run_meta['command']} at {run_meta['git_commit']}", []).append(
            path.stem
        )
    if not made_by and (OUT / "summary.json").exists():
        made_by = json.loads((OUT / "summary.json").read_text())["meta"].get("runs_made_by", {})
    meta["runs_made_by"] = made_by
    summary = {
        "meta": {**meta, "settings": settings(args)},
        "smoothing_rounds": SMOOTH,
        "table": table_,
        "per_seed": per_seed,
    }
    atomic_write_json(OUT / "summary.json", summary)
    write_csv(OUT / "rounds.csv", [row for key in sorted(runs) for row in runs[key]], FIELDS)
    plot(runs)
    write_markdown(OUT / "summary.md", summary_markdown(summary))
    return summary


def plot(runs: dict[tuple[str, int], list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"grpo": "tab:blue", "iif": "tab:red", "random": "tab:gray", "iif_batch": "tab:orange"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for arm in ARMS:
        curves = [rows for (a, _), rows in sorted(runs.items()) if a == arm]
        if not curves:
            continue
        length = min(len(c) for c in curves)

        def series(key: str, curves: list = curves, length: int = length) -> torch.Tensor:
            return torch.tensor([[r[key] for r in c[:length]] for c in curves])

        rewards = series("eval_reward")
        mean, low, high = rewards.mean(0), rewards.min(0).values, rewards.max(0).values
        rounds = list(range(length))
        axes[0].plot(rounds, mean, color=colors[arm], label=f"{arm} (mean, min-max of seeds)")
        axes[0].fill_between(rounds, low, high, color=colors[arm], alpha=0.15)
        axes[1].plot(series("cumulative_s").mean(0), mean, color=colors[arm], label=arm)
        axes[2].plot(series("cumulative_cpu_s").mean(0), mean, color=colors[arm], label=arm)
    axes[0].set_xlabel("round (64 pairs each)")
    axes[1].set_xlabel("training wall-clock, s (mean over seeds; shared machine)")
    axes[2].set_xlabel("training CPU time, s (mean over seeds)")
    for ax in axes:
        ax.set_ylabel("evaluation reward (112 sampled completions)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "GRPO vs GRPO+IIF (drop negative; validation or same-batch target) vs matched "
        "random drop, tiny offline LM"
    )
    fig.tight_layout()
    fig.savefig(OUT / "curves.png", dpi=120)
    plt.close(fig)


def summary_markdown(summary: dict[str, Any]) -> list[str]:
    meta, rows = summary["meta"], summary["table"]

    def fmt(row: dict[str, Any], key: str, pct: bool = False) -> str:
        stat = row[key]
        if stat["mean"] != stat["mean"]:
            return "n/a"
        scale, unit = (100, " %") if pct else (1, "")
        return f"{scale * stat['mean']:.2f} ± {scale * stat['std']:.2f}{unit}"

    main = [
        f"{arm} | {r['reached_grpo_final']}/{r['seeds']} | "
        + " | ".join(
            fmt(r, key, pct=key in PERCENT)
            for key in (
                *("rounds_to_grpo_final", "round_reduction", "se_ave", "se_levels_unreached"),
                *("seconds_to_grpo_final", "time_reduction_vs_grpo_run", "update_s_per_round"),
                *("update_time_saved", "scoring_s_per_round", "fraction_dropped", "final_reward"),
            )
        )
        for arm, r in rows.items()
    ]
    cpu = [
        f"{arm} | "
        + " | ".join(
            fmt(r, key, pct=key in PERCENT)
            for key in (
                *("cpu_seconds_to_grpo_final", "cpu_time_reduction_vs_grpo_run"),
                *("update_cpu_s_per_round", "update_cpu_saved", "round_cpu_s"),
            )
        )
        for arm, r in rows.items()
    ]
    levels = [
        f"{arm} | "
        + " | ".join(
            f"{fmt(r, f'rounds_to_{v}')} ({r[f'rounds_to_{v}'].get('n', 0)})" for v in LEVELS
        )
        + f" | {fmt(r, 'auc')} | {fmt(r, 'auc_minus_grpo')}"
        for arm, r in rows.items()
    ]
    return [
        *markdown_header("GRPO vs GRPO+IIF on a tiny offline language-model task", meta),
        *(f"Runs {', '.join(names)}: `{key}`  " for key, names in meta["runs_made_by"].items()),
        f"Settings: {json.dumps(meta['settings'], sort_keys=True)}",
        "",
        f"Levels are read from a {SMOOTH}-round trailing mean of the evaluation reward; "
        "GRPO's final reward is that mean at its last round, per seed. Times are training "
        "wall-clock (generation, validation target, scoring, update; evaluation excluded), "
        "on a shared 2-core machine: compare arms, not absolute numbers.",
        "",
        "Scope (what is cut against the paper's RLHF run): a 2-layer, width-64 model "
        "(~80k parameters, full fine-tuning) instead of gpt-neo-2.7B with LoRA; a lexicon "
        "reward instead of a classifier; GRPO (dapo loss, 4 completions per prompt, 4 "
        "micro-batches × 2 iterations per round) instead of PPO; 20 rounds of 64 pairs; "
        "5 seeds.",
        "",
        "SE_ave: mean round reduction over the levels GRPO's smoothed curve sets as new "
        "highs (the paper's SE_ave; it does not list its levels), over the levels the arm "
        "reaches; 'levels missed' counts the others.",
        "",
        *table(
            "arm | seeds reaching GRPO's final | rounds to reach | round reduction | SE_ave | "
            "levels missed | s to reach | time reduction vs GRPO run | update s/round | "
            "update time saved | scoring s/round | fraction dropped | final reward",
            main,
        ),
        "",
        "The same in CPU seconds of the training process (steadier than wall-clock on a "
        "shared machine):",
        "",
        *table(
            "arm | CPU s to reach | CPU time reduction vs GRPO run | update CPU s/round | "
            "update CPU saved | CPU s/round",
            cpu,
        ),
        "",
        "Fixed levels and area under the curve (mean evaluation reward over the rounds; "
        "paired difference from GRPO on the same seed):",
        "",
        *table(
            "arm | "
            + " | ".join(f"rounds to {v} (seeds)" for v in LEVELS)
            + " | mean reward over rounds | minus GRPO's (paired)",
            levels,
        ),
        "",
        "Mean ± standard deviation over seeds (means over the seeds that reach).",
        "",
        "![curves](curves.png)",
        "",
    ]


PERCENT = {
    *("round_reduction", "se_ave", "time_reduction_vs_grpo_run", "update_time_saved"),
    *("fraction_dropped", "cpu_time_reduction_vs_grpo_run", "update_cpu_saved"),
}


def main() -> None:
    global OUT
    args = parse_args(
        __doc__,
        seeds=5,
        arms=(list(ARMS), f"any of {', '.join(ARMS)}"),
        rounds=20,
        prompts_per_round=16,
        max_completion_length=24,
        lr=1e-4,
        pretrain_steps=150,
        summarize=(False, "only build the summary"),
        out=(OUT, "results folder"),
        fidelity=(False, "only the replay fidelity check (fidelity.*)"),
        fidelity_seeds=3,
        fidelity_rounds=8,
        fidelity_check=[0, 3, 7],
    )
    OUT = args.out
    torch.set_num_threads(1)
    if args.fidelity:
        fidelity_study(args)
        return
    for seed in range(0 if args.summarize else args.seeds):
        missing = [a for a in args.arms if not (OUT / "runs" / f"{a}-s{seed}.csv").exists()]
        if not missing:
            continue
        weights = pretrained_weights(seed, args.pretrain_steps)
        for arm in missing:
            started = time.perf_counter()
            rows = run_one(arm, seed, args, weights)
            write_csv(OUT / "runs" / f"{arm}-s{seed}.csv", rows, FIELDS)
            # Which command and code made this run (the summary may be rebuilt later).
            meta = provenance()
            run = {"command": meta["command"], "git_commit": describe_git(meta["git"])}
            atomic_write_json(OUT / "runs" / f"{arm}-s{seed}.json", run | {"date": meta["date"]})
            print(
                f"seed {seed} {arm}: final eval {rows[-1]['eval_reward']:.3f} "
                f"({time.perf_counter() - started:.1f}s)",
                flush=True,
            )
    summary = summarize(args)
    print(json.dumps(summary["table"], indent=1))


if __name__ == "__main__":
    main()
