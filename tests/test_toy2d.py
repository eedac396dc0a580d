"""The toy 2D robot (mummi_jax/envs/toy2d.py): specs, dynamics, reward, rendering, seeding."""

from __future__ import annotations

import time

import dm_env
import numpy as np
import pytest
from absl.testing import absltest
from dm_env import test_utils

from mummi_jax import envs
from mummi_jax.envs import toy2d

MODALITIES = {
    "toy_position_camera": ("position", "camera"),
    "toy_front_back": ("front", "back"),
    "toy_xy": ("x", "y"),
}


def _check(value, spec, key):
    value = np.asarray(value)
    assert value.shape == spec.shape and value.dtype == spec.dtype, key
    spec.validate(value)


@pytest.mark.parametrize("name", toy2d.TASKS)
def test_every_step_honours_the_spec(name):
    # 10 env steps at repeat 3: 4 agent steps, the last one cut to a single env step.
    env = toy2d.make(name, seed=0, image_size=16, action_repeat=3, time_limit=10)
    assert env.episode_length == 4
    obs_spec, act_spec = env.observation_spec(), env.action_spec()
    assert set(obs_spec) == {k for m in MODALITIES[name] for k in (m, f"{m}_flag")} | {
        "true_position"
    }
    assert act_spec.shape == (2,) and act_spec.dtype == np.float32
    rng = np.random.default_rng(0)
    for _ in range(2):
        ts = env.reset()
        assert ts.step_type == dm_env.StepType.FIRST and ts.reward is None and ts.discount is None
        types = []
        while True:
            assert set(ts.observation) == set(obs_spec)
            for key, spec in obs_spec.items():
                _check(ts.observation[key], spec, key)
            if ts.last():
                break
            ts = env.step(rng.uniform(-2, 2, 2))  # out-of-range actions are clipped
            types.append(ts.step_type)
            assert 0.0 < ts.reward <= 3.0 and ts.discount == 1.0
        assert types == [dm_env.StepType.MID] * 3 + [dm_env.StepType.LAST]
    # After LAST, step() starts a new episode.
    assert env.step(np.zeros(2)).step_type == dm_env.StepType.FIRST


def test_sensors_agree_with_the_true_position():
    for name in ("toy_position_camera", "toy_xy"):
        env = toy2d.make(name, seed=3, time_limit=30)
        ts = env.reset()
        while not ts.last():
            o = ts.observation
            np.testing.assert_allclose(o["true_position"], env.position, atol=1e-6)
            if name == "toy_xy":
                np.testing.assert_array_equal(np.concatenate([o["x"], o["y"]]), o["true_position"])
            else:
                np.testing.assert_array_equal(o["position"], o["true_position"])
            ts = env.step(np.array([1.0, -0.5]))
        # Pushed into a wall it stays in the box, at the wall.
        assert env.position[0] == 1.0 and env.position[1] == -1.0


def test_velocity_actions_and_max_speed():
    env = toy2d.make("toy_xy", seed=0, action_repeat=2)
    env.reset()
    env._pos = np.zeros(2)
    env.step(np.array([1.0, -0.5], np.float32))
    np.testing.assert_allclose(env.position, [2 * toy2d.MAX_SPEED, -toy2d.MAX_SPEED])


def test_reward_is_higher_near_the_goal():
    goal = toy2d.GOAL
    assert toy2d.Toy2D.reward_at(goal) == pytest.approx(1.0)
    dists = [toy2d.Toy2D.reward_at(goal + d) for d in (0.1, 0.3, 0.6, 1.0)]
    assert all(a > b for a, b in zip(dists, dists[1:], strict=False))
    assert toy2d.Toy2D.reward_at([-1.0, -1.0]) > 0.0

    def episode_return(policy):
        env = toy2d.make("toy_xy", seed=1, time_limit=60)
        ts, ret = env.reset(), 0.0
        while not ts.last():
            ts = env.step(policy(ts.observation["true_position"]))
            ret += ts.reward
        return ret

    toward = episode_return(lambda p: np.clip((goal - p) / toy2d.MAX_SPEED, -1, 1))
    away = episode_return(lambda p: -np.sign(goal - p))
    assert toward > 45 and away < 10  # 60 steps, reward in (0, 1]


def test_same_seed_same_trajectory():
    def run(seed):
        env = toy2d.make("toy_front_back", seed=seed, time_limit=15)
        rng = np.random.default_rng(0)
        ts = env.reset()
        out = [ts.observation]
        while not ts.last():
            ts = env.step(rng.uniform(-1, 1, 2))
            out.append(ts.observation)
        return out

    a, b, c = run(7), run(7), run(8)
    for oa, ob in zip(a, b, strict=True):
        for k in oa:
            np.testing.assert_array_equal(oa[k], ob[k])
    assert not np.array_equal(a[0]["true_position"], c[0]["true_position"])
    # reseed replays the first episode of a fresh env with that seed.
    env = toy2d.make("toy_xy", seed=0)
    env.reset()
    env.reseed(7)
    np.testing.assert_array_equal(env.reset().observation["true_position"], a[0]["true_position"])


