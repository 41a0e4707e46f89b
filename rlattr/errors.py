"""Exceptions raised by rlattr. Every message names the problem and what to do about it."""


class RlattrError(Exception):
    """Base class of every error rlattr raises on purpose."""


class UnsupportedError(RlattrError, ValueError):
    """A policy, space or option that rlattr does not support (yet)."""


class PresetError(RlattrError, ValueError):
    """An agent preset that cannot be used as written (unknown key, bad value)."""


class RunLogError(RlattrError):
    """A run directory that cannot be read as asked (missing iteration, wrong version)."""


class CorruptRunLogError(RunLogError):
    """A file in a run directory is truncated, altered or unreadable."""


class FormatVersionError(RunLogError):
    """A run directory written by an incompatible version of the on-disk format."""


class ConfigError(RlattrError, ValueError):
    """A configuration value outside its meaning (a gamma of 1.5, a batch size of 0)."""


class NonFiniteError(RlattrError, ValueError):
    """A NaN or infinity where training data enters (reward, observation, advantage, loss)."""
