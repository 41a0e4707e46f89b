"""What a training run writes to its run directory, shared by AttributedPPO and RecordRun:
``run.json`` (what the run is), one iteration's files, and the checks that a PPO model's
updates can be replayed at all."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.errors import UnsupportedError
from rlattr.record.loss import PPOLossConfig
from rlattr.record.plan import UpdatePlan
from rlattr.record.records import Records
from rlattr.record.runlog import RunLog
from rlattr.record.serialize import class_path, encode, space_to_json
from rlattr.training.seams import StoredScores
from rlattr.versions import package_versions

SUPPORTED_POLICIES = ("MlpPolicy", "CnnPolicy")
_SUPPORTED_ACTIONS = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def run_json(model: BaseAlgorithm, config: dict[str, Any]) -> dict[str, Any]:
    """The ``run.json`` of a PPO model (AttributedPPO or SB3's PPO): the policy spec that
    ``build_policy`` rebuilds, the algorithm's settings and what ``rlattr inspect`` shows.

    Args:
        model: the model, after ``_setup_model``.
        config: the run's own configuration (``preset``, ``iif``, ...), stored as
            ``run.json["config"]``.
    """
    try:
        policy_kwargs = encode(model.policy_kwargs)
    except TypeError as err:
        raise UnsupportedError(
            f"policy_kwargs cannot be stored in the run log ({err}); pass classes, "
            "numbers, strings and lists only"
        ) from err
    optimizer = model.policy.optimizer
    return {
        "config": config,
        "seed": model.seed,
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {"id": env_id(model), "n_envs": model.n_envs},
        "policy": {
            "class": class_path(model.policy_class),
            "kwargs": policy_kwargs,
            "observation_space": space_to_json(model.observation_space),
            "action_space": space_to_json(model.action_space),
        },
        "algorithm": {
            "class": class_path(type(model)),
            "n_steps": model.n_steps,
            "n_envs": model.n_envs,
            "n_epochs": model.n_epochs,
            "batch_size": model.batch_size,
            "learning_rate": describe_schedule(model.learning_rate),
            "clip_range": describe_schedule(model.clip_range),
            "clip_range_vf": describe_schedule(model.clip_range_vf),
            "optimizer": class_path(type(optimizer)),
            "gamma": model.gamma,
            "gae_lambda": model.gae_lambda,
            "ent_coef": model.ent_coef,
            "vf_coef": model.vf_coef,
            "max_grad_norm": str(model.max_grad_norm),
            "normalize_advantage": model.normalize_advantage,
            "target_kl": model.target_kl,
            "device": str(model.device),
        },
    }


def ppo_loss_config(model: PPO) -> PPOLossConfig:
    """The loss hyperparameters of a PPO model's current iteration (schedules evaluated at
    its current progress, as ``PPO.train`` evaluates them)."""
    progress = model._current_progress_remaining
    clip_range_vf = None
    if model.clip_range_vf is not None:
        clip_range_vf = float(model.clip_range_vf(progress))  # type: ignore[operator]
    return PPOLossConfig(
        clip_range=float(model.clip_range(progress)),  # type: ignore[operator]
        clip_range_vf=clip_range_vf,
        normalize_advantage=bool(model.normalize_advantage),
        ent_coef=float(model.ent_coef),
        vf_coef=float(model.vf_coef),
        max_grad_norm=float(model.max_grad_norm),
        target_kl=None if model.target_kl is None else float(model.target_kl),
        discrete_actions=isinstance(model.action_space, spaces.Discrete),
    )


def env_id(model: BaseAlgorithm) -> str | None:
    """The Gymnasium id of the model's (first) environment, if it has one."""
    env = model.get_env()
    if env is None:
        return None
    try:
        spec = env.get_attr("spec", indices=[0])[0]
    except (AttributeError, IndexError):
        return None
    return getattr(spec, "id", None)


def describe_schedule(value: Any) -> Any:
    """A number as it is; a schedule by its constant or its ``repr`` (``lin_0.001``)."""
    if value is None or isinstance(value, int | float):
        return value
    inner = getattr(value, "value_schedule", value)  # SB3 wraps schedules in FloatSchedule
    constant = getattr(inner, "val", None)  # ... and numbers in ConstantSchedule
    return float(constant) if isinstance(constant, int | float) else repr(inner)


def describe_iif(config: Any) -> dict[str, Any]:
    """An ``IIF`` config as JSON (its target by name)."""
    values = asdict(config)
    target = values.pop("target", None)
    values["target"] = (
        "return (same buffer)" if target is None else getattr(target, "name", "custom")
    )
    return values


