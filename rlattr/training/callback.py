"""RecordRun: record a plain ``stable_baselines3.PPO`` run into an rlattr run directory.

``model.learn(..., callback=RecordRun("runs/x"))`` writes the same run directory as
``AttributedPPO(run_dir=...)`` without changing how SB3 trains: every iteration replays bit
for bit with ``rlattr.replay_iteration``, and attribution, fidelity and stage effects work
on it.

What makes the log exact: at the end of each rollout (before ``train()``) the callback
snapshots the records, the policy and optimiser state θ_k, and NumPy's global generator,
from which ``RolloutBuffer.get`` draws the epoch permutations. Once SB3's ``train()`` has
run, the callback replays the update with rlattr's update loop on a separate policy, from
those inputs, with the learning rate and clip ranges SB3's schedules gave: the replay yields
the executed plan (minibatches, target-KL early stop, gradient norms and clip coefficients),
and its end state is compared bit for bit with SB3's θ_{k+1}, so a log that would not
replay is refused at once rather than discovered later. The price is one extra update per
iteration (on the same device).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import configure_logger

from rlattr.errors import ConfigError, RunLogError, UnsupportedError
from rlattr.record.checkpoint import capture_checkpoint, restore_checkpoint
from rlattr.record.plan import cut_minibatches
from rlattr.record.records import Records
from rlattr.record.replay import same_bits, workspace_policy
from rlattr.record.runlog import BackgroundWriter, Retention, RunLog
from rlattr.record.update import run_update, trace_to_plan
from rlattr.training.nonfinite import (
    NonFinite,
    NonFiniteFinding,
    act_on,
    check_nonfinite_mode,
    find_in_records,
    find_in_update,
)
from rlattr.training.ppo_bounds import check_ppo_values, ppo_values_of
from rlattr.training.rundir import (
    check_policy_class,
    check_policy_modules,
    check_spaces,
    ppo_loss_config,
    run_json,
    write_iteration_files,
)


@dataclass
class _Rollout:
    """What the end of rollout k holds that SB3's ``train()`` is about to consume."""

    records: Records
    start: tuple[dict[str, torch.Tensor], dict[str, Any]]
    numpy_state: tuple[Any, ...]
    n_updates: int


