"""Multi-modal Natural MuJoCo adapter (mummi_jax/envs/dmc.py): specs, touch, depth, compositing."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import dm_env  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl.testing import absltest  # noqa: E402
from dm_env import test_utils  # noqa: E402

from mummi_jax.envs import dmc  # noqa: E402

# Small, fast settings: procedural backgrounds and 4-8 agent-step episodes.
FAST = dict(image_size=64, background="procedural", time_limit=8)


def _make(name, **kw):
    return dmc.make(name, **{**FAST, **kw})


def _check(value, spec, key):
    value = np.asarray(value)
    assert value.shape == spec.shape, (key, value.shape, spec.shape)
    assert value.dtype == spec.dtype, (key, value.dtype, spec.dtype)
    spec.validate(value)  # also checks BoundedArray bounds


@pytest.mark.parametrize("name", sorted(dmc.TASKS))
def test_every_step_honours_the_spec(name):
    env = _make(name, time_limit=7, modalities=())
    obs_spec, act_spec = env.observation_spec(), env.action_spec()
    assert (
        act_spec.dtype == np.float32
        and act_spec.minimum.min() == -1
        and act_spec.maximum.max() == 1
    )
    for m in dmc.task_modalities(name):
        assert m in obs_spec and f"{m}_flag" in obs_spec
        assert obs_spec[f"{m}_flag"].shape == () and obs_spec[f"{m}_flag"].dtype == np.float32
    rng = np.random.default_rng(0)
    for _episode in range(2):
        ts = env.reset()
        assert ts.step_type == dm_env.StepType.FIRST and ts.reward is None and ts.discount is None
        steps = 0
        while not ts.last():
            assert set(ts.observation) == set(obs_spec)
            for key, spec in obs_spec.items():
                _check(ts.observation[key], spec, key)
                if key.endswith("_flag"):
                    assert ts.observation[key] == 1.0
            ts = env.step(rng.uniform(-1, 1, act_spec.shape).astype(np.float32))
            steps += 1
            assert np.isfinite(ts.reward) and ts.discount in (0.0, 1.0)
        # 7 env steps at repeat 2: 4 agent steps, the last one cut to a single env step;
        # a time limit is a truncation (discount 1), as in dm_control.
        assert steps == 4 and ts.step_type == dm_env.StepType.LAST and ts.discount == 1.0
        for key, spec in obs_spec.items():
            _check(ts.observation[key], spec, key)


def test_proprio_is_the_flattened_state():
    env = _make("walker_walk", modalities=("proprio", "touch"))
    ts = env.reset()
    assert ts.observation["proprio"].shape == (14 + 1 + 9,)
    assert ts.observation["proprio"].dtype == np.float32
    assert "image" not in ts.observation


def test_reward_is_summed_over_the_action_repeat():
    a, b = _make("cartpole_balance", action_repeat=1), _make("cartpole_balance", action_repeat=2)
    a.reset(), b.reset()
    zero = np.zeros(1, np.float32)
    r1 = a.step(zero).reward + a.step(zero).reward
    np.testing.assert_allclose(b.step(zero).reward, r1, rtol=1e-6)


class ConformanceWalker(test_utils.EnvironmentTestMixin, absltest.TestCase):
    def make_object_under_test(self):
        return _make("walker_walk", time_limit=10)


class ConformanceCup(test_utils.EnvironmentTestMixin, absltest.TestCase):
    def make_object_under_test(self):
        return _make("cup_catch", time_limit=10, composite="red_threshold")


class ConformanceProprio(test_utils.EnvironmentTestMixin, absltest.TestCase):
    def make_object_under_test(self):
        return _make("reacher_easy", time_limit=10, modalities=("image", "proprio"))


def _lift(physics, height):
    """Puts the walker high in the air, at rest (qpos[0] is rootz)."""
    physics.named.data.qpos["rootz"] = height
    physics.named.data.qvel[:] = 0
    physics.forward()


@pytest.mark.parametrize("site", ["sole", "sole_box", "foot"])
def test_walker_touch_on_ground_and_zero_in_air(site):
    env = _make("walker_stand", touch_site=site, time_limit=200, background="none")
    env.reset()
    zero = np.zeros(env.action_spec().shape, np.float32)
    touches = [env.step(zero).observation["touch"] for _ in range(40)]
    # walker_stand starts just above the floor and lands on its feet within 40 steps.
    assert max(t.max() for t in touches) > 1.0
    assert np.mean([t.max() > 0 for t in touches[-10:]]) >= 0.5
    _lift(env.physics, 3.0)
    ts = env.step(zero)
    np.testing.assert_array_equal(ts.observation["touch"], np.zeros(2, np.float32))


# The released suite's sites (reference-code.md 6.2): (task, site, body, type, pos, size).
_RELEASED_SITES = [
    *[
        (
            "walker_walk",
            f"mummi_{side}_sole",
            f"{side}_foot",
            "ELLIPSOID",
            (0.01, 0, -0.06),
            (0.15, 0.05, 0.02),
        )
        for side in ("left", "right")
    ],
    ("cheetah_run", "mummi_bfoot_touch", "bfoot", "SPHERE", (0.06, 0, -0.197), (0.084,)),
    ("cheetah_run", "mummi_ffoot_touch", "ffoot", "SPHERE", (0.09, 0, -0.14), (0.084,)),
    ("cup_catch", "mummi_cup_touch", "cup", "ELLIPSOID", (0, 0, -0.092), (0.03, 0.01, 0.005)),
]


@pytest.mark.parametrize("name, site, body, kind, pos, size", _RELEASED_SITES)
def test_default_touch_sites_are_the_released_codes(name, site, body, kind, pos, size):
    """The default site of each task is the released code's (reference-code.md 6.2)."""
    model = _make(name, time_limit=2, modalities=("touch",)).physics.model
    i = model.name2id(site, "site")
    assert model.id2name(model.site_bodyid[i], "body") == body
    assert model.site_type[i] == getattr(mujoco.mjtGeom, f"mjGEOM_{kind}")
    np.testing.assert_allclose(model.site_pos[i], pos, atol=1e-9)
    # A sphere uses only the first size entry (MuJoCo fills the rest with its default).
    np.testing.assert_allclose(model.site_size[i][: len(size)], size, atol=1e-9)


