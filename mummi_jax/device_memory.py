"""Device memory: what a compiled step needs, and a clear error when a device lacks it.

XLA reports an allocation failure as a `JaxRuntimeError` whose text starts with
``RESOURCE_EXHAUSTED`` and names neither the config nor a fix. The train steps translate it
into a `MemoryError` that says which knobs change the footprint.
"""

from __future__ import annotations

import contextlib

import jax

GB = 1e9


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(err)


@contextlib.contextmanager
def explain_out_of_memory(what: str, fix: str):
    """Re-raise an XLA out-of-memory error inside the block as a `MemoryError` naming `what`
    ran out and `fix`; other errors pass through unchanged."""
    try:
        yield
    except jax.errors.JaxRuntimeError as err:
        if not is_out_of_memory(err):
            raise
        first = str(err).strip().splitlines()[0][:300]
        device = jax.devices()[0].device_kind
        raise MemoryError(
            f"{what} ran out of device memory ({device}): {fix}. Checkpoints, replay and logs "
            f"already written are intact. XLA said: {first}"
        ) from err


def compiled_gigabytes(compiled) -> dict:
    """Footprint of a compiled program (`jit(f).lower(...).compile()`) from XLA's buffer
    assignment, in GB: temporaries, arguments and outputs (donated arguments alias outputs,
    so their sum overstates the peak). Empty where the backend reports none."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    return {
        "temp_gb": round(stats.temp_size_in_bytes / GB, 2),
        "argument_gb": round(stats.argument_size_in_bytes / GB, 2),
        "output_gb": round(stats.output_size_in_bytes / GB, 2),
    }


def device_peak_gigabytes(device=None) -> float | None:
    """The device allocator's peak since the process started (GPU), or None (CPU)."""
    stats = (device or jax.devices()[0]).memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return round(stats["peak_bytes_in_use"] / GB, 2)
