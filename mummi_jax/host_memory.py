"""Keeping the train step's freed host memory in the process (glibc's malloc, Linux).

One update at the paper's size allocates several GB of XLA:CPU temporaries and frees them
when it returns. glibc serves blocks that large with `mmap` and unmaps them on `free`, and
trims its heaps' free tops back to the kernel, so every update faults the same memory in
again (1.7 M minor faults, a third of the update on a 2-core box; BENCHMARKS.md, "On the
CPU box"). tcmalloc or jemalloc keep such memory, but only when preloaded, which a user
should not have to know about. `keep_freed_memory()` asks glibc itself for the same, through
`mallopt`, before the first large allocation: no `mmap` for large blocks (they come from the
heap and return to it), no trimming, and one arena (XLA's worker threads would otherwise
each grow their own heap and fall back to the main one for blocks over 64 MB anyway).
The cost is resident memory: the process keeps its peak, so the peak must not creep up.
It did, by a race: XLA:CPU frees a call's temporaries on its worker thread 10-20 ms *after*
it marks the outputs ready, so a host that dispatches the next update at once allocates
while the last one's several GB are still held. A heap that never trims keeps every such
overlap, fragmented, and grows with each back-to-back update (paper size: 8.2 GiB after one
update, 20.4 GiB after six, OOM-killed at 24.4 GiB before the twelfth on a 23 GiB box;
BENCHMARKS.md, "The heap growth"). `settle()` closes the race: a loop that issues updates
back to back runs each one, up to its synchronisation, inside `with settling():`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import time

# glibc's <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_applied: bool | None = None
# Temporaries held beyond the heap's use before a call below which settle() does not wait (a
# prefetched batch or two, the small sizes' temporaries).
SETTLE_FLOOR = 2**28
_mallinfo2 = None  # glibc's mallinfo2, once keep_freed_memory() is in force (glibc >= 2.33)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        ).split()
    ]


def keep_freed_memory() -> bool:
    """Tells glibc to keep freed memory; True when it did. Idempotent. A no-op (False) off
    Linux/glibc, under a preloaded allocator, or with `MUMMI_JAX_MALLOPT=0`."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("MUMMI_JAX_MALLOPT") == "0":
        return False
    if any(
        name in os.environ.get("LD_PRELOAD", "") for name in ("tcmalloc", "jemalloc", "mimalloc")
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    global _mallinfo2
    if hasattr(libc, "mallinfo2"):
        _mallinfo2 = libc.mallinfo2
        _mallinfo2.restype = _MallInfo2
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    # -1, not the largest int: mallopt's argument is an int, so 2**31 - 1 was the highest
    # threshold it could set, and a paper-size update frees more than that at once (glibc
    # then trimmed it and faulted it in again on the next call); -1 is "never trim".
    ok &= mallopt(_M_TRIM_THRESHOLD, -1) == 1
    ok &= mallopt(_M_ARENA_MAX, 1) == 1
    _applied = bool(ok)
    return _applied


def bytes_in_use() -> int | None:
    """The heap's bytes in use (glibc's `mallinfo2`; one arena, so the whole process's
    `malloc`ed memory), or None where `keep_freed_memory()` is not in force. It walks the
    free lists under the heap's lock: 2-10 ms on the paper-size heap (5 * 10^4 free chunks),
    so read it once per update, not per step."""
    if not _applied or _mallinfo2 is None:
        return None
    return int(_mallinfo2().uordblks)


def settle(in_use_before: int | None, timeout: float = 0.25, floor: int = SETTLE_FLOOR) -> float:
    """Waits until a finished XLA call's temporaries are back in the heap; returns the
    seconds waited (0.0 when nothing was held or `keep_freed_memory()` is not in force).

    Args:
      in_use_before: `bytes_in_use()` read before the call was dispatched.
      timeout: the longest wait, seconds; the paper-size update's 7 GB come back in
        10-20 ms.
      floor: bytes held beyond `in_use_before` below which there is nothing to wait for.

    Call it after synchronising on the call's outputs (reading a metric, or
    `jax.block_until_ready`), before dispatching the next call. It returns once three
    quarters of what was held beyond `in_use_before` is free again, so batches prefetched
    meanwhile on another thread do not keep it waiting.
    """
    now = bytes_in_use()
    if in_use_before is None or now is None or now - in_use_before < floor:
        return 0.0
    start = time.perf_counter()
    target = in_use_before + (now - in_use_before) // 4
    while now > target and time.perf_counter() - start < timeout:
        time.sleep(0.001)
        now = bytes_in_use()
    return time.perf_counter() - start


@contextlib.contextmanager
def settling(temp_bytes: int | None = None):
    """`with settling(): <dispatch a call and synchronise on its outputs>`: reads
    `bytes_in_use()` before the block and `settle()`s after it, so the next call starts
    once this one's temporaries are free.

    `temp_bytes`: the call's temporaries when known (XLA's memory analysis,
    `SeedParallel.train_temp_bytes`). Under `SETTLE_FLOOR` there is nothing `settle()` would
    wait for, so the heap is not read at all: each read walks its free lists, 4-14 ms on a
    tiny run's heap against a 100 ms call (BENCHMARKS.md, "The heap's free lists")."""
    if temp_bytes is not None and temp_bytes < SETTLE_FLOOR:
        yield
        return
    before = bytes_in_use()
    yield
    settle(before)
