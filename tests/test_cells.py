"""Hand-checked numbers for the model's smallest pieces.

Every expected value below is computed from scalars with the formula the released Keras
code uses (reference-code.md §2), written out independently of the module under test, at
sizes of one or two units so that each gate, activation, split and constant is visible: a
swapped gate, a missing bias or a changed floor changes the number.
"""

import math

import dm_env.specs as specs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mummi_jax import distributions as dist
from mummi_jax import networks, presets


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def softplus(x):
    return math.log1p(math.exp(x))


def elu(x):
    return x if x > 0 else math.exp(x) - 1.0


def _params(**layers):
    """Flax params from {layer: (kernel, bias)} given as nested lists."""
    return {
        "params": {
            k: {"kernel": jnp.asarray(w, jnp.float32), "bias": jnp.asarray(b, jnp.float32)}
            for k, (w, b) in layers.items()
        }
    }


# ----------------------------------------------------------------------------- PoE
MEANS = jnp.array([[[1.0]], [[3.0]]])  # M = 2 experts, one sample, D = 1
STDS = jnp.array([[[1.0]], [[0.5]]])


def test_reference_poe_weights_experts_by_inverse_std_plus_a_hundredth():
    # weights 1/1 and 1/0.5 = 2: mean = (1 * 1 + 2 * 3) / (1 + 2 + 0.01)
    mean, std = dist.product_of_experts(MEANS, STDS, jnp.array([[1.0], [1.0]]), "reference")
    np.testing.assert_allclose(mean, [[7.0 / 3.01]], rtol=1e-6)
    np.testing.assert_allclose(std, [[1.0 / 3.01]], rtol=1e-6)
    # The second expert missing: it is dropped, the 0.01 still shrinks the mean.
    mean, _ = dist.product_of_experts(MEANS, STDS, jnp.array([[1.0], [0.0]]), "reference")
    np.testing.assert_allclose(mean, [[1.0 / 1.01]], rtol=1e-6)
    mean, _ = dist.product_of_experts(MEANS, STDS, jnp.array([[0.0], [0.0]]), "reference")
    np.testing.assert_allclose(mean, [[0.0]])


def test_gaussian_poe_adds_precisions():
    # precisions 1 and 4: mean = (1 + 4 * 3) / 5, std = 5^-1/2
    mean, std = dist.product_of_experts(MEANS, STDS, jnp.array([[1.0], [1.0]]), "gaussian")
    np.testing.assert_allclose(mean, [[13.0 / 5.0]], rtol=1e-6)
    np.testing.assert_allclose(std, [[5.0**-0.5]], rtol=1e-6)
    # With the N(0, 1) prior expert: precisions 1, 4, 1.
    mean, std = dist.product_of_experts(
        MEANS, STDS, jnp.array([[1.0], [1.0]]), "gaussian", prior_expert=True
    )
    np.testing.assert_allclose(mean, [[13.0 / 6.0]], rtol=1e-6)
    np.testing.assert_allclose(std, [[6.0**-0.5]], rtol=1e-6)
    # Every expert missing and no prior: N(0, 1), finite.
    mean, std = dist.product_of_experts(MEANS, STDS, jnp.array([[0.0], [0.0]]), "gaussian")
    np.testing.assert_allclose(mean, [[0.0]])
    np.testing.assert_allclose(std, [[1.0]])


def test_poe_weights_are_the_fusions_and_drop_missing_experts():
    present = jnp.array([[1.0], [0.0]])
    np.testing.assert_allclose(dist.poe_weights(STDS, present, "reference"), [[[1.0]], [[0.0]]])
    np.testing.assert_allclose(
        dist.poe_weights(STDS, jnp.ones((2, 1)), "gaussian"), [[[1.0]], [[4.0]]]
    )
    with pytest.raises(ValueError, match="'sum'.*reference, gaussian"):
        dist.product_of_experts(MEANS, STDS, present, "sum")


