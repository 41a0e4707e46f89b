"""Every figure the README's results quote, read from the committed result files.

    python experiments/readme_figures.py

prints one table per README bullet ("What we measured", and the segmented-metagradient
line of the tour) and writes it to experiments/results/readme_figures.md. Each row names
the file the number comes from; nothing here runs an experiment, and statistics are the
experiments' own (their summaries): this only picks and formats them. A README number
that is not in this output has no committed source.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, markdown_header, provenance

Row = tuple[str, str, str]  # figure, value, source (relative to experiments/results)


class Rows(list):
    """A section's rows; ``add(figure, value)`` names the section's source by default."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def add(self, figure: str, value: Any, source: str | None = None) -> None:
        self.append((figure, str(value), source or self.source))


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


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table row (an escaped ``\\|`` stays inside its cell)."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def _markdown_table(name: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the Markdown table in ``name`` whose first column is ``first_header``."""
    lines = [line.strip() for line in (RESULTS / name).read_text().splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("|") and _cells(line)[0] == first_header:
            header, body = _cells(line), []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                body.append(dict(zip(header, _cells(row), strict=True)))
            return body
    raise ValueError(f"no table with first column {first_header!r} in {name}")


# ------------------------------------------------------------------ the paper suite


def suite() -> list[Row]:
    """SE_ave, SE_peak and AUC per arm of each task's suite table."""
    rows: list[Row] = []
    for task in ("frozenlake", "acrobot", "minigrid", "lunarlander", "bipedalwalker", "highway"):
        source = f"suite/{task}.md"
        for r in _markdown_table(source, "arm"):
            if not r["arm"].startswith("**"):  # not the paper's row
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
    rows = Rows("suite/profiles-ppo-iif-random_like-advantage_like.md")
    for r in _markdown_table(rows.source, "arm"):
        rows.add(f"{r['arm']}: runs above τ = 0.5", r["runs above τ = 0.5"])
    return rows


def p_sweep() -> list[Row]:
    rows = Rows("suite/p_sweep.md")
    for r in _markdown_table(rows.source, "task"):
        rows.add(
            f"{r['task']}, p = {r['p %']} %: seeds; SE_ave % (paper); AUC; fraction dropped",
            f"{r['seeds']}; {r['SE_ave %']} ({r['paper SE_ave %']}); {r['AUC']}; "
            f"{r['fraction dropped']}",
        )
    return rows


# ------------------------------------------------------------------ attribution studies


def fidelity() -> list[Row]:
    """The study's headline figures (``python experiments/fidelity.py --summarize``)."""
    return [
        (r["figure"], r["value"], "fidelity.md") for r in _markdown_table("fidelity.md", "figure")
    ]


def smoothness() -> list[Row]:
    rows = Rows("smoothness-lunarlander-s0-it2.json")
    data = _json(rows.source)
    for loss in ("logged PPO loss", "ratio clipping off"):
        chosen = [r for r in data["rows"] if r["loss"] == loss]
        for h in ("h=1", "h=0.1", "h=0.01", "h=0.001"):
            errors = [100 * abs(r[h] - r["metagradient"]) / abs(r["metagradient"]) for r in chosen]
            rows.add(
                f"{loss}: |secant({h}) − metagradient| / |metagradient|, {len(chosen)} subsets",
                _span(errors, ".1f") + " %",
            )
    return rows


def fidelity_regime() -> list[Row]:
    rows = Rows("fidelity/regime-cartpole-195.json")
    data = _json(rows.source)
    facts = data["facts"]
    rows.add(
        f"iteration {facts['iteration']}: sd of raw Â; steps norm-clipped; subsets",
        f"{facts['advantage_std']:.4f}; {facts['steps_norm_clipped']:.0%}; "
        f"{data['subsets']} of {data['fraction']:.0%}",
    )
    for r in data["rows"]:
        rows.add(f"iteration 195, {r['variant']}: LDS (snapshot)", f"{r['lds']:+.3f}")
    trained = next(r for r in data["rows"] if r["variant"] == "as trained")
    rows.add(
        "iteration 195, as trained: removal that keeps the divisor (zero weight): LDS",
        f"{trained['lds_zero_weight_removal']:+.3f}",
    )
    rows.add(
        "iteration 195, as trained: median |Δ_S| vs the whole update's effect on f",
        f"{trained['median_abs_effect']:.2g} vs {trained['update_effect']:.2g}",
    )
    scan_source = "fidelity/regime-cartpole-scan.json"
    scan = _json(scan_source)["rows"]
    for r in scan:
        rows.add(
            f"iteration {r['iteration']}: sd(raw Â); LDS as trained / without normalisation",
            f"{r['advantage_sd']:.4f}; {r['as trained']['lds']:+.3f} / "
            f"{r['no advantage normalisation']['lds']:+.3f}",
            scan_source,
        )
    rows.add(
        "across training: LDS without advantage normalisation",
        _span(r["no advantage normalisation"]["lds"] for r in scan),
        scan_source,
    )
    return rows


def smoothed_metagrad() -> list[Row]:
    rows = Rows("smoothed_metagrad-lunarlander.json")
    lds = {
        (r["iteration"], r["fraction"], r["method"]): r["lds"] for r in _json(rows.source)["rows"]
    }
    for iteration in sorted({k[0] for k in lds}):
        for fraction in sorted({k[1] for k in lds if k[0] == iteration}):
            rows.add(
                f"iteration {iteration}, {fraction:.0%} drops: LDS exact / removal-avg / path-avg",
                _slash((lds[(iteration, fraction, m)] for m in ("metagrad", "removal-avg",
                                                                   "path-avg")), 3),
            )  # fmt: skip
    return rows


# ------------------------------------------------------------------ cost


def cost() -> list[Row]:
    rows = Rows("bench_attribution.json")
    payload = _json(rows.source)
    data = {r["preset"]: r for r in payload["rows"]}
    presets = ("lunarlander", "minigrid_empty", "hopper")
    rows.add("presets", " / ".join(presets))
    for label, key, digits in (
        ("metagrad ÷ SB3 train()", "metagrad_over_train", 2),
        ("metagrad peak memory growth (MiB)", "metagrad_peak_rss_growth_mib", 0),
        (
            "segmented metagrad peak memory growth (MiB)",
            "metagrad_segmented_peak_rss_growth_mib",
            0,
        ),
        ("segmented metagrad ÷ SB3 train()", "metagrad_segmented_over_train", 1),
        ("segment length S (steps)", "metagrad_segment_steps", None),
        ("segmented ÷ full metagrad time", None, 2),
        ("snapshot ÷ SB3 train()", "snapshot_over_train", 3),
        ("TracIn ÷ SB3 train()", "tracin_over_train", 1),
        ("TracIn with ∇f once per epoch ÷ SB3 train()", "tracin_target_per_epoch_over_train", 1),
    ):
        if key is None:
            values = [data[p]["metagrad_segmented_s"] / data[p]["metagrad_s"] for p in presets]
            rows.add(label, _slash(values, digits))
        elif digits is None:
            rows.add(label, " / ".join(str(data[p][key]) for p in presets))
        else:
            rows.add(label, _slash((data[p][key] for p in presets), digits))
    rows.add("load average when written", payload["machine"]["load_average_1min"])
    for preset, r in {r["preset"]: r for r in _json("bench_iif.json")["rows"]}.items():
        rows.add(
            f"IIF ÷ PPO seconds per iteration, {preset} (per-seed mean ± std)",
            f"{r['ratio']:.3f} ({r['ratio_per_seed_mean']:.3f} ± {r['ratio_per_seed_std']:.2f})",
            "bench_iif.json",
        )
    return rows


def run_log_size() -> list[Row]:
    rows = Rows("bench_runlog_size.json")
    data = _json(rows.source)
    rows.add("goal: bytes per environment step", f"≤ {data['goal_bytes_per_step']}")
    rebuilt = mismatched = 0
    for r in data["results"]:
        name, per_step = r["preset"], r["bytes_per_step"]
        rebuilt += r["rebuilt_checkpoints"]
        mismatched += len(r["rebuilt_mismatches"])
        rows.add(
            f"{name} ({r['timesteps']} steps, {r['iterations']} iterations, "
            f"checkpoint_every {r['checkpoint_every']}): bytes per step, format 1 → 2",
            f"{per_step['1']:.0f} → {per_step['2']:.1f} "
            f"({per_step['1'] / per_step['2']:.1f}× smaller)",
        )
        rows.add(
            f"{name}: reaching the farthest iteration ({r['replays_to_farthest']} replays) "
            "from a fresh log, format 2 vs format 1 (s)",
            f"{r['reach']['v2_rebuilt_s']:.1f} vs {r['reach']['v1_direct_s']:.4f}",
        )
        rows.add(f"{name}: seconds per replay", f"{r['seconds_per_replay']:.2f}")
        rows.add(f"{name}: final states of the two runs equal", r["same_final_state"])
    rows.add(
        "checkpoints rebuilt by replay, equal (torch.equal) to format 1's full ones",
        f"{rebuilt - mismatched} of {rebuilt}",
    )
    return rows


LIVE_ARMS = {
    "live_epoch": "∇f per epoch",
    "live_epoch_sub": "∇f per epoch on 256 records",
    "live_step": "∇f every step",
}


def live_tracin() -> list[Row]:
    rows = Rows("bench_live_tracin.json")
    data = _json(rows.source)
    goal = data["goal_overhead"]
    rows.add("goal: live TracIn overhead ÷ train() (both statistics)", f"≤ {goal}")
    for r in data["rows"]:
        name = r["preset"]
        for arm, label in LIVE_ARMS.items():
            if arm in r["overhead_over_plain_train"]:
                overhead = r["overhead_over_plain_train"][arm]
                paired = r["paired_overhead_median"][arm]
                rows.add(
                    f"{name} ({r['optimizer']}), live, {label}: overhead of the medians "
                    "(paired median) ÷ train()",
                    f"{overhead:+.2f} ({paired:+.2f}); goal "
                    f"{'met' if max(overhead, paired) <= goal else 'not met'}",
                )
        replay = [r["over_plain_train"][k] for k in ("replay_epoch", "replay_step")
                  if k in r["over_plain_train"]]  # fmt: skip
        rows.add(f"{name}: replay TracIn ÷ train() (∇f per epoch / every step)", _slash(replay, 1))
        rows.add(
            f"{name}: training bit-identical with the hook; max rel. diff vs replay",
            f"{all(r['bit_identical_to_plain'].values())}; "
            f"{max(r['max_rel_diff_vs_replay'].values()):.1e}",
        )
    rows.add(
        "1-minute load after each preset",
        ", ".join(f"{r['preset']} {r['load_average_1min_after']:.1f}" for r in data["rows"]),
    )
    return rows


def metagrad_memory() -> list[Row]:
    rows = Rows("metagrad_memory/bench.json")
    data = _json(rows.source)
    rows.add("default budget (MiB)", f"{data['default_memory_budget'] / 2**20:.0f}")
    above = []
    for r in data["rows"]:
        for mode, m in r["modes"].items():
            segment = "whole" if m["segment_steps"] is None else str(m["segment_steps"])
            rows.add(
                f"{r['preset']} (T = {r['optimizer_steps']}), {mode}: segment S; saved-tensor "
                "peak / RSS growth (MiB); time ÷ train(); max |Δscore| ÷ max |score|",
                f"{segment}; {m['saved_peak_mib']:.0f} / {m['rss_growth_mib']:.0f}; "
                f"{m['over_train']:.2f}; {m['max_abs_diff_vs_whole_over_max']:.1e}",
            )
            if m["estimated_peak_mib"] is not None:
                above.append(100 * (m["estimated_peak_mib"] / m["saved_peak_mib"] - 1))
    rows.add("load average when written", data["machine"]["load_average_1min"])
    rows.add(
        "memory-model estimate above the measured saved-tensor peak (budgeted modes)",
        _span(above, ".1f") + " %",
    )
    return rows


def board_cost() -> list[Row]:
    rows = Rows("bench_board.json")
    data = _json(rows.source)
    rows.add("command", data["command"])
    # The goal is stated only in the Markdown the benchmark writes beside its JSON.
    goal = re.search(r"Goal: ratio ≤ ([0-9.]+)", (RESULTS / "bench_board.md").read_text())
    rows.add("goal: on ÷ off", f"≤ {goal.group(1) if goal else '?'}", "bench_board.md")
    for r in data["rows"]:
        name = f"{r['preset']} ({r['iterations']} iterations × {r['repeats']})"
        rows.add(
            f"{name}: on ÷ off, CPU / wall (medians)",
            f"{r['ratio_cpu_median']:.3f} / {r['ratio_wall_median']:.3f}",
        )
        rows.add(
            f"{name}: the board's measured share, CPU / wall (median)",
            f"{100 * r['board_share_cpu_median']:.1f} % / "
            f"{100 * r['board_share_wall_median']:.1f} %",
        )
        rows.add(
            f"{name}: fidelity_every={r['fidelity_every']}: CPU / wall ratio; s per check",
            f"{r['fidelity_ratio_cpu_median']:.2f} / {r['fidelity_ratio_wall_median']:.2f}; "
            f"{r['fidelity_s_per_check']:.1f}",
        )
        rows.add(f"{name}: 1-minute load (median)", f"{r['load_median']:.1f}")
    return rows


# ------------------------------------------------------------------ stage effects


STAGE_PRESETS = {"hopper": "Hopper", "lunarlander": "LunarLander", "cartpole": "CartPole"}


def stages() -> list[Row]:
    rows = Rows("stages/{hopper,lunarlander,cartpole}.json")
    for preset, label in STAGE_PRESETS.items():
        spans = list(dict.fromkeys(r["stage"] for r in _csv(f"stages/{preset}.csv")))
        end = int(spans[-1].split(":")[1])
        rows.add(
            f"{label}: iterations, stages", f"{end}, {' '.join(spans)}", f"stages/{preset}.csv"
        )
    for behaviour in ("return", "action"):
        fos = [_json(f"stages/{p}.json")["summary"][behaviour]["data_fixed"]["fo"]
               for p in STAGE_PRESETS]  # fmt: skip
        rows.add(
            f"{behaviour} behaviour, data-fixed: median |FO|/|truth|, first three stages "
            "(Hopper / LunarLander / CartPole)",
            " / ".join(f"{fo['median_abs_ratio_before_last']:.3g}" for fo in fos),
        )
        rows.add(
            f"{behaviour} behaviour, data-fixed: Spearman(FO, truth) over 4 stages",
            _slash((fo["spearman"] for fo in fos), 1),
        )
    for preset, label in STAGE_PRESETS.items():
        growth = {r["stage"]: float(r["so_growth"]) for r in _csv(f"stages/{preset}.csv")}
        last = int(list(growth)[-1].split(":")[1])
        rows.add(
            f"{label}: SO growth ‖e_T‖/‖δ‖ per stage (later iterations)",
            ", ".join(f"{s}: {g:.2g} ({last - int(s.split(':')[1])})" for s, g in growth.items()),
            f"stages/{preset}.csv",
        )
    source = "stages/cartpole-horizon.csv"
    horizon = {(int(r["horizon"]), r["behaviour"]): r for r in _csv(source)}
    h0, h1 = horizon[(0, "return")], horizon[(1, "return")]
    rows.add(
        "horizon study, h = 0, return: difference estimate vs truth",
        f"{float(h0['fo_difference']):.3g} vs {float(h0['ground_truth']):.3g}",
        source,
    )
    rows.add(
        "horizon study, h = 1, return: FO / SO / truth",
        " / ".join(f"{float(h1[k]):.2g}" for k in ("fo", "so", "ground_truth")),
        source,
    )
    rows.add(
        "horizon study: SO growth at h = 32 / 64 / 128",
        " / ".join(f"{float(horizon[(h, 'return')]['so_growth']):.3g}" for h in (32, 64, 128)),
        source,
    )
    source = "stages/cartpole-horizon-noclip.csv"
    noclip = {(int(r["horizon"]), r["behaviour"]): r for r in _csv(source)}
    rows.add(
        "no ratio clipping: |data-fixed action effect| at h = 0 → h = 16",
        f"{abs(float(noclip[(0, 'action')]['ground_truth'])):.2g} → "
        f"{abs(float(noclip[(16, 'action')]['ground_truth'])):.2g}",
        source,
    )
    on_policy = _json("stages/cartpole.json")["summary"]
    for behaviour in ("action", "return"):
        s = on_policy[behaviour]["on_policy"]
        rows.add(
            f"CartPole on-policy, {behaviour}: Spearman FO / difference estimate; "
            "median |FO|/|truth|, |difference|/|truth|",
            f"{s['fo']['spearman']:.1f} / {s['fo_difference']['spearman']:.1f}; "
            f"{s['fo']['median_abs_ratio_before_last']:.2f}, "
            f"{s['fo_difference']['median_abs_ratio_before_last']:.2f}",
            "stages/cartpole.json",
        )
        rows.add(
            f"CartPole, {behaviour}: on-policy truth ÷ data-fixed truth "
            "(median, first three stages)",
            f"{1 / s['ground_truth']['median_abs_ratio_before_last']:.0f}",
            "stages/cartpole.json",
        )
    costs = [_json(f"stages/{p}.json")["cost"] for p in STAGE_PRESETS]
    for key, label in (
        ("fo_over_replay", "FO"),
        ("so_over_replay", "SO"),
        ("ground_truth_over_replay", "data-fixed truth"),
    ):
        rows.add(
            f"cost of all 4 stages ÷ one replay: {label}",
            _span((c[key] for c in costs), ".1f"),
            "stages/*.json",
        )
    peak = max(max(c["fo_peak_mib"], c["so_peak_mib"]) for c in costs)
    rows.add("largest peak memory growth (MiB)", f"{peak:.2f}", "stages/*.json")
    return rows


# ------------------------------------------------------------------ IIF (frozen results)


IIF_FILES = {
    "cartpole": "cartpole",
    "lunarlander": "lunarlander-iif_recut-random_recut-iif_metagrad",
    "hopper": "hopper-iif_recut-random_recut-iif_metagrad",
    "minigrid_empty": "minigrid_empty",
    "lunarlander_sgd": "lunarlander_sgd",
}


def _per_seed(preset: str, arm: str) -> tuple[np.ndarray, np.ndarray]:
    """AUC (mean of the evaluation curve) and final return of each seed of ``arm``."""
    aucs, finals = [], []
    for path in sorted((RESULTS / "iif" / preset).glob(f"{arm}-s*.csv")):
        with open(path) as handle:
            table = list(csv.DictReader(handle))
        aucs.append(float(np.mean([float(r["eval_return"]) for r in table
                                   if r["eval_return"] != "nan"])))  # fmt: skip
        finals.append(float(table[0]["final_return"]))
    return np.array(aucs), np.array(finals)


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
    # A pair the (frozen, retired script's) summary does not list, from the per-seed
    # curves, which must give the summary's own per-seed AUCs first.
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
    sizes = [r["last_minibatch"] for r in _json("iif/recut_remainder-hopper-s0.json")["iterations"]]
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
        ratios = (q["dropped_mean_abs_advantage"] / q["kept_mean_abs_advantage"] for q in quarters)
        errors = ", ".join(
            f"{q['dropped_advantage_error']:.3g} / {q['kept_advantage_error']:.3g}"
            for q in quarters
        )
        rows += [
            ("fraction dropped, by quarter: " + preset,
             _slash((q["fraction_dropped"] for q in quarters), 3), source),
            (f"{preset}: |Â| dropped ÷ |Â| kept, by quarter", _slash(ratios, 1), source),
            (f"{preset}: advantage error dropped / kept, by quarter", errors, source),
            (f"{preset}: corr(score, advantage error), by quarter",
             _slash((q["score_advantage_error_corr"] for q in quarters), 3), source),
        ]  # fmt: skip
    return rows


# ------------------------------------------------------------------ detection and repair


def planted_advantage_error() -> list[Row]:
    rows = Rows("planted_advantage_error.json")
    data = _json(rows.source)
    summary, seeds = data["summary"], data["per_seed"]
    rows.add("seeds × iterations", f"{len(seeds)} × {len(next(iter(seeds.values())))}")
    kinds = ("fault", "payoff", "cause", "payoff_paid", "payoff_unpaid", "cause_invest",
             "cause_cash_in")  # fmt: skip
    for kind in kinds:
        bottom, top = summary[f"{kind}_bottom"], summary[f"{kind}_top"]
        rows.add(
            f"{kind}: lift bottom (median; share ≥ 2×; per-seed range) / lift top",
            f"{bottom['lift_mean']:.2f} ({bottom['lift_median']:.2f}; "
            f"{bottom['share_lift_2']:.0%}; {_span(bottom['per_seed_lift_mean'])}) / "
            f"{top['lift_mean']:.2f}",
        )
    control = summary["fault_by_advantage_bottom"]
    rows.add(
        "control: flagged records, k lowest Â: lift (median; share ≥ 2×)",
        f"{control['lift_mean']:.2f} ({control['lift_median']:.2f}; {control['share_lift_2']:.0%})",
    )
    return rows


def detection() -> list[Row]:
    rows = Rows("detection/detection.json")
    for setting, s in _json(rows.source)["summary"].items():
        goal, ap = s["goal"], s["average_precision"]

        def iqm(name: str, ap: dict[str, Any] = ap) -> str:
            v = ap[name]
            return f"{v['iqm']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"

        rows.add(
            f"{setting}: best score {goal['best_score']}, AUPRC IQM [95 % CI]",
            iqm(goal["best_score"]),
        )
        rows.add(f"{setting}: best baseline {goal['best_baseline']}", iqm(goal["best_baseline"]))
        rows.add(f"{setting}: random ranking", iqm("random"))
        rows.add(
            f"{setting}: goal (best score ≥ 2× best baseline): ratio; return scores only",
            f"{goal['ratio']:.2f}; {goal['ratio_return_scores_only']:.2f} "
            f"({'met' if goal['met'] else 'not met'})",
        )
        shares = s["sign_shares"]
        rows.add(
            f"{setting}: share on the suspicious side, planted vs others "
            "(−snapshot / −TracIn / −metagrad · return)",
            ", ".join(
                f"{shares[n]['planted_suspicious_share']:.2f} vs "
                f"{shares[n]['others_suspicious_share']:.2f}"
                for n in ("-snapshot·return", "-tracin·return", "-metagrad·return")
            ),
        )
    return rows


def corrupted_rewards() -> list[Row]:
    rows = Rows("corrupted_rewards/corrupted_rewards.json")
    summary = _json(rows.source)["summary"]
    rows.add("seeds (paired)", ", ".join(map(str, summary["seeds"])))
    auc, final = summary["auc"], summary["final_return"]
    for arm in ("ppo", "iif", "random_like", "oracle", "ppo_clean"):
        paired = auc["paired_minus_ppo"].get(arm)
        gap = "" if paired is None else (
            f"; AUC − PPO {paired['mean']:+.1f} ± {paired['sd']:.1f} sd "
            f"({paired['wins']}/{paired['n']})"
        )  # fmt: skip
        rows.add(
            f"{arm}: mean AUC of the true-return curve; mean final return",
            f"{auc[arm]['mean']:.0f}; {final[arm]['mean']:.0f}{gap}",
        )
    rows.add("iif: final return per seed", ", ".join(f"{v:.0f}" for v in final["iif"]["per_seed"]))
    rows.add(
        "recovery (IIF − PPO) ÷ (oracle − PPO): AUC; final return (goal ≥ 0.5)",
        f"{auc['recovery']:.2f}; {final['recovery']:.2f}",
    )
    drops = summary["drops"]
    rows.add(
        "IIF: share of the buffer dropped; of those, flagged (random_like: flagged); "
        "of the flagged, dropped",
        f"{drops['iif']['fraction_dropped']:.1%}; {drops['iif']['dropped_flagged']:.1%} "
        f"({drops['random_like']['dropped_flagged']:.1%}); "
        f"{drops['iif']['flagged_dropped']:.1%}",
    )
    return rows


def trap_intervention() -> list[Row]:
    rows = Rows("trap_intervention/trap_intervention.json")
    data = _json(rows.source)
    arms = data["summary"]["arms"]
    per_run = {(r["arm"], r["seed"]): r for r in data["summary"]["rows"]}
    seeds = data["settings"]["seeds"]
    iterations = max(r["iterations"] for r in data["runs"])
    ppo_mean = arms["ppo"]["final_return_mean"]
    rows.add("budget; seeds", f"{data['settings']['budget']}; {len(seeds)}")
    for arm, a in arms.items():
        at = ", ".join("never" if t is None else str(t) for t in a["suppressed_at"])
        faster = sum(
            per_run[(arm, s)]["suppressed_at"] is not None
            and 2 * per_run[(arm, s)]["suppressed_at"]
            <= (per_run[("ppo", s)]["suppressed_at"] or iterations)
            for s in seeds
        )
        met = faster == len(seeds) and (ppo_mean - a["final_return_mean"]) / abs(ppo_mean) <= 0.05
        verdict = "—" if arm == "ppo" else f"{faster}/{len(seeds)}; {'met' if met else 'not met'}"
        rows.add(
            f"{arm}: final return mean ± sd; suppressed (at iteration per seed); "
            "2× faster than PPO; goal",
            f"{a['final_return_mean']:+.3f} ± {a['final_return_sd']:.3f}; "
            f"{a['suppressed_runs']}/{len(seeds)} ({at}); " + verdict,
        )
    for arm, values in data["final_left_probability_bottom_row"].items():
        rows.add(f"{arm}: final π(LEFT) on the way to the goal, per seed", _slash(values, 3))
    return rows


def _whatif(source: str) -> list[Row]:
    rows = Rows(source)
    data = _json(source)
    results = [r for items in data["results"].values() for r in items]
    rows.add("runs", ", ".join(data["results"]))
    rows.add(
        "rule; evaluation episodes per policy",
        f"{data['config']['rule']}; {data['config']['episodes']}",
    )

    def tally(at: list[dict], digits: int, of: str) -> str:
        return (
            f"{np.mean([r['delta'] for r in at]):+.{digits}f} vs "
            f"{np.nanmean([r['control_delta'] for r in at]):+.{digits}f}; "
            f"{sum(r['delta'] > r['control_delta'] for r in at)}{of}{len(at)}; "
            f"{sum(r['delta'] > 2 * r['delta_se'] for r in at)}{of}{len(at)}"
        )

    for k in data["iterations"]:
        rows.add(
            f"iteration {k}: mean Δ rule vs control; rule > control; rule Δ > 2 SE",
            tally([r for r in results if r["iteration"] == k], 3, "/"),
        )
    rows.add(
        "all (run, iteration) pairs: mean Δ rule vs control; rule > control; rule Δ > 2 SE",
        tally(results, 4, " of "),
    )
    return rows


def whatif() -> list[Row]:
    return _whatif("whatif_frozenlake/whatif.json") + _whatif(
        "trap_intervention/whatif/whatif.json"
    )


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
