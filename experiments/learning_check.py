"""Does the agent learn? Train, then score it and a random policy on the same test episodes.

    python -m experiments.learning_check --logdir=runs/learning_check

Defaults: MuMMI, the toy 2D robot with a position sensor and a ceiling camera (a reaching
reward, at most 200 per episode), the tiny size (20k env steps, a few minutes on a 2-core
CPU). The run is an ordinary `experiments.train` logdir (re-running resumes). It then plays
`--episodes` test episodes with the trained agent and with uniform random actions on the very
same episode seeds, and passes when

    mean(agent) >= mean(random) + --margin   and   mean(agent) >= 2 * mean(random).

Prints one JSON line (agent and random mean returns, their ratio, `passed`), writes
`<logdir>/learning_check.json` (with every episode's return) and exits 1 when the check
fails. Measured figures are in BENCHMARKS.md ("Learning check").
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

from mummi_jax import config as C
from mummi_jax import presets

FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a script: tests import `check`, and `logdir` / `episodes`
    would clash with experiments.evaluate's flags in one process."""
    flags.DEFINE_string("method", "mummi", "Method preset.")
    flags.DEFINE_string("task", "toy_position_camera", "Task (a toy task learns in CPU minutes).")
    flags.DEFINE_enum("size", "tiny", list(C.SIZES), "Model size.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_string("logdir", "runs/learning_check", "Run directory (re-running resumes).")
    flags.DEFINE_integer("episodes", 10, "Test episodes for the agent and for the random policy.")
    flags.DEFINE_float("margin", 50.0, "Required lead of the agent's mean return over random.")
    flags.DEFINE_multi_string("set", [], "Config override section.key=value (repeatable).")
    flags.DEFINE_bool("progress", True, "Show a progress bar while training.")


def random_policy(action_dim):
    def factory(ep_seed):
        rng = np.random.default_rng([ep_seed, 7])
        return lambda obs, first: rng.uniform(-1, 1, action_dim).astype(np.float32)

    return factory


def check(config, logdir, episodes, margin, progress=False) -> dict:
    """Trains (or resumes) `config` in `logdir`, then scores agent and random policy."""
    from mummi_jax.checkpoint import atomic_write
    from mummi_jax.runner import Runner

    runner = Runner(config, logdir, progress=progress)
    state, counters = runner.train()
    trained = runner.evaluate(state, episodes=episodes, split="test", rate=0.0)[0].returns
    rand = runner.evaluate(
        state,
        episodes=episodes,
        split="test",
        rate=0.0,
        policy=random_policy(runner.agent.action_dim),
    )[0].returns
    a, r = float(np.mean(trained)), float(np.mean(rand))
    result = {
        "method": config.method,
        "task": config.env.task,
        "size": config.size,
        "seed": config.seed,
        "env_steps": counters[0]["env_steps"],
        "updates": counters[0]["updates"],
        "agent": {"mean": a, "std": float(np.std(trained)), "returns": trained},
        "random": {"mean": r, "std": float(np.std(rand)), "returns": rand},
        "ratio": a / r if r > 0 else float("inf"),
        "margin_required": margin,
        "passed": bool(a >= r + margin and a >= 2 * r),
    }
    atomic_write(os.path.join(logdir, "learning_check.json"), json.dumps(result, indent=2).encode())
    return result


def main(argv):
    del argv
    try:
        config = presets.make_config(
            FLAGS.method, FLAGS.task, FLAGS.size, seed=FLAGS.seed, overrides=FLAGS.set
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if FLAGS.episodes < 1:
        print(f"error: --episodes={FLAGS.episodes} must be >= 1", file=sys.stderr)
        return 2
    try:
        result = check(config, FLAGS.logdir, FLAGS.episodes, FLAGS.margin, FLAGS.progress)
    except ValueError as e:  # a logdir holding another config, bad environment options
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, MemoryError, RuntimeError) as e:  # e.g. a corrupt checkpoint
        print(f"error: {e}", file=sys.stderr)
        return 1
    # One JSON line (the per-episode returns are in <logdir>/learning_check.json).
    line = {k: v for k, v in result.items() if k not in ("agent", "random")}
    for who in ("agent", "random"):
        line[who] = round(result[who]["mean"], 3)
        line[f"{who}_std"] = round(result[who]["std"], 3)
    line["episodes"] = FLAGS.episodes
    print(json.dumps(line))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
