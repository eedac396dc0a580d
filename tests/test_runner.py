"""The runner for S seeds on a busy machine, checkpoints, and the import graph.

- A 4-seed sweep on 4 fake CPU devices beside a busy process completes, and its seed 1 logs
  what the single run with seed 1 logs (XLA once aborted such a sweep: an all-reduce of a
  per-seed host read waited 40 s for its fourth participant).
- Checkpoints are msgpack, bit-exact, and a corrupt, truncated or foreign file is one line
  naming the file and the fix.
- The library's imports form no circle and keep the walls of docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mummi_jax import checkpoint
from tests.test_loop import SMALL
from tests.test_sweep import assert_same_metrics, numbers
from tests.xla_flags import with_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]

# test_loop's shapes (mummi_b's train step is then a compilation-cache hit for the single run,
# compiled by test_agent and test_loop before), a shorter schedule, no MPC and no evaluation:
# the sweep's own 4-device programs are most of the work.
BUSY = [
    *SMALL,
    "behavior.planner=none",  # acting only: the train step is test_loop's
    "train.steps=200",
    "train.prefill_episodes=1",
    "train.train_steps=2",
    "train.eval_every=0",
]

SWEEP_SCRIPT = """
import json, re, sys
import jax
import numpy as np
assert len(jax.devices()) == 4, jax.devices()
from mummi_jax import config as C
from mummi_jax import presets
from mummi_jax.runner import Runner

