"""A tiny offline language-model task: character tokenizer, 2-layer model, sentiment reward.

Tests, the demo and ``experiments/llm_grpo_iif.py`` need a causal LM that RL can improve in
seconds on a CPU, without fetching anything. This module builds one from a config:

- ``char_tokenizer``: a ``PreTrainedTokenizerFast`` over single characters (``tokenizers``
  WordLevel model, a pre-tokenizer that splits every character, a ``Fuse`` decoder).
- ``tiny_causal_lm``: a Qwen2 model of 2 layers and width 64 (about 80k parameters).
- ``SentimentTask``: sentences ``"<subject> was <adjective> and <subject> was ..."``;
  prompts are a subject and ``" was "``; the reward is the lexicon sentiment of the
  completion (positive minus negative adjectives, over the adjectives found). A brief
  in-process pretraining on a corpus that is mostly negative leaves the model producing
  both kinds of words, so there is something for RL to improve.

Users bring their own model and tokenizer; nothing here is needed outside tests and demos.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
ALPHABET = "abcdefghijklmnopqrstuvwxyz .,"


def char_tokenizer(alphabet: str = ALPHABET) -> PreTrainedTokenizerFast:
    """A character-level tokenizer built in code (no files, no downloads).

    Ids 0, 1, 2 are ``<pad>``, ``<eos>``, ``<unk>``; then one id per character of
    ``alphabet``. Decoding fuses the characters back into a string.
    """
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for char in alphabet:
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK
    )


def tiny_causal_lm(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM built from a config (never downloaded).

    Dropout is 0, so a forward pass is deterministic (replay and exactness tests need that).
    """
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        attention_dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.to(dtype)


POSITIVE = ("good", "great", "nice", "fun", "kind")
NEGATIVE = ("bad", "awful", "poor", "dull", "rude")
SUBJECTS = ("the food", "the movie", "the staff", "my day", "the room", "the show", "the park")


@dataclass(frozen=True)
class SentimentTask:
    """Sentence continuation with a lexicon sentiment reward (a stand-in for detoxification).

    Attributes:
        positive_share: share of positive adjectives in the pretraining corpus.
        clauses: clauses per pretraining sentence (joined by ``" and "``).
        seed: seed of the corpus and prompt draws.
    """

    positive_share: float = field(
        default=0.3, metadata={"help": "share of positive adjectives in the pretraining corpus"}
    )
    clauses: int = field(default=2, metadata={"help": "clauses per pretraining sentence"})
    seed: int = field(default=0, metadata={"help": "seed of corpus and prompt draws"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.positive_share <= 1.0:
            raise ValueError(f"positive_share must be in [0, 1], got {self.positive_share}")
        if self.clauses < 1:
            raise ValueError(f"clauses must be >= 1, got {self.clauses}")

    def sentence(self, rng: random.Random) -> str:
        parts = []
        for _ in range(self.clauses):
            lexicon = POSITIVE if rng.random() < self.positive_share else NEGATIVE
            parts.append(f"{rng.choice(SUBJECTS)} was {rng.choice(lexicon)}")
        return " and ".join(parts) + "."

    def corpus(self, n: int) -> list[str]:
        rng = random.Random(self.seed)
        return [self.sentence(rng) for _ in range(n)]

    def prompts(self, n: int, offset: int = 0) -> list[str]:
        """``n`` prompts (subjects cycled from ``offset``), e.g. ``"the food was "``."""
        return [f"{SUBJECTS[(offset + i) % len(SUBJECTS)]} was " for i in range(n)]

    @staticmethod
    def score(text: str) -> float:
        """Lexicon sentiment in [-1, 1]: (positive - negative) / adjectives found; 0 if none."""
        words = text.replace(".", " ").replace(",", " ").split()
        pos = sum(w in POSITIVE for w in words)
        neg = sum(w in NEGATIVE for w in words)
        return 0.0 if pos + neg == 0 else (pos - neg) / (pos + neg)

    def reward(self, completions: Sequence[str], **_: object) -> list[float]:
        """A TRL reward function: the sentiment of each completion."""
        return [self.score(text) for text in completions]


def pretrain(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Next-token pretraining on ``texts`` (each ended by EOS), in process; returns losses."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    encoded = [tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        picks = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in picks]}, return_tensors="pt")
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
