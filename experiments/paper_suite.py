"""The IIF paper's experiment suite: tasks × arms × seeds, evaluated after every round.

Each task uses its preset with the paper's settings (agents/*.yaml, SCIENCE.md §6) and the
paper's budget in rounds of 2048 steps. Arms: ``ppo`` (plain PPO), ``iif`` (the preset's
IIF rule, the paper's neg_bottom with the task's p), ``random_like`` (drops as many
records as the IIF rule would, at random) and ``advantage_like`` (as many, those with the
most negative advantages). Seed s of every arm uses the same environment and
initialisation seed. After every round the stochastic policy is evaluated on K episodes
(episode j of every evaluation on seed 10000 + j, the same for every arm, seed and round),
see ``rlattr.training.evaluation.EvalEveryRound``.

Each trial writes experiments/results/suite/<task>/<arm>-s<seed>.json after every round
(atomically: temp file + rename) with the command, versions, git commit and settings; a
restart skips finished trials and starts unfinished ones anew (a trial has no checkpoint).

    python experiments/paper_suite.py --tasks frozenlake acrobot --seeds 0 1 2 3 4
    python experiments/paper_suite.py --tasks frozenlake --shard 0/2 &   # two processes
    python experiments/paper_suite.py --tasks frozenlake --shard 1/2 &
    python experiments/paper_suite.py --tasks frozenlake acrobot --summarize
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import RESULTS, provenance
from rlattr import IIF, Preset

OUT = RESULTS / "suite"
ARMS = ("ppo", "iif", "random_like", "advantage_like")
EVAL_SEED = 10_000
EVAL_ENVS = 64
STEPS_PER_ROUND = 2048


@dataclass(frozen=True)
class Task:
    """One task of the paper's IIF experiments (SCIENCE.md §6, arXiv 2505.19281 Fig. 6(b)).

    Attributes:
        preset: the agents/ preset with the paper's settings.
        rounds: the paper's budget in rounds of 2048 steps.
        paper_episodes: evaluation episodes per round in the paper.
        episodes: evaluation episodes per round here (see the README of the results).
        paper: the paper's SE_ave, SE_peak, RT_peak (percent), Fig. 6(b).
    """

    preset: str
    rounds: int
    paper_episodes: int
    episodes: int
    paper: dict[str, float] = field(default_factory=dict)


# Evaluation episodes per round here: the paper's count where it fits our two shared
# cores, fewer where it does not (measured CPU seconds per evaluation, README of the
# results): FrozenLake 1000 episodes cost < 2 s; Acrobot's untrained policy plays 500
# steps per episode (1000 episodes: ~23 s per round against ~1.1 s of training).
TASKS = {
    "frozenlake": Task(
        "frozenlake", 50, 1000, 1000, {"SE_ave": 34.0, "SE_peak": 19.2, "RT_peak": 29.5}
    ),
    "acrobot": Task(
        "acrobot_paper", 50, 1000, 200, {"SE_ave": 36.7, "SE_peak": 48.5, "RT_peak": 55.2}
    ),
    "minigrid": Task(
        "minigrid_paper", 40, 1000, 200, {"SE_ave": 65.8, "SE_peak": 61.7, "RT_peak": 69.1}
    ),
    "highway": Task("highway", 100, 100, 20, {"SE_ave": 37.7, "SE_peak": 55.1, "RT_peak": 59.9}),
    "lunarlander": Task(
        "lunarlander_paper", 150, 1000, 50, {"SE_ave": 26.0, "SE_peak": 39.7, "RT_peak": 44.9}
    ),
    "bipedalwalker": Task(
        "bipedalwalker", 1000, 100, 20, {"SE_ave": 31.0, "SE_peak": 26.2, "RT_peak": 29.2}
    ),
}


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--",
                "rlattr",
                "agents",
                "experiments/paper_suite.py",
            ],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty else "")


def arm_iif(preset: Preset, arm: str, seed: int) -> IIF | None:
    """The filter of an arm: None for PPO, the preset's rule, or its matched ablations."""
    if arm == "ppo":
        return None
    base = preset.iif_config(seed=seed)
    if arm == "iif":
        return base
    if arm in ("random_like", "advantage_like"):
        return IIF(
            rule=arm,
            like=base.rule,
            like_fraction=base.fraction,
            warmup_iterations=base.warmup_iterations,
            minibatching=base.minibatching,
            seed=seed,
        )
    raise ValueError(f"unknown arm {arm!r}; arms: {ARMS}")