# ----------------------------------------------------------------------------- GRU
def test_keras_gru_cell_by_hand():
    # One unit, one input; Keras gate order z, r, h; reset_after=True.
    kernel, recurrent = [[0.5, -1.0, 2.0]], [[1.0, 0.5, -0.5]]
    bias = [[0.1, 0.2, 0.3], [-0.1, 0.0, 0.4]]
    x, h = 1.0, 0.5
    xz, xr, xh = 0.5 * x + 0.1, -1.0 * x + 0.2, 2.0 * x + 0.3
    hz, hr, hh = 1.0 * h - 0.1, 0.5 * h + 0.0, -0.5 * h + 0.4
    z, r = sigmoid(xz + hz), sigmoid(xr + hr)
    cand = math.tanh(xh + r * hh)  # the reset gate multiplies U_h h + b_rh (reset_after)
    want = z * h + (1 - z) * cand
    params = {
        "params": {
            "kernel": jnp.array(kernel),
            "recurrent_kernel": jnp.array(recurrent),
            "bias": jnp.array(bias),
        }
    }
    got = networks.KerasGRU(1).apply(params, jnp.array([[x]]), jnp.array([[h]]))
    np.testing.assert_allclose(got, [[want]], rtol=1e-6)


# ----------------------------------------------------------------------------- RSSM cell
# stoch S = 1, deter D = 1, hidden 1, action A = 1, fused F = 1.
RSSM = networks.RSSMCell(stoch=1, deter=1, hidden=1, min_std=0.1)
GRU = {
    "kernel": [[0.3, -0.2, 0.7]],
    "recurrent_kernel": [[0.4, 0.1, -0.6]],
    "bias": [[0.0] * 3] * 2,
}
RSSM_PARAMS = {
    "params": {
        "img1": {"kernel": jnp.array([[0.5], [-1.0]]), "bias": jnp.array([0.1])},
        "gru": {k: jnp.array(v) for k, v in GRU.items()},
        "img2": {"kernel": jnp.array([[2.0]]), "bias": jnp.array([-0.3])},
        "img3": {"kernel": jnp.array([[1.0, -0.5]]), "bias": jnp.array([0.2, 0.1])},
        "obs1": {"kernel": jnp.array([[0.8], [-0.4]]), "bias": jnp.array([0.05])},
        "obs2": {"kernel": jnp.array([[-1.5, 0.25]]), "bias": jnp.array([0.3, -0.2])},
    }
}
PREV = {"mean": 0.0, "std": 1.0, "stoch": 0.6, "deter": -0.2}


def _prior_by_hand(stoch, deter, action, noise):
    x = elu(0.5 * stoch - 1.0 * action + 0.1)  # img1 on [s, a]
    z = sigmoid(0.3 * x + 0.4 * deter)
    r = sigmoid(-0.2 * x + 0.1 * deter)
    h = z * deter + (1 - z) * math.tanh(0.7 * x + r * (-0.6 * deter))
    y = elu(2.0 * h - 0.3)  # img2
    mean, raw = 1.0 * y + 0.2, -0.5 * y + 0.1  # img3, split into mean and std
    std = softplus(raw) + 0.1
    return mean, std, mean + std * noise, h


def test_rssm_prior_and_posterior_by_hand():
    prev = {k: jnp.array([[v]]) for k, v in PREV.items()}
    action, fused, noise = 0.25, 1.5, (0.7, -1.2)
    post, prior = RSSM.apply(
        RSSM_PARAMS,
        prev,
        jnp.array([[action]]),
        jnp.array([[fused]]),
        jnp.array(noise).reshape(2, 1, 1),
        method="obs_step",
    )
    p_mean, p_std, p_stoch, h = _prior_by_hand(PREV["stoch"], PREV["deter"], action, noise[0])
    x = elu(0.8 * h - 0.4 * fused + 0.05)  # obs1 on [h, s^f]
    q_mean, raw = -1.5 * x + 0.3, 0.25 * x - 0.2
    q_std = softplus(raw) + 0.1
    for got, want in [
        (prior["mean"], p_mean),
        (prior["std"], p_std),
        (prior["stoch"], p_stoch),
        (prior["deter"], h),
        (post["mean"], q_mean),
        (post["std"], q_std),
        (post["stoch"], q_mean + q_std * noise[1]),
        (post["deter"], h),  # the posterior keeps the prior's h_t
    ]:
        np.testing.assert_allclose(got, [[want]], rtol=1e-5)


