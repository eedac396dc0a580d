"""MissingData (mummi_jax/envs/missing.py) on a fake env and on the toy robot."""

from __future__ import annotations

import dm_env
import numpy as np
import pytest
from dm_env import specs

from mummi_jax import envs, masks
from mummi_jax.envs.missing import MissingData


class Fake(dm_env.Environment):
    """Two modalities with nonzero values everywhere, an extra key, fixed-length episodes."""

    def __init__(self, length=50, announce=True):
        self.length = length
        self.announce = announce
        self.answer = 42  # forwarded attribute
        self.reseeded = None
        self._t = None

    def __getattribute__(self, name):
        if name == "episode_length" and not object.__getattribute__(self, "announce"):
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    @property
    def episode_length(self):
        return self.length

    def reseed(self, seed):
        self.reseeded = seed

    def observation_spec(self):
        return {
            "image": specs.Array((4, 4, 3), np.uint8, "image"),
            "image_flag": specs.BoundedArray((), np.float32, 0, 1, "image_flag"),
            "touch": specs.Array((2,), np.float32, "touch"),
            "touch_flag": specs.BoundedArray((), np.float32, 0, 1, "touch_flag"),
            "extra": specs.Array((3,), np.float32, "extra"),
        }

    def action_spec(self):
        return specs.BoundedArray((1,), np.float32, -1, 1, "action")

    def _obs(self):
        self.last_obs = {
            "image": np.full((4, 4, 3), 7, np.uint8),
            "image_flag": np.float32(1.0),
            "touch": np.full((2,), 0.5, np.float32),
            "touch_flag": np.float32(1.0),
            "extra": np.ones(3, np.float32),
        }
        return self.last_obs

    def reset(self):
        self._t = 0
        return dm_env.restart(self._obs())

    def step(self, action):
        if self._t is None or self._t >= self.length:
            return self.reset()
        self._t += 1
        if self._t == self.length:
            return dm_env.truncation(1.0, self._obs())
        return dm_env.transition(1.0, self._obs())


def _episode(env):
    obs = [env.reset().observation]
    ts = None
    while ts is None or not ts.last():
        ts = env.step(np.zeros(env.action_spec().shape, np.float32))
        obs.append(ts.observation)
    return obs


def test_zeroes_exactly_the_flagged_observations():
    inner = Fake(length=200)
    env = MissingData(inner, seed=0, missing="reference", missing_rate=0.1)
    assert env.modalities == ("image", "touch")
    obs = _episode(env)
    assert len(obs) == 201
    for o in obs:
        for m in ("image", "touch"):
            assert o[f"{m}_flag"].dtype == np.float32 and o[m].dtype == inner.last_obs[m].dtype
            assert o[f"{m}_flag"] in (0.0, 1.0)
            if o[f"{m}_flag"] == 0.0:
                assert not o[m].any()
            else:
                np.testing.assert_array_equal(o[m], inner.last_obs[m])
        np.testing.assert_array_equal(o["extra"], 1.0)  # not a modality: never touched
    # The inner env's own dict is left alone.
    assert inner.last_obs["image_flag"] == 1.0 and inner.last_obs["image"].all()
    frac = env.missing_fraction()
    for m in ("image", "touch"):
        flags = np.array([o[f"{m}_flag"] for o in obs])
        assert frac[m] == pytest.approx(1.0 - flags.mean())
        assert 0.0 < frac[m] < 1.0
        # Segments, not scattered steps.
        assert masks.run_lengths(flags == 0).mean() > 3


def test_modalities_are_independent():
    env = MissingData(Fake(length=500), seed=1, missing="reference", missing_rate=0.1)
    a, b = [], []
    for _ in range(12):
        obs = _episode(env)
        a += [o["image_flag"] == 0 for o in obs]
        b += [o["touch_flag"] == 0 for o in obs]
    a, b = np.array(a), np.array(b)
    assert abs(a.mean() - 0.455) < 0.05 and abs(b.mean() - 0.455) < 0.05
    assert abs((a & b).mean() - a.mean() * b.mean()) < 0.03
    assert (a != b).mean() > 0.3


