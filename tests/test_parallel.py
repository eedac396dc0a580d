"""SeedParallel: seed s of a sweep equals a single run of seed s, on 1, 4 and 8 devices.

Multi-device cases run in a subprocess with XLA_FLAGS set before JAX starts (other test files
initialise JAX in this process with one CPU device); the subprocess runs this file as a script
and prints its results as JSON. The fake agent below is a pure-JAX linear model trained by
noisy SGD with PRNG use in both train and act, so seed dependence is real.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mummi_jax import prng  # noqa: E402
from mummi_jax.parallel import SeedParallel, seed_key, stack, unstack  # noqa: E402
from tests.xla_flags import with_flags  # noqa: E402

OBS, ACT = 3, 2
K, B, T = 2, 4, 3
N_ENVS = 2
TOL = 1e-5

# XLA compilations in this process, to show that later sweep steps compile nothing.
COMPILES = collections.Counter()
jax.monitoring.register_event_duration_secs_listener(
    lambda event, _secs, **_kw: COMPILES.update([event])
)
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
COLLECTIVES = re.compile(
    r"\b(all-reduce|all-gather|collective-permute|all-to-all|reduce-scatter)\b"
)


class LinearAgent:
    """Fake Agent: y = x @ w + b fitted by SGD on input-dropout-noised batches.

    State: {"params": {"w": (OBS, ACT), "b": (ACT,)}, "key": typed key (), "step": int32 ()}.
    Batches: {"x": (K, B, T, OBS), "y": (K, B, T, ACT)}. Exposes the pure ``train_fn``/``act_fn``
    that SeedParallel requires, next to the jitted ``train``/``act`` a single run uses.
    """

    def __init__(self, lr: float = 0.1):
        self.lr = lr
        self.traces = collections.Counter()  # Python side effect: counts traces only
        # prng.jit, as the Agent's: the sweep's programs draw with classic threefry, and a
        # single run must draw the same numbers to be comparable.
        self.train = prng.jit(self.train_fn, donate_argnums=0)
        self.act = prng.jit(self.act_fn)
        self.init = prng.jit(self._init)

    def _init(self, key):
        k_w, k_state = jax.random.split(key)
        params = {"w": 0.5 * jax.random.normal(k_w, (OBS, ACT)), "b": jnp.zeros(ACT)}
        return {"params": params, "key": k_state, "step": jnp.zeros((), jnp.int32)}

    def initial_carry(self, n: int):
        return {"h": jnp.zeros((n, ACT)), "prev_action": jnp.zeros((n, ACT))}

    def train_fn(self, state, batches):
        self.traces["train"] += 1

        def update(state, batch):
            key, k_drop = jax.random.split(state["key"])
            keep = jax.random.bernoulli(k_drop, 0.8, batch["x"].shape)
            x = batch["x"] * keep / 0.8

            def loss_fn(params):
                return jnp.mean((x @ params["w"] + params["b"] - batch["y"]) ** 2)

            loss, grads = jax.value_and_grad(loss_fn)(state["params"])
            params = jax.tree.map(lambda p, g: p - self.lr * g, state["params"], grads)
            grad_norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
            metrics = {"fake/loss": loss, "grad_norm/fake": grad_norm}
            return {"params": params, "key": key, "step": state["step"] + 1}, metrics

        state, metrics = jax.lax.scan(update, state, batches)
        return state, jax.tree.map(jnp.mean, metrics)

    def act_fn(self, state, carry, obs, key, training):
        self.traces["act"] += 1
        p = state["params"]
        keep = 1.0 - obs["is_first"][:, None]
        h = 0.9 * carry["h"] * keep + (obs["x"] @ p["w"]) * obs["x_flag"][:, None]
        mean = jnp.tanh(h + p["b"])
        noisy = jnp.clip(mean + 0.3 * jax.random.normal(key, mean.shape), -1.0, 1.0)
        action = jnp.where(training, noisy, mean)  # traced, as the Agent's
        return action, {"h": h, "prev_action": action}


def make_batches(seed: int, step: int):
    """Seed-specific regression data, (K, B, T, ...) float32."""
    rng = np.random.default_rng([seed, step])
    w_true = np.random.default_rng(seed).normal(size=(OBS, ACT))
    x = rng.normal(size=(K, B, T, OBS)).astype(np.float32)
    y = (x @ w_true + 0.1 * rng.normal(size=(K, B, T, ACT))).astype(np.float32)
    return {"x": x, "y": y}


def make_obs(seed: int, t: int):
    rng = np.random.default_rng([seed, 1000 + t])
    return {
        "x": rng.normal(size=(N_ENVS, OBS)).astype(np.float32),
        "x_flag": (rng.random(N_ENVS) > 0.3).astype(np.float32),
        "is_first": np.full(N_ENVS, float(t == 0), np.float32),
    }


def act_key(seed: int, t: int):
    # How a host loop derives acting keys from the run's root key (never reused for init).
    return jax.random.fold_in(jax.random.fold_in(seed_key(seed), 1), t)


def _maxdiff(a, b) -> float:
    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
    return max(jax.tree.leaves(diffs), default=0.0)


def _bitwise(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b)))


def _numeric(state):
    """Drop typed keys (compared separately through key_data)."""
    return {**state, "key": jax.random.key_data(state["key"])}


def run_case(
    n_devices: int, num_seeds: int, seeds=None, train_steps: int = 3, act_steps: int = 3
) -> dict:
    """Sweep vs one single run per seed; returns max deviations and placement facts (JSON).

    Uses the first `n_devices` local devices; `seeds` default to 3, 10, 17, ... (not 0..S-1,
    which would hide index/seed mix-ups).
    """
    devices = jax.local_devices()[:n_devices]
    assert len(devices) == n_devices, jax.local_devices()
    seeds = [3 + 7 * i for i in range(num_seeds)] if seeds is None else list(seeds)
    assert len(seeds) == num_seeds
    ref_agent, sweep_agent = LinearAgent(), LinearAgent()
    sweep = SeedParallel(sweep_agent, num_seeds, devices)
    out = {"used_devices": len(sweep.devices), "padded_seeds": sweep.padded_seeds}
    out["device_processes"] = sorted({d.process_index for d in sweep.devices})

    state = sweep.init(seeds)
    refs = [ref_agent.init(seed_key(s)) for s in seeds]
    out["init_bitwise"] = all(
        _bitwise(_numeric(unstack(state, i)), _numeric(refs[i])) for i in range(num_seeds)
    )
    leaves = jax.tree.leaves(state)
    out["state_sharded"] = all(x.sharding == sweep.sharding for x in leaves)
    out["state_devices"] = sorted({len(x.sharding.device_set) for x in leaves})
    out["shard_rows"] = sorted({s.data.shape[0] for x in leaves for s in x.addressable_shards})
    first_leaf = leaves[0]

    train_diff, train_bitwise, metric_rows, late_compiles = 0.0, True, [], 0
    for step in range(train_steps):
        batches = stack([make_batches(s, step) for s in seeds])
        before = COMPILES[BACKEND_COMPILE]
        state, metrics = sweep.train(state, batches)
        late_compiles += (COMPILES[BACKEND_COMPILE] - before) * (step > 0)
        batches = [unstack(batches, i) for i in range(num_seeds)]
        metrics = jax.device_get(metrics)
        assert all(m.shape == (num_seeds,) for m in metrics.values())
        for i in range(num_seeds):
            refs[i], ref_metrics = ref_agent.train(refs[i], batches[i])
            mine = {k: v[i] for k, v in metrics.items()}
            train_diff = max(train_diff, _maxdiff(mine, ref_metrics))
            train_bitwise &= _bitwise(mine, jax.device_get(ref_metrics))
        metric_rows.append(metrics["fake/loss"].tolist())
        if step == 0:
            out["donated"] = bool(first_leaf.is_deleted())
    out["train_metric_diff"] = train_diff
    out["train_bitwise"] = bool(train_bitwise)
    out["state_diff"] = max(
        _maxdiff(_numeric(unstack(state, i)), _numeric(refs[i])) for i in range(num_seeds)
    )
    out["state_still_sharded"] = all(x.sharding == sweep.sharding for x in jax.tree.leaves(state))
    out["losses"] = metric_rows

    carry = sweep.initial_carry(N_ENVS)
    ref_carries = [ref_agent.initial_carry(N_ENVS) for _ in seeds]
    act_diff, act_bitwise = 0.0, True
    for t in range(act_steps):
        for training in (True, False):
            obs = [make_obs(s, t) for s in seeds]
            keys = jnp.stack([act_key(s, t) for s in seeds])
            stacked_obs = stack(obs)
            before = COMPILES[BACKEND_COMPILE]
            actions, carry = sweep.act(state, carry, stacked_obs, keys, training=training)
            late_compiles += (COMPILES[BACKEND_COMPILE] - before) * (t > 0)
            actions = np.asarray(actions)
            assert actions.shape == (num_seeds, N_ENVS, ACT), actions.shape
            for i, s in enumerate(seeds):
                a, ref_carries[i] = ref_agent.act(
                    refs[i], ref_carries[i], obs[i], act_key(s, t), training
                )
                act_diff = max(act_diff, _maxdiff(actions[i], a))
                act_bitwise &= _bitwise(actions[i], np.asarray(a))
    # Every program the host waits on is row-parallel: no cross-device collective (their
    # rendezvous aborted an oversubscribed CPU sweep, tests/test_runner.py).
    hlo = sweep.lower_train(state, sweep.shard(stack([make_batches(s, 0) for s in seeds])))
    act = sweep.lower_act(state, carry, stacked_obs, keys)
    out["collectives"] = sorted(
        set(COLLECTIVES.findall(hlo.compile().as_text() + act.compile().as_text()))
    )
    out["act_diff"] = act_diff
    out["act_bitwise"] = bool(act_bitwise)
    out["carry_diff"] = max(_maxdiff(unstack(carry, i), ref_carries[i]) for i in range(num_seeds))
    out["carry_sharded"] = all(x.sharding == sweep.sharding for x in jax.tree.leaves(carry))
    out["late_compiles"] = late_compiles
    out["traces"] = dict(sweep.traces)
    out["agent_traces"] = dict(sweep_agent.traces)
    return out


def _check(out: dict, n_devices: int, num_seeds: int) -> None:
    used = min(n_devices, num_seeds)
    assert out["used_devices"] == used
    assert out["padded_seeds"] == -(-num_seeds // used) * used
    assert out["init_bitwise"]
    assert out["state_sharded"] and out["state_still_sharded"] and out["carry_sharded"]
    assert out["state_devices"] == [used]
    assert out["shard_rows"] == [out["padded_seeds"] // used]
    assert out["donated"]
    assert out["train_metric_diff"] < TOL, out
    assert out["state_diff"] < TOL, out
    assert out["act_diff"] < TOL and out["carry_diff"] < TOL, out
    # Compiled once: one trace of each step, and no XLA compile at all after the first round.
    # Collection and evaluation share the acting program (a traced `training` flag).
    assert out["traces"] == {"train": 1, "act": 1}
    assert out["agent_traces"] == {"train": 1, "act": 1}
    assert out["late_compiles"] == 0, out
    assert out["collectives"] == [], out["collectives"]
    # The seeds really differ (so equality above is not vacuous).
    assert len({round(v, 6) for v in out["losses"][-1]}) == num_seeds


# (devices, cases): one subprocess per fake device count, several sweeps in each.
SUBPROCESS_CASES = {4: [(4, 8), (4, 6)], 8: [(8, 3), (8, 8)]}


@pytest.fixture(scope="module")
def multi_device_results():
    """Launch both fake-device subprocesses at once; {(devices, seeds): result dict}."""
    procs = {}
    for n_dev, cases in SUBPROCESS_CASES.items():
        env = {
            **os.environ,
            "XLA_FLAGS": with_flags(f"--xla_force_host_platform_device_count={n_dev}"),
            "JAX_PLATFORMS": "cpu",
        }
        arg = json.dumps(cases)
        procs[n_dev] = subprocess.Popen(
            [sys.executable, __file__, arg],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for n_dev, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-4000:]
        payload = json.loads(stdout.strip().splitlines()[-1])
        assert payload["device_count"] == n_dev
        for (d, s), out in zip(SUBPROCESS_CASES[n_dev], payload["results"], strict=True):
            results[(d, s)] = out
    return results


@pytest.mark.parametrize("case", [c for cs in SUBPROCESS_CASES.values() for c in cs], ids=str)
def test_sweep_matches_single_runs_multi_device(multi_device_results, case):
    _check(multi_device_results[case], *case)


@pytest.mark.parametrize("num_seeds", [1, 3])
def test_sweep_matches_single_runs_one_device(num_seeds):
    _check(run_case(1, num_seeds), 1, num_seeds)


def test_put_states_roundtrip_and_padding():
    devices = jax.devices()[:1]
    agent = LinearAgent()
    sweep = SeedParallel(agent, 2, devices)
    states = [agent.init(seed_key(s)) for s in (5, 9)]
    back = sweep.states(sweep.put_states(states))
    assert all(_bitwise(_numeric(a), _numeric(b)) for a, b in zip(back, states, strict=True))
    with pytest.raises(ValueError, match="leading seed axis of size 2"):
        sweep.shard({"x": np.zeros((3, 4))})


def test_a_sweep_out_of_device_memory_says_how_many_seeds_per_device_and_what_to_change():
    sweep = SeedParallel(LinearAgent(), 3, jax.devices()[:1])

    def train(state, batches, active):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 70GiB")

    sweep._train = train
    batches = {"x": np.zeros((3, K, B, T, OBS), np.float32)}
    with pytest.raises(MemoryError, match=r"3 seed\(s\) per device.*fewer seeds per device"):
        sweep.train(None, batches)


def test_stack_unstack():
    trees = [{"a": np.full((2,), i, np.float32), "k": seed_key(i)} for i in range(3)]
    stacked = stack(trees)
    assert isinstance(stacked["a"], np.ndarray) and stacked["a"].shape == (3, 2)
    assert stacked["k"].shape == (3,)
    one = unstack(stacked, 2)
    np.testing.assert_array_equal(one["a"], trees[2]["a"])
    assert _bitwise(jax.random.key_data(one["k"]), jax.random.key_data(trees[2]["k"]))


def test_agent_without_pure_functions_is_rejected():
    class JitOnly:
        init = initial_carry = train = act = staticmethod(lambda *a: None)

    with pytest.raises(TypeError, match="train_fn, agent.act_fn"):
        SeedParallel(JitOnly(), 2)


if __name__ == "__main__":
    # Subprocess entry: argv[1] = JSON list of [devices, seeds]; prints one JSON line.
    cases = json.loads(sys.argv[1])
    results = [run_case(d, s) for d, s in cases]
    print(json.dumps({"device_count": jax.device_count(), "results": results}))
