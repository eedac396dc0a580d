"""Seed sweeps: seed s of a sweep logs what the single run with seed s logs (1 device; fake
CPU devices with a seed count they do not divide; seeds at different progress; episodes of
different lengths); single runs are deterministic; the CLI rejects bad input in one line."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap

import dm_env
import pytest

from mummi_jax import config as C
from mummi_jax import envs, host_memory, presets
from mummi_jax.agent import Agent
from mummi_jax.checkpoint import atomic_write
from mummi_jax.episodes import env_kwargs_from_config
from mummi_jax.runner import Runner
from tests.test_loop import SMALL, make_runner, read_metrics
from tests.xla_flags import with_flags

# Three 100-step episodes, train phases at 200 (two) and 300, one evaluation at 300: every
# random source of the loop (episode seeds, prefill, acting keys, replay, eval) shows up.
# Short imagination and MPC horizons keep the compiles (most of this file's time) small.
SWEEP = [
    *SMALL,
    "train.steps=300",
    "train.eval_every=300",
    "train.video_every=300",
    "behavior.horizon=3",
    "behavior.mpc_horizon=2",
]
REF_SEEDS = (0, 1, 2)


def make_config(seed=0):
    return presets.make_config("mummi", "toy_position_camera", "tiny", seed=seed, overrides=SWEEP)


def numbers(logdir):
    """metrics.jsonl without the wall-clock figures."""
    return [
        {k: v for k, v in r.items() if k != "wall" and not k.startswith("perf/")}
        for r in read_metrics(logdir)
    ]


def assert_same_metrics(got, want, rel=2e-2):
    """The same run from two compiled programs (one seed, or S seeds vmapped). They round
    differently, and training amplifies it: on this toy task seed 1's sweep and single run
    differ by up to 3e-4 after the first train phase and 7e-3 after the second (grad_norm/wm,
    wm/kl); rows of one sweep program are compared bit for bit instead (below)."""
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for x, y in zip(got, want, strict=True):
        assert x.keys() == y.keys(), x["step"]
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=rel, abs=1e-5), (k, x["step"])


@pytest.fixture(scope="module")
def agent():
    """One Agent for every single run (it does not depend on the seed), so they compile once."""
    config = make_config()
    probe = envs.make(**env_kwargs_from_config(config), seed=0)
    try:
        return Agent(config, probe.observation_spec(), probe.action_spec())
    finally:
        probe.close()


@pytest.fixture(scope="module")
def one_seed(agent):
    """The compiled steps of every single run below (they differ only in the seed)."""
    import jax

    from mummi_jax.parallel import SeedParallel

    return SeedParallel(agent, 1, jax.devices()[:1])


def single_run(logdir, seed, one_seed):
    """What `experiments.train --seed=<seed>` does, with shared compiled steps."""
    config = make_config(seed)
    os.makedirs(logdir, exist_ok=True)
    runner = Runner(config, str(logdir), parallel=one_seed, progress=False)
    runner.train()
    return numbers(logdir)


@pytest.fixture(scope="module")
def refs(tmp_path_factory, one_seed):
    """Single runs of REF_SEEDS: what every sweep is compared with."""
    return {s: single_run(tmp_path_factory.mktemp(f"single{s}"), s, one_seed) for s in REF_SEEDS}


def sweep(logdir, seeds, agent=None, devices=None):
    runner = Runner(make_config(), str(logdir), seeds, agent=agent, progress=False, devices=devices)
    runner.train()
    return runner


def test_seed_s_of_a_sweep_logs_what_its_single_run_logs_and_resumes_per_seed(
    tmp_path, refs, agent
):
    runner = sweep(tmp_path, [1, 2], agent)
    # Collection and evaluation act through the same vmapped step: one trace of each step.
    assert runner.parallel.traces == {"train": 1, "act": 1}
    # The train step's temporaries, read off its compiled form (no trace more): too few to
    # wait for between calls, so the loop never walked the heap (host_memory.settling).
    assert 0 < runner.train_temp_bytes < host_memory.SETTLE_FLOOR
    for s in (1, 2):
        d = tmp_path / f"seed{s}"
        assert json.load(open(d / "config.json"))["seed"] == s
        assert len(os.listdir(d / "episodes")) == 3 and os.listdir(d / "checkpoints")
        assert os.listdir(d / "videos") == ["eval-000000300.gif"]  # as a single run films
        assert_same_metrics(numbers(d), refs[s])
    assert numbers(tmp_path / "seed1") != numbers(tmp_path / "seed2")
    # A row depends on its own seed only, not on its place or its neighbours: bit for bit.
    sweep(tmp_path / "swapped", [2, 1], agent)
    for s in (1, 2):
        assert numbers(tmp_path / "swapped" / f"seed{s}") == numbers(tmp_path / f"seed{s}")
    # Seed 2 loses its newest checkpoint (as if killed mid-save) and seed 0 joins: one program
    # then holds a fresh seed in its prefill, seed 2 from step 200 and seed 1 done (masked).
    newest = sorted(glob.glob(str(tmp_path / "seed2" / "checkpoints" / "*.msgpack")))[-1]
    os.remove(newest)
    runner = sweep(tmp_path, [0, 1, 2], agent)
    for s in (0, 1, 2):
        assert_same_metrics(numbers(tmp_path / f"seed{s}"), refs[s])
    assert [c["env_steps"] for c in runner.train()[1]] == [300, 300, 300]  # all done: no-op


def test_on_fake_devices_with_a_seed_count_the_devices_do_not_divide(tmp_path, refs):
    """3 seeds on 2 of 4 fake devices: padded to 4 rows, 2 per device. (The divisible case,
    and 8 devices, are tests/test_parallel.py's, on a fake agent: each sweep here costs half a
    minute of compiling.)"""
    script = textwrap.dedent(
        f"""
        import jax
        assert len(jax.devices()) == 4, jax.devices()
        from tests.test_sweep import sweep
        r = sweep({str(tmp_path / "padded")!r}, [0, 1, 2], devices=jax.devices()[:2])
        assert len(r.parallel.devices) == 2 and r.parallel.padded_seeds == 4
        """
    )
    env = dict(
        os.environ,
        XLA_FLAGS=with_flags("--xla_force_host_platform_device_count=4"),
        JAX_PLATFORMS="cpu",
        MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for s in (0, 1, 2):
        assert_same_metrics(numbers(tmp_path / "padded" / f"seed{s}"), refs[s])


class _Ragged:
    """An env whose episodes end early, after a number of agent steps set by the episode seed:
    seeds fall out of step (as with `wipe`'s early terminations)."""

    def __init__(self, env):
        self._env, self._limit, self._n = env, None, 0

    def __getattr__(self, name):
        return getattr(self._env, name)

    def reseed(self, seed):
        self._env.reseed(seed)
        self._limit = 15 + (seed % 5) * 8  # 15..47 agent steps of the toy's 50

    def reset(self):
        self._n = 0
        return self._env.reset()

    def step(self, action):
        ts = self._env.step(action)
        self._n += 1
        if self._limit is not None and self._n >= self._limit and not ts.last():
            ts = dm_env.truncation(ts.reward, ts.observation)
        return ts


def test_episodes_of_different_lengths_keep_each_seed_equal_to_its_single_run(
    tmp_path, agent, one_seed, monkeypatch
):
    make = envs.make
    monkeypatch.setattr(envs, "make", lambda *a, **k: _Ragged(make(*a, **k)))
    want = {s: single_run(tmp_path / f"single{s}", s, one_seed) for s in (4, 5)}
    lengths = {s: [r["train/length"] for r in want[s] if "train/length" in r] for s in want}
    assert lengths[4] != lengths[5]  # the seeds really drift apart
    sweep(tmp_path / "sweep", [4, 5], agent)
    for s in (4, 5):
        assert_same_metrics(numbers(tmp_path / "sweep" / f"seed{s}"), want[s])


def test_two_single_runs_with_one_seed_log_identical_numbers(tmp_path, refs):
    make_runner("mummi", tmp_path, extra=SWEEP[len(SMALL) :]).train()  # its own Agent
    assert numbers(tmp_path) == refs[0]  # bitwise, not approximately


def test_a_logdir_with_another_config_is_refused(tmp_path, agent):
    os.makedirs(tmp_path / "seed0")
    other = C.override(make_config(0), ["train.batch=5"])
    atomic_write(str(tmp_path / "seed0" / "config.json"), other.to_json().encode())
    with pytest.raises(ValueError, match="different config"):
        Runner(make_config(), str(tmp_path), [1, 0], agent=agent, progress=False)
    assert not os.path.exists(tmp_path / "seed1")  # nothing written


def test_a_gpu_sweep_builds_its_agent_with_matmul_convs_but_logs_the_config_as_given(
    tmp_path, monkeypatch
):
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # only read by the conv rule
    one = jax.devices()[:1]
    for seeds, want in (([0, 1], "matmul"), ([0], "xla")):
        d = tmp_path / str(len(seeds))
        runner = Runner(make_config(), str(d), seeds, progress=False, devices=one)
        assert runner.agent.config.model.conv_impl == want
        assert json.load(open(d / "seed0" / "config.json"))["model"]["conv_impl"] == "auto"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds=3-1"], "bad --seeds '3-1'"),
        (["--seeds=0,a"], "bad --seeds '0,a'"),
        (["--seeds=1,1"], "distinct"),
        (["--method=mummi,bogus"], "unknown method 'bogus'"),
        (["--task=walker_fly"], "walker_fly"),
        (["--set=train.envs=2"], "one env per seed"),
    ],
)
def test_the_cli_rejects_bad_input_in_one_line(tmp_path, args, message):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", f"--logdir={tmp_path}", "--size=tiny", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not os.listdir(tmp_path)
