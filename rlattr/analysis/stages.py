"""Stage effects: how much each span of training accounts for a behaviour of the final agent.

docs/science.md §4. Stage k spans iterations [start, end). Its effect on a behaviour f of the
final parameters θ_T is τ_k = f(θ_T) − f(θ_T^{(−k)}), where θ_T^{(−k)} is training with
stage k's updates not executed.

- Ground truth (data-fixed): start from θ_start (and the optimiser state — see
  ``optimizer_state``), skip the stage, and replay every later iteration on its recorded
  buffer and plan.
- Estimator: the displacement δ_k = θ_end − θ_start is propagated through the later steps
  with the linearised update map of the optimiser actually used, e ← A_t e, and
  τ̂_k = ⟨∇f(θ_T), e_T⟩ (also reported: f(θ_T) − f(θ_T − e_T)). First order (FO) keeps only
  what does not depend on data (learning rates, weight decay, momentum, Adam's
  preconditioner with v̂ from the replay); second order (SO) is the exact tangent of the
  data-fixed update map: Hessian-vector products H_t e at each step's parameters, passed
  through gradient-norm clipping's derivative and Adam's second moment.
  FO is exact when later updates are affine in θ (a linear loss); SO when the loss is
  quadratic and the optimiser affine (SGD, momentum, weight decay), and SO equals finite
  differences of the replayed training for every optimiser (tests). Over long horizons
  the tangent of PPO training is expanding, so SO of a finite stage can grow without
  bound while the real (clipped) training forgets the stage: see ``StageEffect``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from rlattr.record.checkpoint import restore_checkpoint
from rlattr.record.loss import ppo_minibatch_loss
from rlattr.record.replay import IterationData, build_policy, load_iteration, replay
from rlattr.record.runlog import RunLog
from rlattr.scoring.attribute import target_context
from rlattr.scoring.optimizers import Tangent, check_supported, step_multipliers
from rlattr.scoring.targets import Target, TargetContext

OptimizerState = Literal["rollback", "carry"]


@dataclass(frozen=True)
class Stage:
    """Iterations [start, end) of a run."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"a stage needs 0 <= start < end, got [{self.start}, {self.end})")

    def __str__(self) -> str:
        return f"{self.start}:{self.end}"


def parse_stages(spec: str | int, n_iterations: int) -> list[Stage]:
    """``K`` equal spans, or ``"a:b,c:d"`` explicit spans (end exclusive)."""
    if isinstance(spec, int) or str(spec).isdigit():
        count = int(spec)
        if not 1 <= count <= n_iterations:
            raise ValueError(f"cannot cut {n_iterations} iterations into {count} stages")
        bounds = [round(i * n_iterations / count) for i in range(count + 1)]
        return [Stage(a, b) for a, b in itertools.pairwise(bounds)]
    stages = []
    for part in str(spec).split(","):
        a, _, b = part.partition(":")
        stages.append(Stage(int(a), int(b)))
    for stage in stages:
        if stage.end > n_iterations:
            raise ValueError(f"stage {stage} ends after the run's {n_iterations} iterations")
    return stages


@dataclass
class StageEffect:
    """Estimates and ground truth of one stage's effect on the behaviour.

    ``fo_growth`` / ``so_growth`` are ‖e_T‖ / ‖δ_k‖: how much the propagation stretched
    the stage's displacement. FO only rescales it (decay, momentum, Adam's step sizes);
    an SO growth of orders of magnitude means the linearised update map is expanding
    along δ_k (negative or above-2/η preconditioned curvature), where the first-order
    Taylor picture of the *finite* displacement no longer holds — treat that SO value as
    unreliable.
    """

    stage: Stage
    fo: float | None = None
    fo_difference: float | None = None
    so: float | None = None
    so_difference: float | None = None
    ground_truth: float | None = None
    fo_growth: float | None = None
    so_growth: float | None = None


def _names(policy: ActorCriticPolicy) -> list[str]:
    return [n for n, p in policy.named_parameters() if p.requires_grad]


def _state(tensors: dict[str, torch.Tensor], names: list[str], policy) -> dict[str, torch.Tensor]:
    device = next(policy.parameters()).device
    dtype = next(policy.parameters()).dtype
    return {n: tensors["policy." + n].to(device=device, dtype=dtype) for n in names}


