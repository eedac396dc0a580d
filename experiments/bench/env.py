"""Environment step cost: `python -m experiments.benchmark --what=env [--tasks=...]`.

Times the agent step of `mummi_jax.envs.dmc` (physics x action repeat, one RGB+depth render,
one segmentation pass, compositing, touch) in this process, with random actions.
"""

from __future__ import annotations

import time

import numpy as np

DEFAULT_TASKS = ("walker_walk", "walker_run", "finger_spin", "cup_catch", "cheetah_run")


def run(flags):
    from mummi_jax.envs import dmc

    tasks = tuple(flags.tasks) or DEFAULT_TASKS
    steps = int(flags.repeats) or 300
    for task in tasks:
        env = dmc.make(task, seed=0, time_limit=10**9)
        rng = np.random.default_rng(0)
        shape = env.action_spec().shape
        env.reset()
        for _ in range(20):  # warm-up: GL context, caches
            env.step(rng.uniform(-1, 1, shape).astype(np.float32))
        times = []
        for _ in range(steps):
            action = rng.uniform(-1, 1, shape).astype(np.float32)
            start = time.perf_counter()
            env.step(action)
            times.append(time.perf_counter() - start)
        env.close()
        median = float(np.median(times))
        yield {
            "what": "env",
            "task": task,
            "modalities": list(env.modalities),
            "ms_per_agent_step_median": round(1e3 * median, 3),
            "agent_steps_per_second": round(1.0 / float(np.mean(times)), 1),
            "steps": steps,
        }
