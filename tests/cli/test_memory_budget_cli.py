"""``--memory-budget`` on ``rlattr attribute``, ``fidelity`` and ``train``: parsed, passed
to the metagradient, and refused (one ``error:`` line, exit status 2) where it is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rlattr.scoring.metagrad as metagrad_module
from rlattr import RunLog
from rlattr.cli.main import main
from rlattr.run import resume_command
from rlattr.scoring.graph_memory import DEFAULT_MEMORY_BUDGET

QUIET = ["--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-iteration CartPole run (read-only)."""
    run = tmp_path_factory.mktemp("budget") / "run"
    assert main(["train", "cartpole", "--timesteps", "512", "--run-dir", str(run), *QUIET]) == 0
    return run


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``rlattr argv``; assert exit status 2 and a single ``error:`` line; return it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def budgets_seen(monkeypatch: pytest.MonkeyPatch) -> list:
    """The ``memory_budget`` every metagradient computation is called with."""
    seen: list = []
    real = metagrad_module.metagradient_scores

    def spy(*args, **kwargs):
        seen.append(kwargs.get("memory_budget", "not passed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(metagrad_module, "metagradient_scores", spy)
    return seen


# ---------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", "'lots' is not a memory size"),
        ("12parsecs", "unknown unit 'parsecs'"),
        ("0MiB", "at least 1 byte"),
        ("-1GiB", "is not a memory size"),
    ],
)
@pytest.mark.parametrize("command", ["attribute", "fidelity", "train"])
def test_bad_sizes(command: str, value: str, message: str, trained: Path, capsys) -> None:
    if command == "train":
        argv = ["train", "cartpole", "--iif", "--iif-scorer", "metagrad"]
    else:
        argv = [command, str(trained), "--iteration", "1", "--method", "metagrad"]
    line = _error(capsys, [*argv, f"--memory-budget={value}"])  # "=": "-1GiB" is no option
    assert "--memory-budget" in line and message in line


def test_attribute_refuses_a_budget_without_metagrad(trained: Path, capsys) -> None:
    line = _error(
        capsys, ["attribute", str(trained), "--iteration", "1", "--memory-budget", "1GiB"]
    )
    assert "--memory-budget only applies with --method metagrad" in line


def test_fidelity_refuses_a_budget_without_metagrad(trained: Path, capsys) -> None:
    argv = ["fidelity", str(trained), "--iteration", "1", "--method", "tracin"]
    line = _error(capsys, [*argv, "--memory-budget", "1GiB"])
    assert "--memory-budget only applies with --method metagrad or all" in line


@pytest.mark.parametrize(
    "options",
    [[], ["--iif"], ["--iif", "--iif-scorer", "snapshot"]],
    ids=["no-iif", "snapshot", "snapshot-explicit"],
)
def test_train_refuses_a_budget_without_metagradient_iif(
    options: list[str], tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    argv = ["train", "cartpole", "--run-dir", str(run), *options, "--memory-budget", "1GiB"]
    line = _error(capsys, argv)
    assert "--memory-budget only applies to metagradient IIF" in line
    assert "--iif-scorer metagrad" in line and not run.exists()


# ---------------------------------------------------------------------- passed through
def test_attribute_passes_the_budget(trained: Path, tmp_path: Path, budgets_seen: list) -> None:
    base = ["attribute", str(trained), "--iteration", "1", "--method", "metagrad", "--no-store"]
    assert main(base) == 0
    with pytest.warns(RuntimeWarning, match="no segment length fits the memory budget"):
        assert main([*base, "--memory-budget", "64KiB"]) == 0  # below any segmentation
    assert main([*base, "--memory-budget", "none"]) == 0
    assert budgets_seen == [DEFAULT_MEMORY_BUDGET, 65536, "none"]


def test_fidelity_passes_the_budget(trained: Path, budgets_seen: list) -> None:
    argv = ["fidelity", str(trained), "--iteration", "1", "--method", "metagrad", *QUIET]
    assert main([*argv, "--subsets", "2", "--orders", "1", "--memory-budget", "4MiB"]) == 0
    assert budgets_seen == [4 * 1024**2]


def test_train_records_the_budget_and_resumes_with_it(tmp_path: Path, budgets_seen: list) -> None:
    run = tmp_path / "run"
    argv = ["train", "cartpole", "--timesteps", "512", "--run-dir", str(run), *QUIET]
    assert main([*argv, "--iif", "--iif-scorer", "metagrad", "--memory-budget", "4MiB"]) == 0
    assert budgets_seen and set(budgets_seen) == {4 * 1024**2}
    log = RunLog(run)
    assert (
        json.loads((run / "run.json").read_text())["config"]["iif"]["memory_budget"] == 4 * 1024**2
    )
    assert "--memory-budget 4194304" in resume_command(log)
