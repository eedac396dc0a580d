"""Soft actor-critic on latent features: twin Q critics, Polyak targets, learned alpha.

Used two ways, both on stop-gradiented latent features (SAC never trains the world model):

1. CVRL's hybrid term (CVRL Sec. 3.2 eq. 8, L = L_Dreamer + w * L_SAC; ref. §5.5) on real
   posterior trajectories `feats = [post stoch, deter]` `(B, T, F)` with the replay's
   actions and rewards. `make_transitions(..., pairing="time")` pairs
   (s_t, a_{t+1}, r_{t+1}, s_{t+1}): under the replay convention (ARCHITECTURE.md) index
   t + 1 stores the action that led from obs t to obs t + 1 and the reward received on
   arrival. `pairing="batch"` reproduces the released code, which slices the batch axis
   and so pairs sequence b with sequence b + 1 at the same time index. The released code
   also never applies the actor or alpha gradients (`actor_grad=False`, `learn_alpha=
   False`, log_alpha = 0); the SAC actor is Dreamer's actor, so with `actor_grad=True`
   the actor receives w * d(L_SAC actor)/d(actor) on top of the imagination gradient.
2. CoRAL's model-free learner (coral.md §4.1) on detached `[posterior mean, deter]` with
   target decay 0.995 (tau = 0.005) and initial alpha 0.1.

Callables (generic, so tests use fakes):

- `q_fn(critic_params, obs (M, F), action (M, A)) -> (E, M)`: the E (= 2) critics' Q values
  stacked on a leading axis (e.g. a Linen critic vmapped over stacked parameters).
- `policy_fn(actor_params, obs (M, F), key) -> (action (M, A), log_pi (M,))`: a
  reparameterised tanh-Gaussian sample and its log-prob (`TanhNormal.sample_and_log_prob`).

Gradient routing: `sac_losses` returns three losses whose stop-gradients isolate their
parameters, so one `jax.grad` of any positive combination w.r.t. `{critic, actor,
log_alpha}` gives each parameter group exactly its own loss's gradient (critic: the TD
loss; actor: alpha log pi - min Q with the critics frozen; log_alpha: the temperature loss).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from mummi_jax.behavior import ema_update

Pytree = Any
QFn = Callable[[Pytree, jax.Array, jax.Array], jax.Array]
SacPolicyFn = Callable[[Pytree, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
PAIRINGS = ("time", "batch")


def make_transitions(
    feats: jax.Array,
    actions: jax.Array,
    rewards: jax.Array,
    discounts: jax.Array,
    pairing: str = "time",
    is_first: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Flattens replay sequences into SAC transitions (CVRL Sec. 3.2; ref. §5.5).

    Args:
      feats: `(B, T, F)` latent features (stop-gradiented here).
      actions: `(B, T, A)`; actions[:, t] led to obs t (zeros at the first step).
      rewards, discounts: `(B, T)`; received on arrival at obs t.
      pairing: "time" pairs (b, t) -> (b, t + 1): obs s[b, t], action a[b, t + 1], reward
        r[b, t + 1], discount d[b, t + 1], next s[b, t + 1]; M = B (T - 1).
        "batch" (released code) pairs (b, t) -> (b + 1, t): obs s[b, t], action a[b, t],
        reward r[b, t], discount d[b, t], next s[b + 1, t]; M = (B - 1) T.
      is_first: optional `(B, T)`; time pairing gives weight 0 to a transition whose next
        obs starts an episode (sequences that cross a reset).

    Returns:
      dict of `obs (M, F)`, `action (M, A)`, `reward (M,)`, `discount (M,)`,
      `next_obs (M, F)`, `weight (M,)`.
    """
    feats = lax.stop_gradient(feats)
    if pairing == "time":
        cur, nxt = (slice(None), slice(None, -1)), (slice(None), slice(1, None))
        data = nxt  # the action and reward of the transition are stored at its end
    elif pairing == "batch":
        cur, nxt = (slice(None, -1), slice(None)), (slice(1, None), slice(None))
        data = cur  # the released code slices everything but next_obs with [:-1]
    else:
        raise ValueError(f"unknown SAC pairing {pairing!r}; valid: {', '.join(PAIRINGS)}")
    weight = jnp.ones_like(rewards[data])
    if is_first is not None and pairing == "time":
        weight = 1.0 - is_first[nxt].astype(rewards.dtype)

    def flat(x):
        return x.reshape((-1, *x.shape[2:]))

    return {
        "obs": flat(feats[cur]),
        "action": flat(actions[data]),
        "reward": flat(rewards[data]),
        "discount": flat(discounts[data]),
        "next_obs": flat(feats[nxt]),
        "weight": flat(weight),
    }


