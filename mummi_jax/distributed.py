"""Multi-host seed sweeps: each process runs its own sub-sweep over its local devices.

Seeds are independent runs, so a sweep over H hosts needs no cross-host collective: process i
takes its block of seeds (`local_seeds`), builds a `SeedParallel` over ``jax.local_devices()``
(the default there) and writes one logdir per seed exactly as a single run would.
`jax.distributed.initialize` then only provides the process index/count, a coordination service
that notices a dead peer, and the option of global arrays later; two independent single-host
sweeps over disjoint seed lists compute the same thing.

`initialize` must run before any other JAX call (before anything creates a device array or
asks for devices); entry points call `initialize_from_flags()` first thing in ``main``.

Launching a 2-host sweep of 8 seeds (4 per host), coordinator on host A (10.0.0.1), any free
TCP port reachable from host B::

    # host A
    python -m experiments.sweep --seeds=0,1,2,3,4,5,6,7 <config flags> \\
        --coordinator_address=10.0.0.1:12345 --num_processes=2 --process_id=0
    # host B: the same command line with --process_id=1

Both processes get the full seed list; process 0 runs seeds 0-3 and process 1 seeds 4-7. With
several processes on one host (e.g. one per GPU), add ``--local_device_ids=0`` /
``--local_device_ids=1`` (or set CUDA_VISIBLE_DEVICES). On Slurm or Open MPI pass
``--distributed`` and leave the three flags unset: JAX detects them from the environment. On
CPU, JAX 0.10 also runs multi-process (gloo); tests/test_distributed.py launches two local
processes with 2 fake CPU devices each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

# Flag names match jax.distributed.initialize's argument names.
FLAG_NAMES = (
    "coordinator_address",
    "num_processes",
    "process_id",
    "local_device_ids",
    "distributed",
)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    **kwargs: Any,
) -> None:
    """Join a multi-process JAX job (wraps `jax.distributed.initialize`).

    Args:
      coordinator_address: "host:port" of process 0's coordination service; None to let JAX
        auto-detect (Slurm, Open MPI, TPU pods).
      num_processes: number of processes in the job (hosts, or processes per GPU).
      process_id: this process's index in [0, num_processes).
      local_device_ids: device ids this process owns (restricts visible local devices).
      **kwargs: passed through (e.g. initialization_timeout in seconds).

    Raises:
      ValueError: inconsistent arguments. RuntimeError: called twice.
    """
    if coordinator_address is not None:
        if num_processes is None or process_id is None:
            raise ValueError("coordinator_address needs num_processes and process_id")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"process_id {process_id} not in [0, {num_processes})")
    if jax.distributed.is_initialized():
        raise RuntimeError("jax.distributed is already initialized in this process")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        **kwargs,
    )


def shutdown() -> None:
    """Leave the job (optional: JAX also shuts down at exit)."""
    jax.distributed.shutdown()


def local_seeds(
    all_seeds: Sequence[int],
    process_index: int | None = None,
    process_count: int | None = None,
) -> list[int]:
    """This process's contiguous block of the sweep's seeds.

    Blocks are balanced (sizes differ by at most one, earlier processes get the extra seeds) and
    keep the order of `all_seeds`; together they are a partition of it.

    Args:
      all_seeds: every seed of the sweep, the same list on every process.
      process_index, process_count: default ``jax.process_index()`` / ``jax.process_count()``.

    Returns:
      list of seeds (possibly empty when there are more processes than seeds).
    """
    index = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process_index {index} not in [0, {count})")
    seeds = [int(s) for s in all_seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"duplicate seeds in {seeds}")
    base, extra = divmod(len(seeds), count)
    start = index * base + min(index, extra)
    return seeds[start : start + base + (index < extra)]


def is_main_process() -> bool:
    """True on process 0 (the one that should write sweep-level summaries)."""
    return jax.process_index() == 0


def define_flags(flag_values=None) -> None:
    """Define the absl flags --coordinator_address, --num_processes, --process_id,
    --local_device_ids and --distributed (auto-detect) on `flag_values` (default absl FLAGS)."""
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 (multi-host sweeps)", flag_values=fv
    )
    flags.DEFINE_integer("num_processes", None, "processes in the job", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "this process's index", flag_values=fv)
    flags.DEFINE_list(
        "local_device_ids", None, "local device ids this process owns", flag_values=fv
    )
    flags.DEFINE_bool(
        "distributed",
        False,
        "join a multi-process job with auto-detected arguments (Slurm, Open MPI)",
        flag_values=fv,
    )


def initialize_from_flags(flag_values=None) -> bool:
    """Call `initialize` if --coordinator_address or --distributed is set; returns whether it
    did. Without them the process is a single-host sweep and JAX is left untouched."""
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values
    if fv.coordinator_address is None and not fv.distributed:
        return False
    ids = fv.local_device_ids
    initialize(
        fv.coordinator_address,
        fv.num_processes,
        fv.process_id,
        None if ids is None else [int(i) for i in ids],
    )
    return True
