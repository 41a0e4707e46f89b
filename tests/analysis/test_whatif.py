"""The post-hoc what-if (rlattr.analysis.whatif): with nothing dropped the retrained update
is the logged θ_{k+1} bit for bit, the retrained update reads only the kept records
(poisoned dropped records change nothing), both policies are evaluated on the same seeds,
and the rules name exactly the records they say."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlattr import AttributedPPO, RunLog, ScoreHook
from rlattr.analysis.whatif import (
    WhatIfConfig,
    WhatIfError,
    WhatIfResult,
    check_iterations,
    eligible_records,
    paired_delta,
    random_like,
    removal_mask,
    retrain_without,
    whatif,
    whatif_iterations,
    write_whatif_report,
)
from rlattr.record import build_policy, load_iteration
from rlattr.record.replay import state_matches
from rlattr.training.evaluation import evaluate_policy_batched

TRAP = "rlattr.envs:rlattr/TrapGrid-v0"
SMALL = {"n_steps": 64, "batch_size": 16, "n_epochs": 2, "device": "cpu", "seed": 0}


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory: pytest.TempPathFactory) -> RunLog:
    """Three recorded TrapGrid iterations with return-target snapshot scores stored."""
    run_dir = tmp_path_factory.mktemp("whatif") / "run"
    model = AttributedPPO("MlpPolicy", TRAP, run_dir=run_dir, record_hooks=[ScoreHook()], **SMALL)
    model.learn(192)
    return RunLog(run_dir)


def trap_evaluator(policy, episodes: int, seed: int) -> np.ndarray:
    return evaluate_policy_batched(
        policy, lambda: gym.make("rlattr/TrapGrid-v0"), episodes, seed, n_envs=8
    )


def _state(policy) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in policy.state_dict().items()}


def test_nothing_removed_is_the_logged_update_bit_for_bit(scored_run: RunLog) -> None:
    policy = build_policy(scored_run)
    for k in scored_run.iterations():
        data = load_iteration(scored_run, k)
        retrain_without(data, policy, torch.zeros(len(data.records), dtype=torch.bool))
        assert state_matches(policy, scored_run.load_checkpoint(k + 1)[0]) == []


def test_a_whatif_that_drops_nothing_has_exactly_zero_delta(scored_run: RunLog) -> None:
    # Every score positive: drop_negative removes nothing, so θ'_{k+1} = θ_{k+1} and the
    # shared evaluation episodes (common random numbers) give identical returns.
    config = WhatIfConfig(episodes=6, control=True)
    result = whatif(scored_run, 1, config, trap_evaluator, scores=torch.ones(64))
    assert result.n_dropped == 0
    assert result.delta == 0.0 and result.delta_se == 0.0
    assert result.control_delta == 0.0  # a random drop of 0 records is no drop either
    assert result.return_logged == result.return_counterfactual


def test_the_retrained_update_reads_only_the_kept_records(scored_run: RunLog) -> None:
    policy = build_policy(scored_run)
    data = load_iteration(scored_run, 1)
    removed = random_like(13, torch.ones(64, dtype=torch.bool), torch.Generator().manual_seed(3))
    retrain_without(data, policy, removed)
    clean = _state(policy)
    assert all(torch.isfinite(v).all() for v in clean.values() if v.is_floating_point())
    assert state_matches(policy, scored_run.load_checkpoint(2)[0]) != []  # removal mattered
    for name in ("advantages", "returns", "log_probs", "values"):
        getattr(data.records, name)[removed] = float("nan")
    data.records.observations[removed] = 1e6
    data.records.actions[removed] = 3.0 - data.records.actions[removed]
    retrain_without(data, policy, removed)
    poisoned = _state(policy)
    assert [name for name in clean if not torch.equal(clean[name], poisoned[name])] == []


def test_both_policies_are_evaluated_on_the_same_seeds(scored_run: RunLog) -> None:
    calls: list[tuple[int, int, list[torch.Tensor]]] = []

    def recording(policy, episodes: int, seed: int) -> np.ndarray:
        calls.append((episodes, seed, [p.detach().clone() for p in policy.parameters()]))
        return trap_evaluator(policy, episodes, seed)

    config = WhatIfConfig(episodes=5, eval_seed=123)
    result = whatif(scored_run, 2, config, recording)
    assert result.n_dropped > 0
    assert [(episodes, seed) for episodes, seed, _ in calls] == [
        (5, 123)
    ] * 3  # logged, rule, control
    logged, retrained, control = (params for _, _, params in calls)
    assert not all(torch.equal(a, b) for a, b in zip(logged, retrained, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(retrained, control, strict=True))


def test_the_rules_name_exactly_their_records() -> None:
    scores = torch.tensor([0.3, -0.2, -0.5, 0.1, -0.1, -0.4, 0.2, -0.3])
    eligible = torch.tensor([True, True, False, True, True, True, True, True])  # 2 untrained
    generator = torch.Generator().manual_seed(0)

    def named(rule: str, fraction: float = 0.3) -> list[int]:
        mask = removal_mask(scores, rule, fraction, eligible, generator)
        return torch.nonzero(mask).flatten().tolist()

    assert named("drop_negative") == [1, 4, 5, 7]  # record 2 is negative but untrained
    assert named("bottom") == [5, 7]  # floor(0.3 × 7 eligible) = 2 lowest eligible
    drawn = named("random", 0.5)
    assert len(drawn) == 3 and all(bool(eligible[i]) for i in drawn)
    control = random_like(4, eligible, generator)
    assert int(control.sum()) == 4 and not bool((control & ~eligible).any())


def test_records_the_run_already_removed_are_not_eligible() -> None:
    plan = SimpleNamespace(
        keep_mask=torch.tensor([True, False, True, True]),
        record_weights=torch.tensor([1.0, 1.0, 0.0, 0.5]),
    )
    assert eligible_records(SimpleNamespace(plan=plan)).tolist() == [True, False, False, True]


def test_paired_delta_is_the_mean_difference_and_its_standard_error() -> None:
    # differences 1, 2, 2, 3: mean 2, sample variance 2/3, SE sqrt(2/3)/2
    delta, se = paired_delta(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.0, 1.0, 1.0]))
    assert delta == pytest.approx(2.0, abs=1e-15)
    assert se == pytest.approx(np.sqrt(2 / 3) / 2, rel=1e-12)
    with pytest.raises(WhatIfError, match="same number"):
        paired_delta(np.zeros(3), np.zeros(4))


def test_bad_input_is_refused_before_anything_retrains(scored_run: RunLog, tmp_path: Path) -> None:
    with pytest.raises(WhatIfError, match="iteration 7 is not recorded"):
        check_iterations(scored_run, [7])
    with pytest.raises(WhatIfError, match=r"no scores 'tracin-return'.*rlattr attribute"):
        whatif_iterations(scored_run, [0], WhatIfConfig(scores="tracin-return"), trap_evaluator)
    with pytest.raises(WhatIfError, match="finite"):
        whatif(scored_run, 0, WhatIfConfig(), trap_evaluator, scores=torch.full((64,), np.nan))
    with pytest.raises(WhatIfError, match="unknown what-if rule"):
        WhatIfConfig(rule="drop_positive")  # type: ignore[arg-type]
    with pytest.raises(WhatIfError, match="fraction"):
        WhatIfConfig(fraction=1.0)


def test_the_report_has_a_row_per_run_and_iteration(scored_run: RunLog, tmp_path: Path) -> None:
    config = WhatIfConfig(episodes=3)
    results = whatif_iterations(scored_run, [0, 2], config, trap_evaluator)
    written = write_whatif_report({"a": results, "b": results[:1]}, tmp_path)
    assert [p.name for p in written] == ["whatif.csv", "whatif.md", "whatif.png"]
    lines = (tmp_path / "whatif.csv").read_text().splitlines()
    assert len(lines) == 1 + 3 and lines[1].startswith("a,0,drop_negative,64,64,")
    assert "| 0 | 2 |" in (tmp_path / "whatif.md").read_text()
    assert (tmp_path / "whatif.png").stat().st_size > 0


def _parameter_sum(policy) -> float:
    return float(sum(p.detach().to(torch.float64).sum() for p in policy.parameters()))


def test_delta_and_control_from_an_evaluator_that_is_a_known_function_of_the_parameters(
    scored_run: RunLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Episode j's return is (j + 1) · s(θ) + seed, s(θ) the sum of the parameters: the
    # returns of each evaluated policy, hence Δ and its SE, follow from the parameters.
    # The module, not the function rlattr.analysis exports under the same name.
    module = importlib.import_module("rlattr.analysis.whatif")

    k, episodes, seed = 1, 4, 7
    masks: list[torch.Tensor] = []
    real_retrain = module.retrain_without

    def spying_retrain(data, policy, removed: torch.Tensor) -> None:
        masks.append(removed.detach().cpu().clone())
        real_retrain(data, policy, removed)

    monkeypatch.setattr(module, "retrain_without", spying_retrain)
    evaluated: list[tuple[torch.Tensor, float, dict[str, torch.Tensor]]] = []

    def known(policy, n: int, s: int) -> np.ndarray:
        evaluated.append((masks[-1], _parameter_sum(policy), _state(policy)))
        return (np.arange(n) + 1.0) * _parameter_sum(policy) + s

    scores = torch.linspace(-1.0, 1.0, 64)[
        torch.randperm(64, generator=torch.Generator().manual_seed(5))
    ]
    expected_removed = scores < 0  # drop_negative, every record trained on in this run
    config = WhatIfConfig(episodes=episodes, eval_seed=seed, control=True, control_seed=3)
    result = whatif(scored_run, k, config, known, scores=scores)

    assert len(evaluated) == 3
    by_role = {}
    for mask, total, state in evaluated:
        if not bool(mask.any()):
            by_role["logged"] = (total, state)
        elif torch.equal(mask, expected_removed):
            by_role["rule"] = (total, state, mask)
        else:
            by_role["control"] = (total, state, mask)
    assert set(by_role) == {"logged", "rule", "control"}
    # The logged policy is θ_{k+1} of the run log.
    logged_state = scored_run.load_checkpoint(k + 1)[0]
    logged_sum = float(
        sum(
            logged_state["policy." + name].to(torch.float64).sum()
            for name, _ in build_policy(scored_run).named_parameters()
        )
    )
    assert by_role["logged"][0] == pytest.approx(logged_sum, rel=1e-12)
    # The control drops as many eligible records as the rule, but others: a random draw.
    control_mask = by_role["control"][2]
    assert int(control_mask.sum()) == int(expected_removed.sum()) == result.n_dropped == 32
    assert not torch.equal(control_mask, expected_removed)
    assert not all(
        torch.equal(by_role["rule"][1][n], by_role["control"][1][n]) for n in by_role["rule"][1]
    )
    weights = np.arange(episodes) + 1.0  # per-episode difference (j + 1) · (s' − s)
    for attribute, role in (("delta", "rule"), ("control_delta", "control")):
        gap = by_role[role][0] - by_role["logged"][0]
        assert gap != 0.0
        differences = weights * gap
        assert getattr(result, attribute) == pytest.approx(differences.mean(), rel=1e-9)
        assert getattr(result, attribute + "_se") == pytest.approx(
            differences.std(ddof=1) / np.sqrt(episodes), rel=1e-9
        )
    assert result.return_logged == pytest.approx(weights.mean() * by_role["logged"][0] + seed)
    assert result.return_counterfactual == pytest.approx(weights.mean() * by_role["rule"][0] + seed)


def _result(iteration: int, delta: float, control: float) -> WhatIfResult:
    return WhatIfResult(
        iteration=iteration, rule="drop_negative", n_records=64, n_eligible=64, n_dropped=5,
        return_logged=0.0, return_counterfactual=delta, delta=delta, delta_se=0.1,
        control_delta=control, control_delta_se=0.1, episodes=4, eval_seed=0, seconds=0.0,
    )  # fmt: skip


def test_the_report_counts_the_runs_where_the_rule_beats_the_control(tmp_path: Path) -> None:
    # Iteration 0: the rule is above its control in runs a and b, not c (a tie is not above);
    # iteration 1: in run a only. Overall: 3 of 5 pairs.
    results = {
        "a": [_result(0, 1.0, 0.5), _result(1, 0.2, -0.1)],
        "b": [_result(0, -0.1, -0.3)],
        "c": [_result(0, 0.4, 0.4), _result(1, -1.0, 2.0)],
    }
    write_whatif_report(results, tmp_path)
    report = (tmp_path / "whatif.md").read_text()
    rows = {
        int(cells[1]): cells
        for line in report.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.split("|")])[1].isdigit()
    }
    assert rows[0][6] == "2/3" and rows[1][6] == "1/2"
    assert "rule above control in 3 of 5" in report
    # Δ means: iteration 0 (1.0 − 0.1 + 0.4) / 3, the control (0.5 − 0.3 + 0.4) / 3.
    assert rows[0][4].startswith(f"{1.3 / 3:+.3f}") and rows[0][5].startswith(f"{0.6 / 3:+.3f}")
