"""Every figure the README's results quote, recomputed from the committed result files.

    python experiments/readme_figures.py

prints one table per README bullet ("What we measured", and the segmented-metagradient
line of the tour) and writes it to experiments/results/readme_figures.md. Each row names
the file the number comes from; nothing here runs an experiment. A README number that is
not in this output has no committed source.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, markdown_header, provenance

Row = tuple[str, str, str]  # figure, value, source (relative to experiments/results)

METHODS = ("snapshot", "tracin", "metagrad")


def _json(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def _csv(name: str) -> list[dict[str, str]]:
    with open(RESULTS / name) as handle:
        return list(csv.DictReader(handle))


def _slash(values: Iterable[float], digits: int = 2) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


def _span(values: Iterable[float], fmt: str = ".2f") -> str:
    values = list(values)
    return f"{min(values):{fmt}} … {max(values):{fmt}}"


def _paired(gap: np.ndarray, digits: int) -> str:
    """mean ± standard error (ddof 1), and the seeds where the first arm is higher."""
    error = float(np.std(gap, ddof=1) / math.sqrt(len(gap))) if len(gap) > 1 else 0.0
    return f"{gap.mean():+.{digits}f} ± {error:.{digits}f} ({int((gap > 0).sum())}/{len(gap)})"


# --------------------------------------------------------------------------- fidelity


FIDELITY_PRESETS = {
    "minigrid_empty": "MiniGrid",
    "lunarlander_sgd": "LunarLander-SGD",
    "lunarlander": "LunarLander (Adam)",
    "hopper": "Hopper (Adam)",
    "cartpole": "CartPole",
}


def fidelity() -> list[Row]:
    rows: list[Row] = []
    cells: dict[tuple, dict[str, dict[str, str]]] = {}
    for preset in FIDELITY_PRESETS:
        for r in _csv(f"fidelity/{preset}.csv"):
            key = (preset, int(r["iteration"]), r["target"], float(r["fraction"]))
            cells.setdefault(key, {})[r["method"]] = r
    subsets = sorted({int(r["subsets"]) for c in cells.values() for r in c.values()})
    seeds = sorted({int(r["seed"]) for c in cells.values() for r in c.values()})
    rows.append(("random subsets per cell", f"{subsets[0]}–{subsets[-1]}", "fidelity/*.csv"))
    rows.append(("seeds", ", ".join(map(str, seeds)), "fidelity/*.csv"))
    for preset, label in FIDELITY_PRESETS.items():
        mine = {k: v for k, v in cells.items() if k[0] == preset}
        medians = [statistics.median(float(v[m]["lds"]) for v in mine.values()) for m in METHODS]
        ceiling = statistics.median(float(v["snapshot"]["ceiling"]) for v in mine.values())
        iterations = sorted({k[1] for k in mine})
        rows.append(
            (
                f"{label}: median LDS snapshot / TracIn / metagrad over {len(mine)} cells "
                f"(iterations {', '.join(map(str, iterations))})",
                _slash(medians),
                f"fidelity/{preset}.csv",
            )
        )
        rows.append((f"{label}: median ceiling", f"{ceiling:.3f}", f"fidelity/{preset}.csv"))
    tracin_wins = sum(
        float(v["tracin"]["lds"]) > float(v["snapshot"]["lds"]) for v in cells.values()
    )
    metagrad_best = sum(
        float(v["metagrad"]["lds"]) > max(float(v["tracin"]["lds"]), float(v["snapshot"]["lds"]))
        for v in cells.values()
    )
    rows.append(
        ("cells where TracIn > snapshot", f"{tracin_wins} of {len(cells)}", "fidelity/*.csv")
    )
    rows.append(
        (
            "cells where metagrad is the best of three",
            f"{metagrad_best} of {len(cells)}",
            "fidelity/*.csv",
        )
    )

    def lds_range(preset: str, iteration: int, target: str) -> tuple[list[float], list[float]]:
        chosen = [v for k, v in cells.items() if k[:3] == (preset, iteration, target)]
        return (
            [float(v[m]["lds"]) for v in chosen for m in METHODS],
            [float(v["snapshot"]["ceiling"]) for v in chosen],
        )

    lds, ceilings = lds_range("minigrid_empty", 43, "return")
    rows.append(
        (
            "MiniGrid iteration 43, return target: LDS, all methods and drops",
            _span(lds),
            "fidelity/minigrid_empty.csv",
        )
    )
    rows.append(
        (
            "MiniGrid iteration 43, return target: ceilings",
            _span(ceilings),
            "fidelity/minigrid_empty.csv",
        )
    )
    lds, ceilings = lds_range("cartpole", 195, "return")
    rows.append(
        (
            "CartPole iteration 195, return target: LDS, all methods and drops",
            _span(lds),
            "fidelity/cartpole.csv",
        )
    )
    cartpole_ceilings = [
        float(v["snapshot"]["ceiling"]) for k, v in cells.items() if k[0] == "cartpole"
    ]
    rows.append(
        (
            "CartPole: ceilings (one minibatch per epoch)",
            _span(cartpole_ceilings, ".3f"),
            "fidelity/cartpole.csv",
        )
    )
    return rows


def smoothness() -> list[Row]:
    source = "smoothness-lunarlander-s0-it2.json"
    data = _json(source)
    rows: list[Row] = []
    for loss in ("logged PPO loss", "ratio clipping off"):
        chosen = [r for r in data["rows"] if r["loss"] == loss]
        for h in ("h=1", "h=0.1", "h=0.01", "h=0.001"):
            errors = [abs(r[h] - r["metagradient"]) / abs(r["metagradient"]) for r in chosen]
            rows.append(
                (
                    f"{loss}: |secant({h}) − metagradient| / |metagradient|, {len(chosen)} subsets",
                    _span((100 * e for e in errors), ".1f") + " %",
                    source,
                )
            )
    return rows


def smoothed_metagrad() -> list[Row]:
    source = "smoothed_metagrad-lunarlander.json"
    data = _json(source)
    lds = {(r["iteration"], r["fraction"], r["method"]): r["lds"] for r in data["rows"]}
    order = ("metagrad", "removal-avg", "path-avg")
    rows: list[Row] = []
    for iteration in sorted({k[0] for k in lds}):
        for fraction in sorted({k[1] for k in lds if k[0] == iteration}):
            rows.append(
                (
                    f"iteration {iteration}, {fraction:.0%} drops: "
                    "LDS exact / removal-avg / path-avg",
                    _slash((lds[(iteration, fraction, m)] for m in order), 3),
                    source,
                )
            )
    return rows


# --------------------------------------------------------------------------- cost


def cost() -> list[Row]:
    source = "bench_attribution.json"
    data = {r["preset"]: r for r in _json(source)["rows"]}
    presets = ("lunarlander", "minigrid_empty", "hopper")
    rows: list[Row] = [("presets", " / ".join(presets), source)]

    def line(label: str, key: str, digits: int) -> None:
        rows.append((label, _slash((data[p][key] for p in presets), digits), source))

    line("metagrad ÷ SB3 train()", "metagrad_over_train", 2)
    line("metagrad peak memory growth (MiB)", "metagrad_peak_rss_growth_mib", 0)
    line("segmented metagrad peak memory growth (MiB)", "metagrad_segmented_peak_rss_growth_mib", 0)
    line("segmented metagrad ÷ SB3 train()", "metagrad_segmented_over_train", 1)
    rows.append(
        (
            "segment length S (steps)",
            " / ".join(str(data[p]["metagrad_segment_steps"]) for p in presets),
            source,
        )
    )
    rows.append(
        (
            "segmented ÷ full metagrad time",
            _slash((data[p]["metagrad_segmented_s"] / data[p]["metagrad_s"] for p in presets), 2),
            source,
        )
    )
    line("snapshot ÷ SB3 train()", "snapshot_over_train", 3)
    line("TracIn ÷ SB3 train()", "tracin_over_train", 1)
    line("TracIn with ∇f once per epoch ÷ SB3 train()", "tracin_target_per_epoch_over_train", 1)
    rows.append(
        ("load average when written", f"{_json(source)['machine']['load_average_1min']}", source)
    )
    bench = {r["preset"]: r for r in _json("bench_iif.json")["rows"]}
    for preset, r in bench.items():
        rows.append(
            (
                f"IIF ÷ PPO seconds per iteration, {preset} (per-seed mean ± std)",
                f"{r['ratio']:.3f} "
                f"({r['ratio_per_seed_mean']:.3f} ± {r['ratio_per_seed_std']:.2f})",
                "bench_iif.json",
            )
        )
    return rows


# --------------------------------------------------------------------------- stages


def stages() -> list[Row]:
    rows: list[Row] = []
    names = {"hopper": "Hopper", "lunarlander": "LunarLander", "cartpole": "CartPole"}
    for preset, label in names.items():
        table = _csv(f"stages/{preset}.csv")
        spans = list(dict.fromkeys(r["stage"] for r in table))
        end = int(spans[-1].split(":")[1])
        rows.append(
            (f"{label}: iterations, stages", f"{end}, {' '.join(spans)}", f"stages/{preset}.csv")
        )
    for behaviour in ("return", "action"):
        ratios, spearmans = [], []
        for preset in names:
            fo = _json(f"stages/{preset}.json")["summary"][behaviour]["data_fixed"]["fo"]
            ratios.append(fo["median_abs_ratio_before_last"])
            spearmans.append(fo["spearman"])
        rows.append(
            (
                f"{behaviour} behaviour, data-fixed: median |FO|/|truth|, first three stages "
                "(Hopper / LunarLander / CartPole)",
                " / ".join(f"{r:.3g}" for r in ratios),
                "stages/{hopper,lunarlander,cartpole}.json",
            )
        )
        rows.append(
            (
                f"{behaviour} behaviour, data-fixed: Spearman(FO, truth) over 4 stages",
                _slash(spearmans, 1),
                "stages/{hopper,lunarlander,cartpole}.json",
            )
        )
    for preset, label in names.items():
        growth = {}
        for r in _csv(f"stages/{preset}.csv"):
            growth[r["stage"]] = float(r["so_growth"])
        later = {s: int(list(growth)[-1].split(":")[1]) - int(s.split(":")[1]) for s in growth}
        rows.append(
            (
                f"{label}: SO growth ‖e_T‖/‖δ‖ per stage (later iterations)",
                ", ".join(f"{s}: {g:.2g} ({later[s]})" for s, g in growth.items()),
                f"stages/{preset}.csv",
            )
        )
    horizon = {(int(r["horizon"]), r["behaviour"]): r for r in _csv("stages/cartpole-horizon.csv")}
    source = "stages/cartpole-horizon.csv"
    h0 = horizon[(0, "return")]
    rows.append(
        (
            "horizon study, h = 0, return: difference estimate vs truth",
            f"{float(h0['fo_difference']):.3g} vs {float(h0['ground_truth']):.3g}",
            source,
        )
    )
    h1 = horizon[(1, "return")]
    rows.append(
        (
            "horizon study, h = 1, return: FO / SO / truth",
            " / ".join(f"{float(h1[k]):.2g}" for k in ("fo", "so", "ground_truth")),
            source,
        )
    )
    rows.append(
        (
            "horizon study: SO growth at h = 32 / 64 / 128",
            " / ".join(f"{float(horizon[(h, 'return')]['so_growth']):.3g}" for h in (32, 64, 128)),
            source,
        )
    )
    noclip = {
        (int(r["horizon"]), r["behaviour"]): r for r in _csv("stages/cartpole-horizon-noclip.csv")
    }
    rows.append(
        (
            "no ratio clipping: |data-fixed action effect| at h = 0 → h = 16",
            f"{abs(float(noclip[(0, 'action')]['ground_truth'])):.2g} → "
            f"{abs(float(noclip[(16, 'action')]['ground_truth'])):.2g}",
            "stages/cartpole-horizon-noclip.csv",
        )
    )
    on_policy = _json("stages/cartpole.json")["summary"]
    for behaviour in ("action", "return"):
        s = on_policy[behaviour]["on_policy"]
        rows.append(
            (
                f"CartPole on-policy, {behaviour}: Spearman FO / difference estimate; "
                "median |FO|/|truth|, |difference|/|truth|",
                f"{s['fo']['spearman']:.1f} / {s['fo_difference']['spearman']:.1f}; "
                f"{s['fo']['median_abs_ratio_before_last']:.2f}, "
                f"{s['fo_difference']['median_abs_ratio_before_last']:.2f}",
                "stages/cartpole.json",
            )
        )
        rows.append(
            (
                f"CartPole, {behaviour}: on-policy truth ÷ data-fixed truth "
                "(median, first three stages)",
                f"{1 / s['ground_truth']['median_abs_ratio_before_last']:.0f}",
                "stages/cartpole.json",
            )
        )
    costs = [_json(f"stages/{p}.json")["cost"] for p in names]
    for key, label in (
        ("fo_over_replay", "FO"),
        ("so_over_replay", "SO"),
        ("ground_truth_over_replay", "data-fixed truth"),
    ):
        rows.append(
            (
                f"cost of all 4 stages ÷ one replay: {label}",
                _span((c[key] for c in costs), ".1f"),
                "stages/*.json",
            )
        )
    peak = max(max(c["fo_peak_mib"], c["so_peak_mib"]) for c in costs)
    rows.append(("largest peak memory growth (MiB)", f"{peak:.2f}", "stages/*.json"))
    return rows


# --------------------------------------------------------------------------- IIF


def _per_seed(preset: str, arm: str) -> tuple[np.ndarray, np.ndarray]:
    """AUC (mean of the evaluation curve) and final return of each seed of ``arm``."""
    aucs, finals = [], []
    for path in sorted((RESULTS / "iif" / preset).glob(f"{arm}-s*.csv")):
        with open(path) as handle:
            table = list(csv.DictReader(handle))
        curve = [float(r["eval_return"]) for r in table if r["eval_return"] != "nan"]
        aucs.append(float(np.mean(curve)))
        finals.append(float(table[0]["final_return"]))
    return np.array(aucs), np.array(finals)


IIF_FILES = {
    "cartpole": "cartpole",
    "lunarlander": "lunarlander-iif_recut-random_recut-iif_metagrad",
    "hopper": "hopper-iif_recut-random_recut-iif_metagrad",
    "minigrid_empty": "minigrid_empty",
    "lunarlander_sgd": "lunarlander_sgd",
}


def iif() -> list[Row]:
    rows: list[Row] = []
    for preset, stem in IIF_FILES.items():
        source = f"iif/{stem}.json"
        data = _json(source)
        summary = data["summary"]
        digits = 3 if max(abs(v["final_mean"]) for v in summary.values()) < 10 else 1
        for arm, v in summary.items():
            reached = v["steps_to_ppo_final"]
            reached = "not reached" if reached is None or math.isnan(reached) else f"{reached:.0f}"
            rows.append(
                (
                    f"{preset} {arm}: final return; AUC (mean ± std over seeds); "
                    "steps to PPO's final",
                    f"{v['final_mean']:.{digits}f} ± {v['final_std']:.{digits}f}; "
                    f"{v['auc']:.{digits}f} ± {float(np.std(v['auc_per_seed'])):.{digits}f}; "
                    f"{reached}",
                    source,
                )
            )
        for name, gaps in data["paired_differences"].items():
            first, second = name.split("-")
            rows.append(
                (
                    f"{preset} {first} − {second}: AUC; final (mean ± s.e., seeds above)",
                    f"{_paired(np.array(gaps['auc']), digits)}; "
                    f"{_paired(np.array(gaps['final']), digits)}",
                    source,
                )
            )
    # A pair the summary table does not list, from the per-seed curves (which must give
    # the summary's own per-seed AUCs first).
    summary = _json(f"iif/{IIF_FILES['lunarlander']}.json")["summary"]
    auc_a, final_a = _per_seed("lunarlander", "iif_metagrad")
    auc_b, final_b = _per_seed("lunarlander", "random_recut")
    for arm, aucs in (("iif_metagrad", auc_a), ("random_recut", auc_b)):
        np.testing.assert_allclose(aucs, summary[arm]["auc_per_seed"], rtol=1e-12)
    rows.append(
        (
            "lunarlander iif_metagrad − random_recut: AUC; final (mean ± s.e., seeds above)",
            f"{_paired(auc_a - auc_b, 1)}; {_paired(final_a - final_b, 1)}",
            "iif/lunarlander/{iif_metagrad,random_recut}-s*.csv",
        )
    )
    remainder = _json("iif/recut_remainder-hopper-s0.json")
    sizes = [r["last_minibatch"] for r in remainder["iterations"]]
    rows.append(
        (
            "Hopper re-cut: iterations whose last minibatch holds 1–4 records",
            f"{sum(1 <= s <= 4 for s in sizes)} of {len(sizes)}",
            "iif/recut_remainder-hopper-s0.json",
        )
    )
    for preset in ("cartpole", "lunarlander"):
        source = f"iif/diagnostics-{preset}-s0.json"
        quarters = _json(source)["summary"]
        rows.append(
            (
                "fraction dropped, by quarter: " + preset,
                _slash((q["fraction_dropped"] for q in quarters), 3),
                source,
            )
        )
        rows.append(
            (
                f"{preset}: |Â| dropped ÷ |Â| kept, by quarter",
                _slash(
                    (
                        q["dropped_mean_abs_advantage"] / q["kept_mean_abs_advantage"]
                        for q in quarters
                    ),
                    1,
                ),
                source,
            )
        )
        rows.append(
            (
                f"{preset}: advantage error dropped / kept, by quarter",
                ", ".join(
                    f"{q['dropped_advantage_error']:.3g} / {q['kept_advantage_error']:.3g}"
                    for q in quarters
                ),
                source,
            )
        )
        rows.append(
            (
                f"{preset}: corr(score, advantage error), by quarter",
                _slash((q["score_advantage_error_corr"] for q in quarters), 3),
                source,
            )
        )
    return rows


# --------------------------------------------------------------------------- run log size


def run_log_size() -> list[Row]:
    source = "bench_runlog_size.json"
    data = _json(source)
    rows: list[Row] = [
        ("goal: bytes per environment step", f"≤ {data['goal_bytes_per_step']}", source)
    ]
    rebuilt = mismatched = 0
    for r in data["results"]:
        name, per_step = r["preset"], r["bytes_per_step"]
        rebuilt += r["rebuilt_checkpoints"]
        mismatched += len(r["rebuilt_mismatches"])
        rows.append(
            (
                f"{name} ({r['timesteps']} steps, {r['iterations']} iterations, "
                f"checkpoint_every {r['checkpoint_every']}): bytes per step, format 1 → 2",
                f"{per_step['1']:.0f} → {per_step['2']:.1f} "
                f"({per_step['1'] / per_step['2']:.1f}× smaller)",
                source,
            )
        )
        rows.append(
            (
                f"{name}: reaching the farthest iteration ({r['replays_to_farthest']} replays) "
                "from a fresh log, format 2 vs format 1 (s)",
                f"{r['reach']['v2_rebuilt_s']:.1f} vs {r['reach']['v1_direct_s']:.4f}",
                source,
            )
        )
        rows.append((f"{name}: seconds per replay", f"{r['seconds_per_replay']:.2f}", source))
        rows.append(
            (f"{name}: final states of the two runs equal", str(r["same_final_state"]), source)
        )
    rows.append(
        (
            "checkpoints rebuilt by replay, equal (torch.equal) to format 1's full ones",
            f"{rebuilt - mismatched} of {rebuilt}",
            source,
        )
    )
    return rows


# --------------------------------------------------------------------------- live TracIn

LIVE_ARMS = {
    "live_epoch": "∇f per epoch",
    "live_epoch_sub": "∇f per epoch on 256 records",
    "live_step": "∇f every step",
}


def live_tracin() -> list[Row]:
    source = "bench_live_tracin.json"
    data = _json(source)
    goal = data["goal_overhead"]
    rows: list[Row] = [
        ("goal: live TracIn overhead ÷ train() (both statistics)", f"≤ {goal}", source)
    ]
    for r in data["rows"]:
        name = r["preset"]
        for arm, label in LIVE_ARMS.items():
            if arm not in r["overhead_over_plain_train"]:
                continue
            overhead = r["overhead_over_plain_train"][arm]
            paired = r["paired_overhead_median"][arm]
            rows.append(
                (
                    f"{name} ({r['optimizer']}), live, {label}: overhead of the medians "
                    "(paired median) ÷ train()",
                    f"{overhead:+.2f} ({paired:+.2f}); goal "
                    f"{'met' if max(overhead, paired) <= goal else 'not met'}",
                    source,
                )
            )
        replay = [
            r["over_plain_train"][k]
            for k in ("replay_epoch", "replay_step")
            if k in r["over_plain_train"]
        ]
        rows.append(
            (
                f"{name}: replay TracIn ÷ train() (∇f per epoch / every step)",
                _slash(replay, 1),
                source,
            )
        )
        rows.append(
            (
                f"{name}: training bit-identical with the hook; max rel. diff vs replay",
                f"{all(r['bit_identical_to_plain'].values())}; "
                f"{max(r['max_rel_diff_vs_replay'].values()):.1e}",
                source,
            )
        )
    rows.append(
        (
            "1-minute load after each preset",
            ", ".join(f"{r['preset']} {r['load_average_1min_after']:.1f}" for r in data["rows"]),
            source,
        )
    )
    return rows


# --------------------------------------------------------------------------- metagradient memory


def metagrad_memory() -> list[Row]:
    source = "metagrad_memory/bench.json"
    data = _json(source)
    rows: list[Row] = [
        ("default budget (MiB)", f"{data['default_memory_budget'] / 2**20:.0f}", source)
    ]
    above = []
    for r in data["rows"]:
        for mode, m in r["modes"].items():
            segment = "whole" if m["segment_steps"] is None else str(m["segment_steps"])
            rows.append(
                (
                    f"{r['preset']} (T = {r['optimizer_steps']}), {mode}: segment S; saved-tensor "
                    "peak / RSS growth (MiB); time ÷ train(); max |Δscore| ÷ max |score|",
                    f"{segment}; {m['saved_peak_mib']:.0f} / {m['rss_growth_mib']:.0f}; "
                    f"{m['over_train']:.2f}; {m['max_abs_diff_vs_whole_over_max']:.1e}",
                    source,
                )
            )
            if m["estimated_peak_mib"] is not None:
                above.append(m["estimated_peak_mib"] / m["saved_peak_mib"] - 1)
    rows.append(("load average when written", f"{data['machine']['load_average_1min']}", source))
    rows.append(
        (
            "memory-model estimate above the measured saved-tensor peak (budgeted modes)",
            _span((100 * a for a in above), ".1f") + " %",
            source,
        )
    )
    return rows


# --------------------------------------------------------------------------- board cost


def board_cost() -> list[Row]:
    source = "bench_board.json"
    data = _json(source)
    rows: list[Row] = [("command", data["command"], source)]
    # The goal is stated only in the Markdown the benchmark writes beside its JSON.
    goal = re.search(r"Goal: ratio ≤ ([0-9.]+)", (RESULTS / "bench_board.md").read_text())
    rows.append(("goal: on ÷ off", f"≤ {goal.group(1) if goal else '?'}", "bench_board.md"))
    for r in data["rows"]:
        name = f"{r['preset']} ({r['iterations']} iterations × {r['repeats']})"
        rows.append(
            (
                f"{name}: on ÷ off, CPU / wall (medians)",
                f"{r['ratio_cpu_median']:.3f} / {r['ratio_wall_median']:.3f}",
                source,
            )
        )
        rows.append(
            (
                f"{name}: the board's measured share, CPU / wall (median)",
                f"{100 * r['board_share_cpu_median']:.1f} % / "
                f"{100 * r['board_share_wall_median']:.1f} %",
                source,
            )
        )
        rows.append(
            (
                f"{name}: fidelity_every={r['fidelity_every']}: CPU / wall ratio; s per check",
                f"{r['fidelity_ratio_cpu_median']:.2f} / {r['fidelity_ratio_wall_median']:.2f}; "
                f"{r['fidelity_s_per_check']:.1f}",
                source,
            )
        )
        rows.append((f"{name}: 1-minute load (median)", f"{r['load_median']:.1f}", source))
    return rows


# --------------------------------------------------------------------------- planted errors


def planted_advantage_error() -> list[Row]:
    source = "planted_advantage_error.json"
    data = _json(source)
    summary = data["summary"]
    seeds = data["per_seed"]
    rows: list[Row] = [
        (
            "seeds × iterations",
            f"{len(seeds)} × {len(next(iter(seeds.values())))}",
            source,
        )
    ]
    for kind in (
        "fault",
        "payoff",
        "cause",
        "payoff_paid",
        "payoff_unpaid",
        "cause_invest",
        "cause_cash_in",
    ):
        bottom, top = summary[f"{kind}_bottom"], summary[f"{kind}_top"]
        rows.append(
            (
                f"{kind}: lift bottom (median; share ≥ 2×; per-seed range) / lift top",
                f"{bottom['lift_mean']:.2f} ({bottom['lift_median']:.2f}; "
                f"{bottom['share_lift_2']:.0%}; {_span(bottom['per_seed_lift_mean'])}) / "
                f"{top['lift_mean']:.2f}",
                source,
            )
        )
    control = summary["fault_by_advantage_bottom"]
    rows.append(
        (
            "control: flagged records, k lowest Â: lift (median; share ≥ 2×)",
            f"{control['lift_mean']:.2f} ({control['lift_median']:.2f}; "
            f"{control['share_lift_2']:.0%})",
            source,
        )
    )
    return rows


# --------------------------------------------------------------------------- CartPole regime


def fidelity_regime() -> list[Row]:
    source = "fidelity/regime-cartpole-195.json"
    data = _json(source)
    facts = data["facts"]
    rows: list[Row] = [
        (
            f"iteration {facts['iteration']}: sd of raw Â; steps norm-clipped; subsets",
            f"{facts['advantage_std']:.4f}; {facts['steps_norm_clipped']:.0%}; "
            f"{data['subsets']} of {data['fraction']:.0%}",
            source,
        )
    ]
    for r in data["rows"]:
        rows.append((f"iteration 195, {r['variant']}: LDS (snapshot)", f"{r['lds']:+.3f}", source))
    trained = next(r for r in data["rows"] if r["variant"] == "as trained")
    rows.append(
        (
            "iteration 195, as trained: removal that keeps the divisor (zero weight): LDS",
            f"{trained['lds_zero_weight_removal']:+.3f}",
            source,
        )
    )
    rows.append(
        (
            "iteration 195, as trained: median |Δ_S| vs the whole update's effect on f",
            f"{trained['median_abs_effect']:.2g} vs {trained['update_effect']:.2g}",
            source,
        )
    )
    scan_source = "fidelity/regime-cartpole-scan.json"
    scan = _json(scan_source)["rows"]
    for r in scan:
        rows.append(
            (
                f"iteration {r['iteration']}: sd(raw Â); LDS as trained / without normalisation",
                f"{r['advantage_sd']:.4f}; {r['as trained']['lds']:+.3f} / "
                f"{r['no advantage normalisation']['lds']:+.3f}",
                scan_source,
            )
        )
    rows.append(
        (
            "across training: LDS without advantage normalisation",
            _span(r["no advantage normalisation"]["lds"] for r in scan),
            scan_source,
        )
    )
    return rows


# --------------------------------------------------------------------------- detection


def detection() -> list[Row]:
    source = "detection/detection.json"
    rows: list[Row] = []
    for setting, s in _json(source)["summary"].items():
        goal, ap = s["goal"], s["average_precision"]

        def iqm(name: str, ap: dict[str, Any] = ap) -> str:
            v = ap[name]
            return f"{v['iqm']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"

        rows.append(
            (
                f"{setting}: best score {goal['best_score']}, AUPRC IQM [95 % CI]",
                iqm(goal["best_score"]),
                source,
            )
        )
        rows.append(
            (
                f"{setting}: best baseline {goal['best_baseline']}",
                iqm(goal["best_baseline"]),
                source,
            )
        )
        rows.append((f"{setting}: random ranking", iqm("random"), source))
        rows.append(
            (
                f"{setting}: goal (best score ≥ 2× best baseline): ratio; return scores only",
                f"{goal['ratio']:.2f}; {goal['ratio_return_scores_only']:.2f} "
                f"({'met' if goal['met'] else 'not met'})",
                source,
            )
        )
        shares = s["sign_shares"]
        rows.append(
            (
                f"{setting}: share on the suspicious side, planted vs others "
                "(−snapshot / −TracIn / −metagrad · return)",
                ", ".join(
                    f"{shares[n]['planted_suspicious_share']:.2f} vs "
                    f"{shares[n]['others_suspicious_share']:.2f}"
                    for n in ("-snapshot·return", "-tracin·return", "-metagrad·return")
                ),
                source,
            )
        )
    return rows


# --------------------------------------------------------------------------- corrupted rewards


def corrupted_rewards() -> list[Row]:
    source = "corrupted_rewards/corrupted_rewards.json"
    summary = _json(source)["summary"]
    rows: list[Row] = [("seeds (paired)", ", ".join(map(str, summary["seeds"])), source)]
    auc, final = summary["auc"], summary["final_return"]
    for arm in ("ppo", "iif", "random_like", "oracle", "ppo_clean"):
        paired = auc["paired_minus_ppo"].get(arm)
        gap = (
            ""
            if paired is None
            else f"; AUC − PPO {paired['mean']:+.1f} ± {paired['sd']:.1f} sd "
            f"({paired['wins']}/{paired['n']})"
        )
        rows.append(
            (
                f"{arm}: mean AUC of the true-return curve; mean final return",
                f"{auc[arm]['mean']:.0f}; {final[arm]['mean']:.0f}{gap}",
                source,
            )
        )
    rows.append(
        (
            "iif: final return per seed",
            ", ".join(f"{v:.0f}" for v in final["iif"]["per_seed"]),
            source,
        )
    )
    rows.append(
        (
            "recovery (IIF − PPO) ÷ (oracle − PPO): AUC; final return (goal ≥ 0.5)",
            f"{auc['recovery']:.2f}; {final['recovery']:.2f}",
            source,
        )
    )
    drops = summary["drops"]
    rows.append(
        (
            "IIF: share of the buffer dropped; of those, flagged (random_like: flagged); "
            "of the flagged, dropped",
            f"{drops['iif']['fraction_dropped']:.1%}; {drops['iif']['dropped_flagged']:.1%} "
            f"({drops['random_like']['dropped_flagged']:.1%}); "
            f"{drops['iif']['flagged_dropped']:.1%}",
            source,
        )
    )
    return rows


# --------------------------------------------------------------------------- trap and what-if


def trap_intervention() -> list[Row]:
    source = "trap_intervention/trap_intervention.json"
    data = _json(source)
    arms = data["summary"]["arms"]
    per_run = {(r["arm"], r["seed"]): r for r in data["summary"]["rows"]}
    seeds = data["settings"]["seeds"]
    iterations = max(r["iterations"] for r in data["runs"])
    ppo_mean = arms["ppo"]["final_return_mean"]
    rows: list[Row] = [("budget; seeds", f"{data['settings']['budget']}; {len(seeds)}", source)]
    for arm, a in arms.items():
        at = ", ".join("never" if t is None else str(t) for t in a["suppressed_at"])
        faster = sum(
            per_run[(arm, s)]["suppressed_at"] is not None
            and 2 * per_run[(arm, s)]["suppressed_at"]
            <= (per_run[("ppo", s)]["suppressed_at"] or iterations)
            for s in seeds
        )
        loss = (ppo_mean - a["final_return_mean"]) / abs(ppo_mean)
        met = faster == len(seeds) and loss <= 0.05
        rows.append(
            (
                f"{arm}: final return mean ± sd; suppressed (at iteration per seed); "
                "2× faster than PPO; goal",
                f"{a['final_return_mean']:+.3f} ± {a['final_return_sd']:.3f}; "
                f"{a['suppressed_runs']}/{len(seeds)} ({at}); "
                + (
                    "—" if arm == "ppo" else f"{faster}/{len(seeds)}; {'met' if met else 'not met'}"
                ),
                source,
            )
        )
    for arm, values in data["final_left_probability_bottom_row"].items():
        rows.append(
            (f"{arm}: final π(LEFT) on the way to the goal, per seed", _slash(values, 3), source)
        )
    return rows


def _whatif(source: str) -> list[Row]:
    data = _json(source)
    results = [r for items in data["results"].values() for r in items]
    config = data["config"]
    rows: list[Row] = [
        ("runs", ", ".join(data["results"]), source),
        ("rule; evaluation episodes per policy", f"{config['rule']}; {config['episodes']}", source),
    ]
    for k in data["iterations"]:
        at = [r for r in results if r["iteration"] == k]
        rows.append(
            (
                f"iteration {k}: mean Δ rule vs control; rule > control; rule Δ > 2 SE",
                f"{np.mean([r['delta'] for r in at]):+.3f} vs "
                f"{np.nanmean([r['control_delta'] for r in at]):+.3f}; "
                f"{sum(r['delta'] > r['control_delta'] for r in at)}/{len(at)}; "
                f"{sum(r['delta'] > 2 * r['delta_se'] for r in at)}/{len(at)}",
                source,
            )
        )
    rows.append(
        (
            "all (run, iteration) pairs: mean Δ rule vs control; rule > control; rule Δ > 2 SE",
            f"{np.mean([r['delta'] for r in results]):+.4f} vs "
            f"{np.nanmean([r['control_delta'] for r in results]):+.4f}; "
            f"{sum(r['delta'] > r['control_delta'] for r in results)} of {len(results)}; "
            f"{sum(r['delta'] > 2 * r['delta_se'] for r in results)} of {len(results)}",
            source,
        )
    )
    return rows


def whatif() -> list[Row]:
    return _whatif("whatif_frozenlake/whatif.json") + _whatif(
        "trap_intervention/whatif/whatif.json"
    )


# --------------------------------------------------------------------------- p sweep


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table row (an escaped ``\\|`` stays inside its cell)."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def _markdown_table(text: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose first column is ``first_header``."""
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("|") and _cells(line)[0] == first_header:
            header, body = _cells(line), []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                body.append(dict(zip(header, _cells(row), strict=True)))
            return body
    raise ValueError(f"no table with first column {first_header!r}")