def test_paper_fraction_is_exact_with_a_known_length():
    env = MissingData(Fake(length=100), seed=0, missing="paper", missing_rate=0.375)
    for _ in range(5):
        _episode(env)
        for m, f in env.missing_fraction().items():
            assert f == pytest.approx(round(0.375 * 101) / 101), m


@pytest.mark.parametrize(
    "missing, rate, target", [("reference", 0.1, 0.455), ("paper", 0.75, 0.75)]
)
def test_unknown_episode_length_grows_the_schedule(missing, rate, target):
    inner = Fake(length=1000, announce=False)
    assert not hasattr(inner, "episode_length")
    env = MissingData(inner, seed=0, missing=missing, missing_rate=rate)
    fracs = []
    for _ in range(3):
        assert len(_episode(env)) == 1001
        fracs += list(env.missing_fraction().values())
    assert abs(np.mean(fracs) - target) < 0.03


def test_set_missing_and_drop():
    env = MissingData(Fake(length=60), seed=0, missing="reference", missing_rate=0.1)
    env.set_missing("none")
    obs = _episode(env)
    assert all(o["image_flag"] == 1.0 and o["touch_flag"] == 1.0 for o in obs)
    assert env.missing_fraction() == {"image": 0.0, "touch": 0.0}
    env.set_missing("paper", 0.75)
    _episode(env)
    assert env.missing_fraction() == {"image": round(0.75 * 61) / 61} | {
        "touch": round(0.75 * 61) / 61
    }
    assert (env.missing, env.missing_rate) == ("paper", 0.75)

    env.set_missing("none")
    env.drop(["image"])
    obs = _episode(env)
    assert all(o["image_flag"] == 0.0 and not o["image"].any() for o in obs)
    assert all(o["touch_flag"] == 1.0 for o in obs)
    assert env.missing_fraction() == {"image": 1.0, "touch": 0.0}
    env.drop(())
    _episode(env)
    assert env.missing_fraction() == {"image": 0.0, "touch": 0.0}
    with pytest.raises(ValueError, match="image, touch"):
        env.drop(["depth"])
    with pytest.raises(ValueError, match="reference, paper, none"):
        env.set_missing("sometimes", 0.1)


def test_seeding_and_forwarding():
    def flags(env, episodes=3):
        return np.array([[o["image_flag"] for o in _episode(env)] for _ in range(episodes)])

    kw = dict(missing="reference", missing_rate=0.1)
    a, b = MissingData(Fake(), seed=5, **kw), MissingData(Fake(), seed=5, **kw)
    fa = flags(a)
    np.testing.assert_array_equal(fa, flags(b))
    assert (fa != flags(MissingData(Fake(), seed=6, **kw))).any()
    # reseed restarts the mask stream and reaches the inner env (exact resumption).
    a.reseed(5)
    assert a.reseeded == 5
    np.testing.assert_array_equal(fa, flags(a))
    assert a.answer == 42 and a.episode_length == 50
    with pytest.raises(AttributeError):
        _ = a.no_such_attribute


def test_through_the_dispatcher_on_the_toy_robot():
    env = envs.make(
        "toy_position_camera", seed=0, missing="paper", missing_rate=0.375, time_limit=40
    )
    assert isinstance(env, MissingData)
    obs = _episode(env)
    assert len(obs) == 41
    for m in ("position", "camera"):
        flags = np.array([o[f"{m}_flag"] for o in obs])
        assert (flags == 0).sum() == round(0.375 * 41)
        assert all(not o[m].any() for o in obs if o[f"{m}_flag"] == 0)
    # The true position is not a modality: always present.
    assert all(np.abs(o["true_position"]).sum() > 0 for o in obs)
    with pytest.raises(ValueError, match="reference, paper, none"):
        envs.make("toy_xy", missing="often")