def _finger_pose(physics, touching):
    """A (proximal, distal) pose whose fingertip presses the spinner, or touches nothing."""
    for a in np.linspace(-1.5, 1.5, 31):
        for b in np.linspace(-1.5, 1.5, 31):
            physics.named.data.qpos[["proximal", "distal"]] = a, b
            physics.named.data.qvel[:] = 0
            physics.forward()
            force = physics.named.data.sensordata[["touchtop", "touchbottom"]].max()
            if (force > 1.0) if touching else (physics.data.ncon == 0):
                return
    raise AssertionError("no such finger pose")


def test_finger_fingertip_touch():
    env = _make("finger_spin", background="none")
    env.reset()
    physics, zero = env.physics, np.zeros(2, np.float32)
    _finger_pose(physics, touching=True)
    touch = env.step(zero).observation["touch"]
    assert touch.max() > 0
    # dm_control's own finger convention: log1p of the raw force.
    raw = physics.named.data.sensordata[["touchtop", "touchbottom"]]
    np.testing.assert_allclose(touch, np.log1p(raw), rtol=1e-6)
    _finger_pose(physics, touching=False)
    np.testing.assert_array_equal(env.step(zero).observation["touch"], np.zeros(2, np.float32))


def test_cup_touch_when_ball_rests_inside():
    env = _make("cup_catch", time_limit=400, background="none")
    env.reset()
    physics = env.physics
    zero = np.zeros(2, np.float32)
    # Place the ball inside the cup (ball_z relative to the cup's bottom) and let it settle.
    cup = physics.named.data.xpos["cup"]
    physics.named.data.qpos["ball_x"] = cup[0]
    physics.named.data.qpos["ball_z"] = cup[2] - 0.06
    physics.named.data.qvel[:] = 0
    physics.forward()
    touches = [env.step(zero).observation["touch"][0] for _ in range(10)]
    assert max(touches) > 0
    physics.named.data.qpos["ball_x"] = cup[0] + 0.3
    physics.named.data.qpos["ball_z"] = cup[2] + 0.1
    physics.named.data.qvel[:] = 0
    physics.forward()
    assert env.step(zero).observation["touch"][0] == 0


