"""The iteration just trained is attributed in memory, no run directory needed, with the
same scores as attributing it from the run directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlattr import AttributedPPO, ReturnTarget, attribute
from rlattr.errors import RunLogError

SMALL = {"n_steps": 64, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}


@pytest.mark.parametrize("method", ["snapshot", "tracin", "metagrad"])
def test_in_memory_equals_run_dir(run_dir: Path, method: str) -> None:
    recorded = AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=run_dir, **SMALL).learn(128)
    in_memory = AttributedPPO("MlpPolicy", "CartPole-v1", **SMALL).learn(128)  # no run dir
    last = recorded.iteration - 1
    from_disk = attribute(run_dir, last, ReturnTarget(), method, store=False)
    assert torch.equal(recorded.attribute(ReturnTarget(), method), from_disk)
    assert torch.equal(in_memory.attribute(ReturnTarget(), method), from_disk)
    assert torch.equal(attribute(in_memory, last, ReturnTarget(), method), from_disk)
    # Scoring in memory left the model as it was.
    assert torch.equal(
        in_memory.policy.state_dict()["action_net.weight"],
        recorded.policy.state_dict()["action_net.weight"],
    )


def test_only_the_last_iteration_is_in_memory() -> None:
    model = AttributedPPO("MlpPolicy", "CartPole-v1", **SMALL)
    with pytest.raises(RunLogError, match="learn"):
        model.attribute(ReturnTarget())
    model.learn(128)
    with pytest.raises(RunLogError, match="only the last trained iteration"):
        model.attribute(ReturnTarget(), iteration=0)
