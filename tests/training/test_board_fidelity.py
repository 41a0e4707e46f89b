"""The board's live fidelity check (BoardConfig.fidelity_every): the same LDS as the
post-hoc check on the logged iteration, and training unchanged by it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlattr import IIF, AttributedPPO
from rlattr.analysis.fidelity import fidelity
from rlattr.record.runlog import RunLog
from rlattr.scoring.targets import ReturnTarget
from rlattr.training.board import BoardConfig
from rlattr.training.seams import score_prefix
from tests.helpers import LinearFeatures


def _train(
    run_dir: Path,
    board: BoardConfig,
    iif: IIF | None = None,
    policy_kwargs: dict[str, Any] | None = None,
) -> AttributedPPO:
    model = AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, n_steps=64, batch_size=32, n_epochs=2,
        seed=0, device="cpu", iif=iif or IIF(fraction=0.25), board=board,
        policy_kwargs=policy_kwargs,
    )  # fmt: skip
    return model.learn(3 * 64)


# The second case has two features extractors with parameters: the board's replay must
# rebuild that architecture (SB3's policy constructor parameters omit
# share_features_extractor, and a rebuilt policy then ties the two together).
SEPARATE_EXTRACTORS = {
    "share_features_extractor": False,
    "features_extractor_class": LinearFeatures,
}


@pytest.mark.parametrize("policy_kwargs", [None, SEPARATE_EXTRACTORS], ids=["mlp", "separate"])
def test_live_lds_is_the_post_hoc_lds_and_training_is_unchanged(
    tmp_path: Path, policy_kwargs: dict[str, Any] | None
) -> None:
    config = BoardConfig(fidelity_every=2, fidelity_subsets=6, fidelity_ceiling=True)
    checked = _train(tmp_path / "checked", config, policy_kwargs=policy_kwargs)
    plain = _train(tmp_path / "plain", BoardConfig(), policy_kwargs=policy_kwargs)
    for a, b in zip(checked.policy.parameters(), plain.policy.parameters(), strict=True):
        assert torch.equal(a, b)

    [events_dir] = (tmp_path / "checked" / "tb").iterdir()  # SB3's PPO_1
    events = EventAccumulator(str(events_dir))
    events.Reload()
    lds = {e.step: e.value for e in events.Scalars("fidelity/lds")}
    ceiling = {e.step: e.value for e in events.Scalars("fidelity/ceiling")}
    assert sorted(lds) == sorted(ceiling) == [64, 192]  # iterations 0 and 2 of 0, 1, 2
    assert len(events.Scalars("time/fidelity_s")) == 2
    # The separate-extractor case names a class of tests.helpers: read as a user allows it.
    log = RunLog(tmp_path / "checked", allow_modules=["tests"])
    for iteration, step in ((0, 64), (2, 192)):
        scores, _ = log.load_scores(iteration, "snapshot-return")
        report = fidelity(
            log, iteration, ReturnTarget(), scores=scores, n_subsets=6, fraction=0.1,
            seed=iteration, orders=2,
        )  # fmt: skip
        # TensorBoard stores float32.
        assert lds[step] == pytest.approx(report.lds, abs=1e-6)
        assert ceiling[step] == pytest.approx(report.ceiling, abs=1e-6)


@pytest.mark.parametrize(
    ("field", "value"),
    [("fidelity_every", -1), ("fidelity_subsets", 2), ("fidelity_fraction", 1.0)],
)
def test_fidelity_settings_are_validated(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        BoardConfig(**{field: value})


def test_scores_on_another_return_target_are_not_checked_against_the_default_one(
    tmp_path: Path,
) -> None:
    """IIF scoring Monte-Carlo advantages logs under its own prefix; the fidelity check,
    made for the GAE return target, does not run on them (it would report the LDS of
    scores against a target they were not computed for)."""
    iif = IIF(fraction=0.25, target=ReturnTarget(advantage="mc"))
    _train(tmp_path / "mc", BoardConfig(fidelity_every=1, fidelity_subsets=6), iif)
    [events_dir] = (tmp_path / "mc" / "tb").iterdir()
    events = EventAccumulator(str(events_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "fidelity/lds" not in tags
    assert any(tag.startswith("scores_return_mc/") for tag in tags)
    assert not any(tag.startswith("scores/") for tag in tags)


@pytest.mark.parametrize(
    ("target", "method", "prefix"),
    [
        (ReturnTarget(), "", "scores"),
        (ReturnTarget(advantage="mc"), "", "scores_return_mc"),
        (ReturnTarget(), "tracin", "scores_return_tracin"),
    ],
)
def test_only_the_default_return_target_gets_the_primary_prefix(
    target: ReturnTarget, method: str, prefix: str
) -> None:
    assert score_prefix(target, method) == prefix
