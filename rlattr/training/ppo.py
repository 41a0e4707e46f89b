"""AttributedPPO: SB3's PPO with an explicit update plan, record hooks, keep masks and a RunLog."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import explained_variance

from rlattr.errors import RunLogError, UnsupportedError
from rlattr.record.checkpoint import capture_checkpoint, restore_checkpoint
from rlattr.record.loss import PPOLossConfig
from rlattr.record.plan import UpdatePlan, sample_epoch_minibatches
from rlattr.record.records import RecordingRolloutBuffer, Records
from rlattr.record.runlog import BackgroundWriter, Retention, RunLog
from rlattr.record.serialize import class_path, encode, space_to_json
from rlattr.record.update import run_update, trace_to_plan
from rlattr.training.tb import IterationTiming, record_iteration
from rlattr.versions import package_versions

RecordHook = Callable[["AttributedPPO", Records], None]
KeepMaskFn = Callable[["AttributedPPO", Records], "torch.Tensor | None"]

_SUPPORTED_POLICIES = ("MlpPolicy", "CnnPolicy")
_SUPPORTED_ACTIONS = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
_RNG_FILTER = "rng.filter"  # checkpoint key of a keep-mask function's own generator


class AttributedPPO(PPO):
    """SB3's ``PPO`` whose update is an explicit, logged and exactly replayable plan.

    With no record hook, no keep mask and recording on or off, it trains exactly like
    ``stable_baselines3.PPO`` (same seed ⇒ bit-identical parameters on CPU).

    Args:
        policy, env: as for ``PPO``; the policy must be a feed-forward actor-critic
            (``"MlpPolicy"``, ``"CnnPolicy"`` or an ``ActorCriticPolicy`` subclass).
        run_dir: directory of the ``RunLog`` (records, plans, checkpoints, TensorBoard);
            None records nothing to disk.
        retention: which iterations to keep on disk (default: all).
        resume: continue the run already in ``run_dir`` from its last finished iteration.
        run_metadata: extra JSON stored in ``run.json`` (e.g. the resolved preset).
        record_hooks: callables ``hook(model, records)`` run before every update (scoring).
        keep_mask_fn: ``fn(model, records) -> BoolTensor[N] | None`` restricting each
            update to the kept records (filtering); None trains on every record. Its
            optional attribute ``minibatching`` (``"as_drawn"``, the default, or
            ``"recut"``) says how minibatches are formed around dropped records
            (``rlattr.record.plan.sample_epoch_minibatches``).
        iif: an ``rlattr.training.filters.IIF`` config: iterative influence-based filtering (it
            installs the keep mask); None is plain PPO.
        **ppo_kwargs: everything ``stable_baselines3.PPO`` accepts.
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
        record_hooks: tuple[RecordHook, ...] | list[RecordHook] = (),
        keep_mask_fn: KeepMaskFn | None = None,
        iif: Any = None,
        **ppo_kwargs: Any,
    ):
        _check_policy_argument(policy)
        self._run_metadata = dict(run_metadata or {})
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
            _check_spaces(env.observation_space, env.action_space)
        super().__init__(policy, env, _init_setup_model=False, **ppo_kwargs)
        _check_spaces(self.observation_space, self.action_space)
        _check_policy_class(self.policy_class)

        self.record_hooks: list[RecordHook] = list(record_hooks)
        if iif is not None:
            from rlattr.training.filters import IIFFilter

            if keep_mask_fn is not None:
                raise ValueError("pass either iif or keep_mask_fn, not both")
            keep_mask_fn = IIFFilter(iif)
            self._run_metadata.setdefault("iif", _describe(iif))
        self.iif = iif
        self.keep_mask_fn = keep_mask_fn
        self.retention = retention or Retention()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_log: RunLog | None = None
        self._writer = BackgroundWriter()
        self.iteration = 0
        self.last_records: Records | None = None
        self.last_plan: UpdatePlan | None = None
        self.last_keep_mask: torch.Tensor | None = None
        self.draft_plan: UpdatePlan | None = None
        # Scores that record hooks computed for the current iteration; stored with it.
        self.pending_scores: dict[str, tuple[torch.Tensor, dict[str, Any]]] = {}
        self._resume = resume
        self._phase_start = time.perf_counter()
        if init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------ set-up
    def _setup_model(self) -> None:
        super()._setup_model()
        if self.run_dir is None:
            return
        if self._resume and (self.run_dir / "run.json").exists():
            self.run_log = RunLog(self.run_dir)
            self._restore_from_run_log()
        else:
            self.run_log = RunLog.create(self.run_dir, self._run_json(), self.retention)
        self.retention = self.run_log.retention

    def _run_json(self) -> dict[str, Any]:
        try:
            policy_kwargs = encode(self.policy_kwargs)
        except TypeError as err:
            raise UnsupportedError(
                f"policy_kwargs cannot be stored in the run log ({err}); pass classes, "
                "numbers, strings and lists only"
            ) from err
        return {
            "config": self._run_metadata,
            "seed": self.seed,
            "versions": package_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "policy": {
                "class": class_path(self.policy_class),
                "kwargs": policy_kwargs,
                "observation_space": space_to_json(self.observation_space),
                "action_space": space_to_json(self.action_space),
            },
            "algorithm": {
                "n_steps": self.n_steps,
                "n_envs": self.n_envs,
                "n_epochs": self.n_epochs,
                "batch_size": self.batch_size,
                "gamma": self.gamma,
                "gae_lambda": self.gae_lambda,
                "ent_coef": self.ent_coef,
                "vf_coef": self.vf_coef,
                "max_grad_norm": str(self.max_grad_norm),
                "normalize_advantage": self.normalize_advantage,
                "target_kl": self.target_kl,
                "device": str(self.device),
            },
        }

    def _restore_from_run_log(self) -> None:
        assert self.run_log is not None
        self._check_same_filter(self.run_log.meta.get("config", {}).get("iif"))
        start = self.run_log.resume_point()
        if start is None:
            self.run_log.discard_after(0)
            return
        self.run_log.discard_after(start)
        tensors, meta = self.run_log.load_checkpoint(start, self.device)
        restore_checkpoint(self.policy, tensors, meta, restore_rng=True)
        generator = self._filter_generator()
        if generator is not None and _RNG_FILTER in tensors:
            generator.set_state(tensors[_RNG_FILTER].to("cpu", torch.uint8))
        counters = meta["counters"]
        self.iteration = int(counters["iteration"])
        self.num_timesteps = int(counters["num_timesteps"])
        self._n_updates = int(counters["n_updates"])
        if self.seed is not None:
            # The environments cannot be restored mid-episode; start fresh episodes with
            # seeds that differ from the original start's.
            self.env.seed(self.seed + 1_000_003 * self.iteration)

    def _check_same_filter(self, stored: dict[str, Any] | None) -> None:
        """A resumed run must filter as it did: the rest of its log would not be one run."""
        if stored is not None:
            # Runs written before the option existed re-cut their minibatches.
            stored = {"minibatching": "recut", **stored}
        wanted = self._run_metadata.get("iif")
        if stored != wanted:
            raise RunLogError(
                f"{self.run_dir} was trained with iif={stored}, and is being resumed with "
                f"iif={wanted}; resume it with the same IIF settings"
            )

    def _setup_learn(self, total_timesteps: int, *args: Any, **kwargs: Any) -> Any:
        result = super()._setup_learn(total_timesteps, *args, **kwargs)
        if self.run_log is not None and not self.run_log.has_checkpoint(self.iteration):
            self.run_log.write_checkpoint(self.iteration, *self._checkpoint())
        self._phase_start = time.perf_counter()
        return result

    def learn(self, *args: Any, **kwargs: Any) -> AttributedPPO:
        """``PPO.learn``; returns once every iteration is on disk (or raises the write error)."""
        try:
            return super().learn(*args, **kwargs)
        finally:
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
        generator = self._filter_generator()
        if generator is not None:
            # A filter's own random draws (IIF's random rules) must resume where they were.
            tensors[_RNG_FILTER] = generator.get_state()
        return tensors, meta

    def _filter_generator(self) -> torch.Generator | None:
        generator = getattr(self.keep_mask_fn, "generator", None)
        return generator if isinstance(generator, torch.Generator) else None

    # ------------------------------------------------------------------ update
    def loss_config(self) -> PPOLossConfig:
        """The loss hyperparameters of the current iteration (schedules evaluated now)."""
        progress = self._current_progress_remaining
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = float(self.clip_range_vf(progress))  # type: ignore[operator]
        return PPOLossConfig(
            clip_range=float(self.clip_range(progress)),  # type: ignore[operator]
            clip_range_vf=clip_range_vf,
            normalize_advantage=bool(self.normalize_advantage),
            ent_coef=float(self.ent_coef),
            vf_coef=float(self.vf_coef),
            max_grad_norm=float(self.max_grad_norm),
            target_kl=None if self.target_kl is None else float(self.target_kl),
            discrete_actions=isinstance(self.action_space, spaces.Discrete),
        )

    def train(self) -> None:
        """One PPO update on the current rollout buffer, through an explicit update plan."""
        train_start = time.perf_counter()
        rollout_s = train_start - self._phase_start
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        loss_config = self.loss_config()

        records = Records.from_rollout_buffer(self.rollout_buffer, self.iteration)
        self.last_records = records
        self.pending_scores = {}
        for hook in self.record_hooks:
            hook(self, records)
        n_records = len(records)
        permutations: list[np.ndarray] = []
        # A keep-mask function that scores the update it filters (exact metagradient
        # scores) needs the plan first: every epoch's permutation is drawn now, and the
        # filtered records are then removed from their minibatches, which otherwise stay
        # as drawn. (Drawing all permutations up front consumes NumPy's generator as SB3
        # does unless target_kl stops early.)
        self.draft_plan = None
        if getattr(self.keep_mask_fn, "needs_plan", False):
            drafted = [
                sample_epoch_minibatches(
                    n_records, self.batch_size, None, self.device, permutations
                )
                for _ in range(self.n_epochs)
            ]
            self.draft_plan = UpdatePlan.draft(
                loss_config,
                self.batch_size,
                drafted,
                permutations,
                self.policy.optimizer.param_groups[0]["lr"],
                n_records,
            )
        keep_mask = self._keep_mask(records)
        # What the dropped records leave in their minibatches (see sample_epoch_minibatches).
        minibatching = getattr(self.keep_mask_fn, "minibatching", "as_drawn")
        scored = time.perf_counter()

        def epochs() -> Iterator[tuple[int, list[torch.Tensor]]]:
            if self.draft_plan is not None:
                for epoch, batches in enumerate(drafted):
                    if keep_mask is not None:
                        batches = [b[keep_mask[b]] for b in batches]
                    yield epoch, [b for b in batches if b.numel() > 0]
                return
            # A generator, so each epoch's permutation is drawn when the epoch starts (as SB3).
            for epoch in range(self.n_epochs):
                yield (
                    epoch,
                    sample_epoch_minibatches(
                        n_records,
                        self.batch_size,
                        keep_mask,
                        self.device,
                        permutations,
                        minibatching,
                    ),
                )

        trace, stats, stopped = run_update(
            self.policy, records, loss_config, epochs(), check_target_kl=True
        )
        self._n_updates += stats.n_epochs_run
        if stopped and self.verbose >= 1:
            print(f"Early stopping at step {stats.n_epochs_run - 1} due to reaching max kl")
        full_mask = (
            keep_mask
            if keep_mask is not None
            else torch.ones(n_records, dtype=torch.bool, device=self.device)
        )
        plan = trace_to_plan(
            trace, loss_config, self.n_epochs, self.batch_size, permutations, full_mask, stopped
        )
        self.last_plan = plan
        self.last_keep_mask = keep_mask
        updated = time.perf_counter()

        loss_means = stats.means()
        self._log_sb3_metrics(loss_means, records, loss_config)
        self._write_iteration(records, plan, stats.n_epochs_run, loss_means)
        done = time.perf_counter()
        timing = IterationTiming(
            rollout_s=rollout_s,
            scoring_s=scored - train_start,
            update_s=updated - scored,
            logging_s=done - updated,
        )
        n_kept = n_records if keep_mask is None else int(keep_mask.sum())
        record_iteration(
            self.logger, self.iteration, n_records, n_kept, timing, self._writer.bytes_written
        )
        self.iteration += 1
        self._phase_start = time.perf_counter()

    def _keep_mask(self, records: Records) -> torch.Tensor | None:
        if self.keep_mask_fn is None:
            return None
        mask = self.keep_mask_fn(self, records)
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
        self, records: Records, plan: UpdatePlan, n_epochs_run: int, loss_means: dict[str, float]
    ) -> None:
        if self.run_log is None:
            return
        # The state after this update is the start of the next iteration. It is captured
        # (cloned) now; serialising and writing happen on the writer thread.
        self.iteration += 1
        next_checkpoint = self._checkpoint()
        self.iteration -= 1
        self._writer.submit(
            _write_iteration_files,
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
            dict(self.pending_scores),
        )


