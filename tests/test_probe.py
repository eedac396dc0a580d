"""experiments.probe's measuring parts on the real walker (no training: the probe of a trained
run is exercised by hand, RESULTS.md; a bad --logdir is tested in test_entry_points)."""

import numpy as np

from experiments import probe as P


def test_walker_joints_leave_out_rootx_and_read_hinges_on_the_circle():
    from dm_control import suite

    env = suite.load("walker", "walk", task_kwargs={"random": 0})
    physics = env.physics
    qpos_idx, hinge, qvel_idx = P.joint_layout(physics)
    names = [physics.model.id2name(j, "joint") for j in range(physics.model.njnt)]
    assert "rootx" in names and len(qvel_idx) == physics.model.nv  # every velocity is probed
    assert len(qpos_idx) == physics.model.nq - 1  # all positions but rootx
    assert hinge.sum() == 7 and not hinge[0]  # rooty and six joints; rootz slides
    q = np.array([[0.5, np.pi, -np.pi / 2]])
    circle = P._angles_as_circle(q, np.array([False, True, True]))
    np.testing.assert_allclose(circle, [[0.5, -1.0, 0.0, 0.0, -1.0]], atol=1e-12)
    # The names of the probed columns follow the same order as the columns themselves.
    pos, vel = P.probe_columns(physics)
    assert len(pos) == P._angles_as_circle(physics.data.qpos[qpos_idx], hinge).shape[-1]
    assert pos[0] == "rootz" and pos[1] == "cos(rooty)" and pos[8] == "sin(rooty)"
    assert vel == names  # one degree of freedom per walker joint
    cup = suite.load("ball_in_cup", "catch", task_kwargs={"random": 0}).physics
    assert P.probe_columns(cup) == (["cup_x", "cup_z", "ball_x", "ball_z"],) * 2


def test_mean_r2_is_one_for_a_linear_map_and_ignores_still_joints():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 5))
    y = np.stack([x @ rng.standard_normal(5), np.zeros(400), -x[:, 0]], 1)
    assert P._mean_r2(x, y, 200) > 0.999  # the constant column is left out, not scored 0
    assert abs(P._mean_r2(rng.standard_normal((400, 5)), y, 200)) < 0.1
    per = P._per_column_r2(x, y, 200)
    assert np.isnan(per[1]) and per[0] > 0.999 and per[2] > 0.999


def test_poe_shares_are_the_fusion_weights_of_each_form():
    import jax.numpy as jnp

    from mummi_jax.distributions import product_of_experts

    stds = {"image": np.array([[0.1, 1.0]]), "depth": np.array([[0.4, 1.0]])}
    means = {"image": np.array([[1.0, 3.0]]), "depth": np.array([[-1.0, -3.0]])}
    for form, image_share in (("reference", 0.8), ("gaussian", 16 / 17)):
        shares = P.poe_shares(stds, form)
        np.testing.assert_allclose(shares["image"] + shares["depth"], 1.0)
        np.testing.assert_allclose(shares["image"], [[image_share, 0.5]], rtol=1e-6)
        # The shares are what weights the means in the fusion itself (eps aside).
        fused, _ = product_of_experts(
            jnp.stack([means["image"], means["depth"]]),
            jnp.stack([stds["image"], stds["depth"]]),
            jnp.ones((2, 1)),
            form=form,
            eps=0.0,
        )
        expect = shares["image"] * means["image"] + shares["depth"] * means["depth"]
        np.testing.assert_allclose(np.asarray(fused), expect, rtol=1e-5)
    # A missing expert has no share; with none present, no one decides.
    present = {"image": np.array([0.0]), "depth": np.array([1.0])}
    shares = P.poe_shares(stds, "reference", present)
    np.testing.assert_allclose(shares["image"], [[0.0, 0.0]])
    np.testing.assert_allclose(shares["depth"], [[1.0, 1.0]])
    none = P.poe_shares(stds, "reference", {m: np.array([0.0]) for m in stds})
    assert all(np.all(np.asarray(v) == 0) for v in none.values())
    # With the gaussian form's N(0, I) prior expert (weight 1) the shares are still the
    # fusion's weights of the means: the prior's mean 0 takes the rest.
    shares = P.poe_shares(stds, "gaussian", prior_expert=True)
    np.testing.assert_allclose(shares["image"], [[100 / 107.25, 1 / 3]], rtol=1e-6)
    fused, _ = product_of_experts(
        jnp.stack([means["image"], means["depth"]]),
        jnp.stack([stds["image"], stds["depth"]]),
        jnp.ones((2, 1)),
        form="gaussian",
        prior_expert=True,
    )
    expect = shares["image"] * means["image"] + shares["depth"] * means["depth"]
    np.testing.assert_allclose(np.asarray(fused), expect, rtol=1e-5)


def test_posterior_spread_is_a_geometric_mean_and_a_scale_free_ratio():
    rng = np.random.default_rng(0)
    mean = rng.standard_normal((500, 3)) * np.array([1.0, 2.0, 4.0])
    std = np.exp(rng.uniform(-1, 1, (500, 3)))
    got = P.posterior_spread(mean, std)
    assert np.isclose(got["post_std"], np.exp(np.log(std).mean()))
    ratios = mean.std(0) / std.mean(0)
    assert np.isclose(got["post_snr"], np.median(ratios))
    # The KL cannot fix the latent's scale; the ratio does not move with it, the std does.
    scaled = P.posterior_spread(7.0 * mean, 7.0 * std)
    assert np.isclose(scaled["post_snr"], got["post_snr"])
    assert np.isclose(scaled["post_std"], 7.0 * got["post_std"])
    assert np.isclose(P._r2(np.array([1.0, 2.0, 3.0]), np.full(3, 2.0)), 0.0)
    assert np.isnan(P._r2(np.zeros(4), np.ones(4)))  # nothing to explain: no R^2
