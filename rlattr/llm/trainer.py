"""IIF inside TRL's ``GRPOTrainer``: a subclass using the trainer's documented override points.

Override points (TRL 1.16; the ``llm`` extra pins the minor version, since TRL moves these
methods between releases):

- ``_generate_and_score_completions``: after TRL generates, rewards and normalises a round's
  generation batch, the pairs are scored at the round's starting parameters θ_k and a
  keep-mask is attached to the batch (``rlattr_keep``, with each pair's position
  ``rlattr_row``), so TRL's own shuffle and split carry it into every micro-batch. With
  ``renormalize`` the ``dapo`` normaliser becomes the kept pairs' token count.
- ``_compute_loss``: drops the pairs the mask removes before TRL's loss runs (so their
  forward and backward passes are saved) and records the micro-step (rows, learning
  rates, RNG state) for exact replay.
- ``_calculate_rewards``: captures the rewards for the run log.
- ``training_step`` and a ``TrainerCallback``: time the update apart from generation and
  scoring.

With ``iif=None`` the trainer trains exactly as ``GRPOTrainer`` does (bit for bit; tested),
optionally recording a run directory.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from rlattr.llm.batch import SequenceBatch, completion_logps, select_rows
from rlattr.llm.config import LLMIIF
from rlattr.llm.ghost import score_parameters
from rlattr.llm.loss import LossSpec, sequence_weights
from rlattr.llm.runlog import LLMRunLog, MicroStep
from rlattr.llm.scores import snapshot_scores

KEEP_KEY, ROW_KEY = "rlattr_keep", "rlattr_row"
TARGET_PREFIX = "target."  # run-log names of the validation target's tensors


@dataclass
class RoundStats:
    """What one round cost and did (``*_s``: wall-clock seconds; ``*_cpu_s``: this process's
    CPU seconds, the steadier measure on a shared machine).

    Attributes:
        round: index of the round (one generation batch).
        n_pairs: prompt–completion pairs generated.
        reward_mean: mean reward of the round's pairs (before its updates).
        fraction_negative: share of pairs with a negative score (NaN when not scored).
        fraction_dropped: share of pairs the rule dropped.
        generation_s: TRL's generation and reward time.
        target_s: sampling and rewarding the validation completions of the target.
        scoring_s: scoring the pairs (target gradient and per-pair products).
        update_s: forward, backward and optimiser steps on the kept pairs.
        validation_reward_mean: mean reward of the validation completions (NaN if none).
        generation_cpu_s, target_cpu_s, scoring_cpu_s, update_cpu_s: the same in CPU time.
        score_quantiles: the scores' 10th, 50th and 90th percentiles (a compact histogram;
            the run log keeps every score).
    """

    round: int
    n_pairs: int
    reward_mean: float
    fraction_negative: float = float("nan")
    fraction_dropped: float = 0.0
    generation_s: float = 0.0
    target_s: float = 0.0
    scoring_s: float = 0.0
    update_s: float = 0.0
    validation_reward_mean: float = float("nan")
    generation_cpu_s: float = 0.0
    target_cpu_s: float = 0.0
    scoring_cpu_s: float = 0.0
    update_cpu_s: float = 0.0
    score_quantiles: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> tuple[float, float]:
    """Wall-clock and process CPU time."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _now()
    return wall - start[0], cpu - start[1]


def _blank_like(logs: Any) -> Any:
    """An empty copy of TRL's completion-log structure (deques keep their maxlen)."""
    if isinstance(logs, defaultdict):
        return defaultdict(logs.default_factory)
    if isinstance(logs, dict):
        return {key: _blank_like(value) for key, value in logs.items()}
    if isinstance(logs, deque):
        return deque(maxlen=logs.maxlen)
    return copy.copy(logs)


class _UpdateTimer(TrainerCallback):
    """Adds the optimiser step's time to the round's update time."""

    def __init__(self, trainer: IIFGRPOTrainer):
        self.trainer = trainer
        self.started = _now()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.started = _now()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._add_update_time(_since(self.started))


class IIFGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with iterative influence-based filtering and an exact run log.

    Args:
        *args, **kwargs: everything ``GRPOTrainer`` takes (model, reward_funcs, args, ...).
        iif: the filtering configuration; None trains as plain GRPO.
        validation_dataset: prompts of the validation target (rows with a ``prompt``), each
            sampled ``num_generations`` times per round; needed for ``target="validation"``.
        run_dir: record every round here (``rlattr.llm.runlog``) for exact replay.
    """

    def __init__(
        self,
        *args: Any,
        iif: LLMIIF | None = None,
        validation_dataset: Iterable[Mapping[str, Any]] | None = None,
        run_dir: str | Path | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.iif = iif
        self.validation_rows = None if validation_dataset is None else list(validation_dataset)
        if iif is not None and iif.target == "validation" and not self.validation_rows:
            raise ValueError("IIF with target='validation' needs a validation_dataset of prompts")
        self.loss_spec = LossSpec.from_trainer(self) if iif is not None else None
        self.round_stats: list[RoundStats] = []
        self.last_scores: torch.Tensor | None = None
        self._round = -1
        self._iif_generator = torch.Generator().manual_seed(iif.seed if iif else 0)
        self._score_params: dict[str, torch.nn.Parameter] | None = None
        self._captured_rewards: torch.Tensor | None = None
        self._last_target: SequenceBatch | None = None
        self._micro_steps: list[MicroStep] = []
        self._overhead = (0.0, 0.0)  # generation and scoring time inside training steps
        self._replaying = False
        self.runlog = None
        if run_dir is not None:
            settings = {
                "iif": None if iif is None else asdict(iif),
                "loss_type": self.loss_type,
                "num_generations": self.num_generations,
                "steps_per_generation": self.args.steps_per_generation,
                "num_iterations": self.num_iterations,
                "per_device_train_batch_size": self.args.per_device_train_batch_size,
                "gradient_accumulation_steps": self.args.gradient_accumulation_steps,
                "learning_rate": self.args.learning_rate,
                "max_grad_norm": self.args.max_grad_norm,
                "seed": self.args.seed,
                "trainable": [n for n, p in self.model.named_parameters() if p.requires_grad],
            }
            self.runlog = LLMRunLog.create(run_dir, settings)
        self.add_callback(_UpdateTimer(self))

    # -- override points -------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._captured_rewards = rewards
        return rewards

    def _generate_and_score_completions(self, inputs):
        if not self.model.training or self._replaying:
            return super()._generate_and_score_completions(inputs)
        self._end_round()
        self._last_target = None
        started = _now()
        output = super()._generate_and_score_completions(inputs)
        generation = _since(started)
        self._round += 1
        batch = SequenceBatch.from_inputs(output)
        n = len(batch)
        rewards = self._local_rewards(n)
        stats = RoundStats(self._round, n, float(torch.nanmean(rewards.double())))
        stats.generation_s, stats.generation_cpu_s = generation
        scores = keep = None
        if self.iif is not None and (self.iif.needs_scores or self.runlog is not None):
            scores = self._score(batch, output, stats)
            stats.fraction_negative = float((scores < 0).double().mean())
            levels = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
            stats.score_quantiles = tuple(
                torch.quantile(scores.detach().double().cpu(), levels).tolist()
            )
            for level, value in zip((10, 50, 90), stats.score_quantiles, strict=True):
                self._metrics["train"][f"iif/score_p{level}"].append(value)
        if self.iif is not None:
            keep = self._keep(scores, batch)
            stats.fraction_dropped = float((~keep).double().mean())
            if self.iif.renormalize and not bool(keep.all()):
                kept_tokens = batch.loss_mask[keep.to(batch.loss_mask.device)].sum()
                output["num_items_in_batch"] = self.accelerator.gather(kept_tokens).sum()
            output[KEEP_KEY] = keep.to(batch.prompt_ids.device)
            self._metrics["train"]["iif/fraction_dropped"].append(stats.fraction_dropped)
            self._metrics["train"]["iif/fraction_negative"].append(stats.fraction_negative)
        if self.iif is not None or self.runlog is not None:
            output[ROW_KEY] = torch.arange(n, device=batch.prompt_ids.device)
        if self.runlog is not None:
            self._record_start(output, batch, rewards, scores, keep)
        self.last_scores = scores
        self.round_stats.append(stats)
        spent = _since(started)
        self._overhead = (self._overhead[0] + spent[0], self._overhead[1] + spent[1])
        return output

    def _compute_loss(self, model, inputs):
        if KEEP_KEY not in inputs and ROW_KEY not in inputs:
            return super()._compute_loss(model, inputs)
        # TRL hands the same buffered dict to every iteration: work on a copy.
        keep = inputs.get(KEEP_KEY)
        rows = inputs.get(ROW_KEY)
        inputs = {k: v for k, v in inputs.items() if k not in (KEEP_KEY, ROW_KEY)}
        if self.runlog is not None and self.model.training and not self._replaying:
            self._micro_steps.append(
                MicroStep(
                    optimizer_step=int(self.state.global_step),
                    rows=rows.detach().cpu(),
                    learning_rates=tuple(float(g["lr"]) for g in self.optimizer.param_groups),
                    accumulation=int(self.current_gradient_accumulation_steps),
                    rng_state=torch.get_rng_state(),
                    cuda_rng_state=torch.cuda.get_rng_state(rows.device)
                    if rows.device.type == "cuda"
                    else None,
                )
            )
        if keep is not None and not bool(keep.all()):
            if not bool(keep.any()):
                # Nothing left in this micro-batch: a loss without a graph leaves every
                # gradient None, and torch optimisers skip parameters without gradients.
                return torch.zeros((), device=keep.device, requires_grad=True)
            inputs = select_rows(inputs, keep, int(keep.shape[0]))
        return super()._compute_loss(model, inputs)

    def training_step(self, model, inputs, num_items_in_batch):
        started, overhead = _now(), self._overhead
        loss = super().training_step(model, inputs, num_items_in_batch)
        wall, cpu = _since(started)
        # Generation and scoring happen inside the first step of a round: not update time.
        self._add_update_time(
            (wall - (self._overhead[0] - overhead[0]), cpu - (self._overhead[1] - overhead[1]))
        )
        return loss

    def train(self, *args: Any, **kwargs: Any):
        result = super().train(*args, **kwargs)
        self._end_round()
        if self.runlog is not None:
            self.runlog.write_final(self._trainable())
        return result

    # -- helpers ---------------------------------------------------------------------------

    def _add_update_time(self, seconds: tuple[float, float]) -> None:
        if self.round_stats and not self._replaying:
            self.round_stats[-1].update_s += seconds[0]
            self.round_stats[-1].update_cpu_s += seconds[1]

    def _trainable(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    def _local_rewards(self, n: int) -> torch.Tensor:
        rewards = self._captured_rewards
        if rewards is None:
            return torch.full((n,), float("nan"))
        weighted = (rewards * self.reward_weights.to(rewards.device).unsqueeze(0)).nansum(dim=1)
        start = self.accelerator.process_index * n
        return weighted[start : start + n].detach().cpu()

    def _validation_batch(self, stats: RoundStats) -> SequenceBatch:
        """Completions sampled for the validation prompts, with group-normalised advantages.

        TRL's own generation and reward path is used; its logs, metrics and token count
        are put back afterwards, so the training logs only show training completions.
        """
        assert self.validation_rows is not None
        rows = [row for row in self.validation_rows for _ in range(self.num_generations)]
        saved = (self._metrics, self._logs, self.state.num_input_tokens_seen)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._logs = _blank_like(self._logs)
        try:
            output = super()._generate_and_score_completions(rows)
            stats.validation_reward_mean = float(
                torch.nanmean(self._local_rewards(len(rows)).double())
            )
        finally:
            self._metrics, self._logs, self.state.num_input_tokens_seen = saved
        # The target needs tokens, masks and advantages only (no old or reference log-probs).
        batch = SequenceBatch.from_inputs(output)
        return SequenceBatch(
            batch.prompt_ids,
            batch.prompt_mask,
            batch.completion_ids,
            batch.completion_mask,
            batch.advantages,
            batch.tool_mask,
        )

    def _score(self, batch: SequenceBatch, output: dict[str, Any], stats: RoundStats):
        assert self.iif is not None and self.loss_spec is not None
        target = None
        if self.iif.target == "validation":
            started = _now()
            target = self._validation_batch(stats)
            stats.target_s, stats.target_cpu_s = _since(started)
            self._last_target = target
        started = _now()
        model = self.model
        if self._score_params is None:
            self._score_params = score_parameters(model, self.iif.parameters)
        dtype = next(iter(self._score_params.values())).dtype
        weights = sequence_weights(
            batch.loss_mask, self.loss_spec, output["num_items_in_batch"], dtype
        )
        was_training = model.training
        model.eval()  # no dropout: scores are a deterministic function of θ_k
        try:
            scores = snapshot_scores(
                model, self._score_params, batch, weights, self.loss_spec, target, self.iif.backend
            )
        finally:
            model.train(was_training)
        stats.scoring_s, stats.scoring_cpu_s = _since(started)
        return scores

    def _keep(self, scores: torch.Tensor | None, batch: SequenceBatch) -> torch.Tensor:
        """The rule's keep-mask (everything during warm-up or when a score is not finite)."""
        assert self.iif is not None
        n = len(batch)
        everything = torch.ones(n, dtype=torch.bool)
        if self._round < self.iif.warmup_rounds:
            return everything
        if not self.iif.scores_finite(scores, "round", self._round, "pair"):
            return everything
        return self.iif.keep_mask(
            None if scores is None else scores.detach().cpu(),
            n,
            self._iif_generator,
            min(self.iif.min_kept, n),
            batch.advantages.detach().cpu(),
        )

    def _record_start(self, output, batch, rewards, scores, keep) -> None:
        assert self.runlog is not None
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                start_logps = completion_logps(model, batch, float(self.temperature))
        finally:
            model.train(was_training)
        extras = {"rewards": rewards, "start_logps": start_logps}
        if scores is not None:
            extras["scores"] = scores
        if keep is not None:
            extras["keep"] = keep
        if self._last_target is not None:  # the validation completions the scores explain
            extras.update(self._last_target.to_tensors(prefix=TARGET_PREFIX))
        inputs = {k: v for k, v in output.items() if k not in (KEEP_KEY, ROW_KEY)}
        self.runlog.write_start(self._round, inputs, extras, self._trainable(), self.optimizer)

    def _end_round(self) -> None:
        """Commit the finished round's plan to the run log (its updates are all done)."""
        if self.runlog is None or self._round < 0 or not self._micro_steps:
            return
        stats = self.round_stats[-1].as_dict() if self.round_stats else {}
        self.runlog.commit_round(
            self._round, self._micro_steps, float(self.args.max_grad_norm), stats
        )
        self._micro_steps = []
