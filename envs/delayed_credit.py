"""A planted advantage error: a delayed reward that short-horizon GAE credits to the wrong step.

One decision, then waiting. At the first step the agent chooses:

* action 0, *cash in*: ``immediate`` reward now, nothing later;
* action 1, *invest*: nothing now, ``delayed`` reward ``delay`` steps later.

Every later action changes nothing (their true advantage is exactly 0 under any policy).
By default the observation shows only the time step, not the choice, so no value function
of the observation can know at step t ≥ 1 whether the reward will come. Then the GAE
advantage (γ, λ) of the decision is

    Â_0 = Σ_{t≥0} (γλ)^t δ_t,   δ_t = r_t + γ V(s_{t+1}) - V(s_t),

where V(s_1) cannot depend on the choice. With λ < 1 only the fraction (γλ)^delay of
the delayed reward's surprise reaches the decision; with λ = 0 none does, the decision sees
only ``immediate``, and short-horizon GAE prefers cashing in even when
``γ^delay · delayed > immediate``. The payoff step gets the residual r - V(s_delay) although
its action did nothing. λ = 1 (Monte Carlo) gives the decision its full credit, but then
every later step carries a share of the surprise instead. A rollout buffer shorter than the
episode, which bootstraps at its end, truncates the credit the same way.
``reveal_choice=True`` shows the choice in the observation, so the error becomes a
learning-speed one (the value function must learn to carry the credit back) instead of a
permanent one.

Measured (SB3 PPO, defaults with 4 envs × 128 steps, batch 64, 4 epochs, γ 0.99, seeds 0
and 1, 20 480 steps): the probability of investing ends at 0.01-0.014 with λ = 0 and
0.001-0.005 with λ = 0.5 (short-horizon GAE learns to cash in), but at 0.997-0.999 with
λ = 0.95 or 1, although investing is worth 0.99^10 ≈ 0.90 against 0.1.

Exactness (tests/envs/test_delayed_credit.py): with the best value function of the
observation and λ = 0, the GAE advantage differs from the true advantage on exactly the
steps ``info["rlattr_fault"]`` flags.

Ground truth in every step's ``info``:

* ``rlattr_cause``: True on the decision step (the step that causes the delayed reward);
* ``rlattr_payoff``: True on the step where the delayed reward is paid;
* ``rlattr_fault``: ``rlattr_cause or rlattr_payoff``, the steps whose one-step (λ = 0)
  advantage carries the planted error (the cause loses credit, the payoff step gains it);
* ``rlattr_credit``: the total reward this step's action causes (the decision's
  ``immediate`` or ``delayed``; 0 elsewhere). Per episode it sums to the return.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

FAULT_KEY = "rlattr_fault"
CAUSE_KEY = "rlattr_cause"
PAYOFF_KEY = "rlattr_payoff"
CREDIT_KEY = "rlattr_credit"

CASH_IN, INVEST = 0, 1


class DelayedCreditEnv(gym.Env):
    """Decide once, then wait ``delay`` steps for the invested reward.

    Observation: ``Box(0, 1, (delay + 2,), float32)``: the one-hot of the time step
    t = 0..delay, then a slot that is 1 after investing if ``reveal_choice`` (always 0
    otherwise). Actions: ``Discrete(2)`` (0 cash in, 1 invest; only the first step's action
    matters). An episode lasts ``delay + 1`` steps and always terminates.

    Args:
        delay: steps between the decision and the delayed reward (at least 1).
        immediate: reward of cashing in, paid at the decision step.
        delayed: reward of investing, paid ``delay`` steps later.
        reveal_choice: show the choice in the observation.
        render_mode: None, ``"ansi"`` (text) or ``"rgb_array"`` (a strip of time steps).
    """

    # rgb_array too: SB3's make_vec_env (hence every rlattr preset) asks for it.
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        delay: int = 10,
        immediate: float = 0.1,
        delayed: float = 1.0,
        reveal_choice: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if delay < 1:
            raise ValueError(f"delay must be at least 1, got {delay}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}")
        self.delay = int(delay)
        self.immediate = float(immediate)
        self.delayed = float(delayed)
        self.reveal_choice = bool(reveal_choice)
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.delay + 2,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._t = 0
        self._invested = False

    def _observe(self) -> np.ndarray:
        obs = np.zeros(self.delay + 2, dtype=np.float32)
        obs[self._t] = 1.0
        if self.reveal_choice and self._invested:
            obs[-1] = 1.0
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)  # deterministic dynamics; this seeds np_random
        self._t = 0
        self._invested = False
        return self._observe(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._t > self.delay:
            raise RuntimeError("step() after the episode ended; call reset()")
        cause = self._t == 0
        payoff = self._t == self.delay
        reward, credit = 0.0, 0.0
        if cause:
            self._invested = int(action) == INVEST
            credit = self.delayed if self._invested else self.immediate
            reward = 0.0 if self._invested else self.immediate
        if payoff and self._invested:
            reward += self.delayed
        self._t += 1
        terminated = self._t > self.delay
        info = {
            FAULT_KEY: cause or payoff,
            CAUSE_KEY: cause,
            PAYOFF_KEY: payoff,
            CREDIT_KEY: credit,
        }
        obs = self._observe() if not terminated else np.zeros(self.delay + 2, dtype=np.float32)
        return obs, reward, terminated, False, info

    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "ansi":
            choice = "invested" if self._invested else "not invested"
            return f"t={self._t}/{self.delay + 1} ({choice})\n"
        if self.render_mode == "rgb_array":
            scale = 8
            strip = np.full((1, self.delay + 1, 3), 230, dtype=np.uint8)
            strip[0, : min(self._t, self.delay + 1)] = (
                (60, 180, 60) if self._invested else (150,) * 3
            )
            return np.kron(strip, np.ones((scale, scale, 1), dtype=np.uint8))
        return None
