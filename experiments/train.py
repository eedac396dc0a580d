"""Train one agent: `python -m experiments.train --method=mummi --task=walker_walk --logdir=DIR`.

Re-running the same command resumes (params, optimiser states, RNG, counters, replay).
`--set section.key=value` overrides any config value (repeatable); the resolved config is
saved as `<logdir>/config.json`.
"""

from __future__ import annotations

import sys

from absl import app, flags

from mummi_jax import config as C
from mummi_jax import presets
from mummi_jax.config import check_logdir

FLAGS = flags.FLAGS


def define_flags():
    """Defined when run as a script, not on import: tests import several entry points'
    functions into one process, where flags of one name from two modules clash."""
    flags.DEFINE_enum("method", "mummi", list(C.METHODS), "Method preset.")
    flags.DEFINE_string("task", "walker_walk", "Task name (see mummi_jax/envs/tasks.py).")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_string("logdir", None, "Run directory (created; re-running resumes).")
    flags.DEFINE_enum("size", "paper", list(C.SIZES), "tiny: minutes on a CPU; paper: published.")
    flags.DEFINE_enum("fidelity", "reference", list(C.FIDELITIES), "Released code or paper text.")
    flags.DEFINE_multi_string("set", [], "Config override section.key=value (repeatable).")
    flags.DEFINE_integer("envs", 1, "Environments stepped together, in worker processes.")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")


def resolve_config():
    return presets.make_config(
        FLAGS.method,
        FLAGS.task,
        FLAGS.size,
        FLAGS.fidelity,
        FLAGS.seed,
        [f"train.envs={FLAGS.envs}", *FLAGS.set],
    )


def main(argv):
    del argv
    if not FLAGS.logdir:
        raise SystemExit("error: --logdir is required (a run directory; re-running resumes)")
    try:
        config = resolve_config()
        check_logdir(FLAGS.logdir, config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Heavy imports after validation: a bad flag answers at once.
    from mummi_jax.runner import Runner

    try:
        runner = Runner(config, FLAGS.logdir, progress=FLAGS.progress)
    except ValueError as e:  # environment options the config check cannot see
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        runner.train()
    except (FloatingPointError, MemoryError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
