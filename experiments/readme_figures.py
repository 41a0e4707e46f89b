"""Every figure the README's results quote, read from the committed result files.

    python experiments/readme_figures.py

prints one table per README bullet ("What we measured", and the segmented-metagradient
line of the tour) and writes it to experiments/results/readme_figures.md. Each row names
the file the number comes from; nothing here runs an experiment, and statistics are the
experiments' own (their summaries): this only picks and formats them. A README number
that is not in this output has no committed source.

``SECTIONS`` lists the figures: mostly (file, items, (label, value) templates) that ``rows``
fills from the file; the few statistics derived here are the small functions before it.
"""

from __future__ import annotations

import csv
import json
import math
import re
import string
import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, markdown_header, provenance
from rlattr.analysis import auc

Row = tuple[str, str, str]  # figure, value, source (relative to experiments/results)


class Figures(string.Formatter):
    """``str.format`` where a string with a numeric spec is read as a number, and a list shows
    each element with the spec, joined by " / " (by ", " when the spec starts with ","), or
    as its span "min … max" when the spec starts with "…"."""

    def format_field(self, value: Any, spec: str) -> str:
        if isinstance(value, list | tuple):
            if spec.startswith("…"):
                low, high = (self.format_field(v, spec[1:]) for v in (min(value), max(value)))
                return f"{low} … {high}"
            sep, spec = (", ", spec[1:]) if spec.startswith(",") else (" / ", spec)
            return sep.join(self.format_field(v, spec) for v in value)
        numeric = isinstance(value, str) and spec[-1:] in ("e", "f", "g", "%")
        return format(float(value) if numeric else value, spec)


@cache
def load(name: str) -> Any:
    """A result file: JSON, CSV (its rows) or Markdown (its text)."""
    text = (RESULTS / name).read_text()
    if name.endswith(".json"):
        return json.loads(text)
    return list(csv.DictReader(text.splitlines())) if name.endswith(".csv") else text


def markdown_table(text: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose first column is ``first_header``, less the bold
    ones (the paper's figures)."""

    def cells(line: str) -> list[str]:  # an escaped ``\\|`` stays inside its cell
        return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line[1:-1])]

    lines = [line.strip() for line in text.splitlines()]
    start = next(i for i, s in enumerate(lines) if s[:1] == "|" and cells(s)[0] == first_header)
    end = next((i for i in range(start, len(lines)) if lines[i][:1] != "|"), len(lines))
    table = [dict(zip(cells(lines[start]), cells(s), strict=True)) for s in lines[start + 2 : end]]
    return [r for r in table if not r[first_header].startswith("**")]


