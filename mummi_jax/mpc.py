"""CVRL's latent-guided MPC: gradient ascent on imagined actions (CVRL Sec. 3.3, app. A.3).

Used by MuMMI and CVRL when acting (MuMMI app. A; reference-code.md §5.4, §10 item 22):

1. a_0 ~ pi(.|s_0) (an actor sample, also in evaluation; `first_action` gives another start,
   e.g. the actor's mode where `behavior.eval_mode` says so);
2. roll out H imagined steps s_1 .. s_H; later actions come from the actor (stop-gradient
   inputs), or, with `first_action_only=False`, from a sequence being optimised;
3. score J = R_1, the lambda-return of the first imagined state (`behavior.lambda_return`
   over rewards/values of s_1 .. s_{H-1}, bootstrap v(s_H)); or, with `objective="start"`,
   V_lambda(s_0) of the filtered state itself, as CVRL app. A.3 writes it;
4. a <- a + lr * dJ/da, `iters` times (the reference: one step, lr 0.003, on a_0 only;
   later actions re-sampled from the actor on every rollout).

Batching: J = sum_n R_1^(n) over the N environments. Their rollouts are independent, so
dJ/da_n = dR_1^(n)/da_n: every environment's action gets its own gradient. The reference
used `returns[0, 0]` (env 0's return), so with several environments only env 0's action
moved; with its usual single environment the two agree.

Functions (world-model, actor and value parameters closed over; all constants here):
`step_fn(state, action, key) -> state`, `policy_fn(feat, key) -> action`,
`reward_fn(feat) -> (..., )`, `value_fn(feat) -> (...,)`, `feat_fn(state) -> feat`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from mummi_jax.behavior import PolicyFn, StepFn, features, imagine, lambda_return, step_keys

Pytree = Any
HeadFn = Callable[[jax.Array], jax.Array]


OBJECTIVES = ("first_imagined", "start")


def first_return(
    states: Pytree,
    reward_fn: HeadFn,
    value_fn: HeadFn,
    gamma: float,
    lam: float,
    feat_fn: Callable[[Pytree], jax.Array] = features,
    start_state: Pytree | None = None,
) -> jax.Array:
    """R_1 for imagined states s_1 .. s_H (leaves `(H, N, ...)`) -> `(N,)`.

    With `start_state` (leaves `(N, ...)`), V_lambda(s_0) of s_0 .. s_H instead (CVRL app.
    A.3's objective): r(s_0) + gamma [(1 - lam) v(s_1) + lam R_1]. r(s_0) does not depend on
    the actions, so its gradient differs from R_1's by the v(s_1) term and the factor gamma.
    """
    if start_state is not None:
        states = jax.tree.map(lambda s0, s: jnp.concatenate([s0[None], s]), start_state, states)
    feats = feat_fn(states)
    rewards, values = reward_fn(feats), value_fn(feats)  # (H, N)
    return lambda_return(rewards[:-1], values[:-1], gamma, values[-1], lam)[0]


def rollout(step_fn: StepFn, start_state: Pytree, actions: jax.Array, key: jax.Array) -> Pytree:
    """Open-loop rollout of a fixed action sequence `(H, N, A)`: states s_1 .. s_H `(H, N, ...)`."""

    def body(state, x):
        action, step_key = x
        state = step_fn(state, action, step_key)
        return state, state

    keys = jax.random.split(key, actions.shape[0])
    return lax.scan(body, start_state, (actions, keys))[1]


def optimize_actions(
    step_fn: StepFn,
    policy_fn: PolicyFn,
    reward_fn: HeadFn,
    value_fn: HeadFn,
    start_state: Pytree,
    key: jax.Array,
    horizon: int = 15,
    iters: int = 1,
    lr: float | jax.Array = 0.003,
    gamma: float = 0.99,
    lam: float = 0.95,
    first_action_only: bool = True,
    *,
    feat_fn: Callable[[Pytree], jax.Array] = features,
    first_action: jax.Array | None = None,
    objective: str = "first_imagined",
) -> tuple[jax.Array, jax.Array]:
    """Latent-guided MPC, returning the whole action sequence (see `plan`).

    Returns:
      `(actions (H, N, A), scores (iters, N))`: actions[0] is the improved a_0. With
      `first_action_only`, actions[1:] are the actor's samples in the last rollout (never
      optimised); otherwise the optimised sequence. scores[i] is the objective (R_1, or
      V_lambda(s_0) with `objective="start"`) before update i.
    """
    if horizon < 2:
        raise ValueError(f"MPC horizon={horizon} must be >= 2 (R_1 needs a bootstrap state)")
    if objective not in OBJECTIVES:
        raise ValueError(f"MPC objective={objective!r}; valid: {', '.join(OBJECTIVES)}")
    # Acting never trains anything: the filtered latent is a constant.
    start_state = jax.tree.map(lax.stop_gradient, start_state)
    score_start = start_state if objective == "start" else None
    init_key, iter_key = jax.random.split(key)
    k_a0, k_step = jax.random.split(init_key)
    a0 = policy_fn(feat_fn(start_state), k_a0) if first_action is None else first_action

    def actor_rollout(a0, rollout_key):
        """s_1 = step(s_0, a_0); later actions from the actor: states (H, ...), actions (H-1)."""
        k1, k2 = jax.random.split(rollout_key)
        s1 = step_fn(start_state, a0, k1)
        # stop_grad_start=False: s_1 depends on a_0, which is what we differentiate.
        return imagine(
            step_fn,
            policy_fn,
            s1,
            step_keys(k2, horizon - 1),
            feat_fn=feat_fn,
            include_start=True,
            stop_grad_start=False,
        )

    if first_action_only:

        def score_a0(a0, rollout_key):
            states, later = actor_rollout(a0, rollout_key)
            score = first_return(states, reward_fn, value_fn, gamma, lam, feat_fn, score_start)
            return jnp.sum(score), (score, later)

        def body(a0, rollout_key):
            grad, (score, later) = jax.grad(score_a0, has_aux=True)(a0, rollout_key)
            return a0 + lr * grad, (score, later)

        a0, (scores, laters) = lax.scan(body, a0, jax.random.split(iter_key, iters))
        if iters > 0:
            later = laters[-1]
        else:
            later = actor_rollout(a0, k_step)[1]
        return jnp.concatenate([a0[None], later], axis=0), scores

    # Whole-sequence optimisation (CVRL app. A.3): the initial sequence is one actor rollout.
    later = actor_rollout(a0, k_step)[1]
    actions = jnp.concatenate([a0[None], later], axis=0)  # (H, N, A)

    def seq_objective(actions, rollout_key):
        states = rollout(step_fn, start_state, actions, rollout_key)
        score = first_return(states, reward_fn, value_fn, gamma, lam, feat_fn, score_start)
        return jnp.sum(score), score

    def seq_body(actions, rollout_key):
        grad, score = jax.grad(seq_objective, has_aux=True)(actions, rollout_key)
        return actions + lr * grad, score

    actions, scores = lax.scan(seq_body, actions, jax.random.split(iter_key, iters))
    return actions, scores


def plan(
    step_fn: StepFn,
    policy_fn: PolicyFn,
    reward_fn: HeadFn,
    value_fn: HeadFn,
    start_state: Pytree,
    key: jax.Array,
    horizon: int = 15,
    iters: int = 1,
    lr: float | jax.Array = 0.003,
    gamma: float = 0.99,
    lam: float = 0.95,
    first_action_only: bool = True,
    *,
    feat_fn: Callable[[Pytree], jax.Array] = features,
    clip: bool = False,
    first_action: jax.Array | None = None,
    objective: str = "first_imagined",
) -> jax.Array:
    """The improved first action `(N, A)` for N filtered latents (CVRL Sec. 3.3; ref. §5.4).

    Args:
      step_fn, policy_fn, reward_fn, value_fn, feat_fn: see the module docstring.
      start_state: pytree of `(N, ...)`, the current posterior states (one per env).
      key: PRNG key (a_0 sample, rollouts' actor samples and dynamics noise).
      horizon: H imagined steps (static, >= 2; reference 15).
      iters: gradient-ascent iterations (static; reference 1). 0 returns the actor sample.
      lr: step size (reference 0.003, plain SGD ascent).
      gamma, lam: of the lambda-return (0.99, 0.95).
      first_action_only: True (reference) optimises a_0 only, re-sampling later actions
        from the actor on each rollout; False optimises the whole H-step sequence.
      clip: clip the returned action to [-1, 1]. The reference does not (exploration noise
        is added and clipped afterwards, and the env clamps).
      first_action: `(N, A)` a_0 to start from instead of an actor sample (an evaluation
        that acts from the actor's mode, `behavior.eval_mode`), or None.
      objective: "first_imagined" (reference: R_1) or "start" (CVRL app. A.3: V_lambda(s_0),
        option `behavior.mpc_objective`).

    Returns:
      `(N, A)` action.
    """
    actions, _ = optimize_actions(
        step_fn,
        policy_fn,
        reward_fn,
        value_fn,
        start_state,
        key,
        horizon,
        iters,
        lr,
        gamma,
        lam,
        first_action_only,
        feat_fn=feat_fn,
        first_action=first_action,
        objective=objective,
    )
    action = actions[0]
    return jnp.clip(action, -1.0, 1.0) if clip else action
