"""The encoder convolution's matmul form against XLA's convolution (same numbers, same params)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mummi_jax import networks


def _lax_conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize("size,k,c,o", [(64, 4, 3, 8), (31, 4, 5, 7), (14, 4, 2, 3), (9, 2, 3, 4)])
def test_matmul_conv_equals_xla_conv_and_its_gradients(size, k, c, o):
    rng = np.random.default_rng(size)
    x = jnp.asarray(rng.normal(size=(3, size, size, c)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, c, o)), jnp.float32)
    with jax.default_matmul_precision("highest"):
        want = _lax_conv(x, w)
        got = networks.conv_stride2_matmul(x, w)
        assert got.shape == want.shape == (3, (size - k) // 2 + 1, (size - k) // 2 + 1, o)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
        # A nonlinear readout so every input and kernel entry gets its own gradient.
        loss = lambda f: lambda w, x: jnp.sum(jnp.sin(f(x, w)))
        gw, gx = jax.grad(loss(_lax_conv), (0, 1))(w, x)
        mw, mx = jax.grad(loss(lambda x, w: networks.conv_stride2_matmul(x, w)), (0, 1))(w, x)
    np.testing.assert_allclose(mw, gw, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(mx, gx, rtol=1e-4, atol=1e-4)


def test_odd_or_non_square_kernels_are_refused():
    x = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match="even square kernel"):
        networks.conv_stride2_matmul(x, jnp.zeros((3, 3, 1, 1)))


def test_encoder_params_and_outputs_do_not_depend_on_the_conv_impl():
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 5, 64, 64, 3)), jnp.float32)
    encs = {impl: networks.ConvEncoder(8, 4, conv_impl=impl) for impl in ("xla", "matmul")}
    params = {impl: e.init(jax.random.key(0), x) for impl, e in encs.items()}
    # Same tree, same names as flax's nn.Conv (Conv_i/kernel, Conv_i/bias), same init.
    assert jax.tree.structure(params["xla"]) == jax.tree.structure(params["matmul"])
    assert set(params["xla"]["params"]) == {f"Conv_{i}" for i in range(4)}
    jax.tree.map(np.testing.assert_array_equal, params["xla"], params["matmul"])
    with jax.default_matmul_precision("highest"):
        a = encs["xla"].apply(params["xla"], x)
        b = encs["matmul"].apply(params["xla"], x)
    assert a.shape == b.shape == (2, 5, 4 * 4 * 8 * 2**3 // 4)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_bfloat16_matmul_conv_computes_in_bf16_and_returns_f32():
    x = jnp.ones((1, 16, 16, 3))
    enc = networks.ConvEncoder(4, 2, dtype=jnp.bfloat16, conv_impl="matmul")
    params = enc.init(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    jaxpr = str(jax.make_jaxpr(enc.apply)(params, x))
    assert "bf16" in jaxpr
    assert enc.apply(params, x).dtype == jnp.float32


def test_unknown_conv_impl_names_the_choices():
    from mummi_jax import config as C

    with pytest.raises(ValueError, match="model.conv_impl.*auto, xla, matmul"):
        C.make_config("mummi", "walker_walk", "tiny", overrides=["model.conv_impl=cudnn"])
    with pytest.raises(ValueError, match="auto.*xla.*matmul"):
        enc = networks.ConvEncoder(4, 1, conv_impl="cudnn")
        enc.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
