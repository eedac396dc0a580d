"""`--what=conv_layers`: each encoder conv layer against the bare matrix products it runs.

For every layer of the image and depth encoders at the size's shapes (N = B x T frames), in
the form `model.conv_impl` resolves to here (per layer, as `networks.encoder_layer_form`
gives it: under `onednn` the small-output last layer is a channel-major matmul), one
process, quiet box assumed:
- `seconds`: the layer as the update runs it, forward + weight gradient + input gradient
  (the first layer has no input gradient: pixels are not trained), bias and ReLU included;
- `gemm_seconds`: its three products alone at the same shapes, `(O, K) @ (K, L)`,
  `dY (O, L) . P (K, L)` over L and `(K, O) @ (O, L)`, operands laid out as YNNPACK wants
  them; what a perfect layout (no patches, no space-to-depth, nothing but the products)
  could reach with this library;
- `overhead_seconds`: the difference, the cost of building patches, layout changes, bias,
  ReLU and their gradients.
The last record sums both encoders and sets them against a float32 GEMM timed in the same
process. Why: it measures where XLA:CPU stops on these layers (BENCHMARKS.md
"Where the encoders' time goes").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import train_step as ts
from mummi_jax import config as C
from mummi_jax import networks, presets

_CHANNELS = {"image": 3, "depth": 1}


def _layer_shapes(size, channels, depth, layers):
    """(C_in, C_out, input side, output side) of each VALID k4 s2 layer."""
    out = []
    for i in range(layers):
        o = depth * 2**i
        side = (size - 4) // 2 + 1
        out.append((channels, o, size, side))
        channels, size = o, side
    return out


def _layer_fn(form, trains_input):
    """Gradient of one `ConvEncoder` layer (networks.StridedConv with its ReLU, as the
    encoder builds it: under `onednn` bias and ReLU inside the forward kernel) in `form`."""
    cm = form == "matmul_cm"

    def loss(kernel, bias, x, cotangent):
        layer = networks.StridedConv(
            kernel.shape[-1], 4, "matmul" if cm else form, channel_major=cm, relu=True
        )
        y = layer.apply({"params": {"kernel": kernel, "bias": bias}}, x)
        return jnp.vdot(y, cotangent)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2) if trains_input else (0, 1)))


def _products(o, k, length, rng):
    w = jnp.asarray(rng.standard_normal((o, k), np.float32))
    wt = jnp.asarray(rng.standard_normal((k, o), np.float32))
    p = jnp.asarray(rng.standard_normal((k, length), np.float32))
    dy = jnp.asarray(rng.standard_normal((o, length), np.float32))
    contract_last = (((1,), (1,)), ((), ()))
    return [
        (jax.jit(lambda a, b: a @ b), w, p),
        (jax.jit(lambda a, b: jax.lax.dot_general(a, b, contract_last)), dy, p),
        (jax.jit(lambda a, b: a @ b), wt, dy),
    ]


def run(flags):
    cfg = presets.make_config(flags.method, "walker_walk", flags.size, overrides=flags.set)
    m = cfg.model
    encoder_form = C.resolve_config_conv(cfg)
    n = cfg.train.batch * cfg.train.length
    repeats = flags.repeats or 3
    rng = np.random.default_rng(0)
    totals = {"seconds": 0.0, "gemm_seconds": 0.0, "gflop": 0.0}
    for modality, channels in _CHANNELS.items():
        shapes = _layer_shapes(cfg.env.image_size, channels, m.cnn_depth, m.cnn_layers)
        for i, (c, o, side, out) in enumerate(shapes):
            trains_input = i > 0
            form = networks.encoder_layer_form(encoder_form, out)  # as ConvEncoder runs it
            cm = form == "matmul_cm"
            x_shape = (c, n, side, side) if cm else (n, side, side, c)
            y_shape = (o, n, out, out) if cm else (n, out, out, o)
            x = jnp.asarray(rng.random(x_shape, np.float32))
            kernel = jnp.asarray(rng.standard_normal((4, 4, c, o), np.float32) * 0.05)
            bias = jnp.zeros((o,), jnp.float32)
            cot = jnp.asarray(rng.standard_normal(y_shape, np.float32))
            fn = _layer_fn(form, trains_input)
            seconds = ts._timed(fn, kernel, bias, x, cot, repeats=repeats)
            k, length = 16 * c, n * out * out
            prods = _products(o, k, length, rng)[: 3 if trains_input else 2]
            gemm_s = sum(ts._timed(f, a, b, repeats=repeats) for f, a, b in prods)
            gflop = 2 * o * k * length * len(prods) / 1e9
            totals["seconds"] += seconds
            totals["gemm_seconds"] += gemm_s
            totals["gflop"] += gflop
            yield {
                "what": "conv_layers/layer",
                "size": flags.size,
                "modality": modality,
                "layer": i + 1,
                "shape": f"{c}x{side}x{side} -> {o}x{out}x{out}",
                "frames": n,
                "form": form,
                "seconds": seconds,
                "gemm_seconds": gemm_s,
                "overhead_seconds": seconds - gemm_s,
                "gflop": gflop,
                "gflops": gflop / seconds,
                "gemm_gflops": gflop / gemm_s,
            }
            del x, cot
    gemm = ts.gemm_gflops()
    yield {
        "what": "conv_layers",
        "size": flags.size,
        "form": encoder_form,
        "frames": n,
        **totals,
        "overhead_seconds": totals["seconds"] - totals["gemm_seconds"],
        "gflops": totals["gflop"] / totals["seconds"],
        "products_gflops": totals["gflop"] / totals["gemm_seconds"],
        "gemm2048_gflops": gemm,
    }
