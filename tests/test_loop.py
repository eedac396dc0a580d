"""The host loop end to end: every preset writes metrics, checkpoints and results; resume
after kill -9 continues exactly; bad logdirs, corrupt checkpoints and NaNs stop cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mummi_jax import config as C
from mummi_jax import envs, presets
from mummi_jax.agent import Agent
from mummi_jax.checkpoint import atomic_write
from mummi_jax.episodes import env_kwargs_from_config, run_episode, run_episodes
from mummi_jax.replay import Replay, prefetch
from mummi_jax.runner import Runner

# A few hundred env steps on the toy robot: 4 episodes of 100 env steps, two train phases.
SMALL = [
    "env.image_size=16",
    "model.cnn_layers=2",
    "env.time_limit=100",
    "train.steps=400",
    "train.prefill_episodes=2",
    "train.train_every=100",
    "train.train_steps=4",
    "train.updates_per_call=2",
    "train.batch=4",
    "train.length=6",
    "train.eval_every=200",
    "train.test_episodes=1",
]


def make_runner(method, logdir, task="toy_position_camera", extra=()):
    config = presets.make_config(method, task, "tiny", overrides=SMALL + list(extra))
    kwargs = env_kwargs_from_config(config)
    probe = envs.make(**kwargs, seed=config.seed)
    agent = Agent(config, probe.observation_spec(), probe.action_spec())
    os.makedirs(logdir, exist_ok=True)
    atomic_write(os.path.join(logdir, "config.json"), config.to_json().encode())
    return Runner(config, str(logdir), agent=agent, env_kwargs=kwargs, progress=False)


def read_metrics(logdir):
    with open(os.path.join(logdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("method", C.METHODS)
def test_every_preset_runs_end_to_end_compiles_once_and_learns_a_fixed_batch(method, tmp_path):
    from experiments.evaluate import evaluate_logdir
    from tests.test_agent import assert_learns_a_fixed_batch

    runner = make_runner(method, tmp_path)
    state, _ = runner.train()
    # Then 200 more updates on one fixed batch with the run's own train step (the shapes of
    # its replay batches): the world model learns it, and every train phase and this share
    # one trace.
    assert_learns_a_fixed_batch(runner.parallel, state, runner.agent.obs_spec)
    assert runner.parallel.traces["train"] == 1
    lines = read_metrics(tmp_path)
    assert [r["step"] for r in lines if "train/return" in r] == [100, 200, 300, 400]
    assert any("wm/loss" in r for r in lines) and any("eval/return" in r for r in lines)
    assert os.listdir(tmp_path / "checkpoints")
    results = evaluate_logdir(str(tmp_path), episodes=1)
    assert results["protocol"] == "table1" and set(results["evaluations"]) == {
        "none",
        "medium",
        "high",
    }
    assert json.load(open(tmp_path / "results.json"))["method"] == method
    # One GIF per level, frames of the camera the agent saw.
    from PIL import Image

    gif = Image.open(tmp_path / results["evaluations"]["none"]["video"])
    side = 2 * (16 + runner.config.env.crop_margin)  # the rendered camera (CoRAL: + margin)
    assert gif.size == (side, side)  # 16x16 camera, scaled 2x
    # 51 steps at 50 ms; the writer merges identical consecutive frames into one longer one.
    durations = []
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
    assert sum(durations) == 51 * 50, durations


def _train_cmd(logdir, steps):
    flags = [f"--set={o}" for o in SMALL if not o.startswith("train.steps")]
    return [
        sys.executable,
        "-m",
        "experiments.train",
        "--method=mummi",
        "--task=toy_xy",
        "--size=tiny",
        f"--logdir={logdir}",
        f"--set=train.steps={steps}",
        "--progress=false",
        *flags,
    ]


def _numbers(lines):
    # Wall-clock figures differ between any two runs; everything else must match.
    return [
        {k: v for k, v in r.items() if k != "wall" and not k.startswith("perf/")} for r in lines
    ]


@pytest.mark.slow
def test_kill_minus_9_then_rerun_resumes_exactly(tmp_path):
    steps = 800
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_cmd(straight, steps), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(
        _train_cmd(killed, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline:  # kill once a checkpoint after training exists
        ckpts = os.listdir(killed / "checkpoints") if (killed / "checkpoints").exists() else []
        if any(int(c[5:14]) >= 400 for c in ckpts if c.startswith("ckpt-")):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_metrics(killed)[-1]["step"] < steps, "the run finished before it was killed"
    subprocess.run(_train_cmd(killed, steps), check=True, capture_output=True, timeout=300)
    a, b = _numbers(read_metrics(straight)), _numbers(read_metrics(killed))
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-6, abs=1e-6), (k, x["step"])


def test_a_logdir_with_another_config_is_refused(tmp_path):
    cmd = _train_cmd(tmp_path, 100)
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    before = (tmp_path / "metrics.jsonl").read_bytes()
    other = [c if not c.startswith("--method") else "--method=cvrl" for c in cmd]
    out = subprocess.run(other, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "different config" in out.stderr and "method" in out.stderr
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_a_hand_built_config_saves_the_touch_site_it_senses(tmp_path):
    """A Config not made by presets may leave `env.touch_site` empty; config.json must still
    name the site, or a later change of the task's default would be read back wrongly."""
    config = C.override(presets.make_config("mummi", "walker_walk", "tiny"), {"env.touch_site": ""})
    kwargs = env_kwargs_from_config(config)
    probe = envs.make(**kwargs, seed=config.seed)
    agent = Agent(config, probe.observation_spec(), probe.action_spec())
    runner = Runner(config, str(tmp_path), agent=agent, env_kwargs=kwargs, progress=False)
    assert runner.config.env.touch_site == "sole"
    assert C.read_saved(str(tmp_path / "config.json"))["env"]["touch_site"] == "sole"
    Runner(config, str(tmp_path), agent=agent, env_kwargs=kwargs, progress=False)  # resumes
    legacy = C.override(config, {"env.touch_site": "sole_box"})
    with pytest.raises(ValueError, match="differs in env.touch_site"):
        Runner(legacy, str(tmp_path), agent=agent, env_kwargs=kwargs, progress=False)