def _optimizer_slot(
    tensors: dict[str, torch.Tensor], names: list[str], slot: str, policy
) -> dict[str, torch.Tensor] | None:
    device = next(policy.parameters()).device
    dtype = next(policy.parameters()).dtype
    out = {}
    for index, name in enumerate(names):
        key = f"optim.{index}.{slot}"
        if key not in tensors:
            return None
        out[name] = tensors[key].to(device=device, dtype=dtype)
    return out


def _state_difference(
    start_tensors, end_tensors, slot: str | None, names: list[str], policy, rollback: bool
) -> dict[str, torch.Tensor]:
    """Actual minus counterfactual optimiser state ``slot`` at a stage's end: the stage's
    change with ``rollback`` (a missing state is zero), nothing with ``carry``."""
    end = _optimizer_slot(end_tensors, names, slot, policy) if rollback and slot else None
    if end is None:
        return {n: torch.zeros_like(p) for n, p in policy.named_parameters() if n in names}
    start = _optimizer_slot(start_tensors, names, slot, policy)
    return {n: end[n] - (start[n] if start is not None else 0.0) for n in names}


def _hessian_vector(policy, data: IterationData, indices, e: dict[str, torch.Tensor], clip: float):
    named = dict(policy.named_parameters())
    params = [named[n] for n in e]
    loss = ppo_minibatch_loss(policy, data.records.minibatch(indices), data.plan.loss_config).loss
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    dot = sum((g * e[n]).sum() for g, n in zip(grads, e, strict=True) if g is not None)
    hv = torch.autograd.grad(dot, params, allow_unused=True)
    return {
        n: (h.detach() * clip if h is not None else torch.zeros_like(e[n]))
        for h, n in zip(hv, e, strict=True)
    }


def _through_clipping(
    hessian_term: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], clip: float
) -> dict[str, torch.Tensor]:
    """d(c g) for torch's clip_grad_norm_ (c = M / (‖g‖ + 1e-6) < 1), given c·H e and the
    clipped gradient c·g: c δg − c g ⟨g, δg⟩ / (‖g‖ (‖g‖ + 1e-6))."""
    clipped_sq = sum(float((g.double() ** 2).sum()) for g in grads.values())
    norm = clipped_sq**0.5 / clip  # ‖g‖ before clipping
    # ⟨c g, c δg⟩ / (c² ‖g‖ (‖g‖ + 1e-6)) is the coefficient of c·g to remove.
    dot = sum(float((grads[n].double() * h.double()).sum()) for n, h in hessian_term.items())
    coefficient = dot / (clip**2 * norm * (norm + 1e-6))
    return {n: h - coefficient * grads[n] for n, h in hessian_term.items()}


def _propagate(
    policy, later: list[IterationData], e, e_slot, second_order: bool, e_v=None
) -> dict[str, torch.Tensor]:
    """Carry a parameter difference ``e`` (with first-slot difference ``e_slot`` and, at
    second order, second-moment difference ``e_v``) through the replayed ``later``
    iterations with the optimiser's linearised step (``OptimizerModel.linearised_step``).

    First order takes nothing from the data. Second order is the exact tangent of the
    data-fixed update map: the loss Hessian enters through δg = H_t e, and with it
    everything δg moves — the gradient-norm clip coefficient (a clipped step's gradient
    keeps its norm, so its change along the gradient is projected out) and Adam's second
    moment. Returns the difference at the end (the same tensors' values are not changed).
    """
    model = check_supported(policy.optimizer, "stage effects")
    named = dict(policy.named_parameters())
    tangents = {
        n: Tangent(e[n], e_slot[n], e_v[n] if e_v is not None else torch.zeros_like(e[n]))
        for n in e
    }
    pending: dict[int, tuple] = {}
    for data in later:
        clips = data.plan.clip_coefs.tolist()

        def before(step: int, indices: torch.Tensor, _data=data, _clips=clips) -> None:
            if not second_order:
                return
            theta_change = {n: t.theta for n, t in tangents.items()}
            hessian = _hessian_vector(policy, _data, indices, theta_change, _clips[step])
            # θ_t: Adam's second moment sees the gradient with L2 decay λθ_t added.
            theta = {n: named[n].detach().clone() for n in tangents}
            pending[step] = (hessian, theta)

        def after(step: int, indices: torch.Tensor, _data=data, _clips=clips) -> None:
            lr = float(_data.plan.learning_rates[step])
            hessian, theta = pending.pop(step, (None, None))
            grads = None
            if hessian is not None:
                grads = {
                    n: named[n].grad if named[n].grad is not None else torch.zeros_like(t.theta)
                    for n, t in tangents.items()
                }
                if _clips[step] < 1.0:
                    hessian = _through_clipping(hessian, grads, _clips[step])
            for n, tangent in tangents.items():
                tangents[n] = model.linearised_step(
                    tangent,
                    lr,
                    policy.optimizer.state[named[n]],
                    gradient_change=hessian[n] if hessian is not None else None,
                    gradient=grads[n] if grads is not None else None,
                    param=theta[n] if theta is not None else None,
                )

        replay(data, policy, before_step=before, after_step=after)
    return {n: t.theta for n, t in tangents.items()}


