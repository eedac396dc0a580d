"""Optimisers: Adam in the form the released Keras code applies it, and the clipped chains.

Keras' (and TF's `ApplyAdam`) update is

    m <- m + (g - m)(1 - b1),  v <- v + (g^2 - v)(1 - b2),
    p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps),

which is optax's `m_hat / (sqrt(v_hat) + eps)` with the epsilon scaled by
`1 / sqrt(1 - b2^t)`: 32x larger at the first step (1e-7 acts as 3.2e-6), 3x at step 100,
the same after a few thousand. Parameters whose gradients are of that size (rarely used
units, late layers early in training) move differently under the two forms; the parity
check against the released code sees it after one step (docs/PARITY.md).
"""

from __future__ import annotations

import typing
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mummi_jax.config import AdamForm

ADAM_FORMS = typing.get_args(AdamForm)  # the config's choices are the forms built here


class KerasAdamState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_keras_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7):
    """Adam's direction as Keras computes it (module docstring); chain with a -lr scale."""

    def init(params):
        zeros = lambda p: jnp.zeros_like(p)
        return KerasAdamState(
            jnp.zeros((), jnp.int32), jax.tree.map(zeros, params), jax.tree.map(zeros, params)
        )

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, updates)
        nu = jax.tree.map(lambda v, g: v + (g * g - v) * (1 - b2), state.nu, updates)
        t = count.astype(jnp.float32)
        scale = jnp.sqrt(1 - b2**t) / (1 - b1**t)
        out = jax.tree.map(lambda m, v: scale * m / (jnp.sqrt(v) + eps), mu, nu)
        return out, KerasAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def adam(lr: float, eps: float, form: str = "keras") -> optax.GradientTransformation:
    """Adam with learning rate `lr`: `keras` (the released code's form) or `optax`."""
    if form == "keras":
        return optax.chain(scale_by_keras_adam(eps=eps), optax.scale(-lr))
    if form == "optax":
        return optax.adam(lr, eps=eps)
    raise ValueError(f"unknown Adam form {form!r}; valid: {', '.join(ADAM_FORMS)}")


def clipped_adam(lr: float, eps: float, clip: float, form: str = "keras"):
    """Global-norm clipping, then Adam: one network's optimiser (reference-code.md §5.3)."""
    return optax.chain(optax.clip_by_global_norm(clip), adam(lr, eps, form))
