"""Small Gymnasium environments used by rlattr's tests, demos and experiments.

Importing this package registers them, so ``gymnasium.make("envs:Name-v0")`` works from
the repository root (or wherever ``envs`` is importable).
"""

from gymnasium.envs.registration import register

register(id="ToyMultiDiscrete-v0", entry_point="envs.toy:ToyMultiDiscreteEnv", max_episode_steps=50)
register(id="ToyMultiBinary-v0", entry_point="envs.toy:ToyMultiBinaryEnv", max_episode_steps=50)
register(id="ToyDictObs-v0", entry_point="envs.toy:ToyDictObsEnv", max_episode_steps=50)