def _at(env, pos):
    env.reset()
    env._pos = np.asarray(pos, float)
    return env._observe()


def test_ceiling_camera_sees_the_robot_where_it_is():
    env = toy2d.make("toy_position_camera", image_size=32)
    for pos in [(-0.6, -0.6), (0.0, 0.0), (0.7, 0.3), (-0.2, 0.8)]:
        img = _at(env, pos)["camera"].astype(int)
        red = (img[..., 0] > 200) & (img[..., 1] < 100)
        assert 10 < red.sum() < 60  # a disc of radius 0.15 = 2.4 pixels
        rows, cols = np.nonzero(red)
        x = -1 + (cols.mean() + 0.5) * 2 / 32
        y = 1 - (rows.mean() + 0.5) * 2 / 32
        assert abs(x - pos[0]) < 0.07 and abs(y - pos[1]) < 0.07


def test_front_and_back_cameras_are_informative():
    env = toy2d.make("toy_front_back", image_size=32)
    grid = [(x, y) for x in (-0.6, 0.0, 0.6) for y in (-0.6, 0.0, 0.6)]
    obs = [_at(env, p) for p in grid]
    # Every position looks different to each camera, and the same position looks the same.
    for m in ("front", "back"):
        flat = np.stack([o[m].reshape(-1).astype(int) for o in obs])
        dist = np.abs(flat[:, None] - flat[None]).mean(-1)
        assert dist[~np.eye(len(grid), dtype=bool)].min() > 2.0
        np.testing.assert_array_equal(_at(env, grid[4])[m], obs[4][m])

    def wall_height(img):  # rows of the centre column that are neither ceiling nor floor
        col = img[:, img.shape[1] // 2].astype(int)
        return sum(
            not (np.array_equal(c, toy2d._CEILING) or np.array_equal(c, toy2d._FLOOR)) for c in col
        )

    # Nearer the north wall, it fills more of the front image and less of the back one.
    near, far = _at(env, (0.0, 0.6)), _at(env, (0.0, -0.6))
    assert wall_height(near["front"]) > wall_height(far["front"])
    assert wall_height(near["back"]) < wall_height(far["back"])
    # The front camera sees the north wall's colour (red-dominant) straight ahead.
    centre = near["front"][16, 16].astype(int)
    assert centre[0] > centre[1] and centre[0] > centre[2]


def test_step_cost():
    env = toy2d.make("toy_front_back", image_size=32, time_limit=10_000)
    env.reset()
    action = np.array([0.3, -0.2], np.float32)
    start = time.perf_counter()
    for _ in range(500):
        env.step(action)
    per_step = (time.perf_counter() - start) / 500
    # ~0.15 ms measured alone; loose bound for a shared machine.
    assert per_step < 1e-3


def test_unknown_names_and_options():
    with pytest.raises(ValueError, match="toy_front_back, toy_position_camera, toy_xy"):
        toy2d.make("toy_maze")
    with pytest.raises(ValueError, match="valid: action_repeat, image_size"):
        toy2d.make("toy_xy", colour="red")
    with pytest.raises(ValueError, match="valid modalities: x, y"):
        toy2d.make("toy_xy", modalities=("camera",))
    with pytest.raises(ValueError, match="time_limit"):
        toy2d.make("toy_xy", time_limit=0)
    with pytest.raises(ValueError, match="valid tasks"):
        envs.make("toy_nothing")
    # A subset of the modalities.
    env = toy2d.make("toy_position_camera", modalities=("camera",))
    assert set(env.observation_spec()) == {"camera", "camera_flag", "true_position"}


class _Conformance(test_utils.EnvironmentTestMixin):
    task = ""

    def make_object_under_test(self):
        # Through the dispatcher, so the missing-data wrapper is covered too.
        return envs.make(
            self.task, seed=0, image_size=16, time_limit=8, missing="reference", missing_rate=0.3
        )

    def make_action_sequence(self):
        rng = np.random.default_rng(0)
        for _ in range(20):  # crosses two episode ends
            yield rng.uniform(-1, 1, 2).astype(np.float32)


class ConformancePositionCamera(_Conformance, absltest.TestCase):
    task = "toy_position_camera"


class ConformanceFrontBack(_Conformance, absltest.TestCase):
    task = "toy_front_back"


class ConformanceXY(_Conformance, absltest.TestCase):
    task = "toy_xy"


def test_no_constant_action_beats_random_actions():
    # The reaching task must need feedback: with the goal off-centre, a constant action towards
    # it beat random actions, and agents settled there, pinned to a wall (toy2d's docstring).
    def mean_return(policy, episodes=40):
        env = toy2d.make("toy_xy", seed=3, time_limit=200, action_repeat=2)
        rng, total = np.random.default_rng(0), 0.0
        for _ in range(episodes):
            ts = env.reset()
            while not ts.last():
                ts = env.step(policy(rng))
                total += ts.reward
        return total / episodes

    rand = mean_return(lambda rng: rng.uniform(-1, 1, 2))
    for a in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (0, -1), (0.3, 0.3)):
        assert mean_return(lambda rng, a=a: np.array(a, np.float32)) < rand, a