def _write_iteration_files(
    run_log: RunLog,
    records: Records,
    plan: UpdatePlan,
    info: dict[str, Any],
    observation_space: spaces.Space,
    next_checkpoint: tuple[dict[str, torch.Tensor], dict[str, Any]],
    scores: dict[str, tuple[torch.Tensor, dict[str, Any]]],
) -> int:
    """Write one iteration (or only its successor checkpoint) and apply retention."""
    k = records.iteration
    if run_log.retention.records(k):
        written = run_log.write_iteration(
            records, plan, info, observation_space, next_checkpoint, scores
        )
    else:
        written = run_log.write_checkpoint(k + 1, *next_checkpoint)
    run_log.apply_retention(newest_checkpoint=k + 1)
    return written


def _describe(config: Any) -> dict[str, Any]:
    from dataclasses import asdict

    values = asdict(config)
    target = values.pop("target", None)
    values["target"] = (
        "return (same buffer)" if target is None else getattr(target, "name", "custom")
    )
    return values


def _check_policy_argument(policy: Any) -> None:
    if isinstance(policy, str) and policy not in _SUPPORTED_POLICIES:
        hint = " (recurrent policies are not supported)" if "Lstm" in policy else ""
        if policy == "MultiInputPolicy":
            hint = " (Dict observations: flatten them, e.g. gymnasium FlattenObservation)"
        raise UnsupportedError(
            f"policy {policy!r} is not supported{hint}; use one of {_SUPPORTED_POLICIES} "
            "or an ActorCriticPolicy subclass"
        )


