"""Linen modules, per step (MuMMI app. B/C; reference-code.md §2). Leading dims are free.

Initialisers follow the released Keras code: glorot-uniform kernels, zero biases,
orthogonal GRU recurrent kernel (Flax defaults to lecun-normal).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

glorot = nn.initializers.glorot_uniform()
zeros = nn.initializers.zeros


def dense(features, name=None, dtype=None, matmul_dtype=None):
    """`nn.Dense` with the released code's initialisers. `matmul_dtype`: the product's
    operands rounded to it, accumulated in float32 (`mixed_matmul`)."""
    dot = jax.lax.dot_general if matmul_dtype is None else _mixed_dot_general(matmul_dtype)
    return nn.Dense(
        features, kernel_init=glorot, bias_init=zeros, name=name, dtype=dtype, dot_general=dot
    )


_dense = dense  # for modules whose local `dense` fixes the operand dtype


def elu(x):
    """ELU with `exp(x) - 1` on the negative side, as the released code's TensorFlow computes
    it (Eigen's elu), rather than `jax.nn.elu`'s `expm1`: XLA:CPU vectorizes `exp` but not
    `expm1`, so this form runs 2.2x faster forward and 2.5x forward + backward on the
    imagination's (37500, 400) activations (BENCHMARKS.md, "ELU without expm1"). The two
    differ by at most one float32 ulp of 1 (near x = 0-), where `exp(x) - 1` rounds; the
    gradient is the same, 1 at x > 0 and exp(x) below (1 at x = 0, as both libraries)."""
    negative = jnp.where(x > 0, 0.0, x)  # exp of the positive side never computed (overflow)
    return jnp.where(x > 0, x, jnp.exp(negative) - 1.0)


_PRECISIONS = {
    "float32": (None, None),
    "bfloat16": (jnp.bfloat16, None),
    "bfloat16_matmul": (None, jnp.bfloat16),
}


def precision_dtypes(precision: str):
    """`model.precision` -> (compute dtype of the image encoders, decoders and expert heads,
    operand dtype of every network's products); None is float32.

    "bfloat16": those image and expert layers compute in bfloat16 (activations too; cuDNN's
    fast kernels on a GPU); the RSSM, the heads and the losses stay float32.
    "bfloat16_matmul": every network's products (convs in a matmul form, dense layers, the
    GRU) take bfloat16 operands and accumulate in float32; everything between them stays
    float32, and so do the losses' own products (InfoNCE) and the low-dimensional sensors'
    encoders (`MLPEncoder`: touch, proprioception, the toy's sensors), a negligible share of
    the FLOPs: with their few inputs' products in bf16 the toy learning check fails (29
    against random 52; 146 with them in float32). The counterpart of the released code's
    mixed precision (every Keras layer in float16) in the form a CPU with AVX512-BF16
    computes fast, where bf16 elementwise work (the other form's) is slower than float32
    (BENCHMARKS.md, "Mixed-precision products")."""
    if precision not in _PRECISIONS:
        raise ValueError(f"model.precision={precision!r}: one of {', '.join(_PRECISIONS)}")
    return _PRECISIONS[precision]


def _operands(dtype, *xs):
    """`xs` rounded to `dtype` and the products' result type (None: float32 throughout)."""
    if dtype is None:
        return xs, None
    return tuple(x.astype(dtype) for x in xs), jnp.float32


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def mixed_matmul(x, w, dtype):
    """(..., K) @ (K, O) with both operands rounded to `dtype` and a float32 result.

    The VJP keeps that form: the cotangent is rounded to `dtype` too and both gradient
    products accumulate in float32, so every product of forward and backward takes `dtype`
    operands. (JAX's own VJP of a `preferred_element_type` product multiplies the float32
    cotangent by a `dtype` operand, which XLA:CPU runs as a float32 product, and rounds the
    gradients to `dtype`.)"""
    return _mixed_matmul_fwd(x, w, dtype)[0]


def _mixed_matmul_fwd(x, w, dtype):
    (x, w), out = _operands(dtype, x, w)
    return jnp.einsum("...k,ko->...o", x, w, preferred_element_type=out), (x, w)


def _mixed_matmul_bwd(dtype, res, g):
    x, w = res
    (g,), out = _operands(dtype, g)
    dx = jnp.einsum("...o,ko->...k", g, w, preferred_element_type=out)
    dw = jnp.einsum("...k,...o->ko", x, g, preferred_element_type=out)
    return dx, dw


mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


def _mixed_dot_general(dtype):
    """A `dot_general` for `nn.Dense` (its contraction only) through `mixed_matmul`."""

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        (lc, rc), batch = dimension_numbers
        if tuple(lc) != (lhs.ndim - 1,) or tuple(rc) != (0,) or rhs.ndim != 2 or any(batch):
            raise ValueError(f"mixed_matmul takes a Dense contraction, got {dimension_numbers}")
        return mixed_matmul(lhs, rhs, dtype)

    return dot_general


def _matmul(x, w, dtype=None):
    """(..., K) @ (K, O), in float32 or through `mixed_matmul` at operand `dtype`."""
    if dtype is None:
        return jnp.einsum("...k,ko->...o", x, w)
    return mixed_matmul(x, w, dtype)


def _flatten_lead(x, keep):
    lead = x.shape[: x.ndim - keep]
    return x.reshape((-1,) + x.shape[x.ndim - keep :]), lead


def _regrouped_kernel(kernel):
    """An even k x k HWIO kernel -> (a = k/2, its (a*a*4C, O) matrix): row (i, j, di, dj, c)
    holds kernel[2i + di, 2j + dj, c], the weight of space-to-depth slice (i, j), channel
    (di, dj, c). Both matmul conv forms (NHWC and channel-major) use it."""
    k = kernel.shape[0]
    if kernel.shape[1] != k or k % 2:
        raise ValueError(f"conv_stride2_matmul needs an even square kernel, got {kernel.shape}")
    a, c, o = k // 2, kernel.shape[2], kernel.shape[3]
    return a, kernel.reshape(a, 2, a, 2, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(-1, o)


def _space_to_depth_cm(x):
    """Channel-major 2x2 space-to-depth: (C, N, H, W) -> (4C, N, H//2, W//2), channels ordered
    (row parity, col parity, c).

    An odd trailing row/column is dropped: a VALID stride-2 conv with an even kernel never
    reads it."""
    c, n, h, w = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, :, : 2 * h2, : 2 * w2].reshape(c, n, h2, 2, w2, 2)
    return x.transpose(3, 5, 0, 1, 2, 4).reshape(4 * c, n, h2, w2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_lhs_last(a, b, dtype=None):
    """(M, K) @ (K, L) -> (M, L), with a VJP in which every product contracts its left
    operand's last axis. `dtype`: every product's operands (the cotangent's too) rounded to
    it, accumulated in float32, as `mixed_matmul`.

    Why: XLA:CPU hands a dot to YNNPACK only when the contraction is the left operand's last
    axis; the usual weight gradient `patches^T @ dY` contracts the first, runs on Eigen and
    was the slowest part of the update (a 490k-row contraction 2.4x slower than the forward
    product, BENCHMARKS.md "Channel-major encoders"). Here the weight gradient is
    `dY (M, L) . b (K, L)` over L, and `a^T` for the input gradient is a small explicit copy
    behind an optimisation barrier, so that XLA cannot fold the transpose back into the dot.
    """
    return _matmul_lhs_last_fwd(a, b, dtype)[0]


def _matmul_lhs_last_fwd(a, b, dtype):
    (a, b), out = _operands(dtype, a, b)
    return jnp.dot(a, b, preferred_element_type=out), (a, b)


def _matmul_lhs_last_bwd(dtype, res, g):
    a, b = res
    (g,), out = _operands(dtype, g)
    # (M, L) . (K, L) -> (M, K), then (K, M) @ (M, L)
    da = jax.lax.dot_general(g, b, (((1,), (1,)), ((), ())), preferred_element_type=out)
    db = jnp.dot(jax.lax.optimization_barrier(a.T), g, preferred_element_type=out)
    return da, db


_matmul_lhs_last.defvjp(_matmul_lhs_last_fwd, _matmul_lhs_last_bwd)


def conv_stride2_matmul_cm(x, kernel, matmul_dtype=None):
    """A VALID stride-2 convolution with an even k x k kernel, as one matmul, channel-major.
    `matmul_dtype`: the product's operands, as `mixed_matmul` (None: float32).

    x: (C, N, H, W); kernel: (k, k, C, O) HWIO -> (O, N, (H-k)//2+1, (W-k)//2+1).

    Equal to `lax.conv_general_dilated(x, kernel, (2, 2), "VALID")` in NHWC (to float
    rounding, up to the layout): after a 2x2 space-to-depth, the stride-2 k x k conv is a
    stride-1 (k/2 x k/2) conv, whose (k/2)^2 shifted slices are stacked on the channel axis and
    multiplied by the regrouped kernel.
    Why this form: XLA:CPU's own convolution runs these layers at 30-40 GFLOP/s on a 2-core
    box, a matmul at several times that (BENCHMARKS.md, "One update"); the patch tensor is only
    about (k/2)^2 x the s2d input, not the k^2 of a plain im2col. Why channel-major: the
    patches are then (K, N*H'*W') with the long axis last, so the forward product, the input
    gradient and the weight gradient all contract a left operand's last axis
    (`_matmul_lhs_last`), the form XLA:CPU runs on YNNPACK; in NHWC the weight gradient
    contracts the 490k-row axis first and runs on Eigen.
    """
    a, w = _regrouped_kernel(kernel)
    y = _space_to_depth_cm(x)
    oh, ow = y.shape[2] - a + 1, y.shape[3] - a + 1
    patches = jnp.concatenate(
        [y[:, :, i : i + oh, j : j + ow] for i in range(a) for j in range(a)], axis=0
    )
    n = x.shape[1]
    # The barrier keeps the (small) kernel transpose a copy: folded into the dot, it would
    # make the product contract the kernel's first axis (Eigen, not YNNPACK).
    w_t = jax.lax.optimization_barrier(w.T)
    o = w.shape[1]
    y = _matmul_lhs_last(w_t, patches.reshape(w.shape[0], -1), matmul_dtype)
    return y.reshape(o, n, oh, ow)


def _space_to_depth(x):
    """(N, H, W, C) -> (N, H//2, W//2, 4C), channels ordered (row parity, col parity, c).

    An odd trailing row/column is dropped: a VALID stride-2 conv with an even kernel never
    reads it."""
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2]
    x = x.reshape(n, h2, 2, w2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h2, w2, 4 * c)


def conv_stride2_matmul(x, kernel, matmul_dtype=None):
    """A VALID stride-2 convolution with an even k x k kernel, as one matmul (its operands
    `matmul_dtype`, as `mixed_matmul`; None: float32).

    x: (N, H, W, C); kernel: (k, k, C, O) HWIO -> (N, (H-k)//2+1, (W-k)//2+1, O).

    Equal to `lax.conv_general_dilated(x, kernel, (2, 2), "VALID")` (to float rounding):
    after a 2x2 space-to-depth, the stride-2 k x k conv is a stride-1 (k/2 x k/2) conv, whose
    (k/2)^2 shifted slices are concatenated on channels and multiplied by the regrouped kernel.
    Why: XLA:CPU's own convolution runs these layers at 30-40 GFLOP/s on a 2-core box, the
    matmul at several times that (BENCHMARKS.md, "One update"); the patch tensor is only about
    (k/2)^2 x the s2d input, not the k^2 of a plain im2col.
    """
    a, w = _regrouped_kernel(kernel)
    y = _space_to_depth(x)
    oh, ow = y.shape[1] - a + 1, y.shape[2] - a + 1
    patches = jnp.concatenate(
        [y[:, i : i + oh, j : j + ow] for i in range(a) for j in range(a)], axis=-1
    )
    return _matmul(patches, w, matmul_dtype)


def _transpose_pad_before(k: int, padding: str) -> int:
    """Leading padding `lax.conv_transpose` gives the stride-2 input-dilated input."""
    if padding == "VALID":
        return k - 1
    if padding == "SAME":
        return k - 1 if 2 > k - 1 else -(-k // 2)  # ceil((k + 2 - 2) / 2)
    raise ValueError(f"conv_transpose_stride2_matmul takes VALID or SAME padding, got {padding!r}")


def _full_conv_input_side(x, wm, matmul_dtype=None):
    """(N, H, W, C), wm (A, A, C, 2, 2, O) -> (N, H+A-1, W+A-1, 4 O): slices, then a matmul."""
    a, c, o = wm.shape[0], wm.shape[2], wm.shape[5]
    gh, gw = x.shape[1] + a - 1, x.shape[2] + a - 1
    xp = jnp.pad(x, ((0, 0), (a - 1, a - 1), (a - 1, a - 1), (0, 0)))
    patches = jnp.concatenate(
        [xp[:, i : i + gh, j : j + gw] for i in range(a) for j in range(a)], axis=-1
    )
    return _matmul(patches, wm.reshape(a * a * c, 4 * o), matmul_dtype)


def _full_conv_output_side(x, wm, matmul_dtype=None):
    """As `_full_conv_input_side`: a matmul to every tap, then shifted adds."""
    a, c, o = wm.shape[0], wm.shape[2], wm.shape[5]
    # Tap a = A - 1 - b lands a rows/columns below its input pixel.
    wo = wm[::-1, ::-1].transpose(2, 0, 1, 3, 4, 5).reshape(c, a * a * 4 * o)
    # Split, not index: the gradient then concatenates instead of scattering into zeros.
    taps = jnp.split(_matmul(x, wo, matmul_dtype), a * a, axis=-1)
    return sum(
        jnp.pad(taps[i * a + j], ((0, 0), (i, a - 1 - i), (j, a - 1 - j), (0, 0)))
        for i in range(a)
        for j in range(a)
    )


def conv_transpose_stride2_matmul(x, kernel, padding="VALID", matmul_dtype=None):
    """`lax.conv_transpose(x, kernel, (2, 2), padding)` (flax's `nn.ConvTranspose`, kernel not
    transposed), written as one matmul and a depth-to-space.

    x: (N, H, W, C); kernel: (k, k, C, O) HWIO -> (N, 2H + k - 2, 2W + k - 2, O) for VALID,
    (N, 2H, 2W, O) for SAME.

    Output row 2p + r (r its parity) sums x[p - a] times kernel tap k - 1 - (2a + r) over
    a < A = ceil(k/2): a stride-1 "full" conv with A x A taps onto 4 O channels (one block per
    output parity), then a depth-to-space and a crop to the rows `padding` keeps. The full conv
    is one matmul, in one of two forms:
    - input side: the A^2 shifted slices of the zero-padded x, concatenated on channels,
      times the regrouped kernel; its temporary is A^2 C per position and its FLOPs grow with
      the padded area (H+A-1)(W+A-1);
    - output side: x times the kernel to all A^2 taps at once (A^2 4 O per position), then
      A^2 shifted adds; exact FLOPs.
    The output side is taken where C > 4 O or the padding would more than double the work: on
    XLA:CPU it wins for the 64x64 decoder's 1x1 first and 3-channel last layers (gradient
    0.11 s against 0.70, 0.43 against 0.64 on 500 images) and loses for the 13x13 one (0.91
    against 0.56).
    Why: as for `conv_stride2_matmul` (XLA:CPU's transposed-conv gradients are slow: 13x for
    the whole 64x64 decoder, BENCHMARKS.md; under a seed vmap they become grouped convolutions).
    """
    k = kernel.shape[0]
    if kernel.shape[1] != k:
        raise ValueError(f"conv_transpose_stride2_matmul needs a square kernel, got {kernel.shape}")
    n, h, w, c = x.shape
    o = kernel.shape[3]
    a = -(-k // 2)
    # Front-pad odd kernels to even size 2A: tap t of the padded kernel is tap t - (2A - k).
    wp = jnp.pad(kernel, ((2 * a - k, 0), (2 * a - k, 0), (0, 0), (0, 0)))
    # (b_h, b_w, C, r_h, r_w, O): block b (= A - 1 - a) with output parity r uses tap 2b + 1 - r.
    wm = wp.reshape(a, 2, a, 2, c, o)[:, ::-1, :, ::-1].transpose(0, 2, 4, 1, 3, 5)
    gh, gw = h + a - 1, w + a - 1
    output_side = c > 4 * o or gh * gw > 2 * h * w
    full = _full_conv_output_side if output_side else _full_conv_input_side
    y = full(x, wm, matmul_dtype)
    y = y.reshape(n, gh, gw, 2, 2, o).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * gh, 2 * gw, o)
    off = (k - 1) - _transpose_pad_before(k, padding)
    oh, ow = (2 * h + k - 2, 2 * w + k - 2) if padding == "VALID" else (2 * h, 2 * w)
    return y[:, off : off + oh, off : off + ow]


# The forms of a stride-2 conv. `model.conv_impl` (auto | xla | matmul | matmul_cm | onednn) is
# resolved by `config.resolve_conv_impl`, where the agent is built; networks take it resolved
# (`matmul_cm` is the matmul form with channel-major encoders, `ConvEncoder`; `onednn` the
# encoders' forward convs only, decoders taking `matmul`).
CONV_FORMS = ("xla", "matmul", "onednn")


class StridedConv(nn.Module):
    """k x k, stride-2 convolution, or transposed convolution (`transpose`), with the
    parameters and results of `nn.Conv` (VALID) or `nn.ConvTranspose` (VALID or SAME):
    `kernel` HWIO and `bias`, so checkpoints and parameter counts do not depend on `impl`
    (`xla` | `matmul` | `onednn`: `lax.conv*`, this module's matmul forms, or oneDNN's
    convolution through `mummi_jax.kernels.onednn`, the forward conv in float32 only)."""

    features: int
    kernel_size: int = 4
    impl: str = "xla"
    dtype: Any = None
    transpose: bool = False
    padding: str = "VALID"
    # (C, N, H, W) in and out instead of NHWC: the matmul forward conv only (ConvEncoder's).
    channel_major: bool = False
    # The products' operand dtype, accumulated in float32 (`precision_dtypes`); None: float32.
    matmul_dtype: Any = None
    # ReLU after the bias (the encoders' layers): under `onednn` oneDNN applies both as it
    # writes the output (`onednn.conv_bias_relu`), saving a pass over the activations.
    relu: bool = False

    @nn.compact
    def __call__(self, x):  # (N, H, W, C) -> (N, H', W', features); see channel_major
        if not self.transpose and self.padding != "VALID":
            raise ValueError(f"StridedConv: a forward conv is VALID only, got {self.padding!r}")
        if self.channel_major and (self.transpose or self.impl != "matmul"):
            raise ValueError("StridedConv: channel_major is the matmul forward conv's layout only")
        if self.impl == "onednn" and (self.transpose or self.matmul_dtype is not None):
            raise ValueError(
                "StridedConv: the onednn form is the forward conv in float32 only (decoders "
                "take matmul; model.precision=bfloat16_matmul takes matmul_cm)"
            )
        if self.impl not in CONV_FORMS:
            raise ValueError(
                f"StridedConv: conv impl {self.impl!r} is not one of {', '.join(CONV_FORMS)}; "
                "resolve model.conv_impl (auto, xla, matmul, onednn) with config.resolve_conv_impl "
                "first"
            )
        k = self.kernel_size
        c = x.shape[0] if self.channel_major else x.shape[-1]
        kernel = self.param("kernel", glorot, (k, k, c, self.features))
        bias = self.param("bias", zeros, (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        md = self.matmul_dtype
        act = nn.relu if self.relu else (lambda y: y)
        if self.channel_major:
            return act(conv_stride2_matmul_cm(x, kernel, md) + bias[:, None, None, None])
        dims = ("NHWC", "HWIO", "NHWC")
        if self.impl == "onednn":
            from mummi_jax.kernels import onednn

            if self.relu:
                return onednn.conv_bias_relu(x, kernel, bias, 2)
            return onednn.conv(x, kernel, 2) + bias
        matmul = self.impl == "matmul"
        if matmul and self.transpose:
            y = conv_transpose_stride2_matmul(x, kernel, self.padding, md)
        elif matmul:
            y = conv_stride2_matmul(x, kernel, md)
        elif md is not None:
            # JAX's VJP of a bf16 conv with a f32 result runs its backward convs in f32 and
            # rounds the gradients to bf16: neither fast nor float32-exact.
            raise ValueError(
                "model.precision=bfloat16_matmul needs a matmul conv form, not xla: set "
                "model.conv_impl=matmul (or matmul_cm), or use model.precision=bfloat16 "
                "(the GPU form, for cuDNN's convolutions)"
            )
        else:
            conv = jax.lax.conv_transpose if self.transpose else jax.lax.conv_general_dilated
            pad = self.padding if self.transpose else "VALID"
            y = conv(x, kernel, (2, 2), pad, dimension_numbers=dims)
        return act(y + bias)


# Under `onednn`, a layer with outputs smaller than this (on a side) runs as the channel-major
# matmul instead: the 64x64 encoder's last layer (6x6 -> 2x2, k4 s2), a GEMM in all but
# name, took oneDNN 0.41 s and the matmul 0.21-0.23 s per encoder at the paper's batch
# (forward + both gradients; 0.33 against 0.19-0.21 s on a Zen 4 box), while at 6x6 outputs
# and up oneDNN was as fast or faster (BENCHMARKS.md, "The encoders' last layer as a
# matmul").
ONEDNN_MIN_OUTPUT = 3


def encoder_layer_form(conv_impl: str, out_side: int) -> str:
    """The form one `ConvEncoder` layer with `out_side` x `out_side` outputs runs in under a
    resolved `conv_impl`: `conv_impl` itself, except oneDNN's small-output layers, which run
    as ``"matmul_cm"``."""
    if conv_impl == "onednn" and out_side < ONEDNN_MIN_OUTPUT:
        return "matmul_cm"
    return conv_impl


class ConvEncoder(nn.Module):
    """4 convs depth*2^i, kernel 4, stride 2, VALID, ReLU; NHWC flatten (64x64 -> 1024)."""

    depth: int = 32
    layers: int = 4
    # Compute dtype (params stay float32): bfloat16 is `model.precision`, the counterpart of
    # the reference's mixed float16. Outputs are cast back so losses stay float32.
    dtype: Any = None
    # "xla" | "matmul" | "matmul_cm" | "onednn" (resolved); same parameters and outputs in
    # every case
    conv_impl: str = "xla"
    matmul_dtype: Any = None  # the products' operands, as StridedConv

    @nn.compact
    def __call__(self, x):  # (..., S, S, C) -> (..., E)
        x, lead = _flatten_lead(x, 3)
        # `matmul_cm` runs the whole stack channel-major (`conv_stride2_matmul_cm`): one
        # layout change in and one out, none between layers (BENCHMARKS.md "Channel-major
        # encoders"). Under `onednn` only its small-output layers do (`encoder_layer_form`).
        cm = False  # is x channel-major (C, N, H, W) now?
        for i in range(self.layers):
            side = (x.shape[2 if cm else 1] - 4) // 2 + 1
            layer_cm = encoder_layer_form(self.conv_impl, side) == "matmul_cm"
            if layer_cm != cm:
                x = x.transpose(3, 0, 1, 2) if layer_cm else x.transpose(1, 2, 3, 0)
                cm = layer_cm
            # Named as nn.Conv would be: parameter trees are those of earlier checkpoints.
            conv = StridedConv(
                self.depth * 2**i,
                4,
                "matmul" if cm else self.conv_impl,
                self.dtype,
                channel_major=cm,
                matmul_dtype=self.matmul_dtype,
                relu=True,
                name=f"Conv_{i}",
            )
            x = conv(x)
        if cm:
            x = x.transpose(1, 2, 3, 0)
        return x.reshape(lead + (-1,)).astype(jnp.float32)


class MLPEncoder(nn.Module):
    """Touch / proprio / toy sensors: `layers` ReLU layers, then Dense(embed) ReLU too
    (the reference activates its last layer; ref. §2.1)."""

    hidden: int = 128
    layers: int = 3
    embed: int = 1024

    @nn.compact
    def __call__(self, x):
        # Always float32, also under bfloat16_matmul (precision_dtypes says why).
        for _ in range(self.layers):
            x = nn.relu(dense(self.hidden)(x))
        return nn.relu(dense(self.embed)(x))


class ExpertHead(nn.Module):
    """q(s^f | x^m): Dense ReLU -> Dense 2F -> (mean, softplus + min_std) (ref. §2.2)."""

    hidden: int = 1024
    size: int = 1024
    min_std: float = 0.1
    dtype: Any = None  # compute dtype, as ConvEncoder
    matmul_dtype: Any = None  # the products' operands, as ConvEncoder

    @nn.compact
    def __call__(self, e):
        h = nn.relu(dense(self.hidden, dtype=self.dtype, matmul_dtype=self.matmul_dtype)(e))
        out = dense(2 * self.size, dtype=self.dtype, matmul_dtype=self.matmul_dtype)(h)
        out = out.astype(jnp.float32)
        mean, raw = jnp.split(out, 2, axis=-1)
        return mean, nn.softplus(raw) + self.min_std


class KerasGRU(nn.Module):
    """Keras GRUCell with reset_after=True as two fused matmuls (x -> 3H, h -> 3H).

    Gate order z, r, h: h' = z h + (1 - z) tanh(W_h x + b_h + r (U_h h + b_rh)).
    """

    size: int = 200
    matmul_dtype: Any = None  # the products' operands (precision_dtypes); None: float32

    @nn.compact
    def __call__(self, x, h):
        n = self.size
        kernel = self.param("kernel", glorot, (x.shape[-1], 3 * n))
        recurrent = self.param("recurrent_kernel", nn.initializers.orthogonal(), (n, 3 * n))
        bias = self.param("bias", zeros, (2, 3 * n))
        xs = _matmul(x, kernel, self.matmul_dtype) + bias[0]
        hs = _matmul(h, recurrent, self.matmul_dtype) + bias[1]
        xz, xr, xh = jnp.split(xs, 3, axis=-1)
        hz, hr, hh = jnp.split(hs, 3, axis=-1)
        z = jax.nn.sigmoid(xz + hz)
        r = jax.nn.sigmoid(xr + hr)
        cand = jnp.tanh(xh + r * hh)
        return z * h + (1.0 - z) * cand


class RSSMCell(nn.Module):
    """p(s^c | h) and q(s^c | s^f, h) with the deterministic GRU path (MuMMI eq. 9, 11).

    State: dict of `mean`, `std`, `stoch` (..., S) and `deter` (..., D).

    Samples are `mean + std * noise` with the standard-normal noise passed in, not drawn
    here: the caller decides its shape (one row per batch element, or one row shared by the
    whole batch as the released code's sampler does, `model.shared_noise`), and a parity
    check can feed the noise another implementation used.

    `layers` ELU layers of `hidden` units precede the GRU, the prior's output and the
    posterior's: 1 in MuMMI and Dreamer v1, 2 in CoRAL (App. B.1, 2 x 400). The extra layers
    are `img1_more_i`, `img2_more_i`, `obs1_more_i`, so one layer keeps the released tree.
    """

    stoch: int = 30
    deter: int = 200
    hidden: int = 200
    min_std: float = 0.1
    layers: int = 1
    matmul_dtype: Any = None  # the products' operands (precision_dtypes); None: float32

    def setup(self):
        d = functools.partial(dense, matmul_dtype=self.matmul_dtype)
        more = lambda: [d(self.hidden) for _ in range(self.layers - 1)]
        self.img1 = d(self.hidden)
        self.img1_more = more()
        self.gru = KerasGRU(self.deter, self.matmul_dtype)
        self.img2 = d(self.hidden)
        self.img2_more = more()
        self.img3 = d(2 * self.stoch)
        self.obs1 = d(self.hidden)
        self.obs1_more = more()
        self.obs2 = d(2 * self.stoch)

    @staticmethod
    def _mlp(first, more, x):
        x = elu(first(x))
        for layer in more:
            x = elu(layer(x))
        return x

    def _dist(self, raw):
        mean, std = jnp.split(raw, 2, axis=-1)
        return mean, nn.softplus(std) + self.min_std

    def img_step(self, prev, action, noise):
        """Prior step; `noise` broadcasts to `(..., S)`."""
        x = self._mlp(self.img1, self.img1_more, jnp.concatenate([prev["stoch"], action], -1))
        deter = self.gru(x, prev["deter"])
        mean, std = self._dist(self.img3(self._mlp(self.img2, self.img2_more, deter)))
        stoch = mean + std * noise
        return {"mean": mean, "std": std, "stoch": stoch, "deter": deter}

    def obs_step(self, prev, action, fused, noise):
        """Prior then posterior step; `noise` is `(2, ...)`: [0] for the prior sample, [1]
        for the posterior's, each broadcasting to `(..., S)`."""
        prior = self.img_step(prev, action, noise[0])
        x = self._mlp(self.obs1, self.obs1_more, jnp.concatenate([prior["deter"], fused], -1))
        mean, std = self._dist(self.obs2(x))
        stoch = mean + std * noise[1]
        post = {"mean": mean, "std": std, "stoch": stoch, "deter": prior["deter"]}
        return post, prior

    def __call__(self, prev, action, fused, noise):
        return self.obs_step(prev, action, fused, noise)


class FeatureMajorDense(nn.Module):
    """`nn.Dense` on feature-major activations: `(K, M) -> (N, M)` as `kernel^T h + bias`,
    with `nn.Dense`'s parameters (`kernel` (K, N), `bias` (N,)) and initialisers.

    Why: XLA:CPU hands `h (M, K) @ kernel` to YNNPACK (a product contracting its left
    operand's last axis) and `kernel^T h` to Eigen, which at the heads' shapes (K, N of
    200-400, thousands of rows) is the faster of the two (BENCHMARKS.md, "Feature-major
    heads")."""

    features: int

    @nn.compact
    def __call__(self, h):
        kernel = self.param("kernel", glorot, (h.shape[0], self.features))
        bias = self.param("bias", zeros, (self.features,))
        return jax.lax.dot_general(kernel, h, (((0,), (0,)), ((), ()))) + bias[:, None]


class DenseHead(nn.Module):
    """`layers` ELU layers of `units`, then a linear output (reward, value, actor).

    `layout="features"` computes the same layers on transposed activations
    (`FeatureMajorDense`; one transpose in, one out): same parameters, same outputs up to
    float rounding (`config.resolve_head_layout` picks it on a CPU); float32 products only."""

    units: int = 400
    layers: int = 2
    out: int = 1
    matmul_dtype: Any = None  # the products' operands (precision_dtypes); None: float32
    layout: str = "rows"  # "rows" | "features"

    @nn.compact
    def __call__(self, x):
        if self.layout == "features":
            if self.matmul_dtype is not None:
                raise ValueError("DenseHead(layout='features') computes its products in float32")
            lead = x.shape[:-1]
            h = x.reshape(-1, x.shape[-1]).T
            for i in range(self.layers):  # named as nn.Dense names itself: same parameters
                h = elu(FeatureMajorDense(self.units, name=f"Dense_{i}")(h))
            out = FeatureMajorDense(self.out, name=f"Dense_{self.layers}")(h)
            return out.T.reshape(*lead, self.out)
        for _ in range(self.layers):
            x = elu(dense(self.units, matmul_dtype=self.matmul_dtype)(x))
        return dense(self.out, matmul_dtype=self.matmul_dtype)(x)


class TwinQ(nn.Module):
    """Two Q networks on [feat, action] (CVRL's QNetwork x2; CoRAL's critic): (..., 2)."""

    units: int = 400
    layers: int = 3
    matmul_dtype: Any = None  # the products' operands (precision_dtypes); None: float32

    @nn.compact
    def __call__(self, feat, action):
        x = jnp.concatenate([feat, action], -1)
        heads = [
            DenseHead(self.units, self.layers, 1, self.matmul_dtype, name=f"q{i}") for i in range(2)
        ]
        return jnp.concatenate([q(x) for q in heads], -1)


class GHead(nn.Module):
    """g(z) of MuMMI eq. 16: one Dense to dim(s^f), ReLU in the released code (ref. §3.1)."""

    size: int = 1024
    activation: str = "relu"
    matmul_dtype: Any = None  # the products' operands (precision_dtypes); None: float32

    @nn.compact
    def __call__(self, feat):
        x = dense(self.size, matmul_dtype=self.matmul_dtype)(feat)
        return nn.relu(x) if self.activation == "relu" else x


class CVRLHeads(nn.Module):
    """CVRL score heads (CVRL Sec. 3.1). `reference`: two ELU layers per side and a dot
    product (released code); `paper`: one FC per side and a bilinear W (`bilinear` param)."""

    form: str = "reference"
    obs_hidden: int = 400
    state_hidden: int = 200
    matmul_dtype: Any = None  # the products' operands (precision_dtypes); None: float32

    @nn.compact
    def __call__(self, feat, x):
        dense = functools.partial(_dense, matmul_dtype=self.matmul_dtype)
        if self.form == "reference":
            xs = elu(dense(self.state_hidden)(elu(dense(self.obs_hidden)(x))))
            zs = elu(dense(self.state_hidden)(elu(dense(self.state_hidden)(feat))))
            return zs, xs
        self.param("bilinear", glorot, (self.state_hidden, self.state_hidden))
        return dense(self.state_hidden)(feat), dense(self.state_hidden)(x)


class CoRALHeads(nn.Module):
    """rho_o: Linear + LayerNorm; rho_z: 2 ELU layers -> proj + LayerNorm; learned
    temperature softplus(raw), starting at `temp_init` (coral.md §3.3)."""

    proj: int = 50
    state_hidden: int = 256
    temp_init: float = 1.0
    matmul_dtype: Any = None  # the products' operands (precision_dtypes); None: float32

    @nn.compact
    def __call__(self, embed, feat):
        dense = functools.partial(_dense, matmul_dtype=self.matmul_dtype)
        o = nn.LayerNorm()(dense(self.proj)(embed))
        z = feat
        for _ in range(2):
            z = elu(dense(self.state_hidden)(z))
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
    conv_impl: str = "xla"  # as ConvEncoder
    matmul_dtype: Any = None  # the products' operands, as ConvEncoder

    @nn.compact
    def __call__(self, feat):
        x, lead = _flatten_lead(feat, 1)
        if self.size == 64:
            x = dense(32 * self.depth, dtype=self.dtype, matmul_dtype=self.matmul_dtype)(x)
            x = x.reshape((-1, 1, 1, 32 * self.depth))
            layers = [(4 * self.depth, 5), (2 * self.depth, 5), (self.depth, 6), (self.channels, 6)]
            padding = "VALID"
        else:
            s = self.size // 8
            x = dense(s * s * 4 * self.depth, dtype=self.dtype, matmul_dtype=self.matmul_dtype)(x)
            x = x.reshape((-1, s, s, 4 * self.depth))
            layers = [(2 * self.depth, 4), (self.depth, 4), (self.channels, 4)]
            padding = "SAME"
        # `matmul_cm` and `onednn` are the encoders' forms only; decoders take the NHWC matmul.
        impl = "matmul" if self.conv_impl in ("matmul_cm", "onednn") else self.conv_impl
        for i, (c, k) in enumerate(layers):
            # Named as nn.ConvTranspose would be: parameter trees are those of old checkpoints.
            conv = StridedConv(
                c,
                k,
                impl,
                self.dtype,
                True,
                padding,
                matmul_dtype=self.matmul_dtype,
                name=f"ConvTranspose_{i}",
            )
            x = conv(x)
            x = nn.relu(x) if i < len(layers) - 1 else x
        return x.reshape(lead + x.shape[1:]).astype(jnp.float32)


class MLPDecoder(nn.Module):
    """Touch / proprio decoder: `layers` x `units` ELU -> out (Dreamer's touch decoder)."""

    out: int = 2
    units: int = 96
    layers: int = 3
    matmul_dtype: Any = None  # the products' operands (precision_dtypes); None: float32

    @nn.compact
    def __call__(self, feat):
        return DenseHead(self.units, self.layers, self.out, self.matmul_dtype)(feat)