def p_sweep() -> list[Row]:
    source = "suite/p_sweep.md"
    path = RESULTS / source
    if not path.exists():
        return [("p sweep", "not written yet", source)]
    rows: list[Row] = []
    for r in _markdown_table(path.read_text(), "task"):
        rows.append(
            (
                f"{r['task']}, p = {r['p %']} %: seeds; SE_ave % (paper); AUC; fraction dropped",
                f"{r['seeds']}; {r['SE_ave %']} ({r['paper SE_ave %']}); {r['AUC']}; "
                f"{r['fraction dropped']}",
                source,
            )
        )
    return rows


def suite() -> list[Row]:
    """SE_ave, SE_peak and AUC per arm of each task's suite table (the first table of <task>.md)."""
    rows: list[Row] = []
    tasks = ("frozenlake", "acrobot", "minigrid", "lunarlander", "bipedalwalker", "highway")
    for task in tasks:
        source = f"suite/{task}.md"
        for r in _markdown_table((RESULTS / source).read_text(), "arm"):
            if r["arm"].startswith("**"):  # the paper's row
                continue
            rows.append(
                (
                    f"{task}, {r['arm']}: seeds; SE_ave %; SE_peak %; AUC",
                    f"{r['seeds']}; {r['SE_ave %']}; {r['SE_peak %']}; {r['AUC']}",
                    source,
                )
            )
    return rows


