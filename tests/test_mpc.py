"""Latent-guided MPC with fake world-model functions (Acme style).

Fakes: the next state is the action just taken (dynamics constant in the state), the
reward is linear in it (r(s) = c_n . s per env n), the value is 0 and the actor returns a
constant. Then R_1 = sum_j (gamma lam)^j c . a_j (j <= H - 2), so dR_1/da_0 = c and
dR_1/da_j = (gamma lam)^j c: every update moves the actions by exactly lr times that.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mummi_jax import mpc

N, A, H = 2, 3, 4
C = jnp.array([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]])  # one reward direction per env
P = jnp.array([0.1, 0.2, -0.3])  # the fake actor's action
GAMMA, LAM = 0.9, 0.5


def step_fn(state, action, key):
    del state, key
    return action


def policy_fn(feat, key):
    del key
    return jnp.broadcast_to(P, feat.shape)


def reward_fn(feat):
    return jnp.sum(feat * C, axis=-1)


def value_fn(feat):
    return jnp.zeros(feat.shape[:-1])


def _plan(iters=1, lr=0.003, first_action_only=True, **kw):
    return mpc.plan(
        step_fn,
        policy_fn,
        reward_fn,
        value_fn,
        jnp.zeros((N, A)),
        jax.random.PRNGKey(0),
        H,
        iters,
        lr,
        GAMMA,
        LAM,
        first_action_only,
        feat_fn=lambda s: s,
        **kw,
    )


def _optimize(iters=1, lr=0.003, first_action_only=True):
    return mpc.optimize_actions(
        step_fn,
        policy_fn,
        reward_fn,
        value_fn,
        jnp.zeros((N, A)),
        jax.random.PRNGKey(0),
        H,
        iters,
        lr,
        GAMMA,
        LAM,
        first_action_only,
        feat_fn=lambda s: s,
    )


def test_moves_along_reward_direction_per_env():
    a = _plan(iters=1, lr=0.1)
    np.testing.assert_allclose(a, P + 0.1 * C, rtol=1e-6)  # each env along its own c_n


def test_more_iterations_move_further():
    a1, a3 = _plan(iters=1, lr=0.1), _plan(iters=3, lr=0.1)
    np.testing.assert_allclose(a3, P + 0.3 * C, rtol=1e-6)
    d1, d3 = jnp.sum((a1 - P) * C, -1), jnp.sum((a3 - P) * C, -1)
    assert bool(jnp.all(d3 > d1)) and bool(jnp.all(d1 > 0))


def test_zero_lr_or_iters_changes_nothing():
    np.testing.assert_allclose(_plan(iters=5, lr=0.0), jnp.broadcast_to(P, (N, A)))
    np.testing.assert_allclose(_plan(iters=0), jnp.broadcast_to(P, (N, A)))


def test_first_action_only_leaves_later_actions_to_the_actor():
    actions, scores = _optimize(iters=2, lr=0.1, first_action_only=True)
    assert actions.shape == (H, N, A) and scores.shape == (2, N)
    np.testing.assert_allclose(actions[0], P + 0.2 * C, rtol=1e-6)
    np.testing.assert_allclose(actions[1:], jnp.broadcast_to(P, (H - 1, N, A)))
    # The score rises along the ascent: R_1 = sum_j (g l)^j c . a_j.
    assert bool(jnp.all(scores[1] > scores[0]))


def test_sequence_optimisation_moves_later_actions():
    actions, _ = _optimize(iters=2, lr=0.1, first_action_only=False)
    gl = GAMMA * LAM
    for j in range(H - 1):  # a_j moves by iters * lr * (g l)^j c
        np.testing.assert_allclose(actions[j], P + 0.2 * gl**j * C, rtol=1e-5, atol=1e-7)
    # The last action only reaches v(s_H) = 0: no gradient.
    np.testing.assert_allclose(actions[H - 1], jnp.broadcast_to(P, (N, A)))
    np.testing.assert_allclose(_plan(iters=2, lr=0.1, first_action_only=False), actions[0])


def test_start_objective_ascends_v_lambda_of_the_filtered_state():
    """CVRL app. A.3 (`behavior.mpc_objective=start`): J = V_lambda(s_0) = r(s_0) + g [(1 - l)
    v(s_1) + l R_1]. With a linear value v(s) = d . s and s_1 = a_0, dJ/da_0 = g (1 - l) d
    + g l c (R_1's own gradient is c), and the score is that sum with r(s_0) = c . s_0."""
    d = jnp.array([[0.5, 0.5, -1.0], [2.0, 0.0, 1.0]])
    linear_value = lambda feat: jnp.sum(feat * d, axis=-1)  # noqa: E731
    s0 = jnp.array([[1.0, 0.0, 2.0], [-1.0, 1.0, 0.0]])
    args = (step_fn, policy_fn, reward_fn, linear_value, s0, jax.random.PRNGKey(0))
    kw = dict(horizon=H, iters=1, gamma=GAMMA, lam=LAM, feat_fn=lambda s: s)
    actions, v0 = mpc.optimize_actions(*args, **kw, lr=0.1, objective="start")
    step = GAMMA * (1 - LAM) * d + GAMMA * LAM * C
    np.testing.assert_allclose(actions[0], P + 0.1 * step, rtol=1e-6)
    _, r1 = mpc.optimize_actions(*args, **kw, lr=0.0)  # R_1 at a_0 = P
    want = jnp.sum(C * s0, -1) + GAMMA * ((1 - LAM) * jnp.sum(d * P, -1) + LAM * r1[0])
    np.testing.assert_allclose(v0[0], want, rtol=1e-6)
    with np.testing.assert_raises_regex(ValueError, "objective='v0'.*first_imagined, start"):
        mpc.optimize_actions(*args, **kw, lr=0.0, objective="v0")


def test_clip_and_jit():
    big = _plan(iters=1, lr=10.0, clip=True)
    assert bool(jnp.all(jnp.abs(big) <= 1.0))
    assert bool(jnp.any(jnp.abs(_plan(iters=1, lr=10.0)) > 1.0))  # reference: no clip
    jitted = jax.jit(
        functools.partial(
            mpc.plan,
            step_fn,
            policy_fn,
            reward_fn,
            value_fn,
            horizon=H,
            iters=2,
            gamma=GAMMA,
            lam=LAM,
            first_action_only=True,
            feat_fn=lambda s: s,
        )
    )
    out = jitted(jnp.zeros((N, A)), jax.random.PRNGKey(0), lr=0.1)
    np.testing.assert_allclose(out, P + 0.2 * C, rtol=1e-6)


def test_stochastic_actor_and_dict_state():
    """An RSSM-like dict state with a noisy actor and dynamics: shapes, finiteness, jit."""
    start = {
        "stoch": jnp.zeros((N, 2)),
        "deter": jnp.ones((N, 3)),
        "mean": jnp.zeros((N, 2)),
        "std": jnp.ones((N, 2)),
    }

    def step(state, action, key):
        noise = jax.random.normal(key, state["stoch"].shape)
        deter = jnp.tanh(state["deter"] + action.sum(-1, keepdims=True))
        return {**state, "stoch": 0.5 * state["stoch"] + noise, "deter": deter}

    def actor(feat, key):
        assert feat.shape == (N, 5)
        return jnp.tanh(feat[:, :A] + jax.random.normal(key, (N, A)))

    out = jax.jit(
        lambda s, k: mpc.plan(step, actor, lambda f: f.sum(-1), lambda f: f.mean(-1), s, k, 5, 2)
    )(start, jax.random.PRNGKey(1))
    assert out.shape == (N, A) and bool(jnp.all(jnp.isfinite(out)))