def columns(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Mappings as one list per key."""
    return {key: [item[key] for item in items] for key in items[0]}


def select(data: Any, path: str) -> list[Any]:
    """The items at ``path`` in a loaded file, by steps joined by "/": a key; "*": each entry
    of a mapping (its key as ``key``; ``value``, a value that is not a mapping); "key=value":
    the items with that value; "+": the items as one mapping of lists. A list gives its items.
    In Markdown, the path is the first header of a table."""
    if isinstance(data, str):
        return markdown_table(data, path)
    items = data if isinstance(data, list) else [data]
    for step in filter(None, path.split("/")):
        key, _, value = step.partition("=")
        if step == "*":
            pairs = [(k, v) for item in items for k, v in item.items()]
            items = [
                v | {"key": k} if isinstance(v, dict) else {"key": k, "value": v} for k, v in pairs
            ]
        elif step == "+":
            items = [columns(items)]
        else:
            items = [i for i in items if str(i[key]) == value] if value else [i[key] for i in items]
        items = [x for item in items for x in (item if isinstance(item, list) else [item])]
    return items


def rows(source: str, items: Any, *templates: tuple[str, str]) -> list[Row]:
    """One row per item and (label, value) template pair. ``items``: a path into ``source``
    (``select``) or a function of ``source`` giving them. A template's fields name the item's
    keys (``{0[key]}`` a key that a field cannot spell); an item's ``source`` key names its
    own file."""
    items = items(source) if callable(items) else select(load(source), items)
    fill = Figures().vformat
    return [
        (fill(label, (item,), item), fill(value, (item,), item), item.get("source", source))
        for item in items
        for label, value in templates
    ]


def paired(gap: np.ndarray, digits: int) -> str:
    """mean ± standard error (ddof 1), and the seeds where the first arm is higher."""
    error = float(np.std(gap, ddof=1) / math.sqrt(len(gap))) if len(gap) > 1 else 0.0
    return f"{gap.mean():+.{digits}f} ± {error:.{digits}f} ({int((gap > 0).sum())}/{len(gap)})"


# ------------------------------------------------------------------ derived figures

Items = list[dict[str, Any]]


def secant_errors(source: str) -> Items:
    """|secant − metagradient| / |metagradient| (%) per loss and step size."""
    items = []
    for loss in ("logged PPO loss", "ratio clipping off"):
        chosen = [r for r in load(source)["rows"] if r["loss"] == loss]
        for h in ("h=1", "h=0.1", "h=0.01", "h=0.001"):
            errors = [100 * abs(r[h] - r["metagradient"]) / abs(r["metagradient"]) for r in chosen]
            items.append({"loss": loss, "h": h, "n": len(chosen), "errors": errors})
    return items


def averaged_lds(source: str) -> Items:
    lds = {(r["iteration"], r["fraction"], r["method"]): r["lds"] for r in load(source)["rows"]}
    methods = ("metagrad", "removal-avg", "path-avg")
    pairs = sorted({key[:2] for key in lds})
    return [{"it": i, "p": p, "lds": [lds[i, p, m] for m in methods]} for i, p in pairs]


def attribution_cost(source: str) -> Items:
    data = columns(load(source)["rows"])  # the presets lunarlander, minigrid_empty, hopper
    full = zip(data["metagrad_segmented_s"], data["metagrad_s"], strict=True)
    return [data | {"ratio": [s / f for s, f in full], "machine": load(source)["machine"]}]


def runlog(source: str) -> Items:
    items = [r | {"v1": r["bytes_per_step"]["1"], "v2": r["bytes_per_step"]["2"]}
             for r in load(source)["results"]]  # fmt: skip
    rebuilt = sum(r["rebuilt_checkpoints"] for r in items)
    equal = rebuilt - sum(len(r["rebuilt_mismatches"]) for r in items)
    return [r | {"ratio": r["v1"] / r["v2"], "rebuilt": rebuilt, "equal": equal} for r in items]


LIVE_ARMS = {
    "live_epoch": "∇f per epoch",
    "live_epoch_sub": "∇f per epoch on 256 records",
    "live_step": "∇f every step",
}


def live_tracin() -> list[Row]:
    """Per preset: each live arm's overheads and verdict, then replay's cost and agreement."""
    source, out = "bench_live_tracin.json", []
    goal, data = load(source)["goal_overhead"], load(source)["rows"]
    for r in data:
        name, replay = r["preset"], r["over_plain_train"]
        for arm in (arm for arm in LIVE_ARMS if arm in r["overhead_over_plain_train"]):
            o, p = r["overhead_over_plain_train"][arm], r["paired_overhead_median"][arm]
            verdict = "met" if max(o, p) <= goal else "not met"
            out.append((f"{name} ({r['optimizer']}), live, {LIVE_ARMS[arm]}: overhead of the "
                        "medians (paired median) ÷ train()",
                        f"{o:+.2f} ({p:+.2f}); goal {verdict}"))  # fmt: skip
        epochs = [f"{replay[k]:.1f}" for k in ("replay_epoch", "replay_step") if k in replay]
        same = all(r["bit_identical_to_plain"].values())
        diff = max(r["max_rel_diff_vs_replay"].values())
        out += [(f"{name}: replay TracIn ÷ train() (∇f per epoch / every step)",
                 " / ".join(epochs)),
                (f"{name}: training bit-identical with the hook; max rel. diff vs replay",
                 f"{same}; {diff:.1e}")]  # fmt: skip
    loads = ", ".join(f"{r['preset']} {r['load_average_1min_after']:.1f}" for r in data)
    return [(*row, source) for row in [*out, ("1-minute load after each preset", loads)]]


def memory_modes(source: str) -> Items:
    modes = [r | m | {"mode": mode} for r in load(source)["rows"] for mode, m in r["modes"].items()]
    return [m | {"S": "whole" if m["segment_steps"] is None else m["segment_steps"]} for m in modes]


def memory_model(source: str) -> Items:
    """The default budget, and how far the memory model's estimate lies above the peak (%)."""
    modes = [m for m in memory_modes(source) if m["estimated_peak_mib"] is not None]
    above = [100 * (m["estimated_peak_mib"] / m["saved_peak_mib"] - 1) for m in modes]
    return [load(source) | {"above": above, "mib": load(source)["default_memory_budget"] / 2**20}]


def board(source: str) -> Items:
    goal = re.search(r"Goal: ratio ≤ ([0-9.]+)", load("bench_board.md"))  # only stated there
    return [r | {"name": f"{r['preset']} ({r['iterations']} iterations × {r['repeats']})",
                 "cpu": 100 * r["board_share_cpu_median"], "goal": goal.group(1) if goal else "?",
                 "wall": 100 * r["board_share_wall_median"]}
            for r in load(source)["rows"]]  # fmt: skip


STAGES = {"hopper": "Hopper", "lunarlander": "LunarLander", "cartpole": "CartPole"}


def stage_spans(_: str) -> Items:
    """Per preset: its stages, and the second-order growth of each with the iterations after."""
    items = []
    for preset, label in STAGES.items():
        growth = {r["stage"]: float(r["so_growth"]) for r in load(f"stages/{preset}.csv")}
        end = int(list(growth)[-1].split(":")[1])
        after = ", ".join(f"{s}: {g:.2g} ({end - int(s.split(':')[1])})" for s, g in growth.items())
        items.append({"label": label, "end": end, "spans": " ".join(growth), "growth": after,
                      "source": f"stages/{preset}.csv"})  # fmt: skip
    return items


def stage_summaries(_: str) -> Items:
    """Per behaviour, the data-fixed FO (as lists over the presets) and CartPole's on-policy
    estimates, with its on-policy truth ÷ data-fixed truth."""
    summaries = [load(f"stages/{p}.json")["summary"] for p in STAGES]
    items = []
    for b in ("return", "action"):
        on_policy = summaries[-1][b]["on_policy"]
        truth = 1 / on_policy["ground_truth"]["median_abs_ratio_before_last"]
        fo = columns([s[b]["data_fixed"]["fo"] for s in summaries])
        items.append(fo | on_policy | {"b": b, "r": truth})
    return items


def stage_costs(_: str) -> Items:
    costs = columns([load(f"stages/{p}.json")["cost"] for p in STAGES])
    return [costs | {"peak": max(costs["fo_peak_mib"] + costs["so_peak_mib"])}]


def horizon(source: str) -> Items:
    """The horizon study's rows by behaviour and horizon ("return0", …)."""
    table = load(source)
    return [{r["behaviour"] + r["horizon"]: r | {"abs": abs(float(r["ground_truth"]))}
             for r in table}]  # fmt: skip


IIF = {
    "cartpole": "cartpole",
    "lunarlander": "lunarlander-iif_recut-random_recut-iif_metagrad",
    "hopper": "hopper-iif_recut-random_recut-iif_metagrad",
    "minigrid_empty": "minigrid_empty",
    "lunarlander_sgd": "lunarlander_sgd",
}


def per_seed(arm: str) -> tuple[np.ndarray, np.ndarray]:
    """AUC (mean of the evaluation curve) and final return of each LunarLander seed of ``arm``."""
    paths = sorted((RESULTS / "iif" / "lunarlander").glob(f"{arm}-s*.csv"))
    tables = [load(str(path.relative_to(RESULTS))) for path in paths]
    aucs = [auc([float(r["eval_return"]) for r in t if r["eval_return"] != "nan"]) for t in tables]
    return np.array(aucs), np.array([float(t[0]["final_return"]) for t in tables])


def iif() -> list[Row]:
    """Per preset: each arm's return and AUC, then the paired differences of its summary."""
    out = []
    for preset, stem in IIF.items():
        source = f"iif/{stem}.json"
        summary = load(source)["summary"]
        d = 3 if max(abs(v["final_mean"]) for v in summary.values()) < 10 else 1
        for arm, v in summary.items():
            reached = v["steps_to_ppo_final"]
            reached = "not reached" if reached is None or math.isnan(reached) else f"{reached:.0f}"
            sd = float(np.std(v["auc_per_seed"]))
            out.append((f"{preset} {arm}: final return; AUC (mean ± std over seeds); steps to "
                        f"PPO's final", f"{v['final_mean']:.{d}f} ± {v['final_std']:.{d}f}; "
                        f"{v['auc']:.{d}f} ± {sd:.{d}f}; {reached}", source))  # fmt: skip
        out += [(f"{preset} {name.replace('-', ' − ')}: AUC; final (mean ± s.e., seeds above)",
                 f"{paired(np.array(g['auc']), d)}; {paired(np.array(g['final']), d)}", source)
                for name, g in load(source)["paired_differences"].items()]  # fmt: skip
    # A pair the (frozen, retired script's) summary does not list, from the per-seed
    # curves, which must give the summary's own per-seed AUCs first.
    (auc_a, final_a), (auc_b, final_b) = per_seed("iif_metagrad"), per_seed("random_recut")
    summary = load(f"iif/{IIF['lunarlander']}.json")["summary"]
    for arm, aucs in (("iif_metagrad", auc_a), ("random_recut", auc_b)):
        np.testing.assert_allclose(aucs, summary[arm]["auc_per_seed"], rtol=1e-12)
    return [*out, ("lunarlander iif_metagrad − random_recut: AUC; final (mean ± s.e., seeds above)",
                   f"{paired(auc_a - auc_b, 1)}; {paired(final_a - final_b, 1)}",
                   "iif/lunarlander/{iif_metagrad,random_recut}-s*.csv")]  # fmt: skip


def recut(source: str) -> Items:
    sizes = [r["last_minibatch"] for r in load(source)["iterations"]]
    return [{"small": sum(1 <= size <= 4 for size in sizes), "n": len(sizes)}]


def quarters(source: str) -> Items:
    q = columns(load(source)["summary"])
    errors = zip(q["dropped_advantage_error"], q["kept_advantage_error"], strict=True)
    ratio = zip(q["dropped_mean_abs_advantage"], q["kept_mean_abs_advantage"], strict=True)
    q["errors"] = [f"{a:.3g} / {b:.3g}" for a, b in errors]
    return [q | {"ratio": [a / b for a, b in ratio]}]


def lifts(source: str) -> Items:
    kinds = ("fault", "payoff", "cause", "payoff_paid", "payoff_unpaid", "cause_invest",
             "cause_cash_in")  # fmt: skip
    summary, seeds = load(source)["summary"], load(source)["per_seed"]
    n = {"seeds": len(seeds), "iterations": len(next(iter(seeds.values())))}
    return [n | {"kind": k, "b": summary[f"{k}_bottom"], "t": summary[f"{k}_top"]} for k in kinds]


def detection(source: str) -> Items:
    items = []
    for setting, s in load(source)["summary"].items():
        goal, shares = s["goal"], s["sign_shares"]
        ap = {k: s["average_precision"][goal.get(k, k)] for k in ("best_score", "best_baseline")}
        shares = [f"{shares[n]['planted_suspicious_share']:.2f} vs "
                  f"{shares[n]['others_suspicious_share']:.2f}"
                  for n in ("-snapshot·return", "-tracin·return", "-metagrad·return")]  # fmt: skip
        verdict = "met" if goal["met"] else "not met"
        ap["random"] = s["average_precision"]["random"]
        items.append(goal | {"setting": setting, "ap": ap, "shares": shares, "verdict": verdict})
    return items


def corrupted_arms(source: str) -> Items:
    auc_, final = load(source)["summary"]["auc"], load(source)["summary"]["final_return"]
    items = []
    for arm in ("ppo", "iif", "random_like", "oracle", "ppo_clean"):
        p = auc_["paired_minus_ppo"].get(arm)
        gap = f"; AUC − PPO {p['mean']:+.1f} ± {p['sd']:.1f} sd ({p['wins']}/{p['n']})" if p else ""
        items.append(
            {"arm": arm, "auc": auc_[arm]["mean"], "final": final[arm]["mean"], "gap": gap}
        )
    return items


def trap_arms(source: str) -> Items:
    """Per arm: when the trap was suppressed, and the goal (every seed 2× faster than PPO,
    final return within 5 % of PPO's)."""
    data, items = load(source), []
    seeds, ppo = data["settings"]["seeds"], data["summary"]["arms"]["ppo"]["final_return_mean"]
    at = {(r["arm"], r["seed"]): r["suppressed_at"] for r in data["summary"]["rows"]}
    iterations = max(r["iterations"] for r in data["runs"])
    for arm, a in data["summary"]["arms"].items():
        faster = sum(at[arm, s] is not None and 2 * at[arm, s] <= (at["ppo", s] or iterations)
                     for s in seeds)  # fmt: skip
        met = faster == len(seeds) and (ppo - a["final_return_mean"]) / abs(ppo) <= 0.05
        verdict = "—" if arm == "ppo" else f"{faster}/{len(seeds)}; {'met' if met else 'not met'}"
        at_ = ["never" if t is None else t for t in a["suppressed_at"]]
        items.append(a | data["settings"] | {"arm": arm, "n": len(seeds), "at": at_, "v": verdict})
    return items


def whatif(source: str) -> Items:
    """Per evaluated iteration, then over all: mean Δ of the rule vs the control; pairs where
    the rule beats the control; rule Δ > 2 SE."""
    data, items = load(source), []
    results = [r for runs in data["results"].values() for r in runs]
    groups = [(f"iteration {k}", [r for r in results if r["iteration"] == k], 3, "/")
              for k in data["iterations"]]  # fmt: skip
    for at, g, d, of in [*groups, ("all (run, iteration) pairs", results, 4, " of ")]:
        delta = np.mean([r["delta"] for r in g])
        control = np.nanmean([r["control_delta"] for r in g])
        beats = sum(r["delta"] > r["control_delta"] for r in g)
        se = sum(r["delta"] > 2 * r["delta_se"] for r in g)
        value = f"{delta:+.{d}f} vs {control:+.{d}f}; {beats}{of}{len(g)}; {se}{of}{len(g)}"
        items.append({"at": at, "runs": list(data["results"]), "value": value})
    return items


ROW = ("{figure}", "{value}")  # items that are rows already
TASKS = ("frozenlake", "acrobot", "minigrid", "lunarlander", "bipedalwalker", "highway")
REGIME, SCAN = "fidelity/regime-cartpole-195.json", "fidelity/regime-cartpole-scan.json"
MEMORY, PLANTED = "metagrad_memory/bench.json", "planted_advantage_error.json"
CORRUPTED, TRAP = (
    "corrupted_rewards/corrupted_rewards.json",
    "trap_intervention/trap_intervention.json",
)
IQM = "{ap[K][iqm]:.3f} [{ap[K][low]:.3f}, {ap[K][high]:.3f}]"
HORIZON, COMPARED = "stages/cartpole-horizon.csv", "(Hopper / LunarLander / CartPole)"

# Per section: (file, items, (label, value), …) entries for ``rows``, or functions giving rows.
# fmt: off
SECTIONS: dict[str, list[Any]] = {
    "The paper suite": [(f"suite/{t}.md", "arm", (t + ", {arm}: seeds; SE_ave %; SE_peak %; AUC",
                                                  "{seeds}; {SE_ave %}; {SE_peak %}; {AUC}"))
                        for t in TASKS],
    "Performance profiles": [("suite/profiles-ppo-iif-random_like-advantage_like.md", "arm",
                              ("{arm}: runs above τ = 0.5", "{0[runs above τ = 0.5]}"))],
    "The paper suite's p sweep": [
        ("suite/p_sweep.md", "task",
         ("{task}, p = {p %} %: seeds; SE_ave % (paper); AUC; fraction dropped",
          "{seeds}; {SE_ave %} ({paper SE_ave %}); {AUC}; {fraction dropped}"))],
    "Fidelity": [("fidelity.md", "figure", ROW)],
    "Smoothness of the update map (ratio clipping)": [
        ("smoothness-lunarlander-s0-it2.json", secant_errors,
         ("{loss}: |secant({h}) − metagradient| / |metagradient|, {n} subsets",
          "{errors:….1f} %"))],
    "Why CartPole's return-target LDS turns negative": [
        (REGIME, "", ("iteration {facts[iteration]}: sd of raw Â; steps norm-clipped; subsets",
                      "{facts[advantage_std]:.4f}; {facts[steps_norm_clipped]:.0%}; "
                      "{subsets} of {fraction:.0%}")),
        (REGIME, "rows", ("iteration 195, {variant}: LDS (snapshot)", "{lds:+.3f}")),
        (REGIME, "rows/variant=as trained",
         ("iteration 195, as trained: removal that keeps the divisor (zero weight): LDS",
          "{lds_zero_weight_removal:+.3f}"),
         ("iteration 195, as trained: median |Δ_S| vs the whole update's effect on f",
          "{median_abs_effect:.2g} vs {update_effect:.2g}")),
        (SCAN, "rows", ("iteration {iteration}: sd(raw Â); LDS as trained / without normalisation",
                        "{advantage_sd:.4f}; {as trained[lds]:+.3f} / "
                        "{no advantage normalisation[lds]:+.3f}")),
        (SCAN, "rows/no advantage normalisation/+",
         ("across training: LDS without advantage normalisation", "{lds:….2f}"))],
    "Averaging the metagradient": [
        ("smoothed_metagrad-lunarlander.json", averaged_lds,
         ("iteration {it}, {p:.0%} drops: LDS exact / removal-avg / path-avg", "{lds:.3f}"))],
    "Cost": [
        ("bench_attribution.json", attribution_cost, ("presets", "{preset}"),
         ("metagrad ÷ SB3 train()", "{metagrad_over_train:.2f}"),
         ("metagrad peak memory growth (MiB)", "{metagrad_peak_rss_growth_mib:.0f}"),
         ("segmented metagrad peak memory growth (MiB)",
          "{metagrad_segmented_peak_rss_growth_mib:.0f}"),
         ("segmented metagrad ÷ SB3 train()", "{metagrad_segmented_over_train:.1f}"),
         ("segment length S (steps)", "{metagrad_segment_steps}"),
         ("segmented ÷ full metagrad time", "{ratio:.2f}"),
         ("snapshot ÷ SB3 train()", "{snapshot_over_train:.3f}"),
         ("TracIn ÷ SB3 train()", "{tracin_over_train:.1f}"),
         ("TracIn with ∇f once per epoch ÷ SB3 train()",
          "{tracin_target_per_epoch_over_train:.1f}"),
         ("load average when written", "{machine[load_average_1min]}")),
        ("bench_iif.json", "rows",
         ("IIF ÷ PPO seconds per iteration, {preset} (per-seed mean ± std)",
          "{ratio:.3f} ({ratio_per_seed_mean:.3f} ± {ratio_per_seed_std:.2f})"))],
    "Run-log size, format 1 vs 2": [
        ("bench_runlog_size.json", "",
         ("goal: bytes per environment step", "≤ {goal_bytes_per_step}")),
        ("bench_runlog_size.json", runlog,
         ("{preset} ({timesteps} steps, {iterations} iterations, checkpoint_every "
          "{checkpoint_every}): bytes per step, format 1 → 2",
          "{v1:.0f} → {v2:.1f} ({ratio:.1f}× smaller)"),
         ("{preset}: reaching the farthest iteration ({replays_to_farthest} replays) from a fresh "
          "log, format 2 vs format 1 (s)", "{reach[v2_rebuilt_s]:.1f} vs {reach[v1_direct_s]:.4f}"),
         ("{preset}: seconds per replay", "{seconds_per_replay:.2f}"),
         ("{preset}: final states of the two runs equal", "{same_final_state}")),
        ("bench_runlog_size.json", lambda s: runlog(s)[:1],
         ("checkpoints rebuilt by replay, equal (torch.equal) to format 1's full ones",
          "{equal} of {rebuilt}"))],
    "Live TracIn cost": [
        ("bench_live_tracin.json", "",
         ("goal: live TracIn overhead ÷ train() (both statistics)", "≤ {goal_overhead}")),
        live_tracin],
    "Metagradient memory under a budget": [
        (MEMORY, memory_model, ("default budget (MiB)", "{mib:.0f}")),
        (MEMORY, memory_modes,
         ("{preset} (T = {optimizer_steps}), {mode}: segment S; saved-tensor peak / RSS growth "
          "(MiB); time ÷ train(); max |Δscore| ÷ max |score|",
          "{S}; {saved_peak_mib:.0f} / {rss_growth_mib:.0f}; {over_train:.2f}; "
          "{max_abs_diff_vs_whole_over_max:.1e}")),
        (MEMORY, memory_model, ("load average when written", "{machine[load_average_1min]}"),
         ("memory-model estimate above the measured saved-tensor peak (budgeted modes)",
          "{above:….1f} %"))],
    "Live board cost": [
        ("bench_board.json", "", ("command", "{command}")),
        ("bench_board.md", lambda _: board("bench_board.json")[:1], ("goal: on ÷ off", "≤ {goal}")),
        ("bench_board.json", board,
         ("{name}: on ÷ off, CPU / wall (medians)",
          "{ratio_cpu_median:.3f} / {ratio_wall_median:.3f}"),
         ("{name}: the board's measured share, CPU / wall (median)", "{cpu:.1f} % / {wall:.1f} %"),
         ("{name}: fidelity_every={fidelity_every}: CPU / wall ratio; s per check",
          "{fidelity_ratio_cpu_median:.2f} / {fidelity_ratio_wall_median:.2f}; "
          "{fidelity_s_per_check:.1f}"),
         ("{name}: 1-minute load (median)", "{load_median:.1f}"))],
    "Stage effects": [
        ("", stage_spans, ("{label}: iterations, stages", "{end}, {spans}")),
        ("stages/{hopper,lunarlander,cartpole}.json", stage_summaries,
         ("{b} behaviour, data-fixed: median |FO|/|truth|, first three stages " + COMPARED,
          "{median_abs_ratio_before_last:.3g}"),
         ("{b} behaviour, data-fixed: Spearman(FO, truth) over 4 stages", "{spearman:.1f}")),
        ("", stage_spans,
         ("{label}: SO growth ‖e_T‖/‖δ‖ per stage (later iterations)", "{growth}")),
        (HORIZON, horizon,
         ("horizon study, h = 0, return: difference estimate vs truth",
          "{return0[fo_difference]:.3g} vs {return0[ground_truth]:.3g}"),
         ("horizon study, h = 1, return: FO / SO / truth",
          "{return1[fo]:.2g} / {return1[so]:.2g} / {return1[ground_truth]:.2g}"),
         ("horizon study: SO growth at h = 32 / 64 / 128", "{return32[so_growth]:.3g} / "
          "{return64[so_growth]:.3g} / {return128[so_growth]:.3g}")),
        ("stages/cartpole-horizon-noclip.csv", horizon,
         ("no ratio clipping: |data-fixed action effect| at h = 0 → h = 16",
          "{action0[abs]:.2g} → {action16[abs]:.2g}")),
        ("stages/cartpole.json", lambda s: stage_summaries(s)[::-1],
         ("CartPole on-policy, {b}: Spearman FO / difference estimate; median |FO|/|truth|, "
          "|difference|/|truth|", "{fo[spearman]:.1f} / {fo_difference[spearman]:.1f}; "
          "{fo[median_abs_ratio_before_last]:.2f}, "
          "{fo_difference[median_abs_ratio_before_last]:.2f}"),
         ("CartPole, {b}: on-policy truth ÷ data-fixed truth (median, first three stages)",
          "{r:.0f}")),
        ("stages/*.json", stage_costs,
         ("cost of all 4 stages ÷ one replay: FO", "{fo_over_replay:….1f}"),
         ("cost of all 4 stages ÷ one replay: SO", "{so_over_replay:….1f}"),
         ("cost of all 4 stages ÷ one replay: data-fixed truth", "{ground_truth_over_replay:….1f}"),
         ("largest peak memory growth (MiB)", "{peak:.2f}"))],
    "IIF": [
        iif,
        ("iif/recut_remainder-hopper-s0.json", recut,
         ("Hopper re-cut: iterations whose last minibatch holds 1–4 records", "{small} of {n}")),
        *[(f"iif/diagnostics-{p}-s0.json", quarters,
           ("fraction dropped, by quarter: " + p, "{fraction_dropped:.3f}"),
           (p + ": |Â| dropped ÷ |Â| kept, by quarter", "{ratio:.1f}"),
           (p + ": advantage error dropped / kept, by quarter", "{errors:,}"),
           (p + ": corr(score, advantage error), by quarter", "{score_advantage_error_corr:.3f}"))
          for p in ("cartpole", "lunarlander")]],
    "Planted advantage error by flag kind": [
        (PLANTED, lambda s: lifts(s)[:1], ("seeds × iterations", "{seeds} × {iterations}")),
        (PLANTED, lifts, ("{kind}: lift bottom (median; share ≥ 2×; per-seed range) / lift top",
                          "{b[lift_mean]:.2f} ({b[lift_median]:.2f}; {b[share_lift_2]:.0%}; "
                          "{b[per_seed_lift_mean]:….2f}) / {t[lift_mean]:.2f}")),
        (PLANTED, "summary/fault_by_advantage_bottom",
         ("control: flagged records, k lowest Â: lift (median; share ≥ 2×)",
          "{lift_mean:.2f} ({lift_median:.2f}; {share_lift_2:.0%})"))],
    "Detection study": [
        ("detection/detection.json", detection,
         ("{setting}: best score {best_score}, AUPRC IQM [95 % CI]",
          IQM.replace("K", "best_score")),
         ("{setting}: best baseline {best_baseline}", IQM.replace("K", "best_baseline")),
         ("{setting}: random ranking", IQM.replace("K", "random")),
         ("{setting}: goal (best score ≥ 2× best baseline): ratio; return scores only",
          "{ratio:.2f}; {ratio_return_scores_only:.2f} ({verdict})"),
         ("{setting}: share on the suspicious side, planted vs others "
          "(−snapshot / −TracIn / −metagrad · return)", "{shares:,}"))],
    "Corrupted rewards": [
        (CORRUPTED, "summary", ("seeds (paired)", "{seeds:,}")),
        (CORRUPTED, corrupted_arms, ("{arm}: mean AUC of the true-return curve; mean final return",
                                     "{auc:.0f}; {final:.0f}{gap}")),
        (CORRUPTED, "summary", ("iif: final return per seed", "{final_return[iif][per_seed]:,.0f}"),
         ("recovery (IIF − PPO) ÷ (oracle − PPO): AUC; final return (goal ≥ 0.5)",
          "{auc[recovery]:.2f}; {final_return[recovery]:.2f}"),
         ("IIF: share of the buffer dropped; of those, flagged (random_like: flagged); of the "
          "flagged, dropped", "{drops[iif][fraction_dropped]:.1%}; "
          "{drops[iif][dropped_flagged]:.1%} ({drops[random_like][dropped_flagged]:.1%}); "
          "{drops[iif][flagged_dropped]:.1%}"))],
    "Trap intervention": [
        (TRAP, lambda s: trap_arms(s)[:1], ("budget; seeds", "{budget}; {n}")),
        (TRAP, trap_arms, ("{arm}: final return mean ± sd; suppressed (at iteration per seed); "
                           "2× faster than PPO; goal", "{final_return_mean:+.3f} ± "
                           "{final_return_sd:.3f}; {suppressed_runs}/{n} ({at:,}); {v}")),
        (TRAP, "final_left_probability_bottom_row/*",
         ("{key}: final π(LEFT) on the way to the goal, per seed", "{value:.3f}"))],
    "What-if (FrozenLake, then the trap runs)": [
        entry
        for source in ("whatif_frozenlake/whatif.json", "trap_intervention/whatif/whatif.json")
        for entry in [(source, lambda s: whatif(s)[:1], ("runs", "{runs:,}")),
                      (source, "config",
                       ("rule; evaluation episodes per policy", "{rule}; {episodes}")),
                      (source, whatif, ("{at}: mean Δ rule vs control; rule > control; "
                                        "rule Δ > 2 SE", "{value}"))]],
}
# fmt: on


def main() -> None:
    lines = markdown_header(
        "Figures quoted in the README, from the committed result files", provenance()
    )
    lines += [
        "Every number in the README's results (and the segmented-metagradient line of its "
        "tour) is in this file; the source column is relative to experiments/results/.",
        "",
    ]
    for title, entries in SECTIONS.items():
        lines += [f"## {title}", "", "| figure | value | source |", "|---|---|---|"]
        for entry in entries:
            for row in rows(*entry) if isinstance(entry, tuple) else entry():
                lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    (RESULTS / "readme_figures.md").write_text(text)


if __name__ == "__main__":
    main()
