"""``diagnose``: a self-contained report from a recorded run, rows that match the run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlattr import IIF, AttributedPPO, RunLog
from rlattr.analysis.diagnose import DiagnoseConfig, diagnose


@pytest.fixture(scope="module")
def iif_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("diagnose") / "run"
    model = AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, n_steps=128, batch_size=64, n_epochs=1,
        seed=0, device="cpu", iif=IIF(rule="neg_bottom", fraction=0.5),
    )  # fmt: skip
    model.learn(384)
    return run_dir


def test_report_is_self_contained_and_rows_follow_the_run(iif_run: Path) -> None:
    config = DiagnoseConfig(fidelity_iterations=1, fidelity_subsets=4, rank_plots=(1,))
    result = diagnose(iif_run, config=config)
    log = RunLog(iif_run)
    assert [row["iteration"] for row in result.rows] == log.iterations()
    for row in result.rows:
        plan = log.load_plan(int(row["iteration"]))
        assert row["fraction_dropped"] == pytest.approx(float((~plan.keep_mask).double().mean()))
        meta = log.iteration_meta(int(row["iteration"]))
        assert row["num_timesteps"] == meta["info"]["num_timesteps"]
    # IIF dropped records, so the dropped/kept comparison is there where Ā is known.
    assert any("abs_error_dropped" in row for row in result.rows)
    [check] = result.fidelity
    assert check["iteration"] == 1 and -1.0 <= check["lds"] <= 1.0
    page = result.report.read_text()
    assert result.report == iif_run / "reports" / "diagnosis.html"
    # Curve + one rank plot, inline; nothing loaded from elsewhere.
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2
    assert "http" not in page
    assert f"iteration 1: LDS {check['lds']:.2f}" in page


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="fidelity_subsets"):
        DiagnoseConfig(fidelity_subsets=2)
    with pytest.raises(ValueError, match="every"):
        DiagnoseConfig(every=0)
