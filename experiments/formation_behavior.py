"""A behaviour file for `rlattr formation`: what the final policy does in sampled states.

Draws ``--states`` observations (seeded) from the run's last recorded buffer and pairs each
with the action the *final* policy takes there deterministically, written as the
``action:FILE`` target's npz (``observations`` [M, ...], ``actions`` [M]). The formation
analysis then asks which records of each iteration built that final behaviour (as the
one-update fidelity study's action target did).

    python experiments/formation_behavior.py RUN OUT.npz [--states 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import final_action_target
from rlattr.record import RunLog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--states", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    log = RunLog(args.run)
    target = final_action_target(log, args.states, args.seed)
    np.savez(args.out, observations=target.observations.numpy(), actions=target.actions.numpy())
    print(
        f"{len(target.actions)} states of iteration {log.iterations()[-1]}, final policy's "
        f"actions -> {args.out}"
    )


if __name__ == "__main__":
    main()
