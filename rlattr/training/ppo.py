"""AttributedPPO: SB3's PPO with an explicit update plan, record hooks, keep masks and a RunLog."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, ConvertCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import explained_variance

from rlattr.errors import NonFiniteError, RunLogError, UnsupportedError
from rlattr.record.checkpoint import capture_checkpoint, restore_checkpoint
from rlattr.record.loss import PPOLossConfig
from rlattr.record.plan import UpdatePlan, mask_minibatches, sample_epoch_minibatches
from rlattr.record.records import RecordingRolloutBuffer, Records
from rlattr.record.replay import IterationData, workspace_policy
from rlattr.record.runlog import BackgroundWriter, Retention, RunLog
from rlattr.record.update import run_update, trace_to_plan
from rlattr.training.board import Board, BoardConfig, IterationTiming, tensorboard_writer
from rlattr.training.ground_truth import GroundTruthRecorder
from rlattr.training.hooks import UpdateObservers
from rlattr.training.nonfinite import (
    NonFinite,
    NonFiniteFinding,
    act_on,
    check_nonfinite_mode,
    crashed_update,
    find_in_records,
    find_in_update,
    parameters_finite,
)
from rlattr.training.ppo_bounds import SCHEDULED_FIELDS, check_ppo_values, parse_schedule
from rlattr.training.rundir import (
    check_policy_argument,
    check_policy_class,
    check_policy_modules,
    check_spaces,
    describe_iif,
    ppo_loss_config,
    run_json,
    write_iteration_files,
)
from rlattr.training.seams import (
    FilterDecision,
    IterationContext,
    IterationResult,
    KeepMaskFilter,
    RecordHook,
    ScorePrefixes,
    StoredScores,
    as_keep_mask_filter,
    call_record_hook,
    deliver_result,
    filter_seed,
)

_RNG_FILTER = "rng.filter"  # checkpoint key of a keep-mask filter's own generator


class AttributedPPO(PPO):
    """SB3's ``PPO`` whose update is an explicit, logged and exactly replayable plan.

    With no record hook, no keep mask and recording on or off, it trains exactly like
    ``stable_baselines3.PPO`` (same seed ⇒ bit-identical parameters on CPU). ``save`` and
    ``load`` work as for any SB3 model (``stable_baselines3.PPO.load`` reads the file too);
    a loaded model records nothing until given a ``RunLog`` again (``resume=True``).

    Args:
        policy, env: as for ``PPO``; the policy must be a feed-forward actor-critic
            (``"MlpPolicy"``, ``"CnnPolicy"`` or an ``ActorCriticPolicy`` subclass).
        run_dir: directory of the ``RunLog`` (records, plans, checkpoints, TensorBoard
            under ``run_dir/tb`` unless ``tensorboard_log`` says otherwise); None records
            nothing to disk.
        retention: which iterations to keep on disk (default: all).
        resume: continue the run already in ``run_dir`` from its last finished iteration.
        run_metadata: extra JSON stored in ``run.json`` (e.g. the resolved preset).
        record_hooks: ``hook(context) -> {name: StoredScores} | None``, run before every
            update (``rlattr.training.seams.RecordHook``); the scores they return are
            stored with the iteration. Old-style ``hook(model, records)`` still works.
        keep_mask_fn: a ``rlattr.training.seams.KeepMaskFilter`` (or a plain
            ``fn(context)`` returning a ``FilterDecision``, a bool mask or None)
            restricting each update to the kept records; None trains on every record.
            Old-style ``fn(model, records) -> BoolTensor | None`` still works (its
            optional ``minibatching`` attribute is honoured).
        iif: an ``rlattr.training.filters.IIF`` config: iterative influence-based filtering (it
            installs the keep mask); None is plain PPO.
        intervention: an ``rlattr.training.intervention.Intervention`` config: drop or
            down-weight the records that push towards an unwanted behaviour (it installs
            the filter; combine it with IIF through ``Intervention(with_iif=...)``).
        board: what the TensorBoard diagnostics show and how often
            (``rlattr.training.board.BoardConfig``); they are written wherever SB3 writes
            TensorBoard (``run_dir/tb`` by default, or ``tensorboard_log``).
        nonfinite: what a NaN or inf reward, observation, advantage or loss does:
            ``"error"`` (raise ``NonFiniteError`` naming iteration, field, env and step,
            before anything of the iteration is committed), ``"skip-iteration"`` (discard
            the rollout: no update, nothing recorded) or ``"warn"`` (train on it). None:
            the resumed run's choice, else ``"error"``. Stored in ``run.json``'s config.
        **ppo_kwargs: everything ``stable_baselines3.PPO`` accepts; the PPO fields are
            checked against the bounds presets obey (``rlattr.training.ppo_bounds``), and
            a schedule may be written as in a preset (``learning_rate="lin_0.001"``).

    What each iteration did (buffer, executed plan, keep mask, loss weights, scores,
    filter scalars, ground truth) is returned by its update as an
    ``rlattr.training.seams.IterationResult`` and handed to every callback passed to
    ``learn`` that has ``on_iteration(result)`` (``rlattr.training.IterationResults``
    collects them); the model keeps no copy for other parts to read, only the newest
    one for ``attribute`` and ``iteration_data``.

    Attributes:
        iteration: the next iteration to train (iterations count from 0).
    """

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: Any,
        *,
        run_dir: str | Path | None = None,
        retention: Retention | None = None,
        resume: bool = False,
        run_metadata: dict[str, Any] | None = None,
        record_hooks: Sequence[RecordHook | Any] = (),
        keep_mask_fn: KeepMaskFilter | Any | None = None,
        iif: Any = None,
        intervention: Any = None,
        board: BoardConfig | None = None,
        nonfinite: NonFinite | None = None,
        **ppo_kwargs: Any,
    ):
        check_policy_argument(policy)
        # The same bounds as a preset's ppo section, with the same words.
        check_ppo_values(ppo_kwargs, "AttributedPPO ")
        for key in SCHEDULED_FIELDS:  # "lin_0.001" means what it means in a preset
            if isinstance(ppo_kwargs.get(key), str):
                ppo_kwargs[key] = parse_schedule(ppo_kwargs[key], f"AttributedPPO {key}")
        self.nonfinite: NonFinite = check_nonfinite_mode(
            "error" if nonfinite is None else nonfinite, "AttributedPPO nonfinite"
        )
        self._nonfinite_given = nonfinite is not None
        self._run_metadata = dict(run_metadata or {})
        self._run_metadata["nonfinite"] = self.nonfinite
        if ppo_kwargs.get("use_sde"):
            raise UnsupportedError(
                "use_sde=True is not supported: gSDE exploration noise is not logged, so its "
                "updates cannot be replayed; use the default Gaussian exploration"
            )
        buffer_class = ppo_kwargs.get("rollout_buffer_class")
        if buffer_class is not None and not issubclass(buffer_class, RecordingRolloutBuffer):
            raise UnsupportedError(
                f"rollout_buffer_class={buffer_class.__name__} is not supported: AttributedPPO "
                "needs rlattr.record.records.RecordingRolloutBuffer (or a subclass)"
            )
        ppo_kwargs["rollout_buffer_class"] = buffer_class or RecordingRolloutBuffer
        init_setup_model = ppo_kwargs.pop("_init_setup_model", True)
        if run_dir is not None and ppo_kwargs.get("tensorboard_log") is None:
            ppo_kwargs["tensorboard_log"] = str(Path(run_dir) / "tb")
        if hasattr(env, "observation_space"):
            # Before SB3 sees the env, so the user gets rlattr's message, not SB3's.
            check_spaces(env.observation_space, env.action_space)
        super().__init__(policy, env, _init_setup_model=False, **ppo_kwargs)

        self.record_hooks: list[RecordHook | Any] = list(record_hooks)
        if iif is not None:
            if keep_mask_fn is not None:
                raise ValueError("pass either iif or keep_mask_fn, not both")
            self._run_metadata.setdefault("iif", describe_iif(iif))
        if intervention is not None:
            if keep_mask_fn is not None or iif is not None:
                raise ValueError(
                    "pass intervention alone: not with keep_mask_fn, and with IIF only as "
                    "Intervention(with_iif=IIF(...))"
                )
            self._run_metadata.setdefault("intervention", intervention.describe())
        self.iif = iif
        self.intervention = intervention
        self.keep_mask_fn = keep_mask_fn
        self.board_config = board or BoardConfig()
        self._board: Board | None = None
        self._score_prefixes = ScorePrefixes()
        self.retention = retention or Retention()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_log: RunLog | None = None
        self._writer = BackgroundWriter()
        self._filter_generator: torch.Generator | None = None
        self.iteration = 0
        # The newest iteration's result, for in-memory attribution of that iteration only
        # (``iteration_data``); callbacks receive every result through ``on_iteration``.
        self._last_result: IterationResult | None = None
        # The callbacks of the learn() in progress, to which results are delivered.
        self._callback: BaseCallback | None = None
        # Reads the rollout's info["rlattr_*"] (per-record ground truth); changes nothing.
        self._ground_truth = GroundTruthRecorder()
        self._resume = resume
        self._phase_start = time.perf_counter()
        if init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------ set-up
    def _setup_model(self) -> None:
        # Here, not in __init__: SB3's load() builds the model without an env, then sets
        # the spaces and calls this.
        check_spaces(self.observation_space, self.action_space)
        check_policy_class(self.policy_class)
        super()._setup_model()
        check_policy_modules(self.policy)
        if self.iif is not None and self.keep_mask_fn is None:
            from rlattr.training.filters import IIFFilter

            self.keep_mask_fn = IIFFilter(self.iif)
        if getattr(self, "intervention", None) is not None and self.keep_mask_fn is None:
            from rlattr.training.intervention import InterventionFilter

            self.keep_mask_fn = InterventionFilter(self.intervention)
        self._install_filter_generator()
        if self.run_dir is None:
            return
        self.run_dir = Path(self.run_dir)  # load(path, run_dir="...") passes a string
        if self._resume and (self.run_dir / "run.json").exists():
            self.run_log = RunLog.open_for_writing(self.run_dir)  # refused while another writes
            self._restore_from_run_log()
        else:
            meta = run_json(self, self._run_metadata)
            self.run_log = RunLog.create(self.run_dir, meta, self.retention)
        self.retention = self.run_log.retention

    def _install_filter_generator(self) -> None:
        """The keep-mask filter's own generator, seeded once (restored by resume and load)."""
        saved_state = self.__dict__.pop("_filter_rng_state", None)  # from a saved model
        fn = self.keep_mask_fn
        if isinstance(fn, KeepMaskFilter) and fn.uses_generator:
            self._filter_generator = self._new_filter_generator(fn)
            if saved_state is not None:
                self._filter_generator.set_state(torch.tensor(saved_state, dtype=torch.uint8))

    def _restore_from_run_log(self) -> None:
        assert self.run_log is not None
        self._resume_nonfinite(self.run_log.meta.get("config", {}).get("nonfinite"))
        self._check_same_filter(self.run_log.meta.get("config", {}).get("iif"))
        self._check_same_intervention(self.run_log.meta.get("config", {}).get("intervention"))
        start = self.run_log.resume_point()
        if start is None:
            self.run_log.discard_after(0)
            return
        self.run_log.discard_after(start)
        tensors, meta = self.run_log.load_checkpoint(start, self.device)
        restore_checkpoint(self.policy, tensors, meta, restore_rng=True)
        if self._filter_generator is not None and _RNG_FILTER in tensors:
            self._filter_generator.set_state(tensors[_RNG_FILTER].to("cpu", torch.uint8))
        counters = meta["counters"]
        self.iteration = int(counters["iteration"])
        self.num_timesteps = int(counters["num_timesteps"])
        self._n_updates = int(counters["n_updates"])
        if self.seed is not None:
            # The environments cannot be restored mid-episode; start fresh episodes with
            # seeds that differ from the original start's.
            self.env.seed(self.seed + 1_000_003 * self.iteration)

    def _resume_nonfinite(self, stored: str | None) -> None:
        """A resumed run treats non-finite values as it did: its stored choice unless one is
        given, and a different one given is refused (runs from before the option had none)."""
        if stored is None:
            return
        if self._nonfinite_given and stored != self.nonfinite:
            raise RunLogError(
                f"{self.run_dir} was trained with nonfinite={stored!r}, and is being resumed "
                f"with nonfinite={self.nonfinite!r}; resume it with the same (or leave it out)"
            )
        self.nonfinite = check_nonfinite_mode(stored, f"{self.run_dir} run.json nonfinite")
        self._run_metadata["nonfinite"] = self.nonfinite

    def _check_same_filter(self, stored: dict[str, Any] | None) -> None:
        """A resumed run must filter as it did: the rest of its log would not be one run."""
        wanted = self._run_metadata.get("iif")
        if stored is not None:
            # Runs written before the option existed re-cut their minibatches.
            stored = {"minibatching": "recut", **stored}
            if wanted is not None and wanted.get("seed") is None:
                # The filter's generator resumes from the checkpoint, whatever its seed was.
                stored = {**stored, "seed": None}
        if stored != wanted:
            raise RunLogError(
                f"{self.run_dir} was trained with iif={stored}, and is being resumed with "
                f"iif={wanted}; resume it with the same IIF settings"
            )

    def _check_same_intervention(self, stored: dict[str, Any] | None) -> None:
        """A resumed run must intervene as it did (compared as ``run.json`` stores it)."""
        wanted = self._run_metadata.get("intervention")
        if wanted is not None:
            wanted = json.loads(json.dumps(wanted))  # as read back from run.json
        if stored != wanted:
            raise RunLogError(
                f"{self.run_dir} was trained with intervention={stored}, and is being resumed "
                f"with intervention={wanted}; resume it with the same Intervention"
            )

    def _setup_learn(self, total_timesteps: int, *args: Any, **kwargs: Any) -> Any:
        result = super()._setup_learn(total_timesteps, *args, **kwargs)
        if self.run_log is not None and not self.run_log.has_checkpoint(self.iteration):
            self.run_log.write_checkpoint(self.iteration, *self._checkpoint())
        self._open_board()
        self._phase_start = time.perf_counter()
        return result

    def _init_callback(self, callback: Any, progress_bar: bool = False) -> Any:
        # The ground-truth recorder runs after the user's callbacks, as one more callback.
        # SB3 also takes a plain function ``f(locals_, globals_) -> bool``: wrapped as SB3
        # wraps it, before it joins the list (a list holds callbacks only).
        if callback is None:
            callbacks = [self._ground_truth]
        elif isinstance(callback, list):
            callbacks = [*callback, self._ground_truth]
        elif isinstance(callback, BaseCallback):
            callbacks = [callback, self._ground_truth]
        else:
            callbacks = [ConvertCallback(callback), self._ground_truth]
        # Kept for the learn() in progress: SB3 calls train() without its callbacks, and
        # each iteration's result goes to those with on_iteration (deliver_result).
        self._callback = super()._init_callback(callbacks, progress_bar)
        return self._callback

    def _open_board(self) -> None:
        # SB3 (re)configures its logger in _setup_learn; the board writes through the
        # same SummaryWriter, so both land in one TensorBoard run.
        writer = tensorboard_writer(self.logger)
        if writer is None:
            self._board = None
            return
        if self._board is not None and self._board.writer is writer:
            return
        self._board = Board(
            writer,
            float(self.gamma),
            discrete_observations=isinstance(self.observation_space, spaces.Discrete),
            config=self.board_config,
            workspace=self.workspace_policy,
        )
        self._board.write_configuration(
            {"seed": self.seed, **self._run_metadata}, ("rollout/ep_rew_mean",)
        )

    def learn(self, *args: Any, **kwargs: Any) -> AttributedPPO:
        """``PPO.learn``; returns once every iteration is on disk (or raises the write error)."""
        try:
            return super().learn(*args, **kwargs)
        finally:
            self._callback = None  # a later train() outside learn() delivers to no one
            self.flush_run_log()

    def flush_run_log(self) -> None:
        """Wait until every queued run-log write is on disk."""
        self._writer.drain()

    def _checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        counters = {
            "iteration": self.iteration,
            "num_timesteps": self.num_timesteps,
            "n_updates": self._n_updates,
        }
        tensors, meta = capture_checkpoint(self.policy, counters, with_rng=True)
        if self._filter_generator is not None:
            # A filter's own random draws (IIF's random rules) must resume where they were.
            tensors[_RNG_FILTER] = self._filter_generator.get_state()
        return tensors, meta

    # ------------------------------------------------------------------ save / load
    def _excluded_save_params(self) -> list[str]:
        # Threads, open run logs, user callables, generators and the last iteration's
        # tensors are not part of a saved model; __init__ and _setup_model restore
        # defaults on load (no run log, no hooks, the IIF filter rebuilt from ``iif``).
        return [
            *super()._excluded_save_params(),
            "run_dir",
            "run_log",
            "_writer",
            "record_hooks",
            "keep_mask_fn",
            "_filter_generator",
            "_last_result",
            "_callback",
            "_ground_truth",
            "_board",
            "_score_prefixes",
        ]

    def save(self, path: Any, exclude: Any = None, include: Any = None) -> None:
        """``PPO.save``; the IIF filter's generator state goes along (as a list of bytes),
        so a loaded model's random drops continue where they were."""
        if self._filter_generator is not None:
            self._filter_rng_state = self._filter_generator.get_state().tolist()
        try:
            super().save(path, exclude=exclude, include=include)
        finally:
            self.__dict__.pop("_filter_rng_state", None)

    # ------------------------------------------------------------------ update
    def loss_config(self) -> PPOLossConfig:
        """The loss hyperparameters of the current iteration (schedules evaluated now)."""
        return ppo_loss_config(self)

    def train(self) -> None:
        """One PPO update on the current rollout buffer, through an explicit update plan;
        its ``IterationResult`` goes to the callbacks of ``learn`` (``on_iteration``).
        A rollout skipped for a non-finite value (``nonfinite="skip-iteration"``) trains
        and delivers nothing."""
        result = self.train_iteration()
        if result is None:
            return
        self._last_result = result
        deliver_result(self._callback, result)

    def train_iteration(self) -> IterationResult | None:
        """One PPO update on the current rollout buffer (what ``train`` runs); returns what
        the iteration did, or None when ``nonfinite="skip-iteration"`` discarded it."""
        train_start = time.perf_counter()
        rollout_s = train_start - self._phase_start
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        loss_config = self.loss_config()

        records = Records.from_rollout_buffer(self.rollout_buffer, self.iteration)
        ground_truth = self._ground_truth.take(self.device)
        # Before anything of the iteration happens: a non-finite input raises or skips here.
        if self._nonfinite_skips(find_in_records(records)):
            return None
        # θ_k and the optimiser state, kept so the iteration can be attributed in memory.
        start = capture_checkpoint(self.policy)
        context = IterationContext(
            iteration=self.iteration,
            records=records,
            policy=self.policy,
            loss_config=loss_config,
            gamma=float(self.gamma),
            gae_lambda=float(self.gae_lambda),
            ground_truth=ground_truth,
        )
        stored: dict[str, StoredScores] = {}
        for hook in self.record_hooks:
            stored.update(call_record_hook(hook, context, self))
        n_records = len(records)
        permutations: list[np.ndarray] = []
        drafted, keep_mask, weights, minibatching, filter_scalars = self._filter(
            context, stored, permutations
        )
        scored = time.perf_counter()

        def epochs() -> Iterator[tuple[int, list[torch.Tensor]]]:
            if drafted is not None:
                for epoch, batches in enumerate(drafted):
                    yield (
                        epoch,
                        _checked_weights(
                            mask_minibatches(batches, keep_mask), weights, loss_config
                        ),
                    )
                return
            # A generator, so each epoch's permutation is drawn when the epoch starts (as SB3).
            for epoch in range(self.n_epochs):
                batches = sample_epoch_minibatches(
                    n_records, self.batch_size, keep_mask, self.device, permutations, minibatching
                )
                yield epoch, _checked_weights(batches, weights, loss_config)

        # Hooks that watch the update from inside (live TracIn); none: callbacks are None.
        observers = UpdateObservers(self.record_hooks, context)
        last_step: list[int] = []  # the step a crash came after (reads nothing else)
        observed = observers.before_step

        def before_step(step: int, indices: torch.Tensor) -> None:
            last_step[:] = [step]
            if observed is not None:
                observed(step, indices)

        try:
            trace, stats, stopped = run_update(
                self.policy,
                records,
                loss_config,
                observers.epochs(epochs()),
                check_target_kl=True,
                before_step=before_step,
                after_step=observers.after_step,
                record_weights=weights,
            )
        except ValueError as err:
            # torch refuses a distribution over non-finite parameters (a step before
            # took a non-finite loss or gradient): said as such, θ_k restored.
            if isinstance(err, NonFiniteError) or parameters_finite(self.policy):
                raise
            finding = crashed_update(self.iteration, last_step[0] if last_step else None)
            restore_checkpoint(self.policy, *start)
            if self.nonfinite == "warn":
                raise NonFiniteError(f"{finding.message()}; the update cannot go on") from err
            if self._nonfinite_skips(finding):
                return None
            raise  # pragma: no cover (act_on raised)
        finally:
            observers.detach()
        loss_finding = find_in_update(self.iteration, trace, stats)
        if loss_finding is not None and self.nonfinite != "warn":
            restore_checkpoint(self.policy, *start)  # θ_k, not the non-finite θ_k+1
        if self._nonfinite_skips(loss_finding):
            return None
        self._n_updates += stats.n_epochs_run
        if stopped and self.verbose >= 1:
            print(f"Early stopping at step {stats.n_epochs_run - 1} due to reaching max kl")
        full_mask = (
            keep_mask
            if keep_mask is not None
            else torch.ones(n_records, dtype=torch.bool, device=self.device)
        )
        plan = trace_to_plan(
            trace,
            loss_config,
            self.n_epochs,
            self.batch_size,
            permutations,
            full_mask,
            stopped,
            record_weights=weights,
            minibatching=minibatching,
        )
        stored.update(observers.finish(plan))
        result = IterationResult(
            iteration=self.iteration,
            num_timesteps=self.num_timesteps,
            records=records,
            plan=plan,
            start=start,
            keep_mask=keep_mask,
            filtering=self.keep_mask_fn is not None,
            scores=dict(stored),
            scalars=filter_scalars,
            ground_truth=ground_truth,
            n_epochs_run=stats.n_epochs_run,
            losses=stats.means(),
        )
        updated = time.perf_counter()

        loss_means = dict(result.losses)
        self._log_sb3_metrics(loss_means, records, loss_config)
        self._write_iteration(records, plan, stats.n_epochs_run, loss_means, stored, ground_truth)
        done = time.perf_counter()
        timing = IterationTiming(
            rollout_s=rollout_s,
            scoring_s=scored - train_start,
            update_s=updated - scored,
            logging_s=done - updated,
        )
        if self._board is not None:
            self._board.write_iteration(
                result,
                scores=self._score_prefixes.assign(stored),
                timing=timing,
                run_log_bytes=self._writer.bytes_written,
                context=context,  # for BoardConfig.fidelity_every
            )
        self.iteration += 1
        self._phase_start = time.perf_counter()
        return result

    def _nonfinite_skips(self, finding: NonFiniteFinding | None) -> bool:
        """Act on a non-finite ``finding`` as ``nonfinite`` says; True: skip the iteration
        (nothing of it is recorded or counted: the next rollout takes its number)."""
        if finding is None or not act_on(finding, self.nonfinite, stacklevel=5):
            return False
        self._phase_start = time.perf_counter()
        return True

    def _filter(
        self,
        context: IterationContext,
        stored: dict[str, StoredScores],
        permutations: list[np.ndarray],
    ) -> tuple[
        list[list[torch.Tensor]] | None,
        torch.Tensor | None,
        torch.Tensor | None,
        Any,
        dict[str, float],
    ]:
        """Ask the keep-mask filter (if any) for its decision.

        Returns the drafted minibatches (when the filter needed the plan first), the keep
        mask, the fractional loss weights (None unless some weight is strictly between 0
        and 1), the minibatching and the filter's TensorBoard scalars; adds the filter's
        scores to ``stored``.
        """
        if self.keep_mask_fn is None:
            return None, None, None, "as_drawn", {}
        keep_filter = as_keep_mask_filter(self.keep_mask_fn, self)
        drafted = None
        if keep_filter.needs_plan:
            if keep_filter.minibatching != "as_drawn":
                raise ValueError("a filter that needs the plan must keep minibatches as drawn")
            # A filter that scores the update it filters (exact metagradient scores) needs
            # the plan first: every epoch's permutation is drawn now, and the filtered
            # records are then removed from their minibatches, which otherwise stay as
            # drawn. (Drawing all permutations up front consumes NumPy's generator as SB3
            # does unless target_kl stops early.)
            n_records = len(context.records)
            drafted = [
                sample_epoch_minibatches(
                    n_records, self.batch_size, None, self.device, permutations
                )
                for _ in range(self.n_epochs)
            ]
            plan = UpdatePlan.draft(
                context.loss_config,
                self.batch_size,
                drafted,
                permutations,
                self.policy.optimizer.param_groups[0]["lr"],
                n_records,
            )
            context = replace(context, plan=plan)
        if keep_filter.uses_generator:
            if self._filter_generator is None:  # a filter installed after construction
                self._filter_generator = self._new_filter_generator(keep_filter)
            context = replace(context, generator=self._filter_generator)
        decision = keep_filter(context)
        stored.update(decision.scores)
        keep_mask, weights = self._checked_weights(decision, context.records)
        keep_mask = self._checked_keep_mask(keep_mask, context.records)
        return drafted, keep_mask, weights, keep_filter.minibatching, dict(decision.scalars)

    def _checked_weights(
        self, decision: FilterDecision, records: Records
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(keep mask, fractional weights) of a decision.

        Weights that are all 0 or 1 become the keep mask (removal and plain PPO, bit for
        bit); otherwise the records at weight 0 leave their minibatches and the others
        train with the weighted loss, at float32 weights (what the plan stores).
        """
        weights = decision.weights
        if weights is None:
            return decision.keep_mask, None
        n = len(records)
        if weights.shape != (n,) or not weights.is_floating_point():
            raise ValueError(
                f"a filter's weights must be a float tensor of shape ({n},), "
                f"got {weights.dtype} {tuple(weights.shape)}"
            )
        weights = weights.detach().to(self.device, torch.float32)
        if not bool(((weights >= 0) & (weights <= 1)).all()):  # NaN fails too
            raise ValueError(f"a filter's weights must lie in [0, 1] (iteration {self.iteration})")
        if decision.keep_mask is not None:
            keep = self._checked_keep_mask(decision.keep_mask, records)
            weights = torch.where(keep, weights, torch.zeros_like(weights))
        keep_mask = weights > 0
        if bool(((weights == 0) | (weights == 1)).all()):
            return keep_mask, None
        return keep_mask, weights

    def _new_filter_generator(self, keep_filter: KeepMaskFilter) -> torch.Generator:
        return torch.Generator().manual_seed(filter_seed(keep_filter.seed, self.seed))

    def _checked_keep_mask(
        self, mask: torch.Tensor | None, records: Records
    ) -> torch.Tensor | None:
        if mask is None:
            return None
        if mask.dtype != torch.bool or mask.shape != (len(records),):
            raise ValueError(
                f"keep_mask_fn must return a bool tensor of shape ({len(records)},), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        if not bool(mask.any()):
            raise ValueError(f"keep_mask_fn dropped every record of iteration {self.iteration}")
        return mask.to(self.device)

    def _log_sb3_metrics(
        self, loss_means: dict[str, float], records: Records, loss_config: PPOLossConfig
    ) -> None:
        # The same keys SB3's PPO.train records, so dashboards and callbacks keep working.
        for key, value in loss_means.items():
            self.logger.record(key, value)
        explained_var = explained_variance(
            records.values.cpu().numpy(), records.returns.cpu().numpy()
        )
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", torch.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", loss_config.clip_range)
        if loss_config.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", loss_config.clip_range_vf)

    def _write_iteration(
        self,
        records: Records,
        plan: UpdatePlan,
        n_epochs_run: int,
        loss_means: dict[str, float],
        scores: dict[str, StoredScores],
        ground_truth: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if self.run_log is None:
            return
        # The state after this update is the start of the next iteration. It is captured
        # (cloned) now; serialising and writing happen on the writer thread.
        self.iteration += 1
        next_checkpoint = self._checkpoint()
        self.iteration -= 1
        self._writer.submit(
            write_iteration_files,
            self.run_log,
            records,
            plan,
            {
                "num_timesteps": self.num_timesteps,
                "n_epochs_run": n_epochs_run,
                "losses": loss_means,
            },
            self.observation_space,
            next_checkpoint,
            dict(scores),
            ground_truth,
        )

    # ------------------------------------------------------------------ attribution
    def iteration_data(
        self, iteration: int, device: torch.device | str | None = None
    ) -> IterationData:
        """The last trained iteration (records, executed plan, start state), from memory.

        Only the iteration just trained (``self.iteration - 1``) is kept; older ones are
        read from the run directory (``rlattr.record.load_iteration``).
        """
        last = self.iteration - 1
        if self._last_result is None:
            raise RunLogError("no iteration trained in this process yet: call learn() first")
        if iteration != last:
            raise RunLogError(
                f"iteration {iteration} is not in memory: only the last trained iteration "
                f"({last}) is; read older ones from the run directory"
            )
        return self._last_result.iteration_data(
            torch.device(device) if device is not None else self.device
        )

    def workspace_policy(self, device: torch.device | str | None = None) -> ActorCriticPolicy:
        """A policy (and optimiser) of this model's architecture that scorers may overwrite;
        its weights mean nothing until a checkpoint is restored into it (as
        ``rlattr.record.build_policy`` from a run log). The torch RNG is left untouched."""
        return workspace_policy(self, device)

    def attribute(
        self,
        target: Any,
        method: str = "snapshot",
        iteration: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Score the records of the iteration just trained, in memory (no run directory
        needed): ``rlattr.attribute(self, iteration, target, method, **kwargs)``.

        Args:
            target: the behaviour to explain (``ReturnTarget()``, ``ActionTarget(...)``).
            method: ``"snapshot"``, ``"tracin"`` or ``"metagrad"``.
            iteration: must be the last trained one (the default).
            **kwargs: ``params``, ``backend``, ``device`` of ``rlattr.attribute``.
        """
        from rlattr.scoring.attribute import attribute

        k = self.iteration - 1 if iteration is None else iteration
        return attribute(self, k, target, method, **kwargs)  # type: ignore[arg-type]


def _checked_weights(
    minibatches: list[torch.Tensor], weights: torch.Tensor | None, loss_config: PPOLossConfig
) -> list[torch.Tensor]:
    """Refuse, before any step of the epoch, a weighted minibatch whose advantage statistics
    are undefined: they divide by Σw − 1 (unbiased, as torch's ``std``), so several records
    whose weights sum to at most 1 would step on NaN."""
    if weights is None or not loss_config.normalize_advantage:
        return minibatches
    for batch in minibatches:
        if len(batch) > 1 and float(weights[batch].sum()) <= 1:
            raise ValueError(
                f"a minibatch of {len(batch)} records has loss weights summing to "
                f"{float(weights[batch].sum()):.3g} <= 1, which leaves its weighted advantage "
                "statistics undefined; use larger weights or minibatches, or weight 0 (removal)"
            )
    return minibatches