def test_depth_ignores_the_background_and_robot_pixels_stay():
    a = _make("walker_walk", seed=4, background="default")
    b = _make("walker_walk", seed=4, background="default", background_split="test")
    ta, tb = a.reset(), b.reset()
    zero = np.zeros(6, np.float32)
    for _ in range(3):
        ta, tb = a.step(zero), b.step(zero)
    np.testing.assert_array_equal(ta.observation["depth"], tb.observation["depth"])
    _, _, fg = a.render_all()
    img_a, img_b = ta.observation["image"], tb.observation["image"]
    np.testing.assert_array_equal(img_a[fg], img_b[fg])  # the robot is the same
    assert np.abs(img_a[~fg].astype(int) - img_b[~fg]).mean() > 5  # backgrounds differ


def test_background_moves_while_robot_pixels_stay():
    env = _make("walker_stand", background="default")
    env.reset()
    zero = np.zeros(6, np.float32)
    first = env.step(zero).observation["image"]
    # Freeze the physics state between two observations: re-render the same state.
    qpos, qvel = env.physics.data.qpos.copy(), env.physics.data.qvel.copy()
    second = env.step(zero).observation["image"]
    env.physics.data.qpos[:], env.physics.data.qvel[:] = qpos, qvel
    env.physics.forward()
    third = env._observe(env._env.task.get_observation(env.physics))["image"]
    _, _, fg = env.render_all()
    np.testing.assert_array_equal(first[fg], third[fg])
    assert np.abs(second[~fg].astype(int) - first[~fg]).mean() > 0.5
    assert 0.01 < fg.mean() < 0.5


def test_plain_scene_and_red_threshold():
    plain = _make("walker_walk", background="none", seed=1).reset().observation["image"]
    keyed = _make("walker_walk", composite="red_threshold", seed=1).reset().observation["image"]
    seg = _make("walker_walk", seed=1).reset().observation["image"]
    robot = plain[..., 0] > 100
    np.testing.assert_array_equal(keyed[robot], plain[robot])
    assert not np.array_equal(keyed, plain) and not np.array_equal(seg, plain)


def test_same_seed_same_observations():
    def rollout(seed):
        env = _make("cup_catch", seed=seed, background="default", time_limit=12)
        obs = [env.reset().observation]
        rng = np.random.default_rng(seed)
        while True:
            ts = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
            obs.append(ts.observation)
            if ts.last():
                return obs

    a, b, c = rollout(1), rollout(1), rollout(2)
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(name="walker_fly"), ["walker_walk", "cup_catch"]),
        (dict(name="walker_walk", modalities=("sound",)), ["image", "depth", "touch"]),
        (dict(name="walker_walk", touch_site="toe"), ["sole", "sole_box", "foot"]),
        (dict(name="walker_walk", composite="blue"), ["segmentation", "red_threshold"]),
        (dict(name="walker_walk", background="sunset"), ["default", "none"]),
        (dict(name="walker_walk", background_split="valid"), ["train", "test"]),
        (dict(name="walker_walk", colour=1), ["image_size", "time_limit"]),
    ],
)
def test_unknown_names_and_options_raise(kwargs, words):
    with pytest.raises(ValueError) as err:
        dmc.make(**kwargs)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("name", ["walker_walk", "cup_catch", "cheetah_run"])
def test_injected_touch_sites_change_neither_physics_nor_pixels(name):
    """The sites are passive and invisible: same trajectory and image as the suite's XML."""
    with_touch = _make(name, seed=5, time_limit=20)
    without = _make(name, seed=5, time_limit=20, modalities=("image", "depth"))
    assert with_touch.physics.model.nsensor > without.physics.model.nsensor
    a, b = with_touch.reset(), without.reset()
    rng = np.random.default_rng(0)
    for _ in range(6):
        action = rng.uniform(-1, 1, with_touch.action_spec().shape).astype(np.float32)
        a, b = with_touch.step(action), without.step(action)
    np.testing.assert_array_equal(with_touch.physics.data.qpos, without.physics.data.qpos)
    np.testing.assert_array_equal(a.observation["image"], b.observation["image"])
    np.testing.assert_array_equal(a.observation["depth"], b.observation["depth"])


def test_reseed_replays_the_same_episode():
    """The runner re-seeds each episode from (seed, episode index) for exact resumption."""
    env = dmc.make("walker_walk", seed=0, time_limit=6, background="procedural")
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 6)).astype(np.float32)

    def episode(seed):
        env.reseed(seed)
        frames = [env.reset().observation["image"]]
        frames += [env.step(a).observation["image"] for a in actions]
        return np.stack(frames)

    first, other, again = episode(11), episode(12), episode(11)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert env.episode_length == 3
