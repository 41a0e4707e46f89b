"""Iterative influence-based filtering for language-model RL inside TRL (optional extra).

Install with ``pip install 'rlattr[llm]'`` (transformers, trl, peft). Entry points:

- ``IIFGRPOTrainer``: TRL's ``GRPOTrainer`` with IIF (``LLMIIF``) and an exact run log;
- ``snapshot_scores`` / ``sequence_dots``: per-sequence influence scores through ghost
  products (no per-sequence gradients);
- ``LLMRunLog`` and ``replay_round``: record rounds and replay an update bit for bit.

Example (any causal LM and tokenizer objects; ``rlattr.llm.toy`` builds a tiny offline one)::

    from trl import GRPOConfig
    from rlattr.llm import LLMIIF, IIFGRPOTrainer, LLMRunLog, replay_round

    trainer = IIFGRPOTrainer(
        model=model, processing_class=tokenizer, reward_funcs=reward, args=GRPOConfig(...),
        train_dataset=prompts,                        # rows with a "prompt"
        iif=LLMIIF(rule="drop_negative", target="validation"),   # None: plain GRPO
        validation_dataset=validation_prompts,
        run_dir="runs/grpo-iif",                      # optional: record every round
    )
    trainer.train()
    trainer.round_stats[-1]        # reward, fraction dropped, generation/scoring/update time
    replay_round(trainer, "runs/grpo-iif", 3)         # θ after round 3, bit for bit on CPU

The rules are IIF's own (``rlattr.scoring.rules``, shared with ``rlattr.training.filters``).
"""

try:
    import transformers  # noqa: F401
    import trl  # noqa: F401
except ImportError as err:  # pragma: no cover - the message is the point
    raise ImportError(
        f"rlattr.llm needs the 'llm' extra ({err}); install it with: pip install 'rlattr[llm]'"
    ) from err

from rlattr.llm.batch import SequenceBatch, completion_logps
from rlattr.llm.config import LLMIIF
from rlattr.llm.fidelity import SubsetEffects, subset_effects
from rlattr.llm.ghost import score_parameters, sequence_dots
from rlattr.llm.loss import LossSpec, sequence_losses, sequence_weights
from rlattr.llm.replay import replay_round
from rlattr.llm.runlog import FORMAT_VERSION, LLMRunLog, LLMVerifyReport
from rlattr.llm.scores import snapshot_scores, target_gradient
from rlattr.llm.toy import SentimentTask, char_tokenizer, pretrain, tiny_causal_lm
from rlattr.llm.trainer import IIFGRPOTrainer, RoundStats
from rlattr.scoring.rules import RULES, keep_mask

__all__ = [
    "FORMAT_VERSION",
    "LLMIIF",
    "RULES",
    "IIFGRPOTrainer",
    "LLMRunLog",
    "LLMVerifyReport",
    "LossSpec",
    "RoundStats",
    "SentimentTask",
    "SequenceBatch",
    "SubsetEffects",
    "char_tokenizer",
    "completion_logps",
    "keep_mask",
    "pretrain",
    "replay_round",
    "score_parameters",
    "sequence_dots",
    "sequence_losses",
    "sequence_weights",
    "snapshot_scores",
    "subset_effects",
    "target_gradient",
    "tiny_causal_lm",
]
