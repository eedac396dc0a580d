"""`--what=acting`: latency of the jitted acting step (posterior filter + actor or MPC).

For each method and each number of environments n (one batched call for all of them), times
`Agent.act` on walker-shaped observations at `--size`. MuMMI acts with its actor; CVRL with
latent-guided MPC (reference: one gradient step on the first action), so the two bracket the
cost. Median milliseconds per call over `--repeats` calls after the compiling one.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from dm_env import specs

from experiments.bench.train_step import _spec
from mummi_jax import presets
from mummi_jax.agent import Agent

ENV_COUNTS = (1, 8)


def _obs(agent, spec, n, rng):
    obs = {}
    for m in agent.modalities:
        shape = (n,) + tuple(spec[m].shape)
        if spec[m].dtype == np.uint8:
            obs[m] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            obs[m] = rng.uniform(0, 1, shape).astype(np.float32)
        obs[f"{m}_flag"] = np.ones(n, np.float32)
    obs["is_first"] = np.zeros(n, np.float32)
    return obs


def run(flags):
    methods = ("mummi", "cvrl") if flags.method == "mummi" else (flags.method,)
    repeats = flags.repeats or 200
    for method in methods:
        cfg = presets.make_config(method, "walker_walk", flags.size, overrides=flags.set)
        spec = _spec(cfg.env.image_size, cfg)
        agent = Agent(cfg, spec, specs.BoundedArray((6,), np.float32, -1, 1))
        state = agent.init(jax.random.key(0))
        rng = np.random.default_rng(0)
        for n in ENV_COUNTS:
            carry = agent.initial_carry(n)
            obs = _obs(agent, spec, n, rng)
            key = jax.random.key(1)
            t0 = time.perf_counter()
            action, carry = agent.act(state, carry, obs, key)
            np.asarray(action)
            compile_s = time.perf_counter() - t0
            times = []
            for i in range(repeats):
                t = time.perf_counter()
                # np.asarray: the host loop needs the action back, so the copy is part of it.
                action, carry = agent.act(state, carry, obs, jax.random.fold_in(key, i))
                np.asarray(action)
                times.append(time.perf_counter() - t)
            yield {
                "what": "acting",
                "size": flags.size,
                "method": method,
                "planner": cfg.behavior.planner,
                "envs": n,
                "ms_per_call_median": round(1e3 * float(np.median(times)), 3),
                "compile_seconds": round(compile_s, 2),
                "device": str(jax.devices()[0].device_kind),
            }
