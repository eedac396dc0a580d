"""Seed sweeps: `python -m experiments.sweep --method=mummi --task=walker_walk --seeds=0-7
--logdir=DIR [--size=tiny]`.

- `--method` and `--task` take comma lists (`--method=mummi,cvrl --task=walker_walk,cup_catch`);
  every (method, task) pair runs its seeds together, pairs one after the other
  (`mummi_jax/runner.py`: train and acting steps vmapped over seeds, the seed axis sharded
  over this process's devices, one environment per seed on the host).
- `--seeds`: a range `0-7`, a list `0,3,5`, or both `0-3,8`; distinct, >= 0.
- Layout: with one pair, seed N writes `DIR/seed<N>/`; with several,
  `DIR/<method>/<task>/seed<N>/`. Each seed directory is exactly what
  `python -m experiments.train --seed=N` writes (config.json, metrics.jsonl, checkpoints/,
  episodes/), so `experiments.evaluate --logdir=DIR/seed3` and `experiments.compare` read it
  as a single run. Re-running the command resumes every seed from its own newest checkpoint
  (also after adding seeds).
- `--set section.key=value` (repeatable) overrides config values for every pair, as in
  experiments/train.py. `train.envs` must stay 1 (a sweep steps one env per seed).
- Multi-host: `--coordinator_address=host:port --num_processes=H --process_id=i` (or
  `--distributed` under Slurm / Open MPI; `--local_device_ids` for several processes per host),
  see mummi_jax/distributed.py. Every process gets the same command line; process i runs its
  contiguous block of the seeds on its own local devices and no collective crosses hosts.

Bad input (unknown method or task, a bad seed spec, a logdir holding another config) is one
`error: ...` line on stderr and exit status 2, before anything is written or compiled.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from mummi_jax import config as C
from mummi_jax import distributed, presets

FLAGS = flags.FLAGS


def define_flags():
    """Defined when run as a script, not on import: tests import several entry points'
    functions into one process, where flags of one name from two modules clash."""
    flags.DEFINE_list("method", ["mummi"], "Method preset(s), comma-separated.")
    flags.DEFINE_list("task", ["walker_walk"], "Task(s), comma-separated.")
    flags.DEFINE_string("seeds", "0-3", "Seeds: a range 0-7, a list 0,3,5, or both (0-3,8).")
    flags.DEFINE_string("logdir", None, "Sweep directory (created; re-running resumes).")
    flags.DEFINE_enum("size", "paper", list(C.SIZES), "tiny: minutes on a CPU; paper: published.")
    flags.DEFINE_enum("fidelity", "reference", list(C.FIDELITIES), "Released code or paper text.")
    flags.DEFINE_multi_string("set", [], "Config override section.key=value (repeatable).")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    distributed.define_flags()


def parse_seeds(spec: str) -> list[int]:
    """'0-3,8' -> [0, 1, 2, 3, 8]; a one-line ValueError for anything else."""
    seeds: list[int] = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ValueError(
            f"bad --seeds {spec!r}: use a range like 0-7, a list like 0,3,5, or both"
        ) from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"bad --seeds {spec!r}: seeds must be distinct and >= 0")
    return seeds


def pair_logdir(logdir: str, method: str, task: str, many: bool) -> str:
    """The sweep directory of one (method, task) pair."""
    return os.path.join(logdir, method, task) if many else logdir


def resolve(logdir, methods, tasks, seeds, size, fidelity, sets):
    """Validates everything (no JAX, nothing written) -> [(method, task, config, pair_dir)]."""
    seeds = parse_seeds(seeds) if isinstance(seeds, str) else seeds
    pairs = [(m.strip(), t.strip()) for m in methods for t in tasks]
    if not pairs:
        raise ValueError("give at least one --method and one --task")
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"repeated method/task in {pairs}")
    many = len(pairs) > 1
    out = []
    for m, t in pairs:
        config = presets.make_config(m, t, size, fidelity, seeds[0], sets)
        if config.train.envs != 1:
            raise ValueError("a sweep steps one env per seed; leave train.envs at 1")
        d = pair_logdir(logdir, m, t, many)
        for s in seeds:
            C.check_logdir(os.path.join(d, f"seed{s}"), C.override(config, {"seed": s}))
        out.append((m, t, config, d))
    return seeds, out


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    if not FLAGS.logdir:
        print(
            "error: --logdir is required (a sweep directory; re-running resumes)", file=sys.stderr
        )
        return 2
    try:
        seeds, pairs = resolve(
            FLAGS.logdir, FLAGS.method, FLAGS.task, FLAGS.seeds, FLAGS.size, FLAGS.fidelity,
            FLAGS.set,
        )  # fmt: skip
        # Before any JAX computation, as jax.distributed requires; a no-op on a single host.
        distributed.initialize_from_flags()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Heavy imports after validation: a bad flag answers at once.
    from mummi_jax.runner import Runner

    mine = distributed.local_seeds(seeds)
    if not mine:
        print(f"process {distributed.jax.process_index()} has no seeds; nothing to do")
        return 0
    for m, t, config, d in pairs:
        print(f"{m} on {t}: seeds {mine} -> {d}", flush=True)
        try:
            runner = Runner(config, d, mine, progress=FLAGS.progress)
        except ValueError as e:
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