def test_rssm_noise_shared_across_the_batch_broadcasts_one_draw():
    prev = {k: jnp.full((3, 1), v) for k, v in PREV.items()}
    actions = jnp.array([[0.0], [0.5], [-0.5]])
    shared = RSSM.apply(RSSM_PARAMS, prev, actions, jnp.array([[0.9]]), method="img_step")
    rows = RSSM.apply(RSSM_PARAMS, prev, actions, jnp.full((3, 1), 0.9), method="img_step")
    np.testing.assert_allclose(shared["stoch"], rows["stoch"], rtol=1e-6)
    for i, a in enumerate([0.0, 0.5, -0.5]):
        mean, std, stoch, _ = _prior_by_hand(PREV["stoch"], PREV["deter"], a, 0.9)
        np.testing.assert_allclose(shared["stoch"][i], [stoch], rtol=1e-5)


# ----------------------------------------------------------------------------- heads
def test_expert_head_by_hand():
    # Dense 2 ReLU -> Dense 2 (= 2 x size 1) -> mean, softplus(raw) + 0.1
    head = networks.ExpertHead(hidden=2, size=1, min_std=0.1)
    p = _params(
        Dense_0=([[1.0, -2.0]], [0.5, 0.5]), Dense_1=([[0.3, -0.7], [2.0, 1.0]], [0.1, 0.2])
    )
    e = 1.25
    h = [max(0.0, 1.0 * e + 0.5), max(0.0, -2.0 * e + 0.5)]  # the second unit is off
    mean = 0.3 * h[0] + 2.0 * h[1] + 0.1
    std = softplus(-0.7 * h[0] + 1.0 * h[1] + 0.2) + 0.1
    got_mean, got_std = head.apply(p, jnp.array([[e]]))
    np.testing.assert_allclose(got_mean, [[mean]], rtol=1e-6)
    np.testing.assert_allclose(got_std, [[std]], rtol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "none"])
def test_g_head_is_one_dense_layer_ending_in_the_reference_relu(activation):
    head = networks.GHead(size=2, activation=activation)
    p = _params(Dense_0=([[1.0, -1.0], [0.5, 0.5]], [0.0, -0.25]))
    got = head.apply(p, jnp.array([[1.0, 2.0]]))
    pre = [1.0 * 1 + 0.5 * 2, -1.0 * 1 + 0.5 * 2 - 0.25]  # [2.0, -0.25]
    want = [max(0.0, v) for v in pre] if activation == "relu" else pre
    np.testing.assert_allclose(got, [want], rtol=1e-6)


# ----------------------------------------------------------------------------- actor
def test_saturated_needs_a_large_mean_and_a_small_spread():
    """A dimension is saturated when its pre-tanh mean is past 2 and more than 2 std from 0."""
    d = dist.TanhNormal(jnp.array([3.0, 3.0, -1.0, -4.0]), jnp.array([1.0, 2.0, 0.1, 0.1]))
    np.testing.assert_array_equal(d.saturated(), [True, False, False, True])
    # A fresh actor (zero raw outputs: mean 0, std 5) holds nothing at a bound.
    assert not np.any(dist.actor_distribution(jnp.zeros((3, 4))).saturated())


