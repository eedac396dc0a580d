"""Spawned environment workers (mummi_jax/envs/workers.py)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from mummi_jax.envs.workers import EnvPool, WorkerError

DMC = "mummi_jax.envs.dmc:make"
KW = dict(background="procedural", time_limit=6, factory=DMC)


def _rollout_in_process(seed, actions):
    from mummi_jax.envs import dmc

    kw = {k: v for k, v in KW.items() if k != "factory"}
    env = dmc.make("finger_spin", seed=seed, **kw)
    out = [env.reset()]
    out += [env.step(a) for a in actions]
    return out


def test_workers_match_in_process_envs():
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 2, 2)).astype(np.float32)
    with EnvPool([dict(name="finger_spin", seed=s, **KW) for s in (0, 1)]) as pool:
        assert len(pool) == 2 and pool.action_specs[0].shape == (2,)
        firsts = pool.reset_all()
        steps = [pool.step(list(a)) for a in actions]
        assert steps[-1][0].last() and steps[-1][1].last()
        again = pool.reset(1)
    for i, seed in enumerate((0, 1)):
        ref = _rollout_in_process(seed, actions[:, i])
        got = [firsts[i]] + [s[i] for s in steps]
        for r, g in zip(ref, got, strict=True):
            assert r.step_type == g.step_type and r.reward == g.reward
            for key in r.observation:
                np.testing.assert_array_equal(r.observation[key], g.observation[key])
    assert again.first()


def test_worker_errors_reraise_with_traceback():
    with pytest.raises(WorkerError, match=r"(?s)Traceback.*ValueError.*valid tasks"):
        EnvPool([dict(name="walker_fly", factory=DMC)])
    with EnvPool([dict(name="pendulum_swingup", **KW)]) as pool:
        pool.reset(0)
        with pytest.raises(WorkerError, match=r"(?s)Traceback.*no_such_method"):
            pool.call(0, "no_such_method")
        # The worker survives an error in a call.
        assert pool.step([np.zeros(1, np.float32)])[0].mid()
    assert all(not p.is_alive() for p in pool._procs)


@pytest.mark.skipif(
    importlib.util.find_spec("mummi_jax.envs.missing") is None,
    reason="mummi_jax.envs.missing not written yet",
)
def test_default_factory_is_envs_make():
    kw = {k: v for k, v in KW.items() if k != "factory"}
    with EnvPool([dict(name="pendulum_swingup", seed=0, missing="none", **kw)]) as pool:
        ts = pool.reset(0)
        assert ts.observation["image_flag"] == 1.0