out, overrides = sys.argv[1], json.loads(sys.argv[2])
config = presets.make_config("mummi_b", "toy_position_camera", "tiny", overrides=overrides)
sweep = Runner(config, out + "/sweep", [0, 1, 2, 3], progress=False)
stacked, counters = sweep.train()
print("trained", flush=True)  # the busy process stops here
# The compiled train and act steps, as they ran (compilation-cache hits), are row-parallel:
# nothing in them waits for another device.
par = sweep.parallel
sample = sweep.runs[0].replay.sample(2, 4, 6)
train = par.lower_train(stacked, par.shard_rows([sample] * 4)).compile().as_text()
obs = {k: v[0, 0] for k, v in sweep.runs[0].replay.sample(1, 1, 1).items()}
obs = {k: v for k, v in obs.items() if k not in ("action", "reward", "discount")}
act = par.lower_act(
    stacked, par.initial_carry(1), par.shard_rows([obs] * 4),
    jax.random.split(jax.random.key(0), 4),
).compile().as_text()
pattern = r"\\b(all-reduce|all-gather|collective-permute|all-to-all|reduce-scatter)\\("
single = Runner(
    C.override(config, {"seed": 1}), out + "/single", agent=sweep.agent, progress=False,
    devices=jax.devices()[:1],
)
single.train()
print(json.dumps({
    "devices": len(par.devices),
    "env_steps": [c["env_steps"] for c in counters],
    "collectives": sorted(set(re.findall(pattern, train + act))),
}))
"""


@pytest.mark.slow
def test_a_four_seed_sweep_on_four_busy_fake_devices_completes_and_matches_its_single_run(
    tmp_path,
):
    env = dict(
        os.environ,
        XLA_FLAGS=with_flags("--xla_force_host_platform_device_count=4"),
        JAX_PLATFORMS="cpu",
        MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
    )
    # A busy process beside the sweep's training: on a 2-core box its 4 device threads then
    # wait on each other's time slices, which is what made a cross-device rendezvous time out.
    # One, not two: with the sweep's own 4 threads that is 5 busy threads on 2 cores, and a
    # second spinner took 30 more CPU seconds from the other test worker. It stops once the
    # sweep has trained (the HLO checks and the single run need no contention).
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    start = time.time()
    with open(tmp_path / "stderr.txt", "w+") as err:  # a file: a full pipe could block it
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", SWEEP_SCRIPT, str(tmp_path), json.dumps(BUSY)],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
            # readline has no timeout: a hung sweep is killed instead, and reads as "".
            watchdog = threading.Timer(900, proc.kill)
            watchdog.start()
            trained = proc.stdout.readline()  # "" if it died while training
            busy = time.time() - start
        finally:
            spinner.kill()
            spinner.wait()
        stdout, _ = proc.communicate()
        watchdog.cancel()
        wall = time.time() - start
        err.seek(0)
        stderr = err.read()
    assert proc.returncode == 0 and trained == "trained\n", stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["env_steps"] == [200] * 4
    assert out["collectives"] == []
    assert_same_metrics(numbers(tmp_path / "sweep" / "seed1"), numbers(tmp_path / "single"))
    assert numbers(tmp_path / "sweep" / "seed1") != numbers(tmp_path / "sweep" / "seed2")
    print(f"4-seed sweep beside a busy process: {busy:.0f} s; with the checks: {wall:.0f} s")


# ----------------------------------------------------------------------------- checkpoints
def _state(seed=0):
    """A train-state-like pytree: params, an optax state (namedtuples), a typed key, a step."""
    k = jax.random.key(seed)
    params = {"enc": {"kernel": jax.random.normal(k, (3, 4)), "bias": jnp.zeros(4)}}
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    return {
        "params": params,
        "opt": opt.init(params),
        "key": jax.random.split(k)[1],
        "step": jnp.asarray(7, jnp.int32),
        "half": jnp.ones(2, jnp.bfloat16),
    }


def _bits(tree):
    return [
        np.asarray(jax.random.key_data(x) if checkpoint._is_key(x) else x).tobytes()
        for x in jax.tree.leaves(tree)
    ]


def test_checkpoints_are_msgpack_not_pickle_and_restore_bit_exactly(tmp_path):
    state = _state()
    rng = np.random.default_rng(3)
    rng.random(5)
    meta = {"counters": {"env_steps": 40}, "replay_rng": rng.bit_generator.state}
    for step in (10, 20, 30):
        checkpoint.save(str(tmp_path), step, state, meta, keep=2)
    assert checkpoint.steps(str(tmp_path)) == [20, 30]
    data = (tmp_path / "ckpt-000000030.msgpack").read_bytes()
    assert not data.startswith(b"\x80")  # not a pickle stream
    loaded, got = checkpoint.load(str(tmp_path), _state(seed=1))
    assert _bits(loaded) == _bits(state)
    assert jax.tree.structure(loaded) == jax.tree.structure(state)
    assert jax.random.key_impl(loaded["key"]) == jax.random.key_impl(state["key"])
    back = np.random.default_rng(0)
    back.bit_generator.state = got["replay_rng"]  # 128-bit PCG64 state survives
    assert back.random() == rng.random()
    assert checkpoint.load(str(tmp_path), state, max_step=25)[1] == got
    assert checkpoint.load(str(tmp_path / "none"), state) is None


@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage", "empty"])
def test_a_damaged_checkpoint_is_one_line_naming_the_file_and_the_fix(tmp_path, damage):
    path = checkpoint.save(str(tmp_path), 5, _state(), {"counters": {}}, keep=1)
    data = open(path, "rb").read()
    broken = {
        "truncated": data[: len(data) // 2],
        "flipped": data[:-40] + bytes([data[-40] ^ 1]) + data[-39:],
        "garbage": b"not a checkpoint",
        "empty": b"",
    }[damage]
    with open(path, "wb") as f:
        f.write(broken)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(str(tmp_path), _state())
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"corrupt checkpoint {path} (") and "delete it" in message


def test_a_checkpoint_of_another_model_or_an_old_pickle_is_refused_in_one_line(tmp_path):
    checkpoint.save(str(tmp_path), 5, _state(), {}, keep=1)
    other = {**_state(), "params": {"enc": {"kernel": jnp.zeros((3, 5)), "bias": jnp.zeros(5)}}}
    with pytest.raises(
        checkpoint.CheckpointError, match=r"shape \(4,\) where this model has \(5,\)"
    ):
        checkpoint.load(str(tmp_path), other)
    with pytest.raises(checkpoint.CheckpointError, match="does not fit this model"):
        checkpoint.load(str(tmp_path), {"params": other["params"]})
    (tmp_path / "ckpt-000000001.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(checkpoint.CheckpointError, match="pickle checkpoints.*new --logdir"):
        checkpoint.load(str(tmp_path), _state())


def _first_layout(state) -> dict:
    """`state` as the first TrainState layout saved it: `TrainState(params, opt_state, key,
    step)`, target networks inside `params`, the SAC optimiser states by name."""
    params, opt_state = dict(state.params), dict(state.opt_state)
    if "value" in state.targets:
        params["slow_value"] = state.targets["value"]
    if "sac" in params:
        params["sac"] = {**params["sac"], "target_critic": state.targets["sac"]["critic"]}
        sac_opt = opt_state.pop("sac")
        opt_state["sac_critic"], opt_state["alpha"] = sac_opt["critic"], sac_opt["log_alpha"]
        if "actor" in sac_opt:
            opt_state["sac_actor"] = sac_opt["actor"]
    return {"params": params, "opt_state": opt_state, "key": state.key, "step": state.step}


@pytest.mark.parametrize(
    "method, fidelity, overrides",
    [
        ("cvrl", "paper", ["behavior.slow_value=true"]),  # slow value, hybrid SAC
        ("coral_v", "reference", []),  # model-free SAC: its own actor
    ],
)
def test_a_checkpoint_of_the_first_train_state_layout_resumes_in_the_current_one(
    tmp_path, method, fidelity, overrides
):
    from mummi_jax import presets
    from mummi_jax.agent import Agent
    from tests.test_agent import ACTION2, TINY, toy_spec

    cfg = presets.make_config(
        method, "toy_position_camera", "tiny", fidelity, overrides=TINY + overrides
    )
    agent = Agent(cfg, toy_spec(16 + cfg.env.crop_margin), ACTION2)
    state = agent.init(jax.random.key(0))
    # Tell every array apart, so that one put in another's place would show.
    leaves, treedef = jax.tree.flatten(state)
    state = treedef.unflatten([x if checkpoint._is_key(x) else x + i for i, x in enumerate(leaves)])
    old = _first_layout(state)
    assert "slow_value" in old["params"] or method == "coral_v"
    assert {"sac_critic", "alpha"} <= set(old["opt_state"])
    checkpoint.save(str(tmp_path), 5, old, {"counters": {}}, keep=1)
    loaded, _ = checkpoint.load(str(tmp_path), agent.init(jax.random.key(1)))
    assert jax.tree.structure(loaded) == jax.tree.structure(state)
    assert _bits(loaded) == _bits(state)
    # The current layout, and other trees, pass unchanged.
    saved = checkpoint.read(checkpoint.save(str(tmp_path), 6, state, {}, keep=1))[0]
    assert checkpoint.upgrade(saved) is saved
    assert checkpoint.upgrade({"params": 1, "opt": 2}) == {"params": 1, "opt": 2}


# ----------------------------------------------------------------------------- imports
MODEL_CORE = {
    "distributions",
    "networks",
    "world_model",
    "losses",
    "objectives",
    "behavior",
    "sac",
    "mpc",
    "inputs",
}
HOST_LOOP = {"runner", "checkpoint", "metrics", "replay", "episodes", "video", "parallel"}


def _imports() -> dict[str, set[str]]:
    """mummi_jax module -> the mummi_jax modules it imports anywhere (lazy imports too).
    `from pkg import module` is an edge to the module; a module's own parent packages, which
    Python initialises before it anyway, are not edges."""
    files = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / "mummi_jax").rglob("*.py")
    }
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in files else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        parents = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
        graph[name] = {d for d in deps if d in files and d != name and d not in parents}
    return graph


def _short(name):
    return name.removeprefix("mummi_jax.")


def test_the_library_imports_form_no_circle_and_keep_the_walls():
    graph = _imports()
    # No circle: a topological order exists (lazy imports count as edges too).
    order, pending = [], dict(graph)
    while pending:
        ready = [m for m, deps in pending.items() if not deps - set(order)]
        assert ready, f"import circle among {sorted(map(_short, pending))}"
        order += ready
        for m in ready:
            del pending[m]
    short = {_short(k): {_short(d) for d in v} for k, v in graph.items()}
    for module in MODEL_CORE:
        assert not short[module] & HOST_LOOP, module
        assert not any(d.startswith("envs") and d != "envs.tasks" for d in short[module])
    for module in (m for m in short if m.startswith("envs")):
        assert not short[module] & (MODEL_CORE | HOST_LOOP | {"agent"}), module
    for module in ("replay", "masks", "episodes", "metrics", "video", "checkpoint"):
        assert not short[module] & (MODEL_CORE | {"agent", "parallel", "runner"}), module
    assert "runner" not in short["video"] and "video" not in short["checkpoint"]
    assert "config" not in short["networks"]
    # The schema knows no preset; the presets are built on it, and the model core on neither.
    assert "presets" not in short["config"]
    assert not any("presets" in short[m] for m in MODEL_CORE | HOST_LOOP | {"agent"})
    # The library never imports the entry points.
    sources = "".join(p.read_text() for p in (ROOT / "mummi_jax").rglob("*.py"))
    assert not re.search(r"^\s*(from|import) experiments", sources, re.M)


# ----------------------------------------------------------------------------- schedule
def _schedule(after_prefill, episodes_env_steps, **train):
    """The train phases `Runner._train_due` runs for one seed whose episodes end at the given
    env steps: a list of (env step, updates)."""
    from types import SimpleNamespace

    from mummi_jax import presets
    from mummi_jax.runner import Runner, fresh_counters

    over = {"train.after_prefill": after_prefill, **{f"train.{k}": v for k, v in train.items()}}
    config = presets.make_config("mummi", "toy_xy", "tiny", overrides=over)
    phases = []

    def phase(stacked, counters, on, updates):
        phases.append((counters[0]["env_steps"], updates))
        counters[0]["updates"] += updates
        return stacked

    fake = SimpleNamespace(config=config, seeds=[0], _train_phase=phase)
    counters = [fresh_counters()]
    for episode, env_steps in enumerate(episodes_env_steps, 1):
        counters[0].update(episodes=episode, env_steps=env_steps)
        Runner._train_due(fake, None, counters, [0])
    return phases


def test_after_prefill_pretrain_trains_once_then_counts_from_there_as_the_released_code():
    # Paper-like: 5 prefill episodes of 1000 env steps, train every 1000, 100 updates.
    ends = [1000, 2000, 3000, 4000, 5000, 6000, 7000]
    common = dict(prefill_episodes=5, train_every=1000, train_steps=100, pretrain=20)
    assert _schedule("pretrain", ends, **common) == [(5000, 20), (6000, 100), (7000, 100)]
    # catch_up pays for the prefill's env steps at once: 5 phases at the end of the prefill.
    assert _schedule("catch_up", ends, **common) == [(5000, 100)] * 5 + [
        (6000, 100),
        (7000, 100),
    ]


def test_pretrain_must_be_a_multiple_of_the_updates_per_call():
    from mummi_jax import presets

    with pytest.raises(ValueError, match=r"train.pretrain=7 .* train.updates_per_call=5"):
        presets.make_config("mummi", "toy_xy", "tiny", overrides={"train.pretrain": 7})