def test_actor_distribution_parameterisation_by_hand():
    raw = jnp.array([[3.0, -1.0]])  # A = 1: [raw mean, raw std]
    d = dist.actor_distribution(raw)
    mean = 5.0 * math.tanh(3.0 / 5.0)
    std = softplus(-1.0 + math.log(math.exp(5.0) - 1.0)) + 1e-4
    np.testing.assert_allclose(d.mean, [[mean]], rtol=1e-6)
    np.testing.assert_allclose(d.std, [[std]], rtol=1e-6)
    # Zero raw outputs start the pre-tanh std at init_std = 5 (plus the 1e-4 floor).
    np.testing.assert_allclose(dist.actor_distribution(jnp.zeros((1, 2))).std, [[5.0001]], 1e-6)
    np.testing.assert_allclose(
        d.sample_from_noise(jnp.array([[0.4]])), [[math.tanh(mean + 0.4 * std)]], rtol=1e-6
    )
    # log pi(a) = log N(atanh a; mean, std) - log(1 - a^2)
    a = 0.3
    u = math.atanh(a)
    logp = -0.5 * ((u - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(
        d.log_prob(jnp.array([[a]])), [logp - math.log(1 - a * a)], rtol=1e-5
    )


# ----------------------------------------------------------------------------- preprocess
def _walker_agent(overrides):
    """A tiny walker agent on 32 px image and depth and 2 touch readings, with flags."""
    from mummi_jax.agent import Agent

    config = presets.make_config("mummi", "walker_walk", "tiny", overrides=overrides)
    spec = {
        "image": specs.Array((32, 32, 3), np.uint8),
        "depth": specs.Array((32, 32, 1), np.float32),
        "touch": specs.Array((2,), np.float32),
    }
    spec.update({f"{m}_flag": specs.Array((), np.float32) for m in list(spec)})
    return Agent(config, spec, specs.BoundedArray((6,), np.float32, -1, 1)), spec


@pytest.mark.parametrize("touch_scale", ["div200", "raw", "log1p"])
def test_preprocess_scales(touch_scale):
    agent, _ = _walker_agent({"model.touch_scale": touch_scale})
    obs = {
        "image": np.array([[[[0, 255, 51]]]], np.uint8),
        "depth": np.array([[[[0.0], [100.0], [300.0]]]], np.float32),
        "touch": np.array([[0.0, 50.0]], np.float32),
        "image_flag": np.ones(1, np.float32),
        "depth_flag": np.zeros(1, np.float32),
        "touch_flag": np.ones(1, np.float32),
    }
    x = jax.jit(agent.preprocess)(obs)
    np.testing.assert_allclose(x["image"], [[[[-0.5, 0.5, 51 / 255 - 0.5]]]], rtol=1e-6)
    # depth / 200 - 0.5 (XLA multiplies by 1/200: equal to a float32 ulp)
    np.testing.assert_allclose(x["depth"], [[[[-0.5], [0.0], [1.0]]]], atol=1e-7)
    touch = {"div200": [0.0, 0.25], "raw": [0.0, 50.0], "log1p": [0.0, math.log1p(50.0)]}
    np.testing.assert_allclose(x["touch"], [touch[touch_scale]], rtol=1e-6)
    np.testing.assert_allclose(x["depth_flag"], [0.0])


def test_preprocess_clipped_depth_spends_the_range_on_the_first_metres():
    agent, spec = _walker_agent({"model.depth_scale": 5.0, "model.depth_clip": True})
    obs = {m: np.zeros((1, *s.shape), s.dtype) for m, s in spec.items()}
    # A missing reading (raw 0), the walker (2.5 m), the sky (64 m: clipped, not 12.3).
    obs["depth"][0, 0, :3, 0] = [0.0, 2.5, 64.0]
    x = jax.jit(agent.preprocess)(obs)
    np.testing.assert_allclose(x["depth"][0, 0, :3, 0], [-0.5, 0.0, 0.5], atol=1e-7)