class RecordRun(BaseCallback):
    """Record a ``stable_baselines3.PPO`` run into ``run_dir`` (an rlattr ``RunLog``).

    Args:
        run_dir: the run directory to create (refused if it already holds a run).
        retention: which iterations to keep on disk (default: all).
        run_metadata: extra JSON stored in ``run.json["config"]``.
        tensorboard: when the model has no ``tensorboard_log`` (and no logger of its own),
            write TensorBoard events to ``run_dir/tb``, as AttributedPPO does.
        nonfinite: what a NaN or inf reward, observation, advantage or loss does, as for
            ``AttributedPPO``: ``"error"`` (default: ``NonFiniteError`` before anything of
            the iteration is committed), ``"skip-iteration"`` (SB3 does not train on that
            rollout; nothing is recorded) or ``"warn"``. A loss that turns non-finite in
            the middle of SB3's own update can stop it inside ``PPO.train`` first.
        verbose: SB3's callback verbosity.

    Example:
        >>> model = PPO("MlpPolicy", "CartPole-v1", seed=0)
        >>> model.learn(20_000, callback=RecordRun("runs/cp"))
        >>> rlattr.replay_iteration(RunLog("runs/cp"), 12)
    """

    def __init__(
        self,
        run_dir: str | Path,
        retention: Retention | None = None,
        run_metadata: dict[str, Any] | None = None,
        tensorboard: bool = True,
        nonfinite: NonFinite = "error",
        verbose: int = 0,
    ):
        super().__init__(verbose)
        self.nonfinite: NonFinite = check_nonfinite_mode(nonfinite, "RecordRun nonfinite")
        self.run_dir = Path(run_dir)
        self.retention = retention or Retention()
        self.run_metadata = dict(run_metadata or {})
        self.tensorboard = tensorboard
        self.run_log: RunLog | None = None
        self.iteration = 0  # the iteration the next rollout belongs to
        self._writer = BackgroundWriter()
        self._workspace: ActorCriticPolicy | None = None
        self._pending: _Rollout | None = None

    # ------------------------------------------------------------------ set-up
    def _init_callback(self) -> None:
        model = self.model
        _check_recordable(model)
        if self.run_log is not None:
            return  # a later learn() with the same callback continues the run
        if (self.run_dir / "run.json").exists():
            raise RunLogError(
                f"{self.run_dir} already holds a run; RecordRun starts new runs only "
                "(a later learn() with the same RecordRun continues its run): choose "
                "another run directory"
            )
        self.run_log = RunLog.create(
            self.run_dir,
            run_json(
                model,
                {"recorder": "RecordRun", "nonfinite": self.nonfinite, **self.run_metadata},
            ),
            self.retention,
        )
        self.retention = self.run_log.retention
        if self.tensorboard and model.tensorboard_log is None and not model._custom_logger:
            # SB3 configured its logger before calling us; give it the run's TensorBoard.
            logger = configure_logger(model.verbose, str(self.run_log.tb_dir), "PPO", True)
            model.set_logger(logger)
        self._workspace = workspace_policy(model)

    def _on_training_start(self) -> None:
        assert self.run_log is not None
        if not self.run_log.has_checkpoint(self.iteration):
            self.run_log.write_checkpoint(self.iteration, *self._checkpoint())

    # ------------------------------------------------------------------ per iteration
    def _on_rollout_end(self) -> None:
        model = self.model
        records = Records.from_rollout_buffer(model.rollout_buffer, self.iteration)
        # GAE's bootstrap inputs (RecordingRolloutBuffer keeps them; SB3's buffer does not).
        last_values = self.locals["values"].detach().cpu().numpy().flatten()
        last_dones = np.asarray(self.locals["dones"], dtype=np.float32)
        records = replace(
            records,
            last_values=torch.tensor(last_values, dtype=torch.float32, device=records.device),
            last_dones=torch.tensor(last_dones, dtype=torch.float32, device=records.device),
        )
        if self._nonfinite_skips(find_in_records(records)):
            _skip_next_train(model)  # SB3's train() on this rollout does nothing
            return
        self._pending = _Rollout(
            records=records,
            start=capture_checkpoint(model.policy),
            numpy_state=np.random.get_state(),
            n_updates=model._n_updates,
        )

    def _on_rollout_start(self) -> None:
        _unskip_train(self.model)
        self._finish_iteration()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        _unskip_train(self.model)
        self._finish_iteration()
        self._writer.drain()

    def _nonfinite_skips(self, finding: NonFiniteFinding | None) -> bool:
        """Act on a non-finite ``finding`` as ``nonfinite`` says; True: skip the iteration.
        Before an error, the iterations already submitted are written (and only they)."""
        if finding is None:
            return False
        if self.nonfinite == "error":
            self._writer.drain()
        return act_on(finding, self.nonfinite, stacklevel=5)

    # ------------------------------------------------------------------ recording
    def _checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        counters = {
            "iteration": self.iteration,
            "num_timesteps": self.model.num_timesteps,
            "n_updates": self.model._n_updates,
        }
        return capture_checkpoint(self.model.policy, counters)

    def _finish_iteration(self) -> None:
        """Replay the update SB3 just ran, check it, and write the iteration."""
        pending, self._pending = self._pending, None
        model = self.model
        if pending is None or model._n_updates == pending.n_updates:
            return  # no rollout waiting, or learn() ended before training on it
        assert self.run_log is not None and self._workspace is not None
        records = pending.records
        workspace = self._workspace
        restore_checkpoint(workspace, *pending.start)
        workspace.set_training_mode(True)
        # SB3's train() set the learning rate and evaluated the clip schedules at the
        # progress they still hold.
        learning_rate = model.policy.optimizer.param_groups[0]["lr"]
        for group in workspace.optimizer.param_groups:
            group["lr"] = learning_rate
        loss_config = ppo_loss_config(model)
        generator = np.random.RandomState()
        generator.set_state(pending.numpy_state)
        permutations: list[np.ndarray] = []

        def epochs() -> Iterator[tuple[int, list[torch.Tensor]]]:
            # Drawn as RolloutBuffer.get draws them, one per epoch started.
            for epoch in range(model.n_epochs):
                permutation = generator.permutation(len(records))
                permutations.append(permutation)
                order = torch.as_tensor(permutation, device=records.device)
                yield epoch, cut_minibatches(order, model.batch_size)

        trace, stats, stopped = run_update(
            workspace, records, loss_config, epochs(), check_target_kl=True
        )
        loss_finding = find_in_update(records.iteration, trace, stats)
        if loss_finding is not None and self.nonfinite != "warn":
            # SB3's policy is back at θ_k and its update uncounted; nothing is recorded.
            restore_checkpoint(model.policy, *pending.start)
            model._n_updates = pending.n_updates
        if self._nonfinite_skips(loss_finding):
            return
        self._check_same_update(pending, stats.n_epochs_run)
        keep_all = torch.ones(len(records), dtype=torch.bool, device=records.device)
        plan = trace_to_plan(
            trace, loss_config, model.n_epochs, model.batch_size, permutations, keep_all, stopped
        )
        self.iteration += 1
        next_checkpoint = self._checkpoint()
        info = {
            "num_timesteps": model.num_timesteps,
            "n_epochs_run": stats.n_epochs_run,
            "losses": stats.means(),
        }
        self._writer.submit(
            write_iteration_files,
            self.run_log,
            records,
            plan,
            info,
            model.observation_space,
            next_checkpoint,
            {},
        )

    def _check_same_update(self, pending: _Rollout, n_epochs_run: int) -> None:
        """The replayed update must be SB3's, bit for bit, or the log would not replay."""
        model = self.model
        assert self._workspace is not None
        replayed = self._workspace.state_dict()
        differs = [
            name
            for name, value in model.policy.state_dict().items()
            if not same_bits(value, replayed[name])
        ]
        ran = model._n_updates - pending.n_updates
        if differs or ran != n_epochs_run:
            raise UnsupportedError(
                f"RecordRun: iteration {pending.records.iteration} of {self.run_dir} does not "
                f"replay exactly ({'parameters ' + ', '.join(differs) if differs else ''}"
                f"{'' if ran == n_epochs_run else f' epochs {ran} != {n_epochs_run}'}): "
                "something besides SB3's PPO.train changed the policy or drew from NumPy's "
                "global generator between the rollout and the update"
            )


def _check_recordable(model: Any) -> None:
    from rlattr.training.ppo import AttributedPPO

    if not isinstance(model, PPO):
        raise UnsupportedError(
            f"RecordRun records stable_baselines3.PPO, not {type(model).__name__}"
        )
    if isinstance(model, AttributedPPO):
        raise UnsupportedError(
            "AttributedPPO records itself: pass run_dir=... instead of RecordRun"
        )
    if model.use_sde:
        raise UnsupportedError(
            "use_sde=True is not supported: gSDE exploration noise is not logged, so its "
            "updates cannot be replayed"
        )
    check_spaces(model.observation_space, model.action_space)
    check_policy_class(model.policy_class)
    check_policy_modules(model.policy)
    # The bounds of a preset's ppo section and of AttributedPPO(...), with the same words.
    check_ppo_values(ppo_values_of(model), "RecordRun: PPO ", ConfigError)


def _skip_next_train(model: PPO) -> None:
    """SB3's next ``train()`` does nothing (a callback cannot otherwise keep SB3 from
    training on a rollout); the method comes back on the next rollout or at the end."""
    model.train = lambda: None  # type: ignore[method-assign]


def _unskip_train(model: PPO) -> None:
    model.__dict__.pop("train", None)
