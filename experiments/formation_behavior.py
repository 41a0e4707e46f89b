"""A behaviour file for `rlattr formation`: what the final policy does in sampled states.

Draws ``--states`` observations (seeded) from the run's last recorded buffer and pairs each
with the action the *final* policy takes there deterministically, written as the
``action:FILE`` target's npz (``observations`` [M, ...], ``actions`` [M]). The formation
analysis then asks which records of each iteration built that final behaviour (as the
fidelity study's action target does, experiments/fidelity.py).

    python experiments/formation_behavior.py RUN OUT.npz [--states 64] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from rlattr.record import RunLog, build_policy, restore_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--states", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    log = RunLog(args.run)
    last = log.iterations()[-1]
    records = log.load_records(last)
    policy = build_policy(log)
    tensors, meta = log.load_checkpoint(last + 1)
    restore_checkpoint(policy, tensors, meta)
    generator = torch.Generator().manual_seed(args.seed)
    picks = torch.randperm(len(records), generator=generator)[: args.states]
    observations = records.observations[picks]
    with torch.no_grad():
        actions = policy.get_distribution(observations).get_actions(deterministic=True)
    np.savez(args.out, observations=observations.numpy(), actions=actions.numpy())
    print(f"{len(picks)} states of iteration {last}, final policy's actions -> {args.out}")


if __name__ == "__main__":
    main()
