"""Observation inputs on device: image crops (CoRAL §3.5) and z-scored proprioception (CoRAL
App. B). Pure functions of arrays, static shapes, explicit PRNG keys; no config, no model.

- `random_crop`: one random `size x size` window per sequence, the same at every step of it
  (CoRAL renders 76 x 76 and trains its contrastive image loss on random 64 x 64 crops,
  consistent in time), drawn from an explicit key inside the jitted train step;
- `center_crop`: the deterministic window CoRAL acts and evaluates with;
- `zscore_stats`, `zscore`: proprioception standardised with the mean and std of the initial
  random-policy data, a std below 1e-2 taken as 1 (a constant dimension stays as it is).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

MIN_STD = 1e-2  # CoRAL: smaller stds are replaced by 1


def center_crop(images: jax.Array, size: int) -> jax.Array:
    """`(..., H, W, C)` -> `(..., size, size, C)`, the centre window (offset (H - size) // 2)."""
    h, w = images.shape[-3], images.shape[-2]
    _check(h, w, size)
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size, :]


def random_crop(images: jax.Array, key: jax.Array, size: int) -> jax.Array:
    """`(B, T, H, W, C)` -> `(B, T, size, size, C)`: a uniform window per sequence b, offsets
    in `[0, H - size] x [0, W - size]`, shared by its T steps (CoRAL §3.5)."""
    b, t, h, w, c = images.shape
    _check(h, w, size)
    k_top, k_left = jax.random.split(key)
    tops = jax.random.randint(k_top, (b,), 0, h - size + 1)
    lefts = jax.random.randint(k_left, (b,), 0, w - size + 1)

    def one(seq, top, left):  # (T, H, W, C)
        zero = jnp.zeros((), top.dtype)
        return lax.dynamic_slice(seq, (zero, top, left, zero), (t, size, size, c))

    return jax.vmap(one)(images, tops, lefts)


def _check(h, w, size):
    if size > h or size > w:
        raise ValueError(f"crop of {size} px from {h}x{w} images: the crop must fit")


def zscore_stats(x, present=None, min_std: float = MIN_STD):
    """Mean and std over the rows of `x` `(N, D)` (rows with `present` `(N,)` > 0 only, if
    given) -> `(mean (D,), std (D,))`, a std below `min_std` replaced by 1 (CoRAL App. B).
    No present row: mean 0, std 1 (the identity)."""
    x = jnp.asarray(x, jnp.float32)
    w = jnp.ones(x.shape[:1], jnp.float32) if present is None else jnp.asarray(present, jnp.float32)
    w = (w > 0).astype(jnp.float32)[:, None]
    n = jnp.sum(w)
    mean = jnp.sum(w * x, axis=0) / jnp.maximum(n, 1.0)
    var = jnp.sum(w * jnp.square(x - mean), axis=0) / jnp.maximum(n, 1.0)
    std = jnp.sqrt(var)
    std = jnp.where(std < min_std, 1.0, std)
    return mean, std


def zscore(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """`(x - mean) / std`, broadcast over leading dims; the statistics carry no gradient."""
    return (x - lax.stop_gradient(mean)) / lax.stop_gradient(std)
