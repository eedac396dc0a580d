"""mummi_jax.kernels.onednn: oneDNN's convolutions as XLA custom calls, against lax.conv."""

import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mummi_jax import config as C
from mummi_jax import networks, presets
from mummi_jax.kernels import onednn

LINUX_X86 = sys.platform.startswith("linux") and platform.machine() == "x86_64"


def _lax(x, k, stride):
    dims = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, k, (stride, stride), "VALID", dimension_numbers=dims)


def _close(a, b, tol):
    scale = float(jnp.max(jnp.abs(b)))
    assert float(jnp.max(jnp.abs(a - b))) <= tol * scale, (float(jnp.max(jnp.abs(a - b))), scale)


def test_the_kernel_is_built_and_loads_where_the_install_builds_it():
    if not LINUX_X86:
        pytest.skip("the oneDNN kernel is built on Linux x86-64 only")
    assert onednn.status() == "ok"
    assert C.resolve_conv_impl("auto", backend="cpu") == "onednn"
    # The paper's size takes it; the small sizes, where it does not pay, keep the matmul form.
    for size, want in (("paper", "onednn"), ("small", "matmul_cm"), ("tiny", "matmul_cm")):
        cfg = presets.make_config("mummi", "walker_walk", size)
        assert C.resolve_config_conv(cfg, backend="cpu") == want, size


@pytest.mark.parametrize(
    "shape,k,o,stride", [((5, 16, 16, 3), 4, 8, 2), ((3, 13, 11, 8), 3, 16, 1)]
)
def test_conv_and_both_gradients_match_lax_conv(shape, k, o, stride):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, shape[-1], o), np.float32) * 0.2)
    y = jax.jit(onednn.conv, static_argnums=2)(x, w, stride)
    assert y.shape == _lax(x, w, stride).shape
    _close(y, _lax(x, w, stride), 1e-5)
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, stride)))
    got = jax.jit(jax.grad(loss(onednn.conv), (0, 1)))(x, w)
    want = jax.grad(loss(_lax), (0, 1))(x, w)
    for a, b in zip(got, want, strict=True):
        _close(a, b, 1e-5)


