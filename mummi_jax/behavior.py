"""Behaviour learning in imagination: rollouts, lambda-returns, actor and value losses.

MuMMI app. A eq. 18-19 and CVRL Sec. 3.2 / app. A.1-A.2 (both follow Dreamer v1); the
released code is audited in shared/notes/reference-code.md §5.1-5.3 and §10 items 19-22.

Everything here is generic over callables and pytrees, so the world model can be a fake in
tests (Acme style) and the real RSSM cell in `agent.py`:

- `step_fn(state, action, x) -> state`: one prior (imagination) step, e.g. the RSSM
  cell's `img_step` with the world-model parameters closed over.
- `policy_fn(feat, x) -> action`: a reparameterised actor sample, e.g.
  `actor_distribution(actor.apply(p, feat)).sample_from_noise(x)`.

`x` is that step's random input, whatever the function consumes: a PRNG key
(`step_keys(key, H)` makes them) or pre-drawn standard-normal noise (the agent's training
rollouts, so that the noise is data a parity check can share with the reference code).
- `feat_fn(state) -> feat`: defaults to `features` ([stoch, deter] for RSSM dicts).

Time is the leading axis inside this module (`(H, N, ...)`, as `lax.scan` produces it);
`N` is the number of flattened start states (B * T for training, n envs for acting).

Gradient routing (Dreamer v1, dynamic backprop). The caller builds one loss of the actor
and value parameters, with the world-model parameters closed over as constants:

    def loss(actor_params, value_params):
        policy = lambda f, k: actor_sample(actor_params, f, k)
        states, _ = imagine(img_step_wm, policy, flatten_starts(post), step_keys(key, H))
        feats = features(states)                                   # (H, N, F)
        a_loss, v_loss, metrics = actor_value_losses(feats, value_params, reward_fn, value_fn)
        return a_loss + v_loss, metrics
    grads_actor, grads_value = jax.grad(loss, argnums=(0, 1), has_aux=True)(pa, pv)

This is correct because `actor_value_losses` places the stop-gradients itself: the actor
loss sees the value parameters only through `stop_gradient` and reaches the actor through
the imagined features (dynamics, reward and value heads); the value loss sees the features
only through `stop_gradient`. So `grads_actor` is exactly d(actor loss)/d(actor) and
`grads_value` exactly d(value loss)/d(value), as the reference's separate tapes give.
The world model receives no gradient: `imagine` stops gradients at the start states and
its parameters are not differentiated (close them over, or wrap them in `stop_gradient`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Pytree = Any
StepFn = Callable[[Pytree, jax.Array, jax.Array], Pytree]
PolicyFn = Callable[[jax.Array, jax.Array], jax.Array]


def features(state: Pytree) -> jax.Array:
    """RSSM features `[stoch, deter]` along the last axis; any other pytree is returned as is.

    For a state dict `{mean, std, stoch, deter}` of `(..., S)` and `(..., D)` arrays this
    gives `(..., S + D)` (reference-code.md §10 item 11).
    """
    if isinstance(state, dict) and "stoch" in state and "deter" in state:
        return jnp.concatenate([state["stoch"], state["deter"]], axis=-1)
    return state


def flatten_starts(tree: Pytree, ndim: int = 2) -> Pytree:
    """Merges the `ndim` leading axes of every leaf: `(B, T, ...) -> (B * T, ...)`.

    The reference imagines from all B * T posterior states (reference-code.md §5.1).
    """
    return jax.tree.map(lambda x: x.reshape((-1, *x.shape[ndim:])), tree)


def step_keys(key: jax.Array, horizon: int) -> tuple[jax.Array, jax.Array]:
    """Per-step PRNG keys for `imagine`: `(policy_keys (H,), step_keys (H,))`."""
    pairs = jax.vmap(jax.random.split)(jax.random.split(key, horizon))  # (H, 2)
    return pairs[:, 0], pairs[:, 1]


def imagine(
    step_fn: StepFn,
    policy_fn: PolicyFn,
    start_state: Pytree,
    inputs: tuple[Pytree, Pytree],
    *,
    feat_fn: Callable[[Pytree], jax.Array] = features,
    include_start: bool = False,
    stop_grad_start: bool = True,
) -> tuple[Pytree, jax.Array]:
    """Rolls out H prior steps from every start state (CVRL app. A.1; ref. §5.1).

    For k = 0 .. H - 1: a_k = policy_fn(stop_grad(feat(s_k)), p_k) and
    s_{k+1} = step_fn(s_k, a_k, q_k). The policy input is stop-gradiented (Dreamer v1),
    so a_k depends on the actor parameters but not on the earlier actions; gradients from
    later rewards/values still flow back through the dynamics into every a_k (dynamic
    backprop).

    Args:
      step_fn: `(state, action, q_k) -> state`, one imagination step.
      policy_fn: `(feat (N, F), p_k) -> action (N, A)`, a reparameterised sample.
      start_state: pytree of `(N, ...)` leaves (use `flatten_starts` for `(B, T, ...)`).
      inputs: `(p, q)`, the per-step random inputs of the policy and of the dynamics, pytrees
        with leading axis H (keys from `step_keys`, or noise arrays); H is their length.
      feat_fn: `state -> feat`, the policy's input.
      include_start: prepend s_0 to the returned states (the reference excludes it).
      stop_grad_start: stop gradients at the start states, so no behaviour loss trains
        the encoder/posterior. MPC sets it False for its rollouts after the first action.

    Returns:
      `(states, actions)`: states with leaves `(H, N, ...)` holding s_1 .. s_H, or
      `(H + 1, N, ...)` holding s_0 .. s_H with `include_start`; actions `(H, N, A)`
      where actions[k] = a_k was taken in s_k and led to s_{k+1}.
    """
    if stop_grad_start:
        start_state = jax.tree.map(lax.stop_gradient, start_state)

    def body(state, x):
        policy_x, step_x = x
        action = policy_fn(lax.stop_gradient(feat_fn(state)), policy_x)
        next_state = step_fn(state, action, step_x)
        return next_state, (next_state, action)

    _, (states, actions) = lax.scan(body, start_state, inputs)
    if include_start:
        states = jax.tree.map(
            lambda s0, s: jnp.concatenate([s0[None], s], axis=0), start_state, states
        )
    return states, actions


def lambda_return(
    rewards: jax.Array,
    values: jax.Array,
    discounts: jax.Array | float,
    bootstrap: jax.Array,
    lam: float,
) -> jax.Array:
    """TD(lambda) returns by a reverse `lax.scan` (MuMMI eq. 19; CVRL app. A.2; ref. §5.2).

    R_k = r_k + gamma_k [(1 - lam) v_{k+1} + lam R_{k+1}], with R_K := bootstrap, for
    k = 0 .. K - 1, where v_{k+1} = values[k + 1] and v_K = bootstrap. So values[0] is not
    used; it is accepted so that rewards and values index the same states. lam = 1 gives
    the discounted Monte-Carlo return bootstrapped by v_K; lam = 0 the one-step TD target
    r_k + gamma_k v_{k+1}.

    Dreamer v1 / reference indices: with H = 15 imagined states s_1 .. s_15 (start
    excluded) the caller passes rewards r(s_1 .. s_14), values v(s_1 .. s_14), discounts
    for s_1 .. s_14 and bootstrap v(s_15), giving K = 14 returns R_1 .. R_14 (returns[0]
    is R_1 of the first imagined state).

    Args:
      rewards, values: `(K, ...)`.
      discounts: `(K, ...)` or a scalar gamma; discounts[k] multiplies what follows s_k.
      bootstrap: `(...)`, the value of the state after the last one.
      lam: lambda in [0, 1].

    Returns:
      `(K, ...)` returns R_k.
    """
    discounts = jnp.broadcast_to(jnp.asarray(discounts, rewards.dtype), rewards.shape)
    next_values = jnp.concatenate([values[1:], bootstrap[None]], axis=0)
    # The non-recursive part of each R_k; the recursion only carries lam * gamma_k R_{k+1}.
    inputs = rewards + discounts * (1.0 - lam) * next_values

    def body(next_return, x):
        inp, discount = x
        ret = inp + discount * lam * next_return
        return ret, ret

    _, returns = lax.scan(body, bootstrap, (inputs, discounts), reverse=True)
    return returns


def discount_weights(discounts: jax.Array) -> jax.Array:
    """w_k = prod_{j < k} gamma_j, i.e. `[1, g_0, g_0 g_1, ...]` (ref. §5.3), stop-gradiented.

    `discounts` `(K, ...)` -> `(K, ...)`; with a constant gamma, w_k = gamma^k.
    """
    shifted = jnp.concatenate([jnp.ones_like(discounts[:1]), discounts[:-1]], axis=0)
    return lax.stop_gradient(jnp.cumprod(shifted, axis=0))


def actor_value_losses(
    feats: jax.Array,
    value_params: Pytree,
    reward_fn: Callable[[jax.Array], jax.Array],
    value_fn: Callable[[Pytree, jax.Array], jax.Array],
    *,
    gamma: float = 0.99,
    lam: float = 0.95,
    discounts: jax.Array | None = None,
    slow_value_params: Pytree | None = None,
    entropy: jax.Array | None = None,
    entropy_coef: float = 0.0,
    discount_weighted: bool = True,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Dreamer v1 actor and value losses on imagined features (MuMMI eq. 18; ref. §5.3).

    With K = H - 1 returns R_1 .. R_{H-1} (bootstrap v(s_H)) and weights
    w_k = prod_{j<k} gamma_j (stop-gradient):

      actor loss = -mean_{k,n} w_k (R_k + entropy_coef * entropy_k)
      value loss = mean_{k,n} w_k * 0.5 (v(sg(s_k)) - sg(R_k))^2

    The value loss has the same gradients as the reference's -log N(sg(R); v, 1).

    With `discount_weighted=False`, MuMMI eq. 18 (option `behavior.actor_objective=sum`,
    whose caller passes s_0 .. s_H from `imagine(..., include_start=True)`): w_k = 1, and the
    actor's sum runs over every state of the rollout, the last one too, whose V_lambda is
    its value v(s_H) (CVRL A.2's cut-off h = min(tau + k, t + H)); the mean of those H + 1
    terms here. The value loss's last term, (v(s_H) - v(s_H))^2, is 0 and left out.

    Args:
      feats: `(H, N, F)` imagined features from `imagine`, s_1 .. s_H (the reference,
        start excluded) or s_0 .. s_H (eq. 18, `include_start`), differentiable w.r.t. the
        actor parameters; "s_1 .. s_H" below reads "the states given".
      value_params: the online value parameters.
      reward_fn: `feats (H, N, F) -> (H, N)`, the reward head's mean with the world-model
        parameters closed over (constants).
      value_fn: `(params, feats) -> (H, N)`, the value head's mean.
      gamma: constant discount, used when `discounts` is None (the reference: no pcont).
      discounts: optional `(H, N)` per-state discounts gamma_k (e.g. a continuation head
        times gamma); only the first H - 1 are used.
      slow_value_params: EMA value parameters (option `behavior.slow_value`); when given,
        the returns use v_slow instead of the online v (a slow target, Dreamer v2 style;
        update it with `ema_update`). The reference has none.
      entropy: optional `(H - 1, N)` (or `(H, N)`, last dropped) actor entropies at
        s_1 .. s_{H-1}, differentiable w.r.t. the actor (computed at stop-gradient feats).
      entropy_coef: the actor entropy bonus (option `behavior.actor_entropy`; reference 0).
      discount_weighted: weight step k by w_k (the reference) or not (eq. 18's sum).

    Returns:
      `(actor_loss, value_loss, metrics)`; see the module docstring for gradient routing.
    """
    rewards = reward_fn(feats)  # (H, N)
    target_params = value_params if slow_value_params is None else slow_value_params
    # The returns reach the actor through feats only: the value parameters are constants here.
    values = value_fn(jax.tree.map(lax.stop_gradient, target_params), feats)  # (H, N)
    if discounts is None:
        # One column, broadcast after the cumprod: XLA would otherwise constant-fold the
        # cumprod of a full (H - 1, N) constant at every compile (1.4 s at N = 2500).
        discounts = jnp.full(rewards.shape[:1] + (1,) * (rewards.ndim - 1), gamma, rewards.dtype)
    weights = 1.0  # eq. 18
    if discount_weighted:
        weights = jnp.broadcast_to(discount_weights(discounts[:-1]), rewards[:-1].shape)
    discounts = jnp.broadcast_to(discounts, rewards.shape)
    returns = lambda_return(rewards[:-1], values[:-1], discounts[:-1], values[-1], lam)

    objective = returns
    if entropy is not None and entropy_coef:
        objective = objective + entropy_coef * entropy[: returns.shape[0]]
    if discount_weighted:
        actor_loss = -jnp.mean(weights * objective)
    else:  # eq. 18's sum reaches the last state too: V_lambda(s_H) = v(s_H)
        actor_loss = -jnp.mean(jnp.concatenate([objective, values[-1:]], axis=0))

    # The value head regresses on detached features: no value gradient reaches the actor.
    sg_feats = jax.tree.map(lax.stop_gradient, feats)
    value_pred = value_fn(value_params, sg_feats)[:-1]  # (H - 1, N)
    target = lax.stop_gradient(returns)
    value_loss = jnp.mean(weights * 0.5 * jnp.square(value_pred - target))

    metrics = {
        "actor/loss": actor_loss,
        "actor/return": jnp.mean(returns),
        # Imagined states only: under eq. 18 feats[0] is the posterior start state.
        "actor/imag_reward": jnp.mean(rewards if discount_weighted else rewards[1:]),
        "value/loss": value_loss,
        "value/mean": jnp.mean(value_pred),
    }
    if entropy is not None:
        metrics["actor/entropy"] = jnp.mean(entropy)
    return actor_loss, value_loss, metrics


def ema_update(target: Pytree, online: Pytree, decay: float) -> Pytree:
    """target <- decay * target + (1 - decay) * online, leafwise.

    Slow value (decay 0.98, CoRAL) and SAC's Polyak targets (decay = 1 - tau) both use it.
    """
    return jax.tree.map(lambda t, o: decay * t + (1.0 - decay) * o, target, online)
