"""GRPO+IIF inside TRL end to end: filtering, the run log, exact replay, no perturbation."""

from __future__ import annotations

import time

import pytest
import torch
from datasets import Dataset
from trl import GRPOTrainer

from rlattr.errors import CorruptRunLogError, RunLogError
from rlattr.llm import LLMIIF, IIFGRPOTrainer, LLMRunLog, replay_round
from rlattr.llm.fidelity import spearman, subset_effects
from tests.llm.conftest import grpo_config


def _dataset(task):
    return Dataset.from_dict({"prompt": task.prompts(32)})


def _validation(task):
    return [{"prompt": p} for p in task.prompts(4, offset=3)]


def _trainer(model, tokenizer, task, out, **kwargs):
    return IIFGRPOTrainer(
        model=model,
        reward_funcs=task.reward,
        args=grpo_config(out),
        train_dataset=_dataset(task),
        processing_class=tokenizer,
        **kwargs,
    )


@pytest.fixture(scope="module")
def plain_grpo_parameters(tokenizer, task, pretrained_state, tmp_path_factory):
    """TRL's own GRPOTrainer, trained from the pretrained weights (the reference)."""
    from rlattr.llm.toy import tiny_causal_lm

    model = tiny_causal_lm(tokenizer, seed=0)
    model.load_state_dict(pretrained_state)
    plain = GRPOTrainer(
        model=model,
        reward_funcs=task.reward,
        args=grpo_config(tmp_path_factory.mktemp("plain")),
        train_dataset=_dataset(task),
        processing_class=tokenizer,
    )
    plain.train()
    return {name: p.detach().clone() for name, p in plain.model.named_parameters()}


@pytest.mark.parametrize(
    "iif",
    [None, LLMIIF(rule="bottom", fraction=0.0, target="batch")],
    ids=["no-iif", "iif-scoring-but-dropping-nothing"],
)
def test_observing_never_perturbs_grpo(
    pretrained_model, tokenizer, task, plain_grpo_parameters, tmp_path, iif
) -> None:
    """Recording, timing and scoring leave training bit-identical to GRPOTrainer's (the
    validation target would draw completions from the global RNG, so the batch target)."""
    ours = _trainer(
        pretrained_model, tokenizer, task, tmp_path / "a", iif=iif, run_dir=tmp_path / "run"
    )
    ours.train()
    for name, param in ours.model.named_parameters():
        assert torch.equal(param, plain_grpo_parameters[name]), name
    assert [s.round for s in ours.round_stats] == [0, 1]
    if iif is not None:  # the pairs were really scored
        log = LLMRunLog(tmp_path / "run")
        scores = [log.read_round(k).extras["scores"] for k in log.rounds()]
        assert any(bool((s != 0).any()) for s in scores)


