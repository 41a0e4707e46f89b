"""A wrapper outside rlattr's allow-list, for the sweep's --allow-module tests."""

import gymnasium as gym


class Identity(gym.Wrapper):
    """Changes nothing: only its module's name matters."""
