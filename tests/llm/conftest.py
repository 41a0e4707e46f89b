"""Fixtures of the language-model tests: offline, CPU, a tiny model built from a config.

The ``llm`` extra (transformers, trl, peft) must be installed: these tests fail, not skip,
without it, so a CI that lacks it says so.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

try:
    import peft  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401
except ImportError as err:  # pragma: no cover - the message is the point
    raise ImportError(
        f"tests/llm need the 'llm' extra ({err}): pip install -e '.[llm]' (or '.[all]')"
    ) from err

import torch

from rlattr.llm.batch import SequenceBatch
from rlattr.llm.toy import SentimentTask, char_tokenizer, tiny_causal_lm


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="session")
def task() -> SentimentTask:
    # One clause per sentence: pretraining learns the format in a second or two.
    return SentimentTask(clauses=1)


def random_batch(tokenizer, task: SentimentTask, n: int = 6, seed: int = 0) -> SequenceBatch:
    """Pairs with prompts of different lengths and completions of different lengths."""
    generator = torch.Generator().manual_seed(seed)
    prompts = [tokenizer(p)["input_ids"] for p in task.prompts(n)]
    lengths = torch.randint(3, 9, (n,), generator=generator).tolist()
    completions = [
        torch.randint(3, len(tokenizer), (k,), generator=generator).tolist() for k in lengths
    ]
    p_len, c_len = max(map(len, prompts)), max(lengths)
    pad = tokenizer.pad_token_id
    prompt_ids = torch.tensor([[pad] * (p_len - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (p_len - len(p)) + [1] * len(p) for p in prompts])
    completion_ids = torch.tensor([c + [pad] * (c_len - len(c)) for c in completions])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (c_len - len(c)) for c in completions])
    advantages = torch.randn(n, generator=generator, dtype=torch.float64)
    return SequenceBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, advantages)


@pytest.fixture
def fp64_model(tokenizer):
    return tiny_causal_lm(tokenizer, seed=1, dtype=torch.float64)


def grpo_config(output_dir, **overrides):
    """A GRPO configuration small enough for a unit test (2 rounds of 16 pairs)."""
    from trl import GRPOConfig

    settings = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        per_device_train_batch_size=8,
        num_generations=4,
        steps_per_generation=2,
        num_iterations=2,
        max_completion_length=10,
        max_steps=8,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        beta=0.0,
        bf16=False,  # TRL defaults to bf16 autocast; tests compare fp32 bit for bit
        seed=0,
    )
    settings.update(overrides)
    return GRPOConfig(**settings)


@pytest.fixture(scope="session")
def pretrained_state(tokenizer, task):
    """A briefly pretrained tiny model's weights (about a second), shared by the tests."""
    from rlattr.llm.toy import pretrain

    model = tiny_causal_lm(tokenizer, seed=0)
    pretrain(model, tokenizer, task.corpus(500), steps=60, batch_size=16)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def pretrained_model(tokenizer, pretrained_state):
    model = tiny_causal_lm(tokenizer, seed=0)
    model.load_state_dict(pretrained_state)
    return model
