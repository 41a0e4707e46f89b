"""The TensorBoard a person can read: one view of learning and of what the scores say.

SB3 dumps the values recorded during ``train()`` only at the *next* iteration's dump, so
they land one rollout late and the last iteration never appears. rlattr's own values go
straight to SB3's TensorBoard ``SummaryWriter`` (same event files, same run) at the
``num_timesteps`` of the rollout they describe: the same x as ``rollout/ep_rew_mean``.

Every tag rlattr writes is listed in ``TAGS`` with its meaning; docs/tensorboard.md shows
them all (a test keeps the two alike), and a test checks that nothing else is written.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
from stable_baselines3.common.policies import ActorCriticPolicy
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from rlattr.record.counterfactual import check_scores
from rlattr.record.records import Records
from rlattr.record.replay import IterationData
from rlattr.scoring.diagnosis import (
    advantage_diagnostics,
    positions_in_episode,
    reference_advantages,
    score_quantiles,
    spearman,
)
from rlattr.scoring.targets import ReturnTarget
from rlattr.training.score_plot import ScoreAdvantagePlot
from rlattr.training.seams import PRIMARY_PREFIX, IterationContext, IterationResult

#: Every scalar tag rlattr writes, with its meaning ({q} stands for p01, p10, p50, p90, p99).
TAGS: dict[str, str] = {
    "scores/{q}": "quantile of this iteration's influence scores on the return target",
    "scores/{q}_normalized": "the same quantile divided by the scores' standard deviation "
    "(scale-free: readable when early scores are orders of magnitude larger)",
    "scores/fraction_negative": "share of records whose score is negative (harmful)",
    "scores/nonfinite": "records whose score is NaN or inf (that iteration trains unfiltered)",
    "scores/normalized": "histogram of the scores divided by their standard deviation "
    "(every details_every iterations)",
    "scores/spearman_vs_advantage": "Spearman correlation of score with the advantage Â",
    "diagnosis/advantage_sd": "standard deviation of the raw GAE advantages Â; when it "
    "collapses while PPO normalises them to unit spread, return-target scores stop predicting "
    "removal (experiments/results/fidelity.md)",
    "diagnosis/known_fraction": "share of records with a Monte-Carlo advantage Ā "
    "(their episode ends in the buffer)",
    "diagnosis/abs_error_{group}": "mean abs(Ā − Â) of the bottom/top 10 % of records "
    "(dropped/kept under IIF)",
    "diagnosis/sign_mismatch_{group}": "share of records with sign(Ā) ≠ sign(Â) in that group",
    "diagnosis/spearman_score_vs_product": "Spearman(score, Ā·Â); the IIF paper found −0.67 "
    "on FrozenLake: harmful records carry wrong advantages",
    "filter/fraction_dropped": "share of the buffer the filter dropped",
    "filter/dropped_of_negative": "dropped records ÷ negatively scored records (p of neg_bottom)",
    "intervention/behavior_value": "the unwanted behaviour's target f(θ_k) before the update "
    "(Intervention)",
    "intervention/dropped": "records the intervention dropped or down-weighted",
    "intervention/dropped_planted_overlap": "share of those that are planted faults "
    "(info[planted_key], where the environment reports it)",
    "fidelity/lds": "LDS (Spearman over random subsets) of the return target's scores "
    "against leave-subset-out replay of this update (every fidelity_every iterations)",
    "fidelity/ceiling": "the replay's own Spearman between two minibatch orders: the best "
    "LDS any order-blind score can reach (with fidelity_ceiling)",
    "time/fidelity_s": "seconds the fidelity check took (not in the other time/ values)",
    "time/rollout_s": "seconds collecting the rollout",
    "time/scoring_s": "seconds scoring and filtering",
    "time/update_s": "seconds in the PPO update",
    "time/logging_s": "seconds writing the run log and TensorBoard",
    "time/run_log_mib": "MiB of run log on disk so far",
}
GROUPS = ("bottom", "top", "dropped", "kept")
#: The prefix of the score set that gets the advantage diagnosis and the fidelity check:
#: scores on the return target, own buffer, GAE (``rlattr.training.seams.score_prefix``).
PRIMARY = PRIMARY_PREFIX


def tensorboard_writer(logger: Logger) -> SummaryWriter | None:
    """The ``SummaryWriter`` behind SB3's logger, or None when it has no TensorBoard output."""
    for output in logger.output_formats:
        if isinstance(output, TensorBoardOutputFormat):
            return output.writer
    return None


@dataclass(frozen=True)
class IterationTiming:
    """Wall-clock seconds of one iteration's phases."""

    rollout_s: float
    scoring_s: float
    update_s: float
    logging_s: float