def _check_policy_class(policy_class: type) -> None:
    names = [cls.__name__ for cls in policy_class.__mro__]
    if any("Recurrent" in name for name in names):
        raise UnsupportedError(
            f"{policy_class.__name__} is recurrent; rlattr replays feed-forward actor-critic "
            "policies only (its per-record loss assumes records are independent given θ)"
        )
    if not issubclass(policy_class, ActorCriticPolicy):
        raise UnsupportedError(
            f"{policy_class.__name__} is not an ActorCriticPolicy; AttributedPPO needs one"
        )
    if "MultiInput" in policy_class.__name__:
        raise UnsupportedError(
            f"{policy_class.__name__} takes Dict observations, which rlattr does not support; "
            "flatten them (gymnasium.wrappers.FlattenObservation) or select one key "
            "(e.g. minigrid.wrappers.ImgObsWrapper)"
        )


def _check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    if isinstance(observation_space, spaces.Dict | spaces.Tuple):
        raise UnsupportedError(
            f"{type(observation_space).__name__} observation spaces are not supported; wrap the "
            "environment so it returns one array (gymnasium.wrappers.FlattenObservation, or "
            "minigrid.wrappers.ImgObsWrapper for MiniGrid)"
        )
    if not isinstance(
        observation_space, spaces.Box | spaces.Discrete | spaces.MultiDiscrete | spaces.MultiBinary
    ):
        raise UnsupportedError(f"observation space {observation_space} is not supported")
    if not isinstance(action_space, _SUPPORTED_ACTIONS):
        raise UnsupportedError(
            f"action space {action_space} is not supported; rlattr supports "
            "Box, Discrete, MultiDiscrete and MultiBinary"
        )