def test_unknown_names_answer_in_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--task=walker_fly", "--logdir=/tmp/x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "unknown task 'walker_fly'" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--set=model.deter=x", "--logdir=/tmp/x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "wrong type" in out.stderr


def test_corrupt_checkpoint_names_the_file_and_the_fix(tmp_path):
    runner = make_runner("mummi", tmp_path, extra=["train.steps=200"])
    runner.train()
    newest = sorted((tmp_path / "checkpoints").iterdir())[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(RuntimeError, match=f"corrupt checkpoint {newest}.*delete it"):
        make_runner("mummi", tmp_path, extra=["train.steps=200"]).train()


def test_nan_losses_stop_with_the_metric_name_and_keep_the_checkpoint(tmp_path):
    runner = make_runner("mummi", tmp_path)
    real_train = runner.parallel.train

    def poisoned(state, batch, active):
        state, metrics = real_train(state, batch, active)
        return state, {**metrics, "wm/loss": np.full_like(metrics["wm/loss"], np.nan)}

    runner.parallel.train = poisoned
    with pytest.raises(FloatingPointError, match="wm/loss is nan at env step 200"):
        runner.train()
    assert sorted(os.listdir(tmp_path / "checkpoints"))  # the prefill checkpoints survive


def test_replay_batches_keep_the_documented_alignment(tmp_path):
    replay = Replay(str(tmp_path), capacity=10_000, seed=0, action_repeat=2)
    L = 12
    episode = {
        "x": np.arange(L, dtype=np.float32)[:, None],
        "x_flag": np.ones(L, np.float32),
        "action": np.arange(L, dtype=np.float32)[:, None] - 1,
        "reward": np.arange(L, dtype=np.float32),
        "discount": np.ones(L, np.float32),
        "is_first": (np.arange(L) == 0).astype(np.float32),
        "depth": np.zeros((L, 2, 2, 1), np.float32),
    }
    replay.add(episode, 0)
    batch = replay.sample(2, 3, 5)
    assert batch["x"].shape == (2, 3, 5, 1) and batch["depth"].dtype == np.float16
    # obs t, the action that led to it (t - 1 here) and its reward stay aligned.
    np.testing.assert_array_equal(batch["action"][..., 0], batch["x"][..., 0] - 1)
    np.testing.assert_array_equal(batch["reward"], batch["x"][..., 0])
    again = Replay(str(tmp_path), capacity=10_000, seed=0, action_repeat=2)
    assert len(again.episodes) == 1  # persisted on disk, reloaded on resume
    again.truncate(0)
    assert again.episodes == []


def test_replay_skips_episodes_shorter_than_the_sequence_and_pads_only_without_a_choice():
    def episode(length, offset):
        return {
            "x": offset + np.arange(length, dtype=np.float32)[:, None],
            "action": np.zeros((length, 1), np.float32),
            "reward": np.arange(length, dtype=np.float32),
            "discount": np.ones(length, np.float32),
            "is_first": (np.arange(length) == 0).astype(np.float32),
        }

    replay = Replay(None, capacity=10_000, seed=0, action_repeat=1)
    replay.add(episode(4, 100.0), 0)  # an early end (a Wipe collision): shorter than T
    only_short = replay.sample(1, 8, 6)["x"][..., 0]
    # Nothing else to draw from: the short episode, its last step repeated.
    np.testing.assert_array_equal(only_short, np.tile([100, 101, 102, 103, 103, 103], (1, 8, 1)))
    replay.add(episode(12, 0.0), 1)
    x = replay.sample(4, 16, 6)["x"][..., 0]
    assert x.max() < 100  # never the short episode, so never a repeated step
    np.testing.assert_array_equal(np.diff(x, axis=-1), 1.0)


def test_envs_in_worker_processes_play_the_same_episodes_as_one_env(tmp_path):
    """`--envs=N`: N envs in spawned workers, stepped in lockstep with one batched policy
    call; episode for episode, the same data as playing them one by one in process."""
    from mummi_jax.envs.workers import EnvPool

    config = presets.make_config("mummi", "toy_position_camera", "tiny", overrides=SMALL)
    kwargs = env_kwargs_from_config(config)
    seeds = [11, 12]
    rngs = [np.random.default_rng(s) for s in seeds]
    actions = [[r.uniform(-1, 1, 2).astype(np.float32) for _ in range(60)] for r in rngs]
    count = [0]

    def batched(obs_list, first):
        i = count[0]
        count[0] += 1
        return np.stack([actions[0][i], actions[1][i]])

    with EnvPool([dict(kwargs, seed=0), dict(kwargs, seed=1)]) as pool:
        together = run_episodes(pool, batched, ("position", "camera"), seeds)
    env = envs.make(**kwargs, seed=5)
    for j, seed in enumerate(seeds):
        it = iter(actions[j])
        alone, ret = run_episode(env, lambda o, f, it=it: next(it), ("position", "camera"), seed)
        assert together[j][1] == pytest.approx(ret)
        for k in alone:
            np.testing.assert_array_equal(together[j][0][k], alone[k], err_msg=k)
    assert not np.array_equal(together[0][0]["position"], together[1][0]["position"])


def test_a_run_with_two_envs_trains_and_logs_every_episode(tmp_path):
    runner = make_runner("mummi", tmp_path, extra=["train.envs=2"])
    _, (counters,) = runner.train()
    lines = read_metrics(tmp_path)
    assert [r["step"] for r in lines if "train/return" in r] == [100, 200, 300, 400]
    assert counters["episodes"] == 4 and counters["updates"] > 0
    assert len(os.listdir(tmp_path / "episodes")) == 4


def test_prefetch_keeps_order_raises_in_the_consumer_and_never_hangs_on_an_early_stop():
    import threading

    draws = iter(range(100))
    assert list(prefetch(lambda: next(draws), 5, depth=2)) == [0, 1, 2, 3, 4]

    def fails_after(n):
        count = iter(range(1000))

        def sample():
            i = next(count)
            if i >= n:
                raise RuntimeError(f"replay broke after {n}")
            return i

        return sample

    with pytest.raises(RuntimeError, match="broke after 3"):
        list(prefetch(fails_after(3), 10, depth=1))
    # The consumer stops after one item while the worker, its queue full, then fails: closing
    # the generator joins the worker, so it returns only if the error's put did not block.
    before = threading.active_count()
    gen = prefetch(fails_after(2), 10, depth=1)
    assert next(gen) == 0
    gen.close()
    assert threading.active_count() == before
