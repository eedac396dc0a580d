"""robosuite Wipe adapter (`mummi_jax.envs.wipe`): spec, cameras, missing data, seeding.

robosuite and dm_control must not create GL contexts in one process (environments.md §4.4),
and this pytest process runs dm_control tests too. So every Wipe env lives in one child
process (this file run as a script, `_probe`), which writes plain arrays and numbers to an
`.npz` that the tests below check. The child takes about 30-40 s on the 2-core machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
HAS_ROBOSUITE = importlib.util.find_spec("robosuite") is not None
# requirements.txt installs robosuite, so CI must run these; elsewhere a missing one skips.
needs_robosuite = pytest.mark.skipif(
    not HAS_ROBOSUITE and not os.environ.get("CI"),
    reason="robosuite not installed (pip install -r requirements.txt -e .)",
)
CAMS = ("workspace", "eye_in_hand")
STEPS = 12  # time_limit of the spec episode (env steps = agent steps at action_repeat 1)


# ---------------------------------------------------------------------------- child process


def _actions(n: int, seed: int = 0) -> np.ndarray:
    # Small actions: large random OSC deltas drive the arm into the table (an early end).
    return 0.3 * np.random.default_rng(seed).uniform(-1, 1, (n, 6)).astype(np.float32)


def _check(spec: dict, obs: dict) -> list[str]:
    errors = [f"keys {sorted(obs)} != spec {sorted(spec)}"] if set(obs) != set(spec) else []
    for key, s in spec.items():
        try:
            s.validate(np.asarray(obs[key]))
            if np.asarray(obs[key]).dtype != s.dtype:
                errors.append(f"{key}: dtype {np.asarray(obs[key]).dtype} != {s.dtype}")
        except Exception as e:  # noqa: BLE001 - reported back to the parent as text
            errors.append(f"{key}: {e}")
    return errors


def _probe(out_path: str) -> None:
    """Builds the Wipe envs, runs them and saves what the tests check."""
    from mummi_jax.envs import wipe

    out, info = {}, {}
    mods = ("workspace", "eye_in_hand", "proprio")

    # A: one short episode, checked against the spec at every step.
    env = wipe.make("wipe", seed=0, modalities=mods, time_limit=STEPS)
    spec = env.observation_spec()
    info["spec"] = {k: [list(s.shape), str(s.dtype)] for k, s in spec.items()}
    info["action_spec"] = [
        list(env.action_spec().shape),
        float(env.action_spec().minimum),
        float(env.action_spec().maximum),
        str(env.action_spec().dtype),
    ]
    info["episode_length"] = env.episode_length
    info["render_settings"] = env.render_settings
    errors, types, rewards, discounts, first_obs = [], [], [], [], []
    ts = env.reset()
    types.append(int(ts.step_type))
    rewards.append(ts.reward)
    discounts.append(ts.discount)
    errors += _check(spec, ts.observation)
    first_obs.append(ts.observation)
    for a in _actions(STEPS + 5):
        ts = env.step(a)
        types.append(int(ts.step_type))
        rewards.append(float(ts.reward))
        discounts.append(float(ts.discount))
        errors += _check(spec, ts.observation)
        first_obs.append(ts.observation)
        if ts.last():
            break
    info["after_last"] = int(env.step(_actions(1)[0]).step_type)  # auto-reset: FIRST
    ctx = env.sim._render_context_offscreen
    for m, cam in wipe.CAMERAS.items():  # frustum culling leaves every pixel as it was
        cid = env.sim.model.camera_name2id(cam)
        ctx.render(64, 64, cid)
        out[f"culled_{m}"] = ctx.read_pixels(64, 64)
        env._render_unculled(64, 64, cid)
        out[f"unculled_{m}"] = ctx.read_pixels(64, 64)
    info.update(errors=errors, types=types, rewards=rewards[1:], discounts=discounts[1:])
    for m in CAMS:
        out[f"a_{m}"] = np.stack([o[m] for o in first_obs])
    out["a_proprio"] = np.stack([o["proprio"] for o in first_obs])

    # B: the same seed gives the same observations; another seed, other markings.
    env_b = wipe.make("wipe", seed=0, modalities=mods, time_limit=STEPS)
    obs_b = [env_b.reset().observation]
    for a in _actions(4):
        obs_b.append(env_b.step(a).observation)
    for m in CAMS:
        out[f"b_{m}"] = np.stack([o[m] for o in obs_b])
    out["b_proprio"] = np.stack([o["proprio"] for o in obs_b])
    env_b.reseed(1)
    out["b_seed1_workspace"] = env_b.reset().observation["workspace"]
    env_b.close()

    # C: domain randomisation changes the scene per episode, reproducibly per seed.
    env_c = wipe.make("wipe", seed=0, time_limit=5, domain_randomization=True)
    dr = [env_c.reset().observation for _ in range(2)]
    env_c.reseed(0)
    dr.append(env_c.reset().observation)
    for m in CAMS:
        out[f"c_{m}"] = np.stack([o[m] for o in dr])
    env_c.close()

    # D: the missing-data wrapper per camera, and dropping the workspace camera.
    has_missing = importlib.util.find_spec("mummi_jax.envs.missing") is not None
    info["has_missing"] = has_missing
    if has_missing:
        from mummi_jax import envs

        env_d = envs.make("wipe", seed=0, missing="reference", missing_rate=0.3, time_limit=40)
        obs_d = [env_d.reset().observation]
        for a in _actions(39, seed=1):
            obs_d.append(env_d.step(a).observation)
        env_d.drop(["workspace"])
        obs_drop = [env_d.reset().observation]
        for a in _actions(9, seed=2):
            obs_drop.append(env_d.step(a).observation)
        for name, seq in (("d", obs_d), ("drop", obs_drop)):
            for m in CAMS:
                out[f"{name}_{m}"] = np.stack([o[m] for o in seq])
                out[f"{name}_{m}_flag"] = np.array([o[f"{m}_flag"] for o in seq])
    else:
        # Until missing.py lands: evaluation without the workspace camera = not rendering it.
        env_d = wipe.make("wipe", seed=0, modalities=("eye_in_hand",), time_limit=5)
        ts = env_d.reset()
        info["eye_only_keys"] = sorted(env_d.observation_spec())
        info["eye_only_errors"] = _check(env_d.observation_spec(), ts.observation)
        out["eye_only"] = ts.observation["eye_in_hand"]
    env_d.close()
    env.close()

    # F: dm_env's own conformance suite (a peer's test, not ours) on the Wipe adapter.
    import io
    import unittest

    from dm_env import test_utils

    class WipeConformance(test_utils.EnvironmentTestMixin, unittest.TestCase):
        def make_object_under_test(self):
            return wipe.make("wipe", seed=0, modalities=mods, time_limit=STEPS)

    suite = unittest.defaultTestLoader.loadTestsFromTestCase(WipeConformance)
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
    info["conformance"] = {
        "run": result.testsRun,
        "problems": [f"{t.id()}: {tb[-800:]}" for t, tb in result.failures + result.errors],
    }

    # E: the mujoco-compat patch. 100 steps with no cameras; the golden numbers came from
    # the same script on unpatched mujoco 3.9.0 (robosuite 1.5.1), where no patch applies.
    env_e = wipe.make("wipe", seed=7, modalities=("proprio",), time_limit=100)
    env_e.reset()
    ret, rng = 0.0, np.random.default_rng(7)
    for _ in range(100):
        ts = env_e.step(0.3 * rng.uniform(-1, 1, 6))
        ret += ts.reward
    info["compat"] = [ret, float(ts.observation["proprio"].sum()), env_e._steps]
    env_e.close()
    np.savez(out_path, info=json.dumps(info), **out)


# ---------------------------------------------------------------------------- parent process


# The probe costs 25 s of robosuite start-up; one xdist worker runs every test that reads it
# (`--dist loadgroup`, pyproject.toml), instead of each worker making its own.
ON_THE_PROBE_S_WORKER = pytest.mark.xdist_group("wipe_probe")


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    path = tmp_path_factory.mktemp("wipe") / "probe.npz"
    env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, __file__, str(path)],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = np.load(path)
    return json.loads(str(data["info"])), {k: data[k] for k in data.files if k != "info"}


@needs_robosuite
@ON_THE_PROBE_S_WORKER
def test_spec_over_an_episode(probe):
    info, out = probe
    assert info["errors"] == []
    assert info["spec"]["workspace"] == [[64, 64, 3], "uint8"]
    assert info["spec"]["eye_in_hand"] == [[64, 64, 3], "uint8"]
    assert info["spec"]["proprio"][1] == "float32"
    for m in ("workspace", "eye_in_hand", "proprio"):
        assert info["spec"][f"{m}_flag"] == [[], "float32"]
    assert info["action_spec"] == [[6], -1.0, 1.0, "float32"]
    assert info["episode_length"] == STEPS
    types = info["types"]
    # FIRST, MID..., LAST at the time limit (a truncation: discount 1), then auto-reset.
    assert types[0] == 0 and types[-1] == 2 and set(types[1:-1]) <= {1}
    assert len(types) == STEPS + 1
    assert info["discounts"][-1] == 1.0 and all(d == 1.0 for d in info["discounts"])
    assert all(np.isfinite(info["rewards"]))
    assert info["after_last"] == 0
    rs = info["render_settings"]
    assert rs["msaa_samples"] == 0 and rs["reflections"] is False
    assert rs["offscreen_buffer"] == [64, 64]
    assert rs["frustum_culling"] is True
    for m in CAMS:
        assert out[f"culled_{m}"].std() > 10.0
        np.testing.assert_array_equal(out[f"culled_{m}"], out[f"unculled_{m}"])


@needs_robosuite
@ON_THE_PROBE_S_WORKER
def test_cameras_differ_and_are_right_side_up(probe):
    _, out = probe
    ws, eye = out["a_workspace"], out["a_eye_in_hand"]
    for img in (ws, eye):
        assert img.std() > 10.0  # not blank
    assert np.abs(ws.astype(np.int16) - eye.astype(np.int16)).mean() > 10.0
    # agentview: the white table fills the bottom of the frame, floor and wall the top.
    top, bottom = ws[:, :16].mean(), ws[:, -16:].mean()
    assert bottom > top + 30.0
    # The arm moves: the wrist camera's view changes over the episode.
    assert np.abs(eye[-1].astype(np.int16) - eye[0].astype(np.int16)).mean() > 1.0


@needs_robosuite
@ON_THE_PROBE_S_WORKER
def test_same_seed_same_observations(probe):
    _, out = probe
    n = len(out["b_workspace"])
    for m in ("workspace", "eye_in_hand", "proprio"):
        np.testing.assert_array_equal(out[f"a_{m}"][:n], out[f"b_{m}"])
    # Another seed draws another marker path on the table.
    assert np.abs(out["b_seed1_workspace"].astype(int) - out["a_workspace"][0]).mean() > 0.5


@needs_robosuite
@ON_THE_PROBE_S_WORKER
def test_domain_randomisation_per_episode_and_seeded(probe):
    _, out = probe
    for m in CAMS:
        first, second, reseeded = out[f"c_{m}"].astype(np.int16)
        assert np.abs(first - second).mean() > 1.0
        np.testing.assert_array_equal(first, reseeded)
    # Same seed as env A, so the only difference from A's first frame is the randomisation.
    assert np.abs(out["c_workspace"][0].astype(int) - out["a_workspace"][0]).mean() > 1.0


@needs_robosuite
@ON_THE_PROBE_S_WORKER
def test_missing_data_per_camera_and_drop(probe):
    info, out = probe
    if not info["has_missing"]:
        # The raw adapter: evaluating without the workspace camera does not render it.
        assert info["eye_only_keys"] == ["eye_in_hand", "eye_in_hand_flag"]
        assert info["eye_only_errors"] == []
        assert out["eye_only"].std() > 10.0
        return
    for m in CAMS:
        flags, imgs = out[f"d_{m}_flag"], out[f"d_{m}"]
        assert 0 < flags.sum() < len(flags), (m, flags)  # some missing, some observed
        missing = flags == 0
        assert not imgs[missing].any()  # a missing image is all zeros
        assert all(img.std() > 10.0 for img in imgs[~missing])
    # drop(["workspace"]): that camera is gone at every step, the other still arrives.
    assert not out["drop_workspace_flag"].any() and not out["drop_workspace"].any()
    assert out["drop_eye_in_hand_flag"].sum() > 0


@needs_robosuite
@ON_THE_PROBE_S_WORKER
def test_patched_mujoco_matches_unpatched_trajectory(probe):
    info, _ = probe
    ret, proprio_sum, steps = info["compat"]
    assert steps == 100
    # Unpatched mujoco 3.9.0 gave return 0.547259 and final proprio sum 4.892498.
    np.testing.assert_allclose([ret, proprio_sum], [0.547259, 4.892498], atol=2e-5)


@needs_robosuite
@ON_THE_PROBE_S_WORKER
def test_dm_env_conformance_suite(probe):
    info, _ = probe
    assert info["conformance"]["run"] == 4, info["conformance"]
    assert not info["conformance"]["problems"], "\n".join(info["conformance"]["problems"])


def test_unknown_option_lists_valid_ones():
    from mummi_jax.envs import wipe

    with pytest.raises(ValueError, match="valid: .*action_repeat.*time_limit"):
        wipe.make("wipe", seed=0, colour=True)
    with pytest.raises(ValueError, match="valid: color, camera, lighting"):
        wipe.make("wipe", seed=0, randomize=("texture",))


def test_missing_robosuite_says_how_to_install(monkeypatch):
    from mummi_jax.envs import wipe

    monkeypatch.setitem(sys.modules, "robosuite", None)  # import robosuite -> ImportError
    with pytest.raises(ImportError, match=r"pip install .*requirements.txt"):
        wipe.make("wipe", seed=0)


# A tiny MuMMI run on Wipe: 3 episodes of 20 agent steps (40 env steps at action repeat 2),
# the last one with the agent and its train phases, one evaluation.
WIPE_SMALL = [
    "env.image_size=16",
    "model.cnn_layers=2",
    "env.time_limit=20",
    "train.steps=120",
    "train.prefill_episodes=2",
    "train.train_every=40",
    "train.train_steps=2",
    "train.updates_per_call=2",
    "train.batch=4",
    "train.length=6",
    "train.eval_every=80",
    "train.test_episodes=1",
]


@pytest.mark.slow
@needs_robosuite
def test_tiny_mummi_trains_and_evaluates_table2_on_wipe(tmp_path):
    """experiments.train then experiments.evaluate on `wipe`, each in its own process (GL)."""
    env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONPATH": str(REPO)}
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", *args], env=env, cwd=str(REPO), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    sets = [f"--set={o}" for o in WIPE_SMALL]
    logdir = f"--logdir={tmp_path}"
    proc = run("experiments.train", "--method=mummi", "--task=wipe", "--size=tiny", logdir,
               "--progress=false", *sets)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    config = json.load(open(tmp_path / "config.json"))
    assert config["env"]["task"] == "wipe" and config["method"] == "mummi"
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    # 2 prefill episodes of 40 env steps, then the agent's, until 120 env steps are done;
    # Wipe may end an episode early (a collision or a joint limit).
    ends = [r["step"] for r in lines if "train/return" in r]
    assert ends[:2] == [40, 80] and ends[-1] >= 120 and ends[-2] < 120
    assert all(0 < b - a <= 40 for a, b in zip(ends, ends[1:], strict=False))
    losses = [r["wm/loss"] for r in lines if "wm/loss" in r]
    assert losses and all(np.isfinite(losses))
    assert any(k.startswith("wm/nce/workspace") for r in lines for k in r)
    assert any("eval/return" in r for r in lines)
    assert os.listdir(tmp_path / "checkpoints")

    proc = run("experiments.evaluate", logdir, "--episodes=1", "--videos=false")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.load(open(tmp_path / "results.json"))
    assert results["protocol"] == "table2"
    evals = results["evaluations"]
    assert set(evals) == {"all_full", "all_medium", "robot_full", "robot_medium"}
    for level in ("robot_full", "robot_medium"):
        assert evals[level]["modalities"] == ["eye_in_hand"]
        assert evals[level]["actual_missing"]["workspace"] == 1.0  # the dropped camera
    assert evals["all_full"]["actual_missing"] == {"workspace": 0.0, "eye_in_hand": 0.0}
    for level in evals.values():
        assert len(level["returns"]) == 1 and np.isfinite(level["mean"])


if __name__ == "__main__":
    _probe(sys.argv[1])