@pytest.mark.parametrize("shape,k,o", [((5, 16, 16, 3), 4, 8), ((3, 14, 14, 8), 4, 16)])
def test_conv_bias_relu_and_its_gradients_match_lax(shape, k, o):
    """The fused forward (bias and ReLU as oneDNN's post-op) against relu(lax.conv + b):
    values, and gradients for input, kernel and bias, with a bias that puts many outputs
    below zero so that the mask matters."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, shape[-1], o), np.float32) * 0.2)
    b = jnp.asarray(rng.standard_normal((o,), np.float32))
    want_fn = lambda x, w, b: jax.nn.relu(_lax(x, w, 2) + b)
    y = jax.jit(onednn.conv_bias_relu, static_argnums=3)(x, w, b, 2)
    assert 0.1 < float(jnp.mean(y == 0)) < 0.9
    _close(y, want_fn(x, w, b), 1e-5)
    loss = lambda f: lambda x, w, b: jnp.sum(jnp.sin(f(x, w, b)))
    fused = lambda x, w, b: onednn.conv_bias_relu(x, w, b, 2)
    got = jax.jit(jax.grad(loss(fused), (0, 1, 2)))(x, w, b)
    want = jax.grad(loss(want_fn), (0, 1, 2))(x, w, b)
    for a, c in zip(got, want, strict=True):
        _close(a, c, 1e-5)
    with pytest.raises(ValueError, match="bias"):
        onednn.conv_bias_relu(x, w, b[:-1], 2)


def test_conv_under_vmap_and_scan_as_a_sweep_and_an_update_run_it():
    """A seed axis on both operands (a sweep's vmap: one call per seed) and gradient steps
    scanned over (the K updates of one jitted call)."""
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.standard_normal((2, 4, 10, 10, 2), np.float32))
    ws = jnp.asarray(rng.standard_normal((2, 4, 4, 2, 6), np.float32))
    grad = lambda conv: jax.grad(lambda w, x: jnp.sum(conv(x, w, 2) ** 2))
    got = jax.jit(jax.vmap(grad(onednn.conv)))(ws, xs)
    _close(got, jax.vmap(grad(_lax))(ws, xs), 1e-5)

    def steps(conv):
        def body(w, x):
            return w - 1e-3 * grad(conv)(w, x), jnp.sum(conv(x, w, 2))

        return jax.jit(lambda w: jax.lax.scan(body, w, xs))

    (w1, s1), (w2, s2) = steps(onednn.conv)(ws[0]), steps(_lax)(ws[0])
    _close(w1, w2, 1e-5)
    _close(s1, s2, 1e-5)


def test_the_encoder_in_onednn_form_equals_the_channel_major_form():
    """Same parameters, outputs and gradients whichever form `auto` picks on a CPU."""
    x = jax.random.uniform(jax.random.key(2), (2, 3, 64, 64, 3))
    forms = {f: networks.ConvEncoder(8, 4, conv_impl=f) for f in ("onednn", "matmul_cm")}
    params = forms["onednn"].init(jax.random.key(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(forms["matmul_cm"].init(
        jax.random.key(0), x))  # fmt: skip
    out = {f: jax.jit(e.apply)(params, x) for f, e in forms.items()}
    assert out["onednn"].shape == (2, 3, 64 * 2 * 2)
    # The last layer (6x6 -> 2x2) runs as the channel-major matmul: three oneDNN layers,
    # each with its bias and ReLU inside oneDNN's forward.
    text = jax.jit(forms["onednn"].apply).lower(params, x).as_text()
    assert text.count("mummi_conv_forward_bias_relu") == text.count("mummi_conv_forward") == 3
    assert [networks.encoder_layer_form("onednn", s) for s in (31, 14, 6, 2)] == [
        "onednn", "onednn", "onednn", "matmul_cm"
    ]  # fmt: skip
    assert networks.encoder_layer_form("matmul_cm", 6) == "matmul_cm"
    _close(out["onednn"], out["matmul_cm"], 1e-5)
    grads = {
        f: jax.jit(jax.grad(lambda p, e=e: jnp.sum(jnp.tanh(e.apply(p, x)))))(params)
        for f, e in forms.items()
    }
    leaves = [jax.tree.leaves(grads[f]) for f in forms]
    for a, b in zip(*leaves, strict=True):
        _close(a, b, 1e-4)


def test_bad_operands_and_combinations_are_refused_with_the_fix():
    x, w = jnp.ones((1, 8, 8, 3)), jnp.ones((4, 4, 3, 2))
    with pytest.raises(TypeError, match="float32 only"):
        onednn.conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), 2)
    with pytest.raises(ValueError, match="NHWC and HWIO"):
        onednn.conv(x, jnp.ones((4, 4, 5, 2)), 2)
    # A sweep sharded over several devices keeps the matmul form: XLA would gather a custom
    # call's operands onto every device (tests/test_runner.py checks for no collectives).
    assert C.resolve_conv_impl("auto", backend="cpu", devices=2) == "matmul_cm"
    # bf16 products cannot go through a float32 kernel: auto keeps the matmul form ...
    assert C.resolve_conv_impl("auto", backend="cpu", precision="bfloat16_matmul") == "matmul_cm"
    # ... and asking for both is refused before anything is built.
    sets = ["model.conv_impl=onednn", "model.precision=bfloat16_matmul"]
    with pytest.raises(ValueError, match="model.conv_impl='onednn' computes in float32"):
        presets.make_config("mummi", "toy_position_camera", "tiny", overrides=sets)


def test_without_the_kernel_auto_keeps_the_matrix_product_form(monkeypatch):
    """An install that could not build the kernel (no compiler) still runs: `auto` falls
    back to the channel-major matmul form, and asking for onednn names the reason."""
    monkeypatch.setattr(onednn, "status", lambda: "the oneDNN kernel was not built (test)")
    assert C.resolve_conv_impl("auto", backend="cpu") == "matmul_cm"
    with pytest.raises(RuntimeError, match="was not built"):
        onednn.conv(jnp.ones((1, 8, 8, 3)), jnp.ones((4, 4, 3, 2)), 2)


def test_benchmarks_count_the_kernels_products():
    """`--what=dots` and the train_step GFLOP/s read FLOPs from the compiled HLO, where the
    convolutions are custom calls, not dots: each counts as the products it computes."""
    from experiments.bench.dots import dot_table

    x, w = jnp.ones((10, 16, 16, 3)), jnp.ones((4, 4, 3, 8))
    loss = lambda w, x: jnp.sum(onednn.conv(x, w, 2) ** 2)
    rows = dot_table(jax.jit(jax.grad(loss, (0, 1))).lower(w, x).compile().as_text())
    convs = sorted((r["op"][0], r["gflop"] * 1e9) for r in rows if r["backend"] == "onednn")
    one = 2 * 10 * 7 * 7 * 8 * 4 * 4 * 3  # 2 x outputs x (K K C)
    kinds = ["conv_forward", "conv_input_gradient", "conv_kernel_gradient"]
    assert [op for op, _ in convs] == kinds
    assert all(abs(f - one) < 1e-3 for _, f in convs)
