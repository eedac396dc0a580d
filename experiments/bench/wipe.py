"""robosuite Wipe step cost: `python -m experiments.benchmark --what=wipe [--repeats=N]`.

Times the agent step of `mummi_jax.envs.wipe` (OSC controller, 25 physics substeps, both
64x64 cameras rendered offscreen with MUJOCO_GL=egl) with small random actions, first with
the fast render settings (the adapter's default: MSAA and reflections off, 64x64 offscreen
buffer, 1024 shadows), then with robosuite's own settings for comparison. Auto-reset steps
are not timed. Runs in this process: the benchmark process never touches dm_control.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402


def _time_steps(fast_render: bool, steps: int) -> dict:
    from mummi_jax.envs import wipe

    env = wipe.make("wipe", seed=0, fast_render=fast_render)
    rng = np.random.default_rng(0)
    shape = env.action_spec().shape
    env.reset()
    for _ in range(10):  # warm-up: GL buffers, numba-compiled controller code
        env.step(0.3 * rng.uniform(-1, 1, shape).astype(np.float32))
    times, resets = [], 0
    while len(times) < steps:
        action = 0.3 * rng.uniform(-1, 1, shape).astype(np.float32)
        start = time.perf_counter()
        ts = env.step(action)
        elapsed = time.perf_counter() - start
        if ts.first():
            resets += 1
        else:
            times.append(elapsed)
    settings = dict(env.render_settings)
    env.close()
    return {
        "what": "wipe",
        "modalities": ["workspace", "eye_in_hand"],
        "ms_per_agent_step_median": round(1e3 * float(np.median(times)), 2),
        "ms_per_agent_step_p90": round(1e3 * float(np.percentile(times, 90)), 2),
        "agent_steps_per_second": round(1.0 / float(np.mean(times)), 1),
        "steps": steps,
        "resets_not_timed": resets,
        "render_settings": settings,
    }


def run(flags):
    steps = int(flags.repeats) or 300
    yield _time_steps(True, steps)
    # robosuite's defaults (4x MSAA, reflections, 640x480 buffer): fewer steps, 3x the cost.
    yield _time_steps(False, max(20, steps // 3))