def profiles() -> list[Row]:
    """The performance profile of all four arms over all four tasks (share above τ)."""
    source = "suite/profiles-ppo-iif-random_like-advantage_like.md"
    rows: list[Row] = []
    for r in _markdown_table((RESULTS / source).read_text(), "arm"):
        rows.append((f"{r['arm']}: runs above τ = 0.5", r["runs above τ = 0.5"], source))
    return rows


SECTIONS = {
    "The paper suite": suite,
    "Performance profiles": profiles,
    "The paper suite's p sweep": p_sweep,
    "Fidelity": fidelity,
    "Smoothness of the update map (ratio clipping)": smoothness,
    "Why CartPole's return-target LDS turns negative": fidelity_regime,
    "Averaging the metagradient": smoothed_metagrad,
    "Cost": cost,
    "Run-log size, format 1 vs 2": run_log_size,
    "Live TracIn cost": live_tracin,
    "Metagradient memory under a budget": metagrad_memory,
    "Live board cost": board_cost,
    "Stage effects": stages,
    "IIF": iif,
    "Planted advantage error by flag kind": planted_advantage_error,
    "Detection study": detection,
    "Corrupted rewards": corrupted_rewards,
    "Trap intervention": trap_intervention,
    "What-if (FrozenLake, then the trap runs)": whatif,
}


def main() -> None:
    lines = markdown_header(
        "Figures quoted in the README, from the committed result files", provenance()
    )
    lines += [
        "Every number in the README's results (and the segmented-metagradient line of its "
        "tour) is in this file; the source column is relative to experiments/results/.",
        "",
    ]
    for title, section in SECTIONS.items():
        lines += [f"## {title}", "", "| figure | value | source |", "|---|---|---|"]
        lines += [
            "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in section()
        ]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    (RESULTS / "readme_figures.md").write_text(text)


if __name__ == "__main__":
    main()