@dataclass
class BoardConfig:
    """What the dashboards show and how often.

    Attributes:
        details_every: every this many iterations, an image of score against advantage and
            a text table of the most harmful and most helpful records (0: never).
        top_k: rows of each side of that table.
        bottom_fraction: the share of records that counts as bottom / top in the
            diagnosis scalars.
        diagnostics: compute the score and diagnosis scalars, images and tables; False
            keeps only the time and filter scalars (what the live-cost benchmark compares).
        fidelity_every: every this many iterations, check the return target's scores
            (those logged under ``scores``) against leave-subset-out replay of the update
            just made: ``fidelity/lds`` (docs/science.md §2; ``rlattr.record.counterfactual``).
            The check replays the update 1 + ``fidelity_subsets`` times (twice that with
            ``fidelity_ceiling``) on a copy of the policy; training is unchanged. 0: never.
            It checks against ``ReturnTarget()`` (GAE advantages, the iteration's own
            buffer), the target IIF and ``ScoreHook`` score by default.
        fidelity_subsets, fidelity_fraction: the check's random subsets and their size.
        fidelity_ceiling: also replay under an independent minibatch order and log the
            ground truth's own agreement (``fidelity/ceiling``).
    """

    details_every: int = field(
        default=25, metadata={"help": "iterations between score images and record tables"}
    )
    top_k: int = field(default=8, metadata={"help": "rows per side of the record table"})
    bottom_fraction: float = field(
        default=0.1, metadata={"help": "share of records counted as bottom / top"}
    )
    diagnostics: bool = field(
        default=True, metadata={"help": "score and advantage diagnostics in TensorBoard"}
    )
    fidelity_every: int = field(
        default=0,
        metadata={
            "help": "iterations between live fidelity checks of the return target's scores "
            "(leave-subset-out replays of the update; 0: never)"
        },
    )
    fidelity_subsets: int = field(
        default=8, metadata={"help": "random subsets (one replay each) per fidelity check"}
    )
    fidelity_fraction: float = field(
        default=0.1, metadata={"help": "share of the kept records each subset removes"}
    )
    fidelity_ceiling: bool = field(
        default=False,
        metadata={"help": "also replay under an independent order for the ceiling (2× cost)"},
    )

    def __post_init__(self) -> None:
        if self.details_every < 0:
            raise ValueError(f"details_every must be >= 0, got {self.details_every}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0 < self.bottom_fraction <= 0.5:
            raise ValueError(f"bottom_fraction must be in (0, 0.5], got {self.bottom_fraction}")
        if self.fidelity_every < 0:
            raise ValueError(f"fidelity_every must be >= 0, got {self.fidelity_every}")
        if self.fidelity_subsets < 3:
            # Spearman over fewer than 3 subsets is undefined or ±1.
            raise ValueError(f"fidelity_subsets must be >= 3, got {self.fidelity_subsets}")
        if not 0 < self.fidelity_fraction < 1:
            raise ValueError(f"fidelity_fraction must be in (0, 1), got {self.fidelity_fraction}")


class Board:
    """Writes one iteration's diagnostics to the run's TensorBoard.

    Args:
        writer: SB3's ``SummaryWriter`` (see ``tensorboard_writer``).
        gamma: the run's discount (for the Monte-Carlo advantages).
        discrete_observations: also compute the within-buffer empirical advantage.
        config: see ``BoardConfig``.
        workspace: builds a policy of the run's architecture to replay into
            (``AttributedPPO.workspace_policy``); needed by ``config.fidelity_every``.
    """

    def __init__(
        self,
        writer: SummaryWriter,
        gamma: float,
        discrete_observations: bool = False,
        config: BoardConfig | None = None,
        workspace: Callable[[], ActorCriticPolicy] | None = None,
    ):
        self.writer = writer
        self.gamma = gamma
        self.discrete_observations = discrete_observations
        self.config = config or BoardConfig()
        if self.config.fidelity_every and workspace is None:
            raise ValueError("BoardConfig.fidelity_every needs a workspace policy builder")
        self._make_workspace = workspace
        self._plot: ScoreAdvantagePlot | None = None
        self._workspace: ActorCriticPolicy | None = None

    def write_configuration(self, config: Mapping[str, Any], metrics: tuple[str, ...]) -> None:
        """The run's configuration as TensorBoard hparams, and the custom-scalars layout."""
        flat = {k: _hparam_value(v) for k, v in _flatten(config).items()}
        experiment, start, end = hparams(flat, {metric: float("nan") for metric in metrics})
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)
        self.writer.add_custom_scalars(custom_scalar_layout())
        self.writer.flush()

    def write_iteration(
        self,
        result: IterationResult,
        scores: Mapping[str, torch.Tensor],
        timing: IterationTiming,
        run_log_bytes: int,
        context: IterationContext | None = None,
    ) -> None:
        """One iteration, at the ``num_timesteps`` of its rollout (``result.num_timesteps``).

        Args:
            result: what the iteration did: its records, the keep mask the update trained
                on (None: every record), whether a filter is installed (so "dropped
                nothing" is worth a point), the scalars the filter reported (written as
                given) and the update itself (replayed by the ``fidelity_every`` check).
            scores: score sets by TensorBoard prefix; the set under ``scores`` (the return
                target) also gets the advantage diagnosis, images and tables.
            context: the iteration's context, for the ``fidelity_every`` check (without
                it no check runs).
        """
        step, iteration, records = result.num_timesteps, result.iteration, result.records
        keep_mask = result.keep_mask
        scalars: dict[str, float] = {
            "time/rollout_s": timing.rollout_s,
            "time/scoring_s": timing.scoring_s,
            "time/update_s": timing.update_s,
            "time/logging_s": timing.logging_s,
            "time/run_log_mib": run_log_bytes / 2**20,
        }
        dropped = result.fraction_dropped
        if dropped is not None:
            scalars["filter/fraction_dropped"] = dropped
        details = bool(self.config.details_every) and iteration % self.config.details_every == 0
        primary = scores.get(PRIMARY)  # the fidelity check needs it even without diagnostics
        if not self.config.diagnostics:
            scores, details = {}, False
        reference = None
        for prefix, values in scores.items():
            values = values.detach().cpu().double()
            if prefix == PRIMARY:
                reference = reference_advantages(
                    records, self.gamma, self.discrete_observations
                ).best
            scalars.update(self._score_scalars(prefix, records, values, keep_mask, reference))
            finite = values[torch.isfinite(values)]
            if details and finite.numel() > 1 and float(finite.std()) > 0:
                # Scale-free, and only every few iterations: TensorBoard keeps at most 50
                # histograms per tag by default, so a histogram per iteration gets thinned.
                self.writer.add_histogram(f"{prefix}/normalized", finite / finite.std(), step)
        scalars.update(result.scalars)
        if self._fidelity_due(iteration, primary) and context is not None:
            scalars.update(self._fidelity(result.iteration_data(), context, primary, iteration))
        self._write_scalars(scalars, step)
        if details and reference is not None:
            self._write_details(step, records, scores[PRIMARY], reference, keep_mask)
        self.writer.flush()

    def _fidelity_due(self, iteration: int, primary: torch.Tensor | None) -> bool:
        every = self.config.fidelity_every
        if not every or iteration % every or primary is None:
            return False
        return bool(torch.isfinite(primary).all())  # LDS needs finite scores

    def _fidelity(
        self,
        update: IterationData,
        context: IterationContext,
        scores: torch.Tensor,
        iteration: int,
    ) -> dict[str, float]:
        start = time.perf_counter()
        # Building the workspace initialises weights, and replays must not move the RNG
        # that training draws from either: both run on a fork of it.
        with torch.random.fork_rng(devices=[]):
            if self._workspace is None:
                # Replay overwrites the workspace's parameters and optimiser state from the
                # start checkpoint, so it is built once.
                assert self._make_workspace is not None  # checked in __init__
                self._workspace = self._make_workspace()
            report = check_scores(
                update,
                self._workspace,
                scores.detach().to(next(self._workspace.parameters()).device),
                ReturnTarget(),
                context.target_context(),
                n_subsets=self.config.fidelity_subsets,
                fraction=self.config.fidelity_fraction,
                seed=iteration,
                orders=2 if self.config.fidelity_ceiling else 1,
            )
        out = {"fidelity/lds": report.lds}
        if self.config.fidelity_ceiling:
            out["fidelity/ceiling"] = report.ceiling
        out = {k: v for k, v in out.items() if np.isfinite(v)}
        out["time/fidelity_s"] = time.perf_counter() - start
        return out

    def _write_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        # One event holding every value (TensorBoard reads each value of a summary as its
        # own tag, as if written by add_scalar): one put into the writer thread's bounded
        # queue instead of ~30, which on CartPole's 50 ms iterations was most of the cost.
        summary = Summary(
            value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in scalars.items()]
        )
        self.writer._get_file_writer().add_summary(summary, step)

    def _score_scalars(
        self,
        prefix: str,
        records: Records,
        scores: torch.Tensor,
        keep_mask: torch.Tensor | None,
        reference: torch.Tensor | None,
    ) -> dict[str, float]:
        finite = torch.isfinite(scores)
        out = {f"{prefix}/{k}": v for k, v in score_quantiles(scores).items()}
        out[f"{prefix}/nonfinite"] = float((~finite).sum())
        negative = int((scores[finite] < 0).sum())
        out[f"{prefix}/fraction_negative"] = negative / max(int(finite.sum()), 1)
        advantages = records.advantages.cpu()
        correlation = spearman(scores[finite], advantages[finite])
        if np.isfinite(correlation):
            out[f"{prefix}/spearman_vs_advantage"] = correlation
        if prefix != PRIMARY or reference is None:
            return out
        if keep_mask is not None and negative:
            out["filter/dropped_of_negative"] = float((~keep_mask.cpu()).sum()) / negative
        if len(advantages) > 1:
            out["diagnosis/advantage_sd"] = float(advantages.double().std())
        diagnosis = advantage_diagnostics(
            scores, advantages, reference, self.config.bottom_fraction, keep_mask
        )
        out.update({f"diagnosis/{k}": v for k, v in diagnosis.items() if np.isfinite(v)})
        return out

    def _write_details(
        self,
        step: int,
        records: Records,
        scores: torch.Tensor,
        reference: torch.Tensor,
        keep_mask: torch.Tensor | None,
    ) -> None:
        if self._plot is None:
            self._plot = ScoreAdvantagePlot()
        image = self._plot.render(records, scores, reference, keep_mask)
        self.writer._get_file_writer().add_summary(
            _png_summary("records/score_vs_advantage", image), step
        )
        table = record_table(records, scores, reference, keep_mask, self.config.top_k)
        self.writer.add_text("records/most_harmful_and_helpful", table, step)