@overload
def estimate_stage_effects(
    iterations: list[IterationData],
    final_state: dict[str, torch.Tensor],
    policy: ActorCriticPolicy,
    behavior: Target,
    context: TargetContext,
    stages: list[Stage],
    second_order: bool = ...,
    ground_truth: bool = ...,
    optimizer_state: OptimizerState = ...,
    estimates: bool = ...,
) -> list[StageEffect]: ...


@overload
def estimate_stage_effects(
    iterations: list[IterationData],
    final_state: dict[str, torch.Tensor],
    policy: ActorCriticPolicy,
    behavior: Mapping[str, Target],
    context: TargetContext,
    stages: list[Stage],
    second_order: bool = ...,
    ground_truth: bool = ...,
    optimizer_state: OptimizerState = ...,
    estimates: bool = ...,
) -> dict[str, list[StageEffect]]: ...


def estimate_stage_effects(
    iterations: list[IterationData],
    final_state: dict[str, torch.Tensor],
    policy: ActorCriticPolicy,
    behavior: Target | Mapping[str, Target],
    context: TargetContext,
    stages: list[Stage],
    second_order: bool = True,
    ground_truth: bool = True,
    optimizer_state: OptimizerState = "rollback",
    estimates: bool = True,
) -> list[StageEffect] | dict[str, list[StageEffect]]:
    """Estimate (FO, optionally SO) and measure (data-fixed replay) each stage's effect.

    Args:
        iterations: every iteration of the run, in order (iteration j at index j).
        final_state: the checkpoint tensors after the last iteration (θ_T).
        policy: a policy built by ``rlattr.record.build_policy`` (overwritten).
        behavior, context: the behaviour f of the final policy, or a mapping name →
            behaviour: the propagation and the counterfactual replays do not depend on
            the behaviour, so several behaviours cost hardly more than one, and the
            result is then a mapping name → effects.
        stages: the spans to evaluate.
        second_order: also compute the SO estimate (Hessian-vector products).
        ground_truth: also replay the counterfactual runs.
        estimates: compute the estimates (``False``: ground truth only).
        optimizer_state: the counterfactual's optimiser state when stage k is skipped:
            ``"rollback"`` (the state at the stage's start, as if it never ran; the
            estimators start the momentum/first-moment difference at the state
            difference, Adam's v̂ and step count are taken from the actual run) or
            ``"carry"`` (the actual state at the stage's end; only parameters differ).
    """
    if optimizer_state not in ("rollback", "carry"):
        raise ValueError("optimizer_state must be 'rollback' or 'carry'")
    names = _names(policy)
    # The ground truth replays with torch's optimiser; only the estimates need its model.
    model = check_supported(policy.optimizer, "stage effects") if estimates else None
    first_slot = model.first_slot if model is not None else None
    second_slot = model.second_slot if model is not None else None

    def state_at(k: int) -> tuple[dict[str, torch.Tensor], dict]:
        if k < len(iterations):
            return iterations[k].start_tensors, iterations[k].start_meta
        return final_state, iterations[-1].start_meta

    behaviors = dict(behavior) if isinstance(behavior, Mapping) else {"": behavior}
    theta_final = _state(final_state, names, policy)
    named = dict(policy.named_parameters())
    f_final, grad_f = {}, {}
    for key, target in behaviors.items():
        restore_checkpoint(policy, final_state, iterations[-1].start_meta)
        value = target.value(policy, context)
        f_final[key] = float(value.detach())
        grads = torch.autograd.grad(value, [named[n] for n in names], allow_unused=True)
        grad_f[key] = {
            n: (g.detach() if g is not None else torch.zeros_like(theta_final[n]))
            for n, g in zip(names, grads, strict=True)
        }

    def values_at(theta: dict[str, torch.Tensor] | None) -> dict[str, float]:
        """Every behaviour at ``theta`` (None: the policy's current parameters)."""
        if theta is not None:
            restore_checkpoint(policy, final_state, iterations[-1].start_meta)
            with torch.no_grad():
                for n, p in policy.named_parameters():
                    if n in theta:
                        p.copy_(theta[n])
        if not all(bool(torch.isfinite(p).all()) for p in policy.parameters()):
            # A diverged propagation (see StageEffect) has no value to report.
            return {key: float("nan") for key in behaviors}
        with torch.no_grad():
            try:
                return {key: float(t.value(policy, context)) for key, t in behaviors.items()}
            except ValueError:  # finite but absurd parameters (e.g. a Gaussian scale of inf)
                return {key: float("nan") for key in behaviors}

    def norm(tensors: dict[str, torch.Tensor]) -> float:
        return float(sum(float(v.double().pow(2).sum()) for v in tensors.values()) ** 0.5)

    results: dict[str, list[StageEffect]] = {key: [] for key in behaviors}
    for stage in stages:
        start_tensors, _ = state_at(stage.start)
        end_tensors, _ = state_at(stage.end)
        start, end = _state(start_tensors, names, policy), _state(end_tensors, names, policy)
        delta = {n: end[n] - start[n] for n in names}
        rollback = optimizer_state == "rollback"
        later = iterations[stage.end :]
        effects = {key: StageEffect(stage) for key in behaviors}
        orders = (("fo", "so") if second_order else ("fo",)) if estimates else ()
        for order in orders:
            e_slot = _state_difference(
                start_tensors, end_tensors, first_slot, names, policy, rollback
            )
            # The exact tangent (SO) also follows Adam's second moment; FO takes v̂ as given.
            e_v = (
                _state_difference(start_tensors, end_tensors, second_slot, names, policy, rollback)
                if order == "so"
                else None
            )
            e = _propagate(policy, later, dict(delta), e_slot, order == "so", e_v)
            shifted = values_at({n: theta_final[n] - e[n] for n in names})
            growth = norm(e) / max(norm(delta), 1e-300)
            for key, effect in effects.items():
                linear = sum(float((grad_f[key][n] * e[n]).sum()) for n in names)
                setattr(effect, order, linear)
                setattr(effect, order + "_difference", f_final[key] - shifted[key])
                setattr(effect, order + "_growth", growth)
        if ground_truth:
            counterfactual_tensors = dict(
                end_tensors if optimizer_state == "carry" else start_tensors
            )
            for n in names:
                counterfactual_tensors["policy." + n] = start_tensors["policy." + n]
            restore_checkpoint(policy, counterfactual_tensors, iterations[stage.start].start_meta)
            for data in later:
                replay(data, policy, from_checkpoint=False)
            counterfactual = values_at(None)
            for key, effect in effects.items():
                effect.ground_truth = f_final[key] - counterfactual[key]
        for key, effect in effects.items():
            results[key].append(effect)
    return results if isinstance(behavior, Mapping) else results[""]