def test_grpo_iif_end_to_end_and_exact_replay(
    pretrained_model, tokenizer, task, pretrained_state, tmp_path
) -> None:
    from rlattr.llm.toy import tiny_causal_lm

    run = tmp_path / "run"
    iif = LLMIIF(rule="drop_negative", target="validation")
    trainer = _trainer(
        pretrained_model,
        tokenizer,
        task,
        tmp_path / "out",
        iif=iif,
        validation_dataset=_validation(task),
        run_dir=run,
    )
    started = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - started
    stats = trainer.round_stats
    assert len(stats) == 2
    assert sum(s.fraction_dropped for s in stats) > 0  # something was filtered
    # Training logs show training completions only (validation ones are put back).
    assert len(trainer._logs["prompt"]) == 16

    log = LLMRunLog(run)
    assert log.rounds() == [0, 1]
    # Each round's statistics, recomputed from what the run log stored of that round.
    for s, k in zip(stats, log.rounds(), strict=True):
        extras = log.read_round(k).extras
        scores, keep = extras["scores"].double(), extras["keep"]
        assert s.round == k and s.n_pairs == len(scores) == 16  # 4 prompts × 4 samples
        assert s.fraction_negative == pytest.approx(int((scores < 0).sum()) / 16, abs=1e-12)
        assert s.fraction_dropped == pytest.approx(int((~keep).sum()) / 16, abs=1e-12)
        assert s.reward_mean == pytest.approx(float(extras["rewards"].double().mean()), 1e-12)
        ordered = sorted(scores.tolist())
        expected = []
        for level in (0.1, 0.5, 0.9):  # linear interpolation between order statistics
            position = level * 15
            low = int(position)
            expected.append(ordered[low] + (position - low) * (ordered[low + 1] - ordered[low]))
        assert s.score_quantiles == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # The phases are disjoint slices of training: each measured, all within its wall time.
    phases = [s.generation_s + s.target_s + s.scoring_s + s.update_s for s in stats]
    assert all(min(s.generation_s, s.target_s, s.scoring_s, s.update_s) > 0 for s in stats)
    assert sum(phases) <= elapsed
    record = log.read_round(0)
    assert {"prompt_ids", "completion_ids", "completion_mask", "advantages"} <= set(record.inputs)
    assert {"rewards", "start_logps", "scores", "keep"} <= set(record.extras)
    assert torch.equal(record.extras["keep"], record.extras["scores"] >= 0)
    assert "old_per_token_logps" in record.inputs  # num_iterations = 2 keeps them

    # Replay every round on a fresh trainer: bit-identical parameters.
    model = tiny_causal_lm(tokenizer, seed=0)
    model.load_state_dict(pretrained_state)
    replayer = _trainer(
        model, tokenizer, task, tmp_path / "re", iif=iif, validation_dataset=_validation(task)
    )
    replayer.create_optimizer_and_scheduler(num_training_steps=8)
    for index in log.rounds():
        replayed = replay_round(replayer, run, index)
        expected = log.end_parameters(index)
        different = [n for n in expected if not torch.equal(replayed[n], expected[n])]
        assert not different, f"round {index}: {different}"

    # Leave-subset-out ground truth: removing nothing changes nothing, exactly; removing
    # pairs moves the target by a finite amount that the scores are judged against.
    target = record.target_batch()
    assert target is not None and len(target) == 16  # 4 validation prompts × 4 samples
    n = len(record.extras["scores"])
    some = torch.zeros(n, dtype=torch.bool)
    some[: n // 2] = True
    effects = subset_effects(replayer, run, 0, [torch.zeros(n, dtype=torch.bool), some])
    assert effects.actual[0] == 0.0 and effects.predicted[0] == 0.0
    assert bool(torch.isfinite(effects.actual).all())

    # A counterfactual keep-mask changes the outcome (the replay is not a lookup).
    everything = torch.ones_like(record.extras["keep"])
    if not bool(record.extras["keep"].all()):
        replayed = replay_round(replayer, run, 0, keep=everything)
        expected = log.end_parameters(0)
        assert any(not torch.equal(replayed[n], expected[n]) for n in expected)


def test_bad_setups_fail_clearly(pretrained_model, tokenizer, task, tmp_path) -> None:
    with pytest.raises(ValueError, match="validation_dataset"):
        _trainer(pretrained_model, tokenizer, task, tmp_path / "a", iif=LLMIIF())
    run = tmp_path / "run"
    _trainer(pretrained_model, tokenizer, task, tmp_path / "b", run_dir=run)
    with pytest.raises(RunLogError, match="already holds a run"):
        _trainer(pretrained_model, tokenizer, task, tmp_path / "c", run_dir=run)


def test_run_log_detects_corruption(pretrained_model, tokenizer, task, tmp_path) -> None:
    run = tmp_path / "run"
    trainer = _trainer(
        pretrained_model, tokenizer, task, tmp_path / "out", iif=LLMIIF(target="batch"), run_dir=run
    )
    trainer.train()
    path = run / "rounds" / "000000" / "batch.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptRunLogError, match="checksum"):
        LLMRunLog(run).read_round(0)
    with pytest.raises(RunLogError, match="not committed"):
        LLMRunLog(run).read_round(5)


def test_lora_with_kl_end_to_end_and_exact_replay(
    pretrained_model, tokenizer, task, pretrained_state, tmp_path
) -> None:
    """PEFT adapters (the paper's RLHF setting) and a KL penalty (reference log-probs from
    the disabled adapters) go through scoring, recording and replay."""
    from peft import LoraConfig

    from rlattr.llm.toy import tiny_causal_lm

    def build(model, out, run_dir=None):
        return IIFGRPOTrainer(
            model=model,
            reward_funcs=task.reward,
            args=grpo_config(out, beta=0.04, max_steps=4, learning_rate=1e-2),
            train_dataset=_dataset(task),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
            iif=LLMIIF(rule="neg_bottom", fraction=0.5, target="batch"),
            run_dir=run_dir,
        )

    run = tmp_path / "run"
    trainer = build(pretrained_model, tmp_path / "out", run)
    trainer.train()
    assert trainer._score_params and all("lora_" in n for n in trainer._score_params)
    assert trainer.last_scores is not None and bool((trainer.last_scores != 0).any())
    log = LLMRunLog(run)
    record = log.read_round(0)
    assert "ref_per_token_logps" in record.inputs
    assert all("lora_" in name for name in record.parameters)

    model = tiny_causal_lm(tokenizer, seed=0)
    model.load_state_dict(pretrained_state)
    replayer = build(model, tmp_path / "re")
    replayer.create_optimizer_and_scheduler(num_training_steps=4)
    replayed = replay_round(replayer, run, 0)
    expected = log.end_parameters(0)
    assert all(torch.equal(replayed[n], expected[n]) for n in expected)


def test_spearman() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
