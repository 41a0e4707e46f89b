"""Small Gymnasium environments for rlattr's tests, demos and experiments.

Installed as ``rlattr.envs`` (the wheel ships this folder inside the package, so nothing
generic lands at the top level of site-packages). Importing it registers the ids under the
``rlattr/`` namespace: ``gymnasium.make("rlattr.envs:rlattr/ToyMultiDiscrete-v0")`` works
from any working directory.
"""

from gymnasium.envs.registration import register, registry
from rlattr.envs.delayed_credit import CASH_IN, INVEST

__all__ = ["CASH_IN", "INVEST"]


def _register(
    name: str, entry_point: str, max_episode_steps: int | None = 50, **kwargs: object
) -> None:
    env_id = f"rlattr/{name}"
    if env_id not in registry:  # importing twice (e.g. a reload) must not warn
        register(
            id=env_id,
            entry_point=f"rlattr.envs.{entry_point}",
            max_episode_steps=max_episode_steps,
            kwargs=kwargs,
        )


_register("ToyMultiDiscrete-v0", "toy:ToyMultiDiscreteEnv")
_register("ToyMultiBinary-v0", "toy:ToyMultiBinaryEnv")
_register("ToyDictObs-v0", "toy:ToyDictObsEnv")

# Planted faults with per-step ground truth in ``info`` (keys ``rlattr_*``; see each module).
# CartPole keeps its own 500-step limit; DelayedCredit always ends after delay + 1 steps.
_register("CartPoleCorruptRewards-v0", "faults:cartpole_corrupt_rewards", None)
_register("CartPoleCorruptRegion-v0", "faults:cartpole_corrupt_region", None)
_register("TrapGrid-v0", "trap_grid:TrapGridEnv")
_register("TrapGridNear-v0", "trap_grid:TrapGridEnv", goal="near")
_register("DelayedCredit-v0", "delayed_credit:DelayedCreditEnv", None)
