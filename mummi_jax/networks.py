"""Linen modules, per step (MuMMI app. B/C; reference-code.md §2). Leading dims are free.

Initialisers follow the released Keras code: glorot-uniform kernels, zero biases,
orthogonal GRU recurrent kernel (Flax defaults to lecun-normal).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

glorot = nn.initializers.glorot_uniform()
zeros = nn.initializers.zeros


def dense(features, name=None, dtype=None):
    return nn.Dense(features, kernel_init=glorot, bias_init=zeros, name=name, dtype=dtype)


def _flatten_lead(x, keep):
    lead = x.shape[: x.ndim - keep]
    return x.reshape((-1,) + x.shape[x.ndim - keep :]), lead


class ConvEncoder(nn.Module):
    """4 convs depth*2^i, kernel 4, stride 2, VALID, ReLU; NHWC flatten (64x64 -> 1024)."""

    depth: int = 32
    layers: int = 4
    # Compute dtype (params stay float32): bfloat16 is `model.precision`, the counterpart of
    # the reference's mixed float16. Outputs are cast back so losses stay float32.
    dtype: Any = None

    @nn.compact
    def __call__(self, x):  # (..., S, S, C) -> (..., E)
        x, lead = _flatten_lead(x, 3)
        for i in range(self.layers):
            x = nn.Conv(
                self.depth * 2**i,
                (4, 4),
                (2, 2),
                "VALID",
                kernel_init=glorot,
                bias_init=zeros,
                dtype=self.dtype,
            )(x)
            x = nn.relu(x)
        return x.reshape(lead + (-1,)).astype(jnp.float32)


class MLPEncoder(nn.Module):
    """Touch / proprio / toy sensors: `layers` ReLU layers, then Dense(embed) ReLU too
    (the reference activates its last layer; ref. §2.1)."""

    hidden: int = 128
    layers: int = 3
    embed: int = 1024

    @nn.compact
    def __call__(self, x):
        for _ in range(self.layers):
            x = nn.relu(dense(self.hidden)(x))
        return nn.relu(dense(self.embed)(x))


class ExpertHead(nn.Module):
    """q(s^f | x^m): Dense ReLU -> Dense 2F -> (mean, softplus + min_std) (ref. §2.2)."""

    hidden: int = 1024
    size: int = 1024
    min_std: float = 0.1
    dtype: Any = None  # compute dtype, as ConvEncoder

    @nn.compact
    def __call__(self, e):
        h = nn.relu(dense(self.hidden, dtype=self.dtype)(e))
        out = dense(2 * self.size, dtype=self.dtype)(h).astype(jnp.float32)
        mean, raw = jnp.split(out, 2, axis=-1)
        return mean, nn.softplus(raw) + self.min_std


class KerasGRU(nn.Module):
    """Keras GRUCell with reset_after=True as two fused matmuls (x -> 3H, h -> 3H).

    Gate order z, r, h: h' = z h + (1 - z) tanh(W_h x + b_h + r (U_h h + b_rh)).
    """

    size: int = 200

    @nn.compact
    def __call__(self, x, h):
        n = self.size
        kernel = self.param("kernel", glorot, (x.shape[-1], 3 * n))
        recurrent = self.param("recurrent_kernel", nn.initializers.orthogonal(), (n, 3 * n))
        bias = self.param("bias", zeros, (2, 3 * n))
        xs = x @ kernel + bias[0]
        hs = h @ recurrent + bias[1]
        xz, xr, xh = jnp.split(xs, 3, axis=-1)
        hz, hr, hh = jnp.split(hs, 3, axis=-1)
        z = jax.nn.sigmoid(xz + hz)
        r = jax.nn.sigmoid(xr + hr)
        cand = jnp.tanh(xh + r * hh)
        return z * h + (1.0 - z) * cand


class RSSMCell(nn.Module):
    """p(s^c | h) and q(s^c | s^f, h) with the deterministic GRU path (MuMMI eq. 9, 11).

    State: dict of `mean`, `std`, `stoch` (..., S) and `deter` (..., D).
    """

    stoch: int = 30
    deter: int = 200
    hidden: int = 200
    min_std: float = 0.1

    def setup(self):
        self.img1 = dense(self.hidden)
        self.gru = KerasGRU(self.deter)
        self.img2 = dense(self.hidden)
        self.img3 = dense(2 * self.stoch)
        self.obs1 = dense(self.hidden)
        self.obs2 = dense(2 * self.stoch)

    def _dist(self, raw):
        mean, std = jnp.split(raw, 2, axis=-1)
        return mean, nn.softplus(std) + self.min_std

    def img_step(self, prev, action, key):
        x = nn.elu(self.img1(jnp.concatenate([prev["stoch"], action], -1)))
        deter = self.gru(x, prev["deter"])
        mean, std = self._dist(self.img3(nn.elu(self.img2(deter))))
        stoch = mean + std * jax.random.normal(key, mean.shape)
        return {"mean": mean, "std": std, "stoch": stoch, "deter": deter}

    def obs_step(self, prev, action, fused, key):
        k_prior, k_post = jax.random.split(key)
        prior = self.img_step(prev, action, k_prior)
        x = nn.elu(self.obs1(jnp.concatenate([prior["deter"], fused], -1)))
        mean, std = self._dist(self.obs2(x))
        stoch = mean + std * jax.random.normal(k_post, mean.shape)
        post = {"mean": mean, "std": std, "stoch": stoch, "deter": prior["deter"]}
        return post, prior

    def __call__(self, prev, action, fused, key):
        return self.obs_step(prev, action, fused, key)


class DenseHead(nn.Module):
    """`layers` ELU layers of `units`, then a linear output (reward, value, actor)."""

    units: int = 400
    layers: int = 2
    out: int = 1

    @nn.compact
    def __call__(self, x):
        for _ in range(self.layers):
            x = nn.elu(dense(self.units)(x))
        return dense(self.out)(x)


class TwinQ(nn.Module):
    """Two Q networks on [feat, action] (CVRL's QNetwork x2; CoRAL's critic): (..., 2)."""

    units: int = 400
    layers: int = 3

    @nn.compact
    def __call__(self, feat, action):
        x = jnp.concatenate([feat, action], -1)
        return jnp.concatenate(
            [DenseHead(self.units, self.layers, 1, name=f"q{i}")(x) for i in range(2)], -1
        )


class GHead(nn.Module):
    """g(z) of MuMMI eq. 16: one Dense to dim(s^f), ReLU in the released code (ref. §3.1)."""

    size: int = 1024
    activation: str = "relu"

    @nn.compact
    def __call__(self, feat):
        x = dense(self.size)(feat)
        return nn.relu(x) if self.activation == "relu" else x


class CVRLHeads(nn.Module):
    """CVRL score heads (CVRL Sec. 3.1). `reference`: two ELU layers per side and a dot
    product (released code); `paper`: one FC per side and a bilinear W (`bilinear` param)."""

    form: str = "reference"
    obs_hidden: int = 400
    state_hidden: int = 200

    @nn.compact
    def __call__(self, feat, x):
        if self.form == "reference":
            xs = nn.elu(dense(self.state_hidden)(nn.elu(dense(self.obs_hidden)(x))))
            zs = nn.elu(dense(self.state_hidden)(nn.elu(dense(self.state_hidden)(feat))))
            return zs, xs
        self.param("bilinear", glorot, (self.state_hidden, self.state_hidden))
        return dense(self.state_hidden)(feat), dense(self.state_hidden)(x)


class CoRALHeads(nn.Module):
    """rho_o: Linear + LayerNorm; rho_z: 2 ELU layers -> proj + LayerNorm; learned
    temperature softplus(raw), starting at `temp_init` (coral.md §3.3)."""

    proj: int = 50
    state_hidden: int = 256
    temp_init: float = 1.0

    @nn.compact
    def __call__(self, embed, feat):
        o = nn.LayerNorm()(dense(self.proj)(embed))
        z = feat
        for _ in range(2):
            z = nn.elu(dense(self.state_hidden)(z))
        z = nn.LayerNorm()(dense(self.proj)(z))
        raw0 = math.log(math.expm1(self.temp_init))
        raw = self.param("temperature", nn.initializers.constant(raw0), ())
        return o, z, nn.softplus(raw)


class ImageDecoder(nn.Module):
    """Transposed-conv decoder (Dreamer v1; ref. §2.6) for reconstruction methods.

    64x64: Dense 1024 -> 1x1 -> ConvT 128 k5 s2 -> 64 k5 s2 -> 32 k6 s2 -> C k6 s2 (VALID).
    Other sizes: Dense to (S/8, S/8, 4 depth), then three stride-2 SAME transposed convs.
    """

    size: int = 64
    channels: int = 3
    depth: int = 32
    dtype: Any = None  # compute dtype, as ConvEncoder

    @nn.compact
    def __call__(self, feat):
        x, lead = _flatten_lead(feat, 1)
        conv = lambda c, k: nn.ConvTranspose(
            c, (k, k), (2, 2), "VALID", kernel_init=glorot, bias_init=zeros, dtype=self.dtype
        )
        if self.size == 64:
            x = dense(32 * self.depth, dtype=self.dtype)(x).reshape((-1, 1, 1, 32 * self.depth))
            x = nn.relu(conv(4 * self.depth, 5)(x))
            x = nn.relu(conv(2 * self.depth, 5)(x))
            x = nn.relu(conv(self.depth, 6)(x))
            x = conv(self.channels, 6)(x)
        else:
            s = self.size // 8
            x = dense(s * s * 4 * self.depth, dtype=self.dtype)(x)
            x = x.reshape((-1, s, s, 4 * self.depth))
            same = lambda c: nn.ConvTranspose(
                c, (4, 4), (2, 2), "SAME", kernel_init=glorot, dtype=self.dtype
            )
            for c in (2 * self.depth, self.depth):
                x = nn.relu(same(c)(x))
            x = same(self.channels)(x)
        return x.reshape(lead + x.shape[1:]).astype(jnp.float32)


class MLPDecoder(nn.Module):
    """Touch / proprio decoder: `layers` x `units` ELU -> out (Dreamer's touch decoder)."""

    out: int = 2
    units: int = 96
    layers: int = 3

    @nn.compact
    def __call__(self, feat):
        return DenseHead(self.units, self.layers, self.out)(feat)
