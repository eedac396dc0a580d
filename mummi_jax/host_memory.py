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
The cost is resident memory: the process keeps its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_applied: bool | None = None


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
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    # -1, not the largest int: mallopt's argument is an int, so 2**31 - 1 was the highest
    # threshold it could set, and a paper-size update frees more than that at once (glibc
    # then trimmed it and faulted it in again on the next call); -1 is "never trim".
    ok &= mallopt(_M_TRIM_THRESHOLD, -1) == 1
    ok &= mallopt(_M_ARENA_MAX, 1) == 1
    _applied = bool(ok)
    return _applied
