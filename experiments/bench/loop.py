"""`--what=loop`: the whole host loop (environment, acting, replay, updates, checkpoints).

Runs `runner.Runner` (one seed) for the prefill episodes plus two agent episodes on `--tasks`
(default walker_walk) at `--size`, in a temporary logdir, and reports:

- env steps/s while the agent acts (render + physics + one acting call per agent step),
- env steps/s of the random prefill (render + physics alone),
- updates/s inside the train phases (the scanned K-update calls, batch sampling included),
- the projected wall time of 100k env steps at the reference schedule (100 updates every
  1000 env steps), from those three rates.

`--repeats` sets the updates per train phase (default: the config's, 100 at paper size);
on a CPU at paper size use a small value, an update there takes seconds.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time

import jax


def run(flags):
    from mummi_jax import presets
    from mummi_jax.runner import Runner

    for task in tuple(flags.tasks) or ("walker_walk",):
        base = presets.make_config(flags.method, task, flags.size, overrides=flags.set)
        t = base.train
        per_ep = base.env.time_limit  # env steps per episode
        phase = flags.repeats or t.train_steps
        over = [
            f"train.steps={(t.prefill_episodes + 2) * per_ep}",
            f"train.train_every={per_ep}",
            f"train.train_steps={phase}",
            # The first phase after the prefill has `train.pretrain` updates: the same count,
            # so that the phase read below has `phase` updates whichever it is.
            f"train.pretrain={phase}",
            # K must divide the phase (config.validate): the largest common divisor.
            f"train.updates_per_call={math.gcd(t.updates_per_call, phase)}",
            "train.eval_every=0",
        ]
        config = presets.make_config(flags.method, task, flags.size, overrides=[*flags.set, *over])
        with tempfile.TemporaryDirectory() as logdir:
            runner = Runner(config, logdir, progress=False)
            t0 = time.perf_counter()
            runner.train()
            total = time.perf_counter() - t0
            with open(os.path.join(logdir, "metrics.jsonl")) as f:
                lines = [json.loads(x) for x in f]
        walls = [r for r in lines if "train/return" in r]
        # Episode wall intervals: prefill episodes vs agent episodes (first agent episode
        # includes the acting step's compile; the second does not).
        stamps = [r["wall"] for r in walls]
        prefill_s = (stamps[t.prefill_episodes - 1] - stamps[0]) / max(1, t.prefill_episodes - 1)
        ups = [r["perf/updates_per_second"] for r in lines if "perf/updates_per_second" in r]
        # The last agent episode is preceded by a train phase; its wall interval minus the
        # phase time (phase / updates per s) is the acting episode.
        acting_s = stamps[-1] - stamps[-2] - phase / ups[-1]
        env_acting = per_ep / acting_s
        env_random = per_ep / prefill_s
        upd = ups[-1]
        projected = 100_000 / env_acting + 100_000 / 1000 * t.train_steps / upd
        yield {
            "what": "loop",
            "task": task,
            "size": flags.size,
            "method": flags.method,
            "env_steps_per_second_acting": round(env_acting, 1),
            "env_steps_per_second_random": round(env_random, 1),
            "updates_per_second": round(upd, 3),
            "updates_per_phase_measured": phase,
            "projected_seconds_per_100k_env_steps": round(projected, 1),
            "total_seconds": round(total, 1),
            "device": str(jax.devices()[0].device_kind),
        }