@dataclass
class StageRecordScores:
    """A stage's first-order effect split over the records of its iterations.

    Attributes:
        stage: the stage.
        scores: iteration → ``[N]`` share of each record (positive = the record's updates
            raised the final behaviour).
        estimate: the stage's FO estimate τ̂ = ⟨∇f(θ_T), e_T⟩.
        remainder: τ̂ − Σ shares: what no record of the stage carries — weight decay,
            and the momentum / first moment inherited from before the stage (it keeps
            moving θ during the stage, and with ``rollback`` its decay is part of the
            state change). Zero for a stage that starts from a fresh optimiser without
            weight decay.
    """

    stage: Stage
    scores: dict[int, torch.Tensor]
    estimate: float
    remainder: float


def _step_coefficients(policy, stage_data: list[IterationData]) -> list[tuple[object, object]]:
    """Per step of the stage: (u_θ, u_slot) mapping the step's gradient to the stage's
    displacement δ and to its momentum/first-moment change (scalars or per-parameter)."""
    model = check_supported(policy.optimizer, "stage scores")
    u_theta = step_multipliers(stage_data, policy, _names(policy))
    u_slot = model.slot_multipliers(len(u_theta))
    return list(zip(u_theta, u_slot, strict=True))


def estimate_stage_record_scores(
    iterations: list[IterationData],
    final_state: dict[str, torch.Tensor],
    policy: ActorCriticPolicy,
    behavior: Target,
    context: TargetContext,
    stage: Stage,
    optimizer_state: OptimizerState = "rollback",
    backend: str = "auto",
) -> StageRecordScores:
    """Split a stage's first-order effect over the records its updates used.

    The FO estimate is linear in the stage's displacement δ and (with ``rollback``) in
    its momentum/first-moment change; both are sums of per-step gradient contributions
    (exactly, given Adam's denominators from the replay). The adjoint of the FO
    propagation gives the sensitivity λ of τ̂ to each, and record i's share is
    −Σ_{t∋i} (c_t/|b_t|) ⟨λ_θ ⊙ u_θ,t − λ_slot ⊙ u_slot,t, ∇ℓ_i(θ_t)⟩ (a gradient moves θ
    against itself and the momentum with itself).
    """
    from rlattr.record.loss import normalize_advantages
    from rlattr.scoring.grads import per_record_dots, policy_actions
    from rlattr.scoring.influence import record_loss_fn

    names = _names(policy)
    slot_name = check_supported(policy.optimizer, "stage scores").first_slot
    start_tensors = iterations[stage.start].start_tensors
    end_tensors = (
        iterations[stage.end].start_tensors if stage.end < len(iterations) else final_state
    )
    start, end = _state(start_tensors, names, policy), _state(end_tensors, names, policy)
    delta = {n: (end[n] - start[n]).requires_grad_(True) for n in names}
    start_slot = _optimizer_slot(start_tensors, names, slot_name, policy)
    end_slot = _optimizer_slot(end_tensors, names, slot_name, policy)
    if optimizer_state == "rollback" and end_slot is not None:
        base = start_slot or {n: torch.zeros_like(v) for n, v in end_slot.items()}
        slot0 = {n: (end_slot[n] - base[n]).requires_grad_(True) for n in names}
    else:
        slot0 = {n: torch.zeros_like(delta[n]).requires_grad_(True) for n in names}
    # τ̂ and its adjoint: the FO map is linear, so λ = ∂τ̂/∂(δ, slot) is exact.
    e = _propagate(policy, iterations[stage.end :], dict(delta), dict(slot0), False)
    restore_checkpoint(policy, final_state, iterations[-1].start_meta)
    named = dict(policy.named_parameters())
    grads = torch.autograd.grad(
        behavior.value(policy, context), [named[n] for n in names], allow_unused=True
    )
    grad_f = {
        n: (g.detach() if g is not None else torch.zeros_like(delta[n]))
        for n, g in zip(names, grads, strict=True)
    }
    estimate = sum((grad_f[n] * e[n]).sum() for n in names)
    inputs = [delta[n] for n in names] + [slot0[n] for n in names]
    adjoint = torch.autograd.grad(estimate, inputs, allow_unused=True)
    lam_theta = {
        n: (a if a is not None else torch.zeros_like(delta[n]))
        for n, a in zip(names, adjoint[: len(names)], strict=True)
    }
    lam_slot = {
        n: (a if a is not None else torch.zeros_like(delta[n]))
        for n, a in zip(names, adjoint[len(names) :], strict=True)
    }
    use_slot = optimizer_state == "rollback"

    stage_data = iterations[stage.start : stage.end]
    coefficients = _step_coefficients(policy, stage_data)
    scores: dict[int, torch.Tensor] = {}
    step_offset = 0
    for data in stage_data:
        records = data.records
        actions = policy_actions(records.actions, policy.action_space)
        config = data.plan.loss_config
        clips = data.plan.clip_coefs.tolist()
        values = torch.zeros(len(records), dtype=torch.float64, device=records.device)

        def score_step(
            step: int,
            indices: torch.Tensor,
            _offset: int = step_offset,
            _data: IterationData = data,
            _actions: torch.Tensor = actions,
            _config=config,
            _clips: list[float] = clips,
            _values: torch.Tensor = values,
        ) -> None:
            u_theta, u_slot = coefficients[_offset + step]
            weight = _clips[step] / len(indices)
            vector = {}
            for n in names:
                theta_part = lam_theta[n] * (u_theta[n] if isinstance(u_theta, dict) else u_theta)
                # δ moves against the gradient (−η…); the momentum/first moment with it (+).
                slot_part = lam_slot[n] * u_slot if use_slot else 0.0
                vector[n] = (theta_part - slot_part) * weight
            advantages = normalize_advantages(_data.records.advantages[indices], _config)
            fn = record_loss_fn(_data.records, indices, advantages, _config)
            dots = per_record_dots(
                policy, _data.records.observations[indices], _actions[indices], fn, vector, backend
            )
            _values.index_add_(0, indices, -dots.detach().to(_values.dtype))

        replay(data, policy, before_step=score_step)
        scores[data.iteration] = values
        step_offset += data.plan.n_steps
    total = float(estimate.detach())
    shared = sum(float(v.sum()) for v in scores.values())
    return StageRecordScores(stage, scores, total, total - shared)


