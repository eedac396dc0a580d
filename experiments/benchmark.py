"""Prints benchmark figures as one JSON object per line.

    python -m experiments.benchmark --what=env
    python -m experiments.benchmark --what=train_step --size=paper
    python -m experiments.benchmark --what=loop | acting | sweep | wipe
    python -m experiments.benchmark --what=dots --size=paper   # YNNPACK vs Eigen GFLOP
    python -m experiments.benchmark --what=conv_layers --size=paper   # encoders vs bare GEMMs
    python -m experiments.benchmark --what=reference --size=paper --reference=MuMMI \
        --tf_python=tfenv/bin/python      # the released code's update beside ours

Each `--what` lives in `experiments/bench/<what>.py` as `run(flags) -> iterable of dicts`.
Record results in BENCHMARKS.md with the command, machine and date.
"""

from __future__ import annotations

import importlib
import json
import sys

from absl import app, flags

from mummi_jax import config as C
from mummi_jax import presets

WHATS = (
    "env",
    "train_step",
    "acting",
    "loop",
    "sweep",
    "wipe",
    "reference",
    "dots",
    "conv_layers",
)
FLAGS = flags.FLAGS


def define_flags():
    """Defined when run as a script, not on import: tests import several entry points'
    functions into one process, where flags of one name from two modules clash."""
    flags.DEFINE_enum("what", "env", WHATS, "Which benchmark to run.")
    flags.DEFINE_enum("size", "tiny", list(C.SIZES), "Model size for model benchmarks.")
    flags.DEFINE_list("tasks", [], "Tasks (default: each benchmark's own list).")
    flags.DEFINE_integer("repeats", 0, "Timed repetitions (0: the benchmark's default).")
    flags.DEFINE_string("method", "mummi", "Method preset for model benchmarks.")
    flags.DEFINE_integer(
        "updates_per_call",
        0,
        "K updates per jitted call for --what=train_step (0: 1 at paper size on CPU, "
        "else the config's).",
    )
    flags.DEFINE_multi_string("set", [], "Config override section.key=value (model benchmarks).")
    flags.DEFINE_list("seeds_list", ["1", "2", "4", "8"], "Seed counts for --what=sweep.")
    flags.DEFINE_string("reference", None, "--what=reference: a checkout of clear-nus/MuMMI.")
    flags.DEFINE_string(
        "tf_python", None, "--what=reference: the Python of an environment with TensorFlow 2.15."
    )
    flags.DEFINE_bool(
        "reference_decoders",
        True,
        "--what=reference: also time the released code with its dead decoders.",
    )
    flags.DEFINE_enum(
        "reference_policy",
        "float32",
        ["float32", "mixed_bfloat16"],
        "--what=reference: the released code's Keras precision policy.",
    )
    flags.DEFINE_bool(
        "reference_parts",
        True,
        "--what=reference: then time both sides' image encoders alone (forward + weight "
        "gradient), alternating, to split the gap between the convolutions and the rest.",
    )


# Benchmarks that build a model from --method/--size/--set (the others time environments).
MODEL_WHATS = ("train_step", "acting", "loop", "sweep", "reference", "dots", "conv_layers")


def check_flags(flag_values) -> None:
    """Every flag checked before any benchmark starts: a one-line ValueError naming it."""
    from mummi_jax.envs import task_info

    for task in flag_values.tasks:
        task_info(task)
    for name in ("repeats", "updates_per_call"):
        if getattr(flag_values, name) < 0:
            raise ValueError(f"--{name}={getattr(flag_values, name)} must be >= 0 (0: default)")
    try:
        counts = [int(s) for s in flag_values.seeds_list]
    except ValueError:
        raise ValueError(f"--seeds_list={flag_values.seeds_list}: give integers") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"--seeds_list={flag_values.seeds_list}: each count must be >= 1")
    if flag_values.what in MODEL_WHATS:
        for task in tuple(flag_values.tasks) or ("walker_walk",):
            presets.make_config(
                flag_values.method, task, flag_values.size, overrides=flag_values.set
            )


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    try:
        check_flags(FLAGS)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"experiments.bench.{FLAGS.what}")
    try:
        for record in module.run(FLAGS):
            print(json.dumps(record), flush=True)
    except (FloatingPointError, MemoryError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