def critic_target(
    next_q: jax.Array,
    next_log_pi: jax.Array,
    reward: jax.Array,
    discount: jax.Array,
    alpha: jax.Array | float,
    gamma: float,
) -> jax.Array:
    """y = r + gamma * discount * (min_e Q_targ_e(s', a') - alpha log pi(a'|s')), stop-grad.

    next_q `(E, M)`; next_log_pi, reward, discount `(M,)` -> `(M,)`.
    """
    soft_value = jnp.min(next_q, axis=0) - alpha * next_log_pi
    return lax.stop_gradient(reward + gamma * discount * soft_value)


def sac_losses(
    params: dict[str, Pytree],
    target_critic_params: Pytree,
    transitions: dict[str, jax.Array],
    key: jax.Array,
    *,
    q_fn: QFn,
    policy_fn: SacPolicyFn,
    action_dim: int,
    gamma: float = 0.99,
    actor_grad: bool = True,
    learn_alpha: bool = True,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Critic, actor and temperature losses (Haarnoja et al. 2018; ref. §5.5; coral.md §4.1).

      critic = sum_e mean_m w_m 0.5 (Q_e(s, a) - y)^2,  y from `critic_target` with a' ~ pi(s')
      actor  = mean_m alpha log pi(a|s) - min_e Q_e(s, a),  a ~ pi(s), critics frozen
      alpha  = -mean_m alpha * sg(log pi(a|s) + target_entropy),  target_entropy = -|A|

    with alpha = exp(log_alpha) (the reference's parameterisation).

    Args:
      params: `{"critic": ..., "actor": ..., "log_alpha": scalar}`.
      target_critic_params: Polyak-averaged critic parameters (`polyak_update`).
      transitions: from `make_transitions` (`weight` optional).
      key: PRNG key for the two policy samples (at s' and at s).
      action_dim: |A| for the target entropy.
      actor_grad: False reproduces the released CVRL code (the actor loss is computed and
        reported but carries no gradient).
      learn_alpha: False keeps alpha fixed (released CVRL code: alpha = 1 never updated).

    Returns:
      `(losses, metrics)`: losses `{"critic", "actor", "alpha"}` scalars; sum them (with
      the hybrid weight on "actor", if any) and differentiate w.r.t. `params`.
    """
    obs, action = transitions["obs"], transitions["action"]
    weight = transitions.get("weight", jnp.ones_like(transitions["reward"]))
    norm = jnp.maximum(jnp.sum(weight), 1.0)
    next_key, cur_key = jax.random.split(key)
    alpha = jnp.exp(params["log_alpha"])
    sg_alpha = lax.stop_gradient(alpha)
    sg_actor = jax.tree.map(lax.stop_gradient, params["actor"])

    # Critic: the target uses the frozen actor, target critics and alpha.
    next_action, next_log_pi = policy_fn(sg_actor, transitions["next_obs"], next_key)
    next_q = q_fn(target_critic_params, transitions["next_obs"], next_action)
    target = critic_target(
        next_q, next_log_pi, transitions["reward"], transitions["discount"], sg_alpha, gamma
    )
    q = q_fn(params["critic"], obs, action)  # (E, M)
    critic_loss = jnp.sum(jnp.sum(weight * 0.5 * jnp.square(q - target), axis=-1) / norm)

    # Actor: gradients reach the actor through the sampled action; the critics are frozen.
    new_action, log_pi = policy_fn(params["actor"], obs, cur_key)
    sg_critic = jax.tree.map(lax.stop_gradient, params["critic"])
    q_pi = jnp.min(q_fn(sg_critic, obs, new_action), axis=0)
    actor_loss = jnp.sum(weight * (sg_alpha * log_pi - q_pi)) / norm
    if not actor_grad:
        actor_loss = lax.stop_gradient(actor_loss)

    target_entropy = -float(action_dim)
    alpha_loss = -jnp.sum(weight * alpha * lax.stop_gradient(log_pi + target_entropy)) / norm
    if not learn_alpha:
        alpha_loss = lax.stop_gradient(alpha_loss)

    losses = {"critic": critic_loss, "actor": actor_loss, "alpha": alpha_loss}
    metrics = {
        "sac/critic_loss": critic_loss,
        "sac/actor_loss": actor_loss,
        "sac/alpha_loss": alpha_loss,
        "sac/alpha": alpha,
        "sac/q": jnp.mean(q),
        "sac/target": jnp.mean(target),
        "sac/entropy": -jnp.mean(log_pi),
    }
    return losses, metrics


def polyak_update(target: Pytree, online: Pytree, tau: float) -> Pytree:
    """target <- (1 - tau) target + tau online (tau = 0.005 in CVRL and CoRAL)."""
    return ema_update(target, online, 1.0 - tau)
