"""Hand-checked tests for imagination rollouts, lambda-returns and actor/value losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mummi_jax import behavior

# ----------------------------------------------------------------------------- lambda-return
# 3 steps, gamma 0.5, lam 0.5; values[0] is unused by construction, bootstrap v_3 = 40.
R = jnp.array([1.0, 2.0, 3.0])
V = jnp.array([10.0, 20.0, 30.0])
BOOT = jnp.array(40.0)


def test_lambda_return_by_hand():
    # R_2 = 3 + .5 * 40 = 23
    # R_1 = 2 + .5 * (.5 * 30 + .5 * 23) = 15.25
    # R_0 = 1 + .5 * (.5 * 20 + .5 * 15.25) = 9.8125
    out = behavior.lambda_return(R, V, 0.5, BOOT, 0.5)
    np.testing.assert_allclose(out, [9.8125, 15.25, 23.0])


def test_lambda_one_is_discounted_monte_carlo():
    out = behavior.lambda_return(R, V, 0.5, BOOT, 1.0)
    # R_0 = 1 + .5 * 2 + .25 * 3 + .125 * 40 = 7.75; R_1 = 2 + 1.5 + 10 = 13.5; R_2 = 23
    np.testing.assert_allclose(out, [7.75, 13.5, 23.0])


def test_lambda_zero_is_one_step_td():
    out = behavior.lambda_return(R, V, 0.5, BOOT, 0.0)
    np.testing.assert_allclose(out, [1 + 0.5 * 20, 2 + 0.5 * 30, 3 + 0.5 * 40])


def test_lambda_return_per_step_discounts_and_batch():
    # A terminal (discount 0) at step 1 cuts the bootstrap: R_1 = r_1; batch axis kept.
    disc = jnp.array([0.5, 0.0, 0.5])[:, None] * jnp.ones((3, 2))
    out = behavior.lambda_return(
        R[:, None] * jnp.ones((3, 2)),
        V[:, None] * jnp.ones((3, 2)),
        disc,
        jnp.full((2,), 40.0),
        0.5,
    )
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out[1], [2.0, 2.0])
    np.testing.assert_allclose(out[0], [1 + 0.5 * (0.5 * 20 + 0.5 * 2)] * 2)


def test_discount_weights():
    w = behavior.discount_weights(jnp.full((4,), 0.5))
    np.testing.assert_allclose(w, [1.0, 0.5, 0.25, 0.125])


# ----------------------------------------------------------------------------- imagine
def _add_step(state, action, key):
    del key
    return state + action


def test_imagine_trajectory_and_shapes():
    start = jnp.array([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]])  # N = 3, F = A = 2
    c = jnp.array([0.5, -1.0])

    def policy(feat, key):
        del key
        return jnp.broadcast_to(c, feat.shape)

    states, actions = behavior.imagine(
        _add_step, policy, start, behavior.step_keys(jax.random.PRNGKey(0), 4)
    )
    assert states.shape == (4, 3, 2) and actions.shape == (4, 3, 2)
    expected = start[None] + (jnp.arange(1, 5)[:, None, None] * c)  # s_k = s_0 + k c
    np.testing.assert_allclose(states, expected)
    np.testing.assert_allclose(actions, jnp.broadcast_to(c, (4, 3, 2)))

    with_start, _ = behavior.imagine(
        _add_step, policy, start, behavior.step_keys(jax.random.PRNGKey(0), 4), include_start=True
    )
    assert with_start.shape == (5, 3, 2)
    np.testing.assert_allclose(with_start[0], start)
    np.testing.assert_allclose(with_start[1:], states)


def test_imagine_pytree_state_and_flatten():
    start = {
        "mean": jnp.zeros((2, 3, 4)),
        "std": jnp.ones((2, 3, 4)),
        "stoch": jnp.ones((2, 3, 4)),
        "deter": jnp.zeros((2, 3, 5)),
    }
    flat = behavior.flatten_starts(start)
    assert flat["stoch"].shape == (6, 4) and flat["deter"].shape == (6, 5)

    def step(state, action, key):
        new = dict(state)
        new["stoch"] = state["stoch"] + action.sum(-1, keepdims=True)
        new["deter"] = state["deter"] + 1.0
        return new

    def policy(feat, key):
        assert feat.shape == (6, 9)  # [stoch, deter]
        return jax.random.normal(key, (6, 2))

    states, actions = behavior.imagine(
        step, policy, flat, behavior.step_keys(jax.random.PRNGKey(1), 3)
    )
    assert states["stoch"].shape == (3, 6, 4) and states["deter"].shape == (3, 6, 5)
    assert actions.shape == (3, 6, 2)
    np.testing.assert_allclose(states["deter"][-1], 3.0)
    assert behavior.features(states).shape == (3, 6, 9)


def test_imagine_stops_gradient_on_policy_inputs():
    start = jnp.array([[1.0, 2.0]])

    def policy(feat, key):
        del key
        return 2.0 * feat  # would carry d(action)/d(start) without the stop-gradient

    def action_sum(s0, k):
        _, actions = behavior.imagine(
            _add_step,
            policy,
            s0,
            behavior.step_keys(jax.random.PRNGKey(0), 3),
            stop_grad_start=False,
        )
        return jnp.sum(actions[k])

    def state_sum(s0):
        states, _ = behavior.imagine(
            _add_step,
            policy,
            s0,
            behavior.step_keys(jax.random.PRNGKey(0), 3),
            stop_grad_start=False,
        )
        return jnp.sum(states[-1])

    for k in range(3):
        np.testing.assert_allclose(jax.grad(action_sum)(start, k), 0.0)
    # The dynamics still carry the start's gradient: s_3 = s_0 + a_0 + a_1 + a_2 -> d = 1.
    np.testing.assert_allclose(jax.grad(state_sum)(start), 1.0)
    # The default stops gradients at the start states.
    g = jax.grad(
        lambda s0: jnp.sum(
            behavior.imagine(_add_step, policy, s0, behavior.step_keys(jax.random.PRNGKey(0), 3))[0]
        )
    )(start)
    np.testing.assert_allclose(g, 0.0)


# ----------------------------------------------------------------------------- losses
N, F, H = 4, 3, 5
W_DYN = 0.9 * jnp.eye(F) + 0.05  # fake world-model parameters (constants)


def _setup():
    start = jax.random.normal(jax.random.PRNGKey(0), (N, F))
    actor = {"w": 0.3 * jnp.ones((F, F)), "b": 0.1 * jnp.ones((F,))}
    value = {"w": jnp.linspace(-1.0, 1.0, F)}

    def step(state, action, key):
        del key
        return jnp.tanh(state @ W_DYN) + action  # differentiable dynamics

    def make_policy(actor_params):
        def policy(feat, key):
            noise = 0.1 * jax.random.normal(key, feat.shape)
            return jnp.tanh(feat @ actor_params["w"] + actor_params["b"] + noise)

        return policy

    def reward_fn(feats):
        return jnp.sum(feats, axis=-1) - 0.1 * jnp.sum(feats**2, axis=-1)

    def value_fn(params, feats):
        return feats @ params["w"]

    def losses(actor_params, value_params, **kw):
        states, _ = behavior.imagine(
            step, make_policy(actor_params), start, behavior.step_keys(jax.random.key(3), H)
        )
        return behavior.actor_value_losses(states, value_params, reward_fn, value_fn, **kw)

    return actor, value, losses


def test_actor_gradient_through_dynamics_and_value_routing():
    actor, value, losses = _setup()

    def actor_loss(a, v):
        return losses(a, v)[0]

    def value_loss(a, v):
        return losses(a, v)[1]

    ga_actor, ga_value = jax.grad(actor_loss, argnums=(0, 1))(actor, value)
    gv_actor, gv_value = jax.grad(value_loss, argnums=(0, 1))(actor, value)
    chex_nonzero = [float(jnp.abs(x).sum()) for x in jax.tree.leaves(ga_actor)]
    assert all(x > 1e-6 for x in chex_nonzero), chex_nonzero
    assert float(jnp.abs(gv_value["w"]).sum()) > 1e-6
    # The value loss does not reach the actor; the actor loss does not train the value.
    for leaf in jax.tree.leaves(gv_actor) + jax.tree.leaves(ga_value):
        np.testing.assert_allclose(leaf, 0.0)
    # One grad of the sum gives both components exactly (the routing the caller relies on).
    g_actor, g_value = jax.grad(lambda a, v: actor_loss(a, v) + value_loss(a, v), argnums=(0, 1))(
        actor, value
    )
    np.testing.assert_allclose(g_actor["w"], ga_actor["w"], rtol=1e-6)
    np.testing.assert_allclose(g_value["w"], gv_value["w"], rtol=1e-6)


def test_losses_by_hand():
    # H = 3 imagined states of N = 1 start; rewards 1, 2, (unused); values 0 (online) so
    # R_2 = 2 + g * v_3 and R_1 = 1 + g((1 - l) v_2 + l R_2).
    feats = jnp.array([[1.0], [2.0], [3.0]])[:, None]  # (H, N, F) = (3, 1, 1)

    def reward_fn(f):
        return f[..., 0]  # r = 1, 2, 3

    def value_fn(params, f):
        return params * f[..., 0]

    g, lam = 0.5, 0.5
    a_loss, v_loss, metrics = behavior.actor_value_losses(
        feats, jnp.array(2.0), reward_fn, value_fn, gamma=g, lam=lam
    )
    # values 2, 4, 6: R_2 = 2 + .5 * 6 = 5; R_1 = 1 + .5 (.5 * 4 + .5 * 5) = 3.25
    # weights 1, .5: actor = -(3.25 + .5 * 5) / 2 = -2.875
    np.testing.assert_allclose(a_loss, -2.875)
    # value = mean(w * .5 (v - R)^2) = (.5 * (2 - 3.25)^2 + .5 * .5 * (4 - 5)^2) / 2
    np.testing.assert_allclose(v_loss, (0.5 * 1.5625 + 0.25 * 1.0) / 2)
    np.testing.assert_allclose(metrics["actor/return"], (3.25 + 5) / 2)

    # Entropy bonus adds -coef * mean(w * H).
    ent = jnp.array([[1.0], [3.0]])
    a_ent, _, _ = behavior.actor_value_losses(
        feats,
        jnp.array(2.0),
        reward_fn,
        value_fn,
        gamma=g,
        lam=lam,
        entropy=ent,
        entropy_coef=0.1,
    )
    np.testing.assert_allclose(a_ent, -2.875 - 0.1 * (1.0 + 0.5 * 3.0) / 2)

    # A slow target: the returns use the slow params (1.0), the prediction the online ones.
    a_slow, v_slow, _ = behavior.actor_value_losses(
        feats,
        jnp.array(2.0),
        reward_fn,
        value_fn,
        gamma=g,
        lam=lam,
        slow_value_params=jnp.array(1.0),
    )
    # slow values 1, 2, 3: R_2 = 2 + 1.5 = 3.5; R_1 = 1 + .5 (.5 * 2 + .5 * 3.5) = 2.375
    np.testing.assert_allclose(a_slow, -(2.375 + 0.5 * 3.5) / 2)
    np.testing.assert_allclose(v_slow, (0.5 * (2 - 2.375) ** 2 + 0.25 * (4 - 3.5) ** 2) / 2)

    # MuMMI eq. 18 (`behavior.actor_objective=sum`): the start state s_0 (feature 0.5) first,
    # no weights, and the last state's V_lambda(s_3) = v(s_3) = 6 in the actor's sum.
    # rewards .5, 1, 2; values 1, 2, 4, 6: R_2 = 5, R_1 = 3.25 as above,
    # R_0 = .5 + .5 (.5 * 2 + .5 * 3.25) = 1.8125.
    with_start = jnp.concatenate([jnp.full((1, 1, 1), 0.5), feats])
    a_sum, v_sum, m_sum = behavior.actor_value_losses(
        with_start, jnp.array(2.0), reward_fn, value_fn, gamma=g, lam=lam, discount_weighted=False
    )
    np.testing.assert_allclose(a_sum, -(1.8125 + 3.25 + 5 + 6) / 4)
    np.testing.assert_allclose(v_sum, 0.5 * ((1 - 1.8125) ** 2 + (2 - 3.25) ** 2 + 1.0) / 3)
    np.testing.assert_allclose(m_sum["actor/imag_reward"], 2.0)  # s_1 .. s_3: 1, 2, 3


def test_ema_update_exact():
    target = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(4.0)}
    online = {"a": jnp.array([3.0, 6.0]), "b": jnp.array(0.0)}
    out = behavior.ema_update(target, online, 0.75)
    np.testing.assert_allclose(out["a"], [1.5, 3.0])
    np.testing.assert_allclose(out["b"], 3.0)


@pytest.mark.parametrize("jit", [False, True])
def test_losses_jit_finite(jit):
    actor, value, losses = _setup()
    fn = jax.value_and_grad(lambda a, v: sum(losses(a, v)[:2]), argnums=(0, 1))
    fn = jax.jit(fn) if jit else fn
    loss, grads = fn(actor, value)
    assert jnp.isfinite(loss)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(grads))


def test_tanh_normal_actor_with_flax_head():
    """The real actor distribution composes with `imagine`: reparameterised, finite grads."""
    import flax.linen as nn

    from mummi_jax.distributions import actor_distribution

    head = nn.Dense(2 * F)
    start = jax.random.normal(jax.random.PRNGKey(0), (N, F))
    actor_params = head.init(jax.random.PRNGKey(1), start)

    def step(state, action, key):
        del key
        return jnp.tanh(state @ W_DYN + action)

    def loss(p):
        def policy(feat, key):
            return actor_distribution(head.apply(p, feat)).sample(key)

        states, actions = behavior.imagine(
            step, policy, start, behavior.step_keys(jax.random.PRNGKey(2), H)
        )
        entropy = actor_distribution(head.apply(p, jax.lax.stop_gradient(states))).entropy(
            jax.random.PRNGKey(3)
        )  # (H, N)
        assert entropy.shape == (H, N) and actions.shape == (H, N, F)
        a_loss, _, _ = behavior.actor_value_losses(
            states,
            jnp.ones((F,)),
            lambda f: f.sum(-1),
            lambda v, f: f @ v,
            entropy=entropy,
            entropy_coef=1e-3,
        )
        return a_loss

    grads = jax.jit(jax.grad(loss))(actor_params)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    assert sum(float(jnp.abs(x).sum()) for x in leaves) > 0
