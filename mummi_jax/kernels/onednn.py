"""oneDNN's direct convolutions inside jitted JAX code on a CPU (XLA FFI custom calls).

`conv(x, kernel, stride)` is `lax.conv_general_dilated(x, kernel, (s, s), "VALID",
("NHWC", "HWIO", "NHWC"))` in float32, computed by oneDNN: forward, input gradient and
kernel gradient are three custom calls (onednn_conv.cc) under one `jax.custom_vjp`;
`conv_bias_relu(x, kernel, bias, stride)` is `relu(conv + bias)` with the bias and ReLU
applied by the forward kernel (a fourth call) and the same two gradient calls. Under
`vmap` (seeds of a sweep) each call runs once per batch element (`vmap_method="sequential"`).
CPU only: `config.resolve_conv_impl` picks it for `model.conv_impl=auto` on a CPU where
`available()`, for float32 encoders of large batches on one device; elsewhere the encoders
keep XLA's forms.

Why: XLA:CPU runs the encoders as patch matrices and GEMMs at 60-150 GFLOP/s at these
shapes, where oneDNN's direct kernels (what the released TensorFlow code runs) need no
patches: the encoders' part of a paper-size update drops by about a quarter, to within 4 %
of the released code's (BENCHMARKS.md, "oneDNN's convolutions inside the jitted update").

The kernel is built at install time (setup.py) against the `onednn-cpu-gomp` wheel, whose
library is loaded here before the kernel. `status()` says why it is unavailable, if it is.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np

_TARGETS = {
    "forward": "mummi_conv_forward",
    "forward_bias_relu": "mummi_conv_forward_bias_relu",
    "input_gradient": "mummi_conv_input_gradient",
    "kernel_gradient": "mummi_conv_kernel_gradient",
}


def _library_path() -> str:
    import os
    from importlib import metadata

    # A wheel's data files land under the environment's prefix (venv, --user, conda alike).
    for f in metadata.distribution("onednn-cpu-gomp").files or ():
        if f.name == "libdnnl.so.3":
            return os.path.realpath(f.locate())
    raise FileNotFoundError("the onednn-cpu-gomp distribution has no libdnnl.so.3")


@functools.cache
def status() -> str:
    """ "ok" once the kernel is loaded and registered with XLA, else why not (one line)."""
    spec = importlib.util.find_spec("mummi_jax.kernels._onednn_conv")
    if spec is None or not spec.origin:
        return (
            "the oneDNN kernel was not built (reinstall with `pip install -r requirements.txt "
            "-e .` on Linux x86-64 with a C++ compiler)"
        )
    try:
        # The kernel names libdnnl.so.3 without a path: loading it globally first resolves it.
        ctypes.CDLL(_library_path(), mode=ctypes.RTLD_GLOBAL)
        kernel = ctypes.CDLL(spec.origin)
        for name in _TARGETS.values():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(kernel, name)), "cpu")
    except Exception as e:  # noqa: BLE001 - any failure here means: use XLA's forms
        # A kernel built from an older onednn_conv.cc lacks a newer handler's symbol.
        return (
            f"the oneDNN kernel did not load ({type(e).__name__}: {e}); rebuild it with "
            "`pip install -r requirements.txt -e .`"
        )
    return "ok"


def available() -> bool:
    return status() == "ok"


def _call(target: str, shape, stride: int, *operands):
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    fn = jax.ffi.ffi_call(_TARGETS[target], out, vmap_method="sequential")
    return fn(*operands, stride=np.int64(stride))


def _output_shape(x_shape, k_shape, stride):
    n, h, w, _ = x_shape
    k, o = k_shape[0], k_shape[3]
    return (n, (h - k) // stride + 1, (w - k) // stride + 1, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x, kernel, stride: int = 2):
    """(N, H, W, C) float32, (K, K, C, O) float32 -> (N, OH, OW, O), VALID, stride `stride`."""
    _check(x, kernel)
    return _call("forward", _output_shape(x.shape, kernel.shape, stride), stride, x, kernel)


def _check(x, kernel):
    if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        raise TypeError(f"onednn.conv: float32 only, got {x.dtype} and {kernel.dtype}")
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ValueError(f"onednn.conv: NHWC and HWIO expected, got {x.shape}, {kernel.shape}")
    if not available():
        raise RuntimeError(f"onednn.conv: {status()}")


def _conv_fwd(x, kernel, stride):
    return conv(x, kernel, stride), (x, kernel)


def _grads(stride, x, kernel, g):
    """The input and kernel gradients of `conv` for the output cotangent `g`."""
    dx = _call("input_gradient", x.shape, stride, g, kernel)
    dk = _call("kernel_gradient", kernel.shape, stride, x, g)
    return dx, dk


def _conv_bwd(stride, residuals, g):
    return _grads(stride, *residuals, g)


conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_bias_relu(x, kernel, bias, stride: int = 2):
    """`relu(conv(x, kernel, stride) + bias)`, bias (O,): the encoders' layer with the bias
    and the ReLU applied by oneDNN's forward kernel as it writes its output (a post-op), as
    TensorFlow's fused convolution does, instead of a second pass over the (N, OH, OW, O)
    activations. The backward masks the cotangent with `y > 0` (JAX's ReLU gradient, 0 at
    0) and runs `conv`'s two gradient kernels; the bias gradient is its sum."""
    if bias.dtype != jnp.float32 or bias.shape != (kernel.shape[3],):
        raise ValueError(
            f"onednn.conv_bias_relu: float32 bias of shape ({kernel.shape[3]},) expected, "
            f"got {bias.dtype} {bias.shape}"
        )
    _check(x, kernel)
    shape = _output_shape(x.shape, kernel.shape, stride)
    return _call("forward_bias_relu", shape, stride, x, kernel, bias)


def _conv_bias_relu_fwd(x, kernel, bias, stride):
    y = conv_bias_relu(x, kernel, bias, stride)
    return y, (x, kernel, y)


def _conv_bias_relu_bwd(stride, residuals, g):
    x, kernel, y = residuals
    g = jnp.where(y > 0, g, 0.0)
    return (*_grads(stride, x, kernel, g), jnp.sum(g, axis=(0, 1, 2)))


conv_bias_relu.defvjp(_conv_bias_relu_fwd, _conv_bias_relu_bwd)
