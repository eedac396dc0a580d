"""XLA:CPU's code generation for the entry points: elementwise fusions by the loop emitter.

jaxlib 0.10's XLA:CPU emits its elementwise (kLoop) fusions through the MLIR fusion emitters
by default. The older loop emitter, still behind `--xla_cpu_use_fusion_emitters=false`,
compiles faster and runs the agents' small fused kernels faster (BENCHMARKS.md, "XLA:CPU's
loop emitter", measured on a 2-core AMD EPYC, one process per setting): the tiny update
21-26 -> 14 ms, its compile 8-10 -> 6-8 s (3 s instead of 6 s at LLVM level 0, the test
session's), the `small` update 437 -> 381 ms, the paper-size update 6.45 -> 6.29 s. The
flag is process-wide and read once, when JAX creates its CPU backend, so it goes into
`XLA_FLAGS` before that: `experiments` applies it on import (every `python -m
experiments.<name>`), the test session in tests/conftest.py, and child processes inherit it.

A user's own `--xla_cpu_use_fusion_emitters=...` in `XLA_FLAGS` is kept as it is, and
`MUMMI_JAX_XLA_EMITTERS=fusion` keeps XLA's default. The flag is added only for the jaxlib
minor versions where it was measured: XLA aborts on a flag it does not know.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

FLAG = "--xla_cpu_use_fusion_emitters"
MEASURED_JAXLIB = ("0.10.",)  # versions whose XLA has the flag (a newer one may not)
OPT_OUT = "MUMMI_JAX_XLA_EMITTERS"


def with_loop_emitter(xla_flags: str, environ=os.environ, jaxlib: str | None = None) -> str:
    """`xla_flags` with `FLAG=false` appended, unless it names the flag already, the user
    opted out (`MUMMI_JAX_XLA_EMITTERS=fusion`) or `jaxlib` is not a measured version."""
    if FLAG in xla_flags or environ.get(OPT_OUT, "").lower() == "fusion":
        return xla_flags
    if jaxlib is None:
        try:
            jaxlib = metadata.version("jaxlib")
        except metadata.PackageNotFoundError:
            return xla_flags
    if not jaxlib.startswith(MEASURED_JAXLIB):
        return xla_flags
    return f"{xla_flags} {FLAG}=false".strip()


def use_loop_emitter() -> bool:
    """Puts the loop emitter's flag into this process's `XLA_FLAGS` (`with_loop_emitter`);
    True when the flag is now there as false. Call it before JAX creates a backend: after,
    XLA has read its flags and this changes nothing (False)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and bridge.backends_are_initialized():
        return False
    os.environ["XLA_FLAGS"] = with_loop_emitter(os.environ.get("XLA_FLAGS", ""))
    return loop_emitter_requested()


def loop_emitter_requested(xla_flags: str | None = None) -> bool:
    """Whether `xla_flags` (default: this process's `XLA_FLAGS`) turns the fusion emitters
    off: what a benchmark record names as its `cpu_emitter`."""
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    values = [f.split("=", 1)[1] for f in flags.split() if f.startswith(FLAG + "=")]
    return bool(values) and values[-1].lower() in ("false", "0")