# ------------------------------------------------------------------ on a run directory
def _whole_run(log: RunLog, device: str):
    """Every iteration, the final checkpoint, a policy and the target context of a run
    that recorded every iteration (what stage effects need)."""
    recorded = log.iterations()
    if not recorded or recorded != list(range(len(recorded))):
        raise ValueError(
            f"stage effects need every iteration recorded from 0; {log.path} holds "
            f"{len(recorded)} iterations ({recorded[:3]}…): train with record_every=1"
        )
    iterations = [load_iteration(log, k, device) for k in recorded]
    final_state, _ = log.load_checkpoint(len(recorded), device)
    policy = build_policy(log, device)
    context = target_context(log, iterations[-1].records)
    return iterations, final_state, policy, context


def _default_behavior(behavior: Target | None, iterations: list) -> Target:
    from rlattr.scoring.targets import ReturnTarget

    return behavior or ReturnTarget(validation=iterations[-1].records)


def stage_effects(
    log: RunLog | str,
    stages: Any,
    behavior: Target | None = None,
    second_order: bool = True,
    ground_truth: bool = False,
    optimizer_state: str = "rollback",
    device: str = "cpu",
) -> list[Any]:
    """Stage effects on a behaviour of the final policy (docs/science.md §4).

    Args:
        log: the run; every iteration must be recorded (``record_every=1``, no ``keep_last``).
        stages: ``K`` (equal spans), ``"a:b,c:d"`` or a list of ``rlattr.analysis.stages.Stage``.
        behavior: the behaviour f of the final policy; default: the return target on the
            last recorded buffer.
        second_order, ground_truth, optimizer_state: see ``estimate_stage_effects``.
    """

    log = log if isinstance(log, RunLog) else RunLog(log)
    iterations, final_state, policy, context = _whole_run(log, device)
    spans = stages if isinstance(stages, list) else parse_stages(stages, len(iterations))
    return estimate_stage_effects(
        iterations, final_state, policy, _default_behavior(behavior, iterations), context,
        spans, second_order, ground_truth, optimizer_state,
    )  # fmt: skip


def stage_record_scores(
    log: RunLog | str,
    stage: Any,
    behavior: Target | None = None,
    optimizer_state: str = "rollback",
    device: str = "cpu",
) -> Any:
    """A stage's first-order effect split over the records its updates used.

    Args:
        log: the run (every iteration recorded).
        stage: a ``rlattr.analysis.stages.Stage`` or ``"a:b"`` (iterations a … b−1).
        behavior: as in ``stage_effects`` (default: return target on the last buffer).
        optimizer_state: see ``estimate_stage_effects``.

    Returns:
        ``rlattr.analysis.stages.StageRecordScores``: per iteration of the stage, each record's
        share; the shares and ``remainder`` add up to the stage's FO estimate.
    """

    log = log if isinstance(log, RunLog) else RunLog(log)
    iterations, final_state, policy, context = _whole_run(log, device)
    if not isinstance(stage, Stage):
        [stage] = parse_stages(str(stage), len(iterations))
    return estimate_stage_record_scores(
        iterations, final_state, policy, _default_behavior(behavior, iterations), context,
        stage, optimizer_state,
    )  # fmt: skip