def write_iteration_files(
    run_log: RunLog,
    records: Records,
    plan: UpdatePlan,
    info: dict[str, Any],
    observation_space: spaces.Space,
    next_checkpoint: tuple[dict[str, torch.Tensor], dict[str, Any]],
    scores: dict[str, StoredScores],
    ground_truth: dict[str, torch.Tensor] | None = None,
) -> int:
    """Write one iteration (or only its successor checkpoint) and apply retention
    (``ground_truth``: per-record ``info["rlattr_*"]`` values, stored when given)."""
    k = records.iteration
    if run_log.retention.records(k):
        stored = {name: (value.scores, dict(value.meta)) for name, value in scores.items()}
        written = run_log.write_iteration(
            records, plan, info, observation_space, next_checkpoint, stored, ground_truth
        )
    else:
        written = run_log.write_checkpoint(k + 1, *next_checkpoint)
    # Bytes the run adds on disk: a checkpoint that turned sparse gave its tensors back.
    return written - run_log.apply_retention(newest_checkpoint=k + 1)


def check_policy_argument(policy: Any) -> None:
    """Refuse policy names rlattr cannot replay, before SB3 builds anything."""
    if isinstance(policy, str) and policy not in SUPPORTED_POLICIES:
        hint = " (recurrent policies are not supported)" if "Lstm" in policy else ""
        if policy == "MultiInputPolicy":
            hint = " (Dict observations: flatten them, e.g. gymnasium FlattenObservation)"
        raise UnsupportedError(
            f"policy {policy!r} is not supported{hint}; use one of {SUPPORTED_POLICIES} "
            "or an ActorCriticPolicy subclass"
        )


def check_policy_class(policy_class: type) -> None:
    """A feed-forward ``ActorCriticPolicy`` on array observations."""
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


def check_policy_modules(policy: torch.nn.Module) -> None:
    """No recurrent layer, whatever the policy's class is called: a policy that carries
    state between calls breaks the per-record loss (records independent given θ)."""
    recurrent = [
        f"{name or 'policy'} ({type(module).__name__})"
        for name, module in policy.named_modules()
        if isinstance(module, torch.nn.RNNBase | torch.nn.RNNCellBase)
    ]
    if recurrent:
        raise UnsupportedError(
            f"{type(policy).__name__} has recurrent layers ({', '.join(recurrent)}); rlattr "
            "replays feed-forward actor-critic policies only (its per-record loss assumes "
            "records are independent given θ, and a recurrent policy carries state)"
        )


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    """Array observations and the action spaces the per-record loss handles."""
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


def run_summary(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows that say what a run is, from its ``run.json``: the preset when it
    came from one, else what is known (environment, policy, algorithm settings), for
    ``rlattr inspect``. Runs created from Python have no preset."""
    preset = meta.get("config", {}).get("preset")
    rows = []
    if preset:
        rows.append(("preset", f"{preset.get('name', '?')} ({preset.get('env_id', '?')})"))
    else:
        environment = meta.get("environment", {})
        rows.append(("environment", f"{environment.get('id') or '? (not a registered id)'}"))
    policy = meta.get("policy", {})
    kwargs = policy.get("kwargs") or {}
    shown = {k: v for k, v in kwargs.items() if k in ("net_arch", "features_extractor_class")}
    rows.append(
        ("policy", f"{policy.get('class', '?')} {shown}" if shown else policy.get("class", "?"))
    )
    algorithm = meta.get("algorithm", {})
    if algorithm:
        trained_by = algorithm.get("class", "rlattr.training.ppo.AttributedPPO")
        settings = [
            f"{algorithm.get('n_steps', '?')} steps × {algorithm.get('n_envs', '?')} envs",
            f"{algorithm.get('n_epochs', '?')} epochs × batch {algorithm.get('batch_size', '?')}",
        ]
        for key, label in (
            ("learning_rate", "lr"),
            ("optimizer", "optimiser"),
            ("clip_range", "clip"),
            ("gamma", "γ"),
            ("gae_lambda", "λ"),
            ("ent_coef", "ent"),
            ("vf_coef", "vf"),
            ("max_grad_norm", "max_grad_norm"),
            ("target_kl", "target_kl"),
        ):
            if key in algorithm:
                value = algorithm[key]
                value = value.rsplit(".", 1)[-1] if key == "optimizer" else value
                settings.append(f"{label} {value}")
        rows.append(("algorithm", f"{trained_by.rsplit('.', 1)[-1]}: " + ", ".join(settings)))
    return rows
