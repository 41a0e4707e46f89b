"""Small Gymnasium environments for rlattr's tests, demos and experiments.

Installed as ``rlattr.envs`` (the wheel ships this folder inside the package, so nothing
generic lands at the top level of site-packages). Importing it registers the ids under the
``rlattr/`` namespace: ``gymnasium.make("rlattr.envs:rlattr/ToyMultiDiscrete-v0")`` works
from any working directory.
"""

from gymnasium.envs.registration import register, registry


def _register(name: str, entry_point: str) -> None:
    env_id = f"rlattr/{name}"
    if env_id not in registry:  # importing twice (e.g. a reload) must not warn
        register(id=env_id, entry_point=f"rlattr.envs.{entry_point}", max_episode_steps=50)


_register("ToyMultiDiscrete-v0", "toy:ToyMultiDiscreteEnv")
_register("ToyMultiBinary-v0", "toy:ToyMultiBinaryEnv")
_register("ToyDictObs-v0", "toy:ToyDictObsEnv")