def custom_scalar_layout() -> dict[str, dict[str, list]]:
    """One view: the learning curve above the attribution diagnostics."""
    return {
        "rlattr": {
            "learning curve": ["Multiline", ["rollout/ep_rew_mean", "eval/return_mean"]],
            "score quantiles (normalised)": ["Multiline", [r"scores/p\d\d_normalized"]],
            "harmful records: advantage error": [
                "Multiline",
                [r"diagnosis/abs_error_(bottom|top|dropped|kept)"],
            ],
            "harmful records: sign mismatch": [
                "Multiline",
                [r"diagnosis/sign_mismatch_(bottom|top|dropped|kept)"],
            ],
            "filter": ["Multiline", [r"filter/.*", "scores/fraction_negative"]],
        }
    }


def _png_summary(tag: str, image: np.ndarray) -> Summary:
    # What SummaryWriter.add_image writes, without its float round trip of the pixels and
    # with zlib's fastest level (same pixels; the file is ~10 % larger, encoding ~4× faster).
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    height, width, channels = image.shape
    encoded = Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=buffer.getvalue()
    )
    return Summary(value=[Summary.Value(tag=tag, image=encoded)])


def record_table(
    records: Records,
    scores: torch.Tensor,
    reference: torch.Tensor,
    keep_mask: torch.Tensor | None,
    top_k: int,
) -> str:
    """A Markdown table of the ``top_k`` most harmful and most helpful records."""
    scores = scores.detach().cpu().double()
    finite = torch.nonzero(torch.isfinite(scores)).flatten()
    order = finite[torch.argsort(scores[finite], stable=True)]
    positions = positions_in_episode(records)
    header = (
        "| | env | step | t in episode | state | action | reward | Â | Ā | score | kept |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for label, picked in (("harmful", order[:top_k]), ("helpful", order.flip(0)[:top_k])):
        for i in picked.tolist():
            kept = "yes" if keep_mask is None or bool(keep_mask[i]) else "**dropped**"
            rows.append(
                f"| {label} | {i // records.n_steps} | {i % records.n_steps} | "
                f"{int(positions[i])} | {_state_summary(records.observations[i])} | "
                f"{_fmt_action(records.actions[i])} | {float(records.rewards[i]):.3g} | "
                f"{float(records.advantages[i]):.3g} | {_fmt(float(reference[i]))} | "
                f"{float(scores[i]):.3g} | {kept} |"
            )
    return header + "\n".join(rows)


def _state_summary(observation: torch.Tensor, width: int = 4) -> str:
    flat = observation.detach().cpu().double().flatten()
    if flat.numel() > 8 and bool(((flat == 0) | (flat == 1)).all()) and int(flat.sum()) == 1:
        return f"one-hot {int(flat.argmax())}"
    if flat.numel() <= width:
        return "[" + ", ".join(f"{v:.3g}" for v in flat.tolist()) + "]"
    head = ", ".join(f"{v:.3g}" for v in flat[:width].tolist())
    return f"[{head}, …] ({flat.numel()} values, mean {float(flat.mean()):.3g})"


def _fmt_action(action: torch.Tensor) -> str:
    values = action.detach().cpu().flatten().tolist()
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def _fmt(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:.3g}"


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _hparam_value(value: Any) -> Any:
    # TensorBoard's hparams take bool, number or string only.
    if isinstance(value, bool | int | float | str):
        return value
    return "none" if value is None else str(value)
