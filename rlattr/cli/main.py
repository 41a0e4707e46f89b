"""``rlattr`` command line: train presets, inspect and replay run directories."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from rlattr.errors import PresetError, RlattrError
from rlattr.record.runlog import RunLog
from rlattr.training.presets import Preset

console = Console()
error_console = Console(stderr=True)


def _train(args: argparse.Namespace) -> int:
    preset = Preset.load(args.preset).with_overrides(total_timesteps=args.timesteps)
    rollout = preset.n_envs * int(preset.ppo.get("n_steps", 2048))
    whole = -(-preset.total_timesteps // rollout) * rollout
    if whole != preset.total_timesteps:
        # SB3 overshoots to a whole rollout anyway; rounding up keeps schedules >= 0 (SB3's
        # linear schedules turn negative in an overshooting last iteration).
        console.print(f"budget rounded up to {whole} steps ({whole // rollout} rollouts)")
        preset = preset.with_overrides(total_timesteps=whole)
    run_dir = Path(args.run_dir or f"runs/{preset.name}-s{args.seed}")
    resuming = args.resume and (run_dir / "run.json").exists()
    if resuming:
        stored_config = RunLog(run_dir).meta.get("config", {})
        if ("iif" in stored_config) != bool(args.iif):
            was = "with" if "iif" in stored_config else "without"
            raise PresetError(f"{run_dir} was trained {was} --iif; resume it the same way")
        stored = stored_config.get("preset", {})
        stored_cmp = {**stored, "total_timesteps": preset.total_timesteps}
        if stored_cmp != preset.to_dict():
            raise PresetError(
                f"{run_dir} was started with a different preset; resume it with the same "
                "preset file (only --timesteps may change)"
            )
    elif args.resume:
        console.print(f"[yellow]{run_dir} holds no run yet; starting a new one[/]")
    _import_project_envs()
    iif = None
    if args.iif:
        iif = preset.iif_config(
            rule=args.iif_rule,
            fraction=args.iif_fraction,
            scorer=args.iif_scorer,
            minibatching=args.iif_minibatching,
        )
        console.print(
            f"IIF on: rule {iif.rule}, fraction {iif.fraction:g}, minibatches {iif.minibatching}"
        )
    model = preset.build(
        run_dir=run_dir, seed=args.seed, device=args.device, resume=resuming, iif=iif
    )
    remaining = preset.total_timesteps - model.num_timesteps
    if remaining <= 0:
        console.print(f"{run_dir} has already trained {model.num_timesteps} steps; nothing to do")
        return 0
    if resuming:
        console.print(
            f"resuming {run_dir} at iteration {model.iteration} "
            f"({model.num_timesteps} of {preset.total_timesteps} steps done)"
        )
    model.learn(
        remaining,
        progress_bar=not args.no_progress,
        reset_num_timesteps=not resuming,
        tb_log_name="ppo",
    )
    log = RunLog(run_dir)
    console.print(
        f"[bold green]done[/]: {model.num_timesteps} steps, {len(log.iterations())} iterations "
        f"recorded in {run_dir}\n"
        f"  inspect:     {_command('rlattr')} inspect {run_dir}\n"
        f"  TensorBoard: {_command('tensorboard')} --logdir {log.tb_dir}"
    )
    return 0


def _command(name: str) -> str:
    """``name`` if it is on PATH, else its path beside this Python (an unactivated venv)."""
    if shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def _inspect(args: argparse.Namespace) -> int:
    log = RunLog(args.run)
    report = log.verify()
    iterations = report.iterations
    table = Table(title=f"run {log.path}", show_header=False)
    from rlattr.training.rundir import run_summary

    for label, text in run_summary(log.meta):  # the preset, or what a Python run knows
        table.add_row(label, text)
    table.add_row("seed", str(log.meta.get("seed")))
    table.add_row("format", f"{log.meta['format']} v{log.meta['format_version']}")
    versions = log.meta.get("versions", {})
    table.add_row("versions", ", ".join(f"{k} {v}" for k, v in versions.items()))
    span = f"{iterations[0]}..{iterations[-1]}" if iterations else "none"
    table.add_row("iterations recorded", f"{len(iterations)} ({span})")
    table.add_row("checkpoints", str(len(report.checkpoints)))
    if iterations:
        meta = log.iteration_meta(iterations[-1])
        table.add_row(
            "records / iteration", f"{meta['n_envs'] * meta['n_steps']} ({meta['n_envs']} envs)"
        )
        from rlattr.record.plan import stored_optimizer_steps

        table.add_row("optimiser steps (last)", str(stored_optimizer_steps(meta["plan"])))
        table.add_row("timesteps (last)", str(meta["info"].get("num_timesteps")))
    size = sum(p.stat().st_size for p in log.path.rglob("*") if p.is_file())
    table.add_row("size on disk", f"{size / 2**20:.2f} MiB")
    status = (
        "[green]all checksums match[/]"
        if report.ok
        else f"[red]{len(report.problems)} problem(s)[/]"
    )
    table.add_row("verification", status)
    if report.leftovers:
        table.add_row("uncommitted", f"{len(report.leftovers)} leftover(s) from an interrupted run")
    console.print(table)
    for problem in report.problems:
        console.print(f"[red]  {problem}[/]")
    return 0 if report.ok else 1


def _replay(args: argparse.Namespace) -> int:
    from rlattr.record.replay import build_policy, load_iteration, replay, state_matches

    log = RunLog(args.run)
    iterations = args.iteration or log.iterations()
    policy = build_policy(log, args.device)
    failures = 0
    for k in iterations:
        data = load_iteration(log, k, args.device)
        replay(data, policy)
        if not log.has_checkpoint(k + 1):
            console.print(f"iteration {k}: replayed (no later checkpoint kept to compare with)")
            continue
        expected, _ = log.load_checkpoint(k + 1)
        mismatched = state_matches(policy, expected)
        if mismatched:
            failures += 1
            console.print(f"[red]iteration {k}: {len(mismatched)} tensors differ: {mismatched}[/]")
        else:
            console.print(f"iteration {k}: [green]bit-identical[/] to the logged θ_{k + 1}")
    return 1 if failures else 0


def _load_target(spec: str) -> Any:
    """``return``, ``return:mc`` or ``action:FILE`` (safetensors or .npz with
    ``observations`` and ``actions``)."""
    from rlattr.scoring.targets import ActionTarget, ReturnTarget

    kind, _, argument = spec.partition(":")
    if kind == "return":
        return ReturnTarget(advantage=argument or "gae")
    if kind == "action" and argument:
        path = Path(argument)
        if not path.exists():
            raise RlattrError(f"action target file {path} does not exist")
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                tensors = {k: torch.as_tensor(arrays[k]) for k in arrays.files}
        else:
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        missing = {"observations", "actions"} - tensors.keys()
        if missing:
            raise RlattrError(f"{path} lacks {sorted(missing)} (needs observations and actions)")
        return ActionTarget(tensors["observations"].float(), tensors["actions"])
    raise RlattrError(f"unknown target {spec!r}: use return, return:mc or action:FILE")


def _attribute(args: argparse.Namespace) -> int:
    from rlattr.scoring.attribute import attribute, score_name

    log = RunLog(args.run)
    target = _load_target(args.target)
    start = time.perf_counter()
    scores = attribute(
        log, args.iteration, target, args.method, args.params, args.backend, args.device
    )
    seconds = time.perf_counter() - start
    records = log.load_records(args.iteration)
    console.print(
        f"{args.method} scores of iteration {args.iteration} on the {target.name} target: "
        f"{len(scores)} records in {seconds:.2f} s, {float((scores < 0).float().mean()):.1%} "
        f"negative; stored as {score_name(args.method, target)!r}"
    )
    order = torch.argsort(scores, descending=True)
    for title, picks in (
        ("most helpful", order[: args.top]),
        ("most harmful", order.flip(0)[: args.top]),
    ):
        _print_records(
            f"{title} records",
            [(args.iteration, records, i, float(scores[i])) for i in picks.tolist()],
        )
    return 0


def _print_records(title: str, rows: list[tuple[int, Any, int, float]]) -> None:
    """A table of records: (iteration, Records, index, score) per row."""
    table = Table(title=title)
    for column in ("iteration", "id", "env/step", "score", "action", "advantage", "observation"):
        table.add_column(column, no_wrap=column != "observation")
    for iteration, records, i, score in rows:
        obs = records.observations[i].flatten()
        shown = " ".join(f"{v:.2g}" for v in obs[:4].tolist()) + (" …" if len(obs) > 4 else "")
        table.add_row(
            str(iteration),
            str(int(records.record_ids[i])),
            f"{int(records.env_index[i])}/{int(records.step_index[i])}",
            f"{score:+.2e}",
            " ".join(f"{v:g}" for v in records.actions[i].tolist()),
            f"{float(records.advantages[i]):+.3f}",
            shown,
        )
    console.print(table)


def _fidelity(args: argparse.Namespace) -> int:
    from rlattr.analysis.fidelity import fidelity

    log = RunLog(args.run)
    target = _load_target(args.target)
    methods = ["snapshot", "tracin", "metagrad"] if args.method == "all" else [args.method]
    table = Table(title=f"fidelity, iteration {args.iteration}, {target.name} target")
    for column in ("method", "subsets", "LDS", "Pearson", "sign", "ceiling", "LDS avg-order"):
        table.add_column(column, no_wrap=True)
    for method in methods:
        report = fidelity(
            log, args.iteration, target, method, n_subsets=args.subsets,
            fraction=args.fraction, orders=args.orders, seed=args.seed, device=args.device,
        )  # fmt: skip
        table.add_row(
            method, f"{report.n_subsets} × {report.fraction:g}", f"{report.lds:.3f}",
            f"{report.pearson:.3f}", f"{report.sign_agreement:.2f}", f"{report.ceiling:.3f}",
            f"{report.lds_mean_order:.3f}",
        )  # fmt: skip
    console.print(table)
    return 0


# Above this ‖e_T‖/‖δ‖ the CLI flags an SO estimate as unreliable.
SO_GROWTH_WARNING = 100.0


def _stages(args: argparse.Namespace) -> int:
    from rlattr.analysis.stages import stage_effects

    log = RunLog(args.run)
    behavior = None if args.behavior == "return" else _load_target(args.behavior)
    start = time.perf_counter()
    if args.records:
        return _stage_records(log, args, behavior)
    effects = stage_effects(
        log, args.stages, behavior, second_order=not args.first_order_only,
        ground_truth=args.ground_truth, optimizer_state=args.optimizer_state, device=args.device,
    )  # fmt: skip
    table = Table(title=f"stage effects on the {args.behavior} behaviour of the final policy")
    for column in ("stage", "FO", "SO", "SO ‖e_T‖/‖δ‖", "ground truth"):
        table.add_column(column, no_wrap=True)
    for effect in effects:
        so = "–" if effect.so is None else f"{effect.so:+.4e}"
        growth = "–" if effect.so_growth is None else f"{effect.so_growth:.3g}"
        truth = "–" if effect.ground_truth is None else f"{effect.ground_truth:+.4e}"
        table.add_row(str(effect.stage), f"{effect.fo:+.4e}", so, growth, truth)
    console.print(table)
    if any((e.so_growth or 0.0) > SO_GROWTH_WARNING for e in effects):
        console.print(
            f"[yellow]SO stretched a stage's displacement more than {SO_GROWTH_WARNING:g}×: "
            "the linearised update map is expanding there and that SO value is unreliable "
            "(see rlattr.analysis.stages.StageEffect).[/yellow]"
        )
    from rlattr.analysis.plots import save_figure, stage_effects_figure

    png = log.path / "reports" / "stage_effects.png"
    figure = stage_effects_figure(effects, f"stage effects on the {args.behavior} behaviour")
    save_figure(figure, png, log.tb_dir / "reports", tag="stage_effects")
    console.print(f"{time.perf_counter() - start:.1f} s; chart: {png} (and in TensorBoard)")
    return 0


def _stage_records(log: RunLog, args: argparse.Namespace, behavior: Any) -> int:
    from rlattr.analysis.stages import stage_record_scores

    split = stage_record_scores(
        log, args.records, behavior, optimizer_state=args.optimizer_state, device=args.device
    )
    shares = [(k, i, float(v)) for k, values in split.scores.items() for i, v in enumerate(values)]
    total = sum(v for _, _, v in shares)
    console.print(
        f"stage {split.stage}: FO effect {split.estimate:+.4e} on the {args.behavior} behaviour "
        f"= {len(shares)} record shares (sum {total:+.4e}) + remainder {split.remainder:+.4e} "
        "(weight decay, inherited momentum)"
    )
    records = {k: log.load_records(k) for k in split.scores}
    shares.sort(key=lambda row: row[2], reverse=True)
    for title, picked in (
        ("records that raised the behaviour most", shares[: args.top]),
        ("records that lowered it most", shares[::-1][: args.top]),
    ):
        _print_records(title, [(k, records[k], i, v) for k, i, v in picked])
    return 0


def _import_project_envs() -> None:
    # Registers rlattr's own environments (rlattr/...), so presets and --env can name them.
    import rlattr.envs  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlattr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a preset with recording on")
    train.add_argument("preset", help="YAML file, or a name from agents/ (e.g. cartpole)")
    train.add_argument("--timesteps", type=int, help="training budget (default: the preset's)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--run-dir", help="run directory (default: runs/<preset>-s<seed>)")
    train.add_argument("--device", default="auto", help="cpu, cuda or auto")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--iif", action="store_true", help="iterative influence-based filtering")
    train.add_argument("--iif-rule", choices=["neg_bottom", "drop_negative", "bottom", "random"])
    train.add_argument("--iif-fraction", type=float, help="p of neg_bottom, q of bottom/random")
    train.add_argument("--iif-scorer", choices=["snapshot", "metagrad"], help="default snapshot")
    train.add_argument(
        "--iif-minibatching",
        choices=["recut", "as_drawn"],
        help="minibatches around dropped records: PPO's minus the dropped (as_drawn, "
        "default) or the kept records cut anew (recut; the last minibatch may be tiny)",
    )
    train.set_defaults(func=_train)

    inspect_ = sub.add_parser("inspect", help="summarise and verify a run directory")
    inspect_.add_argument("run")
    inspect_.set_defaults(func=_inspect)

    attribute = sub.add_parser("attribute", help="score the records of a logged iteration")
    attribute.add_argument("run")
    attribute.add_argument("--iteration", type=int, required=True)
    attribute.add_argument("--target", default="return", help="return, return:mc or action:FILE")
    attribute.add_argument(
        "--method", default="snapshot", choices=["snapshot", "tracin", "metagrad"]
    )
    attribute.add_argument("--params", default="policy", choices=["policy", "value", "all"])
    attribute.add_argument(
        "--backend", default="auto", choices=["auto", "hooks", "jvp", "vmap", "naive"]
    )
    attribute.add_argument("--top", type=int, default=5, help="records shown at each end")
    attribute.add_argument("--device", default="cpu")
    attribute.set_defaults(func=_attribute)

    fidelity = sub.add_parser("fidelity", help="check scores against leave-subset-out replay")
    fidelity.add_argument("run")
    fidelity.add_argument("--iteration", type=int, required=True)
    fidelity.add_argument("--target", default="return", help="return, return:mc or action:FILE")
    fidelity.add_argument(
        "--method", default="all", choices=["snapshot", "tracin", "metagrad", "all"]
    )
    fidelity.add_argument("--subsets", type=int, default=64)
    fidelity.add_argument("--fraction", type=float, default=0.1)
    fidelity.add_argument("--orders", type=int, default=2, help="≥ 2 also reports the ceiling")
    fidelity.add_argument("--seed", type=int, default=0)
    fidelity.add_argument("--device", default="cpu")
    fidelity.set_defaults(func=_fidelity)

    stages = sub.add_parser("stages", help="which training stages account for a behaviour")
    stages.add_argument("run")
    stages.add_argument("--stages", default="4", help="K equal spans, or a:b,c:d")
    stages.add_argument("--behavior", default="return", help="return or action:FILE")
    stages.add_argument("--first-order-only", action="store_true")
    stages.add_argument(
        "--ground-truth", action="store_true", help="also replay without each stage"
    )
    stages.add_argument("--optimizer-state", default="rollback", choices=["rollback", "carry"])
    stages.add_argument(
        "--records", metavar="A:B", help="split stage A:B's FO effect over its records instead"
    )
    stages.add_argument("--top", type=int, default=10, help="records shown with --records")
    stages.add_argument("--device", default="cpu")
    stages.set_defaults(func=_stages)

    replay = sub.add_parser("replay", help="replay logged iterations and check bit-exactness")
    replay.add_argument("run")
    replay.add_argument("--iteration", type=int, action="append", help="repeatable; default all")
    replay.add_argument("--device", default="cpu")
    replay.set_defaults(func=_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RlattrError as err:
        # No markup (messages hold brackets) and no wrapping (messages are grep-able).
        error_console.print(f"error: {err}", style="red", markup=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
