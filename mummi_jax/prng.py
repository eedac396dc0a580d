"""The random-number convention of every compiled program here: classic (non-partitionable)
threefry.

Since JAX 0.5 `jax_threefry_partitionable` defaults to True, which lets one key's random
array be generated in pieces on several devices. Nothing here needs that: a sweep shards
the seed axis, and each seed's draws stay on its own device. On XLA:CPU it costs compile
time: the agent's initialisation (one threefry per parameter tensor) compiles in about 3x
the time (BENCHMARKS.md, "The test suite"). `jit` below is `jax.jit` with the classic
variant held for tracing and lowering, so the library, the entry points and the tests draw
the same numbers for a seed whatever the caller's global setting, and the caller's own JAX
code keeps that setting.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax


class jit:  # noqa: N801  (a drop-in for jax.jit)
    """`jax.jit(fn, **kwargs)` that traces, lowers and runs under classic threefry.

    Exposes `__call__` and `lower`, the two uses made of jitted functions here."""

    def __init__(self, fn: Callable, **kwargs: Any):
        self._jitted = jax.jit(fn, **kwargs)
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        with jax.threefry_partitionable(False):
            return self._jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with jax.threefry_partitionable(False):
            return self._jitted.lower(*args, **kwargs)
