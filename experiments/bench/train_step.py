"""`--what=train_step`: seconds per update of the one jitted train step.

Paper size: B=50, T=50, 64x64 RGB + depth + touch (walker), H=15, MuMMI preset; tiny: the
tiny preset. Prints compile time, median seconds per update over K-update calls, peak RSS,
and a per-component breakdown (world model alone, behaviour alone) on the same batch.
"""

from __future__ import annotations

import resource
import time

import jax
import numpy as np
from dm_env import specs

from mummi_jax import config as C
from mummi_jax.agent import Agent


def _spec(size):
    obs = {
        "image": specs.BoundedArray((size, size, 3), np.uint8, 0, 255),
        "depth": specs.Array((size, size, 1), np.float32),
        "touch": specs.Array((2,), np.float32),
    }
    for m in list(obs):
        obs[f"{m}_flag"] = specs.Array((), np.float32)
    return obs


def _batch(agent, spec, K, B, T):
    rng = np.random.default_rng(0)
    out = {}
    for m in agent.modalities:
        shape = (K, B, T) + tuple(spec[m].shape)
        if spec[m].dtype == np.uint8:
            out[m] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            out[m] = rng.uniform(0, 5, shape).astype(np.float32)
        out[f"{m}_flag"] = (rng.uniform(size=(K, B, T)) > 0.28).astype(np.float32)
    out["action"] = rng.uniform(-1, 1, (K, B, T, 6)).astype(np.float32)
    out["reward"] = rng.uniform(0, 1, (K, B, T)).astype(np.float32)
    out["discount"] = np.ones((K, B, T), np.float32)
    out["is_first"] = np.zeros((K, B, T), np.float32)
    return out


def run(flags):
    size = flags.size
    cfg = C.make_config(flags.method, "walker_walk", size, overrides=flags.set)
    spec = _spec(cfg.env.image_size)
    agent = Agent(cfg, spec, specs.BoundedArray((6,), np.float32, -1, 1))
    K = flags.updates_per_call or (
        1 if size == "paper" and jax.default_backend() == "cpu" else cfg.train.updates_per_call
    )
    B, T = cfg.train.batch, cfg.train.length
    repeats = flags.repeats or (3 if size == "paper" else 10)
    batch = jax.device_put(_batch(agent, spec, K, B, T))
    state = agent.init(jax.random.key(0))
    t0 = time.perf_counter()
    state, metrics = agent.train(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        state, metrics = agent.train(state, batch)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - t) / K)
    record = {
        "what": "train_step",
        "size": size,
        "method": flags.method,
        "B": B,
        "T": T,
        "H": cfg.behavior.horizon,
        "updates_per_call": K,
        "seconds_per_update": float(np.median(times)),
        "compile_seconds": compile_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(jax.devices()[0].device_kind),
    }
    yield record
    # Breakdown: the world-model loss and gradient alone, on one batch.
    one = jax.tree.map(lambda x: x[0], batch)
    wm_grad = jax.jit(jax.grad(lambda p, b, k: agent._world_model_loss(p, b, k)[0]))
    jax.block_until_ready(wm_grad(state.params["wm"], one, jax.random.key(1)))
    wm_times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(wm_grad(state.params["wm"], one, jax.random.key(1)))
        wm_times.append(time.perf_counter() - t)
    yield {
        "what": "train_step/world_model_grad",
        "size": size,
        "seconds": float(np.median(wm_times)),
        "share_of_update": float(np.median(wm_times)) / record["seconds_per_update"],
    }
