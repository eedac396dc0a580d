"""`--what=sweep`: throughput of S seeds trained together on one device.

For each S in `--seeds_list` (default 1, 2, 4, 8), `SeedParallel` vmaps the train step over
S seeds on the first device and times K-update calls on walker-shaped synthetic batches (the
shapes of `--what=train_step`). Reports updates/s summed over seeds and the ratio to one
seed, measured in the same process after each S's compiling call. Each S runs with the conv
form a sweep would use (`runner.agent_config`: with `model.conv_impl=auto`, `lax.conv`
for one seed on a GPU, the matmul form for several), so the ratio is what a user gets;
`--set model.conv_impl=xla|matmul` pins one form for every S.

Each row also gives the program's memory from XLA's buffer assignment (`temp_gb`,
`argument_gb`, `output_gb`) and, on a GPU, the allocator's peak so far (`device_peak_gb`).
An S that does not fit gives a row with `error` and ends the list.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from dm_env import specs

from experiments.bench.train_step import _batch, _spec
from mummi_jax import presets
from mummi_jax.agent import Agent
from mummi_jax.device_memory import compiled_gigabytes, device_peak_gigabytes, is_out_of_memory
from mummi_jax.parallel import SeedParallel
from mummi_jax.runner import agent_config


def run(flags):
    cfg = presets.make_config(flags.method, "walker_walk", flags.size, overrides=flags.set)
    spec = _spec(cfg.env.image_size, cfg)
    action_spec = specs.BoundedArray((6,), np.float32, -1, 1)
    agents = {}  # conv form -> Agent, built once each

    def agent_for(num_seeds):
        c = agent_config(cfg, num_seeds, jax.devices()[:1])
        if c.model.conv_impl not in agents:
            agents[c.model.conv_impl] = Agent(c, spec, action_spec)
        return agents[c.model.conv_impl]

    K = flags.updates_per_call or cfg.train.updates_per_call
    B, T = cfg.train.batch, cfg.train.length
    repeats = flags.repeats or 5
    one = _batch(agent_for(1), spec, K, B, T)
    base = None
    for n in [int(s) for s in flags.seeds_list]:
        agent = agent_for(n)
        sweep = SeedParallel(agent, n, devices=jax.devices()[:1])
        row = {
            "what": "sweep",
            "size": flags.size,
            "method": flags.method,
            "seeds": n,
            "conv_impl": agent.config.model.conv_impl,
            "device": str(jax.devices()[0].device_kind),
        }
        try:
            state = sweep.init(list(range(n)))
            batches = {k: np.broadcast_to(v, (n,) + v.shape) for k, v in one.items()}
            batches = sweep.shard(batches, "batches")  # placed once: time the updates alone
            active = sweep.shard(np.ones(n, bool), "active")
            t0 = time.perf_counter()
            # Compiled ahead of time so that XLA's buffer assignment can be reported.
            step = sweep.lower_train(state, batches).compile()
            compile_s = time.perf_counter() - t0
            times = []
            for _ in range(repeats + 1):  # the first call warms up
                t = time.perf_counter()
                state, metrics = step(state, batches, active)
                jax.block_until_ready(metrics)
                times.append(time.perf_counter() - t)
        except jax.errors.JaxRuntimeError as err:
            if not is_out_of_memory(err):
                raise
            # Larger S need more: report this row and stop.
            yield row | {"error": "out of memory: " + str(err).strip().splitlines()[0][:200]}
            return
        ups = n * K / float(np.median(times[1:]))
        base = base or ups / n
        yield row | {
            "updates_per_second_summed": round(ups, 2),
            "ratio_to_one_seed": round(ups / base, 2),
            "compile_seconds": round(compile_s, 1),
            "traces": sweep.traces["train"],
            **compiled_gigabytes(step),
            "device_peak_gb": device_peak_gigabytes(),
        }
        del state, batches, step
