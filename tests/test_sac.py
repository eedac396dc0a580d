"""Hand-checked tests for latent SAC: pairing, critic target, losses, gradient routing."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mummi_jax import sac

# ----------------------------------------------------------------------------- transitions
B, T, A = 3, 4, 2


def _batch():
    b, t = jnp.meshgrid(jnp.arange(B), jnp.arange(T), indexing="ij")
    code = (10 * b + t).astype(jnp.float32)  # identifies (b, t)
    feats = jnp.stack([code, -code], axis=-1)  # (B, T, 2)
    actions = jnp.stack([code, code + 0.5], axis=-1)  # (B, T, A)
    return feats, actions, code + 100.0, code + 1000.0


def test_time_pairing():
    feats, actions, rewards, discounts = _batch()
    tr = sac.make_transitions(feats, actions, rewards, discounts, "time")
    m = B * (T - 1)
    assert tr["obs"].shape == (m, 2) and tr["action"].shape == (m, A)
    assert tr["reward"].shape == tr["discount"].shape == tr["weight"].shape == (m,)
    obs, nxt = tr["obs"][:, 0], tr["next_obs"][:, 0]
    # Row order: b-major over t = 0 .. T-2; each row is (b, t) -> (b, t + 1).
    expected_obs = jnp.array([10 * b + t for b in range(B) for t in range(T - 1)], jnp.float32)
    np.testing.assert_allclose(obs, expected_obs)
    np.testing.assert_allclose(nxt, expected_obs + 1)
    np.testing.assert_allclose(tr["action"][:, 0], expected_obs + 1)  # a stored at t + 1
    np.testing.assert_allclose(tr["reward"], expected_obs + 101)  # r on arrival at t + 1
    np.testing.assert_allclose(tr["discount"], expected_obs + 1001)
    np.testing.assert_allclose(tr["weight"], 1.0)


def test_batch_pairing_reproduces_released_code():
    feats, actions, rewards, discounts = _batch()
    tr = sac.make_transitions(feats, actions, rewards, discounts, "batch")
    m = (B - 1) * T
    assert tr["obs"].shape == (m, 2)
    expected_obs = jnp.array([10 * b + t for b in range(B - 1) for t in range(T)], jnp.float32)
    np.testing.assert_allclose(tr["obs"][:, 0], expected_obs)
    np.testing.assert_allclose(tr["next_obs"][:, 0], expected_obs + 10)  # sequence b + 1
    np.testing.assert_allclose(tr["action"][:, 0], expected_obs)  # states[:-1] slicing
    np.testing.assert_allclose(tr["reward"], expected_obs + 100)


def test_pairing_is_first_mask_and_errors():
    feats, actions, rewards, discounts = _batch()
    is_first = jnp.zeros((B, T)).at[1, 2].set(1.0)
    tr = sac.make_transitions(feats, actions, rewards, discounts, "time", is_first)
    # The transition (1, 1) -> (1, 2) crosses a reset: row 1 * (T - 1) + 1.
    expected = np.ones(B * (T - 1))
    expected[(T - 1) + 1] = 0.0
    np.testing.assert_allclose(tr["weight"], expected)
    with pytest.raises(ValueError, match="pairing"):
        sac.make_transitions(feats, actions, rewards, discounts, "diagonal")


def test_transitions_stop_gradient():
    feats, actions, rewards, discounts = _batch()
    g = jax.grad(lambda f: jnp.sum(sac.make_transitions(f, actions, rewards, discounts)["obs"]))
    np.testing.assert_allclose(g(feats), 0.0)


# ----------------------------------------------------------------------------- losses
def q_fn(params, obs, action):
    """Twin fake critics: Q_e(s, a) = b_e + sum(s) + sum(a) -> (2, M)."""
    return params["b"][:, None] + jnp.sum(obs, -1)[None] + jnp.sum(action, -1)[None]


def policy_fn(params, obs, key):
    """Deterministic fake actor: every action dim = mu, log pi = -1."""
    del key
    m = obs.shape[0]
    return jnp.full((m, A), 1.0) * params["mu"], jnp.full((m,), -1.0)


def _hand_case():
    params = {
        "critic": {"b": jnp.array([1.0, 2.0])},
        "actor": {"mu": jnp.array(0.5)},
        "log_alpha": jnp.array(math.log(0.5)),
    }
    target = {"b": jnp.array([0.0, 1.0])}
    transitions = {
        "obs": jnp.array([[1.0]]),
        "action": jnp.array([[0.25, 0.75]]),
        "reward": jnp.array([1.0]),
        "discount": jnp.array([1.0]),
        "next_obs": jnp.array([[1.0]]),
    }
    return params, target, transitions


def test_critic_target_by_hand():
    # min(2, 3) - .5 * (-1) = 2.5; y = 1 + .9 * 1 * 2.5 = 3.25
    y = sac.critic_target(
        jnp.array([[2.0], [3.0]]), jnp.array([-1.0]), jnp.array([1.0]), jnp.array([1.0]), 0.5, 0.9
    )
    np.testing.assert_allclose(y, [3.25])
    y0 = sac.critic_target(
        jnp.array([[2.0], [3.0]]), jnp.array([-1.0]), jnp.array([1.0]), jnp.array([0.0]), 0.5, 0.9
    )
    np.testing.assert_allclose(y0, [1.0])  # terminal: no bootstrap


def test_sac_losses_by_hand():
    params, target, transitions = _hand_case()
    losses, metrics = sac.sac_losses(
        params,
        target,
        transitions,
        jax.random.PRNGKey(0),
        q_fn=q_fn,
        policy_fn=policy_fn,
        action_dim=A,
        gamma=0.9,
    )
    # Next: a' sums to 1, Q_targ = (0 + 1 + 1, 1 + 1 + 1) = (2, 3); y = 3.25.
    # Current: Q = (1 + 1 + 1, 2 + 1 + 1) = (3, 4); critic = .5 * .0625 + .5 * .5625 = .3125
    np.testing.assert_allclose(losses["critic"], 0.3125)
    np.testing.assert_allclose(metrics["sac/target"], 3.25)
    # Actor: alpha log pi - min Q(s, pi(s)) = .5 * (-1) - min(3, 4) = -3.5
    np.testing.assert_allclose(losses["actor"], -3.5)
    # Alpha: -alpha (log pi - |A|) = -.5 * (-1 - 2) = 1.5
    np.testing.assert_allclose(losses["alpha"], 1.5)


def _grads(**kw):
    params, target, transitions = _hand_case()

    def total(p, name):
        losses, _ = sac.sac_losses(
            p,
            target,
            transitions,
            jax.random.PRNGKey(0),
            q_fn=q_fn,
            policy_fn=policy_fn,
            action_dim=A,
            gamma=0.9,
            **kw,
        )
        return losses[name]

    return {name: jax.grad(total)(params, name) for name in ("critic", "actor", "alpha")}


def test_sac_gradient_routing():
    g = _grads()
    # Critic loss: dL/db_e = (Q_e - y) = (-.25, .75); nothing else.
    np.testing.assert_allclose(g["critic"]["critic"]["b"], [-0.25, 0.75])
    np.testing.assert_allclose(g["critic"]["actor"]["mu"], 0.0)
    np.testing.assert_allclose(g["critic"]["log_alpha"], 0.0)
    # Actor loss: -d min Q / d mu = -A (Q_1 is the min, dQ/dmu = A); critics frozen.
    np.testing.assert_allclose(g["actor"]["actor"]["mu"], -float(A))
    np.testing.assert_allclose(g["actor"]["critic"]["b"], 0.0)
    np.testing.assert_allclose(g["actor"]["log_alpha"], 0.0)
    # Alpha loss: d/dlog_alpha [-alpha (log pi + target)] = -alpha * (-3) = 1.5.
    np.testing.assert_allclose(g["alpha"]["log_alpha"], 1.5)
    np.testing.assert_allclose(g["alpha"]["actor"]["mu"], 0.0)


def test_reference_options_carry_no_actor_or_alpha_gradient():
    g = _grads(actor_grad=False, learn_alpha=False)
    np.testing.assert_allclose(g["actor"]["actor"]["mu"], 0.0)
    np.testing.assert_allclose(g["alpha"]["log_alpha"], 0.0)
    np.testing.assert_allclose(g["critic"]["critic"]["b"], [-0.25, 0.75])


def test_weights_mask_transitions():
    params, target, transitions = _hand_case()
    two = jax.tree.map(lambda x: jnp.concatenate([x, x + 5.0]), transitions)
    two["weight"] = jnp.array([1.0, 0.0])
    losses, _ = sac.sac_losses(
        params,
        target,
        two,
        jax.random.PRNGKey(0),
        q_fn=q_fn,
        policy_fn=policy_fn,
        action_dim=A,
        gamma=0.9,
    )
    np.testing.assert_allclose(losses["critic"], 0.3125)
    np.testing.assert_allclose(losses["actor"], -3.5)


def test_polyak_update_exact():
    out = sac.polyak_update({"b": jnp.array([0.0, 1.0])}, {"b": jnp.array([1.0, 2.0])}, 0.005)
    np.testing.assert_allclose(out["b"], [0.005, 1.005], rtol=1e-6)


def test_sac_with_tanh_normal_and_twin_linear_critics_jit():
    from mummi_jax.distributions import actor_distribution

    f_dim, m = 5, 6
    key = jax.random.PRNGKey(0)
    params = {
        "actor": jax.random.normal(key, (f_dim, 2 * A)) * 0.1,
        "critic": jax.random.normal(jax.random.PRNGKey(1), (2, f_dim + A)),
        "log_alpha": jnp.array(math.log(0.1)),
    }
    target = params["critic"] + 0.01

    def policy(p, obs, k):
        return actor_distribution(obs @ p).sample_and_log_prob(k)

    def q2(p, obs, action):
        return (jnp.concatenate([obs, action], -1) @ p.T).T  # (2, M)

    feats = jax.random.normal(jax.random.PRNGKey(2), (2, m // 2 + 1, f_dim))
    acts = jnp.tanh(jax.random.normal(jax.random.PRNGKey(3), (2, m // 2 + 1, A)))
    tr = sac.make_transitions(feats, acts, jnp.ones((2, m // 2 + 1)), jnp.ones((2, m // 2 + 1)))

    def total(p):
        losses, metrics = sac.sac_losses(
            p, target, tr, jax.random.PRNGKey(4), q_fn=q2, policy_fn=policy, action_dim=A
        )
        return losses["critic"] + 0.5 * losses["actor"] + losses["alpha"], metrics

    (loss, metrics), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
    assert jnp.isfinite(loss) and metrics["sac/alpha"] > 0
    for leaf in jax.tree.leaves(grads):
        assert bool(jnp.all(jnp.isfinite(leaf))) and float(jnp.abs(leaf).sum()) > 0