def make_eval_env_factory(preset: Preset) -> Any:
    """One evaluation environment of the preset (gym.make + the preset's wrappers)."""
    import gymnasium as gym

    from rlattr.training.presets import _import_env_module, _import_wrapper

    _import_env_module(preset.env_id)
    wrappers = [_import_wrapper(path) for path in preset.wrappers]

    def make() -> Any:
        env = gym.make(preset.env_id, **preset.env_kwargs)
        for wrapper in wrappers:
            env = wrapper(env)
        return env

    return make


def trial_path(task: str, arm: str, seed: int) -> Path:
    return OUT / task / f"{arm}-s{seed}.json"


def write_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)


def is_done(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "done"
    except (OSError, json.JSONDecodeError):
        return False


def run_trial(
    task_name: str, arm: str, seed: int, rounds: int, episodes: int, device: str = "cpu"
) -> Path:
    """Train one arm on one seed for ``rounds`` rounds, evaluating after every round."""
    import torch

    from rlattr.training.evaluation import EvalEveryRound

    path = trial_path(task_name, arm, seed)
    if is_done(path):
        return path
    torch.set_num_threads(1)
    task = TASKS[task_name]
    preset = Preset.load(task.preset)
    iif = arm_iif(preset, arm, seed)
    model = preset.build(seed=seed, device=device, iif=iif)
    steps_per_round = model.n_steps * model.n_envs
    payload: dict[str, Any] = {
        **provenance(),
        "git_commit": git_commit(),
        "status": "running",
        "task": task_name,
        "arm": arm,
        "seed": seed,
        "rounds": rounds,
        "steps_per_round": steps_per_round,
        "preset": preset.to_dict(),
        "iif": None if iif is None else {k: str(v) for k, v in vars(iif).items()},
        "evaluation": {
            "episodes": episodes,
            "paper_episodes": task.paper_episodes,
            "policy": "stochastic",
            "episode_seeds": f"{EVAL_SEED} + j",
            "sampling_seed": EVAL_SEED,
            "n_envs": EVAL_ENVS,
        },
        "torch_threads": torch.get_num_threads(),
        "curve": [],
    }

    def on_point(point: Any) -> None:
        payload["curve"].append(point.to_dict())
        write_atomic(path, payload)
        print(
            f"{task_name} {arm} s{seed} round {point.round}: {point.return_mean:.3f} "
            f"(train {point.train_seconds:.0f}s wall, {point.train_cpu_seconds:.0f}s cpu; "
            f"eval {point.eval_seconds:.1f}s)",
            flush=True,
        )

    callback = EvalEveryRound(
        make_eval_env_factory(preset),
        episodes=episodes,
        seed=EVAL_SEED,
        n_envs=EVAL_ENVS,
        on_point=on_point,
    )
    start = time.perf_counter()
    model.learn(rounds * steps_per_round, callback=callback)
    payload["status"] = "done"
    payload["wall_seconds"] = time.perf_counter() - start
    payload["date_finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write_atomic(path, payload)
    model.env.close()
    return path


def trials(tasks: list[str], arms: list[str], seeds: list[int]) -> list[tuple[str, str, int]]:
    """Every (task, arm, seed): per task first PPO and IIF on every seed (the main
    comparison), then the ablations; within each group seed by seed."""
    main = [a for a in arms if a in ("ppo", "iif")]
    ablations = [a for a in arms if a not in main]
    return [(t, a, s) for t in tasks for group in (main, ablations) for s in seeds for a in group]


def summarize(task: str, arms: list[str]) -> None:
    raise NotImplementedError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["frozenlake", "acrobot"], choices=TASKS)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rounds", type=int, help="override the paper's budget (rounds)")
    parser.add_argument("--episodes", type=int, help="override the evaluation episodes")
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th trial from I")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--summarize", action="store_true")
    parser.add_argument("--out", help="results folder (default experiments/results/suite)")
    args = parser.parse_args()
    if args.out:
        global OUT
        OUT = Path(args.out)
    if args.summarize:
        for task in args.tasks:
            summarize(task, args.arms)
        return
    index, count = (int(x) for x in args.shard.split("/"))
    todo = trials(args.tasks, args.arms, args.seeds)[index::count]
    for task, arm, seed in todo:
        spec = TASKS[task]
        run_trial(
            task,
            arm,
            seed,
            rounds=args.rounds or spec.rounds,
            episodes=args.episodes or spec.episodes,
            device=args.device,
        )


if __name__ == "__main__":
    main()
