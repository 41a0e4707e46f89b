"""Per-record ground truth from the environments: the ``info`` keys starting with ``rlattr_``.

Environments with planted faults (``rlattr.envs``) say in ``info`` which steps are the
fault (``rlattr_fault``) and what else is known about them (``rlattr_true_reward``, ...).
``GroundTruthRecorder`` collects those values while SB3 collects the rollout, in the
records' order, so filters can be scored against the truth during training and the run
directory keeps it (``RunLog.load_ground_truth``).

SB3's ``collect_rollouts`` calls the callbacks after ``env.step`` and before
``rollout_buffer.add``; at that moment the buffer's ``pos`` is the step being collected,
so ``infos[e]`` belongs to record ``e * n_steps + pos`` (env-major, as ``Records``). The
recorder only reads: training is unchanged.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

PREFIX = "rlattr_"


class GroundTruthRecorder(BaseCallback):
    """Collects ``info[key]`` for every ``key`` starting with ``rlattr_``, per step and env.

    A key whose values are all booleans is stored as bool (False where a step lacked it);
    any other number makes it float64 (NaN where a step lacked it; a boolean counts 0/1).
    Values of other types (strings, arrays) are ignored.
    """

    def __init__(self) -> None:
        super().__init__(verbose=0)
        self._values: dict[str, np.ndarray] = {}  # key -> [n_steps, n_envs]

    def _on_rollout_start(self) -> None:
        self._values = {}

    def _on_step(self) -> bool:
        infos: Sequence[Mapping[str, Any]] = self.locals.get("infos") or ()
        buffer = self.model.rollout_buffer
        step = buffer.pos
        if step >= buffer.buffer_size:  # not a step that goes into the buffer
            return True
        for env_index, info in enumerate(infos):
            for key, value in info.items():
                if key.startswith(PREFIX):
                    self._store(key, step, env_index, value, buffer)
        return True

    def _store(self, key: str, step: int, env_index: int, value: Any, buffer: Any) -> None:
        is_bool = isinstance(value, bool | np.bool_)
        if not is_bool and not isinstance(value, numbers.Real):
            return
        column = self._values.get(key)
        shape = (buffer.buffer_size, buffer.n_envs)
        if column is None:
            column = np.zeros(shape, np.bool_) if is_bool else np.full(shape, np.nan)
            self._values[key] = column
        elif column.dtype == np.bool_ and not is_bool:
            # A number after booleans: the key is numeric (earlier steps become 0/1; steps
            # that lacked it cannot be told from False any more, which is what they meant).
            column = column.astype(np.float64)
            self._values[key] = column
        column[step, env_index] = value

    def take(self, device: torch.device | str) -> dict[str, torch.Tensor] | None:
        """The rollout's ground truth as ``[N]`` tensors in record order (None when no step
        reported any), and forget it."""
        values, self._values = self._values, {}
        if not values:
            return None
        # [n_steps, n_envs] -> env-major [N], as RolloutBuffer.swap_and_flatten does.
        return {
            key: torch.from_numpy(np.ascontiguousarray(column.swapaxes(0, 1)).reshape(-1)).to(
                device
            )
            for key, column in sorted(values.items())
        }
