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


def test_mean_r2_is_one_for_a_linear_map_and_ignores_still_joints():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 5))
    y = np.stack([x @ rng.standard_normal(5), np.zeros(400), -x[:, 0]], 1)
    assert P._mean_r2(x, y, 200) > 0.999  # the constant column is left out, not scored 0
    assert abs(P._mean_r2(rng.standard_normal((400, 5)), y, 200)) < 0.1
