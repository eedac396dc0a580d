"""The encoder's and decoder's (transposed) convolutions in matmul form against XLA's (same
numbers, same gradients, same parameters); the conv form `auto` picks, and what vmap over
seeds makes of each."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from mummi_jax import config as C
from mummi_jax import networks, presets


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
    # The channel-major form (`matmul_cm` encoders) and its custom VJP, through NHWC wrappers.
    cm = lambda x, w: networks.conv_stride2_matmul_cm(x.transpose(3, 0, 1, 2), w).transpose(
        1, 2, 3, 0
    )
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(cm(x, w), want, rtol=1e-5, atol=1e-4)
        cw, cx = jax.grad(loss(cm), (0, 1))(w, x)
    np.testing.assert_allclose(cw, gw, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(cx, gx, rtol=1e-4, atol=1e-4)


def test_odd_or_non_square_kernels_are_refused():
    x = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match="even square kernel"):
        networks.conv_stride2_matmul(x, jnp.zeros((3, 3, 1, 1)))


def test_unsupported_paddings_are_refused():
    x = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match="VALID only"):
        networks.StridedConv(2, 4, padding="SAME").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="VALID or SAME"):
        networks.conv_transpose_stride2_matmul(x, jnp.zeros((4, 4, 1, 1)), "CIRCULAR")


def test_encoder_params_and_outputs_do_not_depend_on_the_conv_impl():
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 5, 64, 64, 3)), jnp.float32)
    impls = ("xla", "matmul", "matmul_cm")
    encs = {impl: networks.ConvEncoder(8, 4, conv_impl=impl) for impl in impls}
    params = {impl: e.init(jax.random.key(0), x) for impl, e in encs.items()}
    # Same tree, same names as flax's nn.Conv (Conv_i/kernel, Conv_i/bias), same init.
    assert set(params["xla"]["params"]) == {f"Conv_{i}" for i in range(4)}
    for impl in impls[1:]:
        assert jax.tree.structure(params["xla"]) == jax.tree.structure(params[impl])
        jax.tree.map(np.testing.assert_array_equal, params["xla"], params[impl])
    with jax.default_matmul_precision("highest"):
        a = jax.jit(encs["xla"].apply)(params["xla"], x)
        for impl in impls[1:]:
            b = jax.jit(encs[impl].apply)(params["xla"], x)
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
    with pytest.raises(ValueError, match="model.conv_impl.*auto, xla, matmul"):
        presets.make_config("mummi", "walker_walk", "tiny", overrides=["model.conv_impl=cudnn"])
    with pytest.raises(ValueError, match="auto.*xla.*matmul"):
        enc = networks.ConvEncoder(4, 1, conv_impl="cudnn")
        enc.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))


@pytest.mark.parametrize(
    "impl,backend,per_device,want",
    [
        ("auto", "cpu", 1, "onednn"),  # tests/test_kernels.py: the kernel is built here
        ("auto", "cpu", 4, "onednn"),  # no workload given: counts as large
        ("auto", "gpu", 1, "xla"),
        ("auto", "gpu", 2, "matmul"),
        ("auto", "tpu", 8, "matmul"),
        ("xla", "gpu", 8, "xla"),
        ("xla", "cpu", 1, "xla"),
        ("matmul", "gpu", 1, "matmul"),
    ],
)
def test_auto_conv_impl_picks_onednn_on_cpu_and_matmul_for_vmapped_seeds(
    impl, backend, per_device, want
):
    assert C.resolve_conv_impl(impl, per_device, backend) == want


def _grad_hlo(impl, seeds):
    """StableHLO of d(loss)/d(params) of a ConvEncoder vmapped over `seeds` parameter sets:
    what a sweep's vmap makes of the encoder."""
    enc = networks.ConvEncoder(4, 2, conv_impl=impl)
    x = jnp.ones((seeds, 3, 16, 16, 3))
    params = jax.vmap(enc.init)(jax.random.split(jax.random.key(0), seeds), x)
    loss = lambda p, x: jnp.sum(enc.apply(p, x) ** 2)
    return jax.jit(jax.vmap(jax.grad(loss))).lower(params, x).as_text()


def test_vmapped_matmul_encoder_has_no_grouped_convolutions():
    import re

    # The reason for `auto`'s sweep rule: vmapped lax.convs with a seed axis on the kernel
    # become grouped convolutions (one group per seed) ...
    groups = re.findall(r"feature_group_count = (\d+)", _grad_hlo("xla", 4))
    assert groups and set(groups) == {"4"}
    # ... while the matmul form has no convolution at all: batched matmuls instead.
    text = _grad_hlo("matmul", 4)
    assert "stablehlo.convolution" not in text and "stablehlo.dot_general" in text


def test_a_seed_sweep_of_a_reconstruction_method_lowers_without_convolutions():
    """Dreamer (image encoder and transposed-conv decoder) vmapped over 2 seeds, as a sweep
    builds it on any backend: no convolution is left in the lowered train step."""
    from dm_env import specs

    from mummi_jax.agent import Agent
    from mummi_jax.parallel import SeedParallel

    impl = C.resolve_conv_impl("auto", seeds_per_device=2, backend="gpu")
    cfg = presets.make_config(
        "dreamer",
        "toy_position_camera",
        "tiny",
        overrides=["env.image_size=16", "model.cnn_layers=2", f"model.conv_impl={impl}"],
    )
    obs = {
        "camera": specs.BoundedArray((16, 16, 3), np.uint8, 0, 255),
        "position": specs.Array((2,), np.float32),
    }
    obs.update({f"{m}_flag": specs.Array((), np.float32) for m in ("camera", "position")})
    agent = Agent(cfg, obs, specs.BoundedArray((2,), np.float32, -1, 1))
    assert set(agent.rep.values()) == {"recon"}
    sweep = SeedParallel(agent, 2, devices=jax.devices()[:1])
    state = jax.eval_shape(lambda: jax.vmap(agent.init)(jax.random.split(jax.random.key(0), 2)))
    K, B, T = 1, cfg.train.batch, cfg.train.length
    batch = {m: jax.ShapeDtypeStruct((2, K, B, T) + s.shape, s.dtype) for m, s in obs.items()}
    batch.update(
        {
            k: jax.ShapeDtypeStruct((2, K, B, T), np.float32)
            for k in ("reward", "discount", "is_first")
        }
    )
    batch["action"] = jax.ShapeDtypeStruct((2, K, B, T, 2), np.float32)
    text = sweep.lower_train(state, batch).as_text()
    assert "stablehlo.convolution" not in text and "stablehlo.dot_general" in text


# (C, O) = (3, 4) takes the matmul's input-side form except at size 1 (padding); (9, 2) the
# output-side form (C > 4 O).
@pytest.mark.parametrize(
    "size,k,padding,c,o",
    [
        (1, 5, "VALID", 3, 4),
        (5, 5, "VALID", 3, 4),
        (13, 6, "VALID", 3, 4),
        (13, 6, "VALID", 9, 2),
        (4, 4, "SAME", 3, 4),
        (4, 4, "SAME", 9, 2),
        (3, 3, "SAME", 3, 4),
        (5, 5, "SAME", 9, 2),
    ],
)
def test_matmul_transposed_conv_equals_flax_conv_transpose_and_its_gradients(
    size, k, padding, c, o
):
    import flax.linen as nn

    rng = np.random.default_rng(k)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, c)), jnp.float32)
    ref = nn.ConvTranspose(o, (k, k), (2, 2), padding)  # the decoder's layer before
    params = ref.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    mods = {
        i: networks.StridedConv(o, k, i, transpose=True, padding=padding) for i in ("xla", "matmul")
    }
    assert jax.tree.structure(mods["matmul"].init(jax.random.key(0), x)) == jax.tree.structure(
        params
    )
    # Jitted: op-by-op, every primitive of every form would compile on its own.
    loss = lambda m: jax.jit(
        jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(m.apply(p, x))), (0, 1))
    )
    out = lambda m: jax.jit(m.apply)(params, x)
    with jax.default_matmul_precision("highest"):
        want = out(ref)
        _, (gp, gx) = loss(ref)(params, x)
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
        for m in mods.values():
            np.testing.assert_allclose(out(m), want, rtol=1e-5, atol=1e-4)
            _, (mp, mx) = loss(m)(params, x)
            jax.tree.map(close, mp, gp)
            np.testing.assert_allclose(mx, gx, rtol=1e-4, atol=1e-4)
    out = {"VALID": 2 * size + k - 2, "SAME": 2 * size}[padding]
    assert want.shape == (2, out, out + 2, o)


@pytest.mark.parametrize("size", [64, 16])
def test_decoder_params_and_outputs_do_not_depend_on_the_conv_impl(size):
    feat = jnp.asarray(np.random.default_rng(size).normal(size=(2, 3, 30)), jnp.float32)
    decs = {i: networks.ImageDecoder(size, 3, 8, conv_impl=i) for i in ("xla", "matmul")}
    params = decs["xla"].init(jax.random.key(0), feat)
    # Flax's auto names of the decoder's earlier nn.ConvTranspose layers: old checkpoints load.
    layers = {64: 4, 16: 3}[size]
    assert set(params["params"]) == {"Dense_0"} | {f"ConvTranspose_{i}" for i in range(layers)}
    with jax.default_matmul_precision("highest"):
        a, b = (jax.jit(decs[i].apply)(params, feat) for i in ("xla", "matmul"))
    assert a.shape == (2, 3, size, size, 3)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_matmul_encoder_gradient_contracts_no_lhs_first_axis():
    """XLA:CPU runs a dot on YNNPACK only when it contracts the left operand's last axis; the
    NHWC weight gradient `patches^T dY` contracts the first and runs on Eigen, 2.4x slower
    (BENCHMARKS.md "Channel-major encoders"). The compiled gradient of the channel-major
    encoder (`matmul_cm`) must have no such dot; the NHWC one (`matmul`) has some."""
    import re

    enc = networks.ConvEncoder(4, 2, conv_impl="matmul_cm")
    x = jnp.ones((6, 16, 16, 3))
    params = enc.init(jax.random.key(0), x)
    loss = lambda p, x: jnp.sum(jnp.sin(enc.apply(p, x)))
    hlo = jax.jit(jax.grad(loss)).lower(params, x).compile().as_text()
    dots = [line for line in hlo.splitlines() if re.search(r"\sdot\(", line)]
    assert len(dots) >= 2 * 3 - 1  # forward, input and weight gradients of 2 layers
    first = [d.strip()[:160] for d in dots if re.search(r"lhs_contracting_dims=\{0\}", d)]
    assert not first, first
    nhwc = networks.ConvEncoder(4, 2, conv_impl="matmul")
    hlo = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(nhwc.apply(p, x))))).lower(params, x)
    assert re.search(r"\sdot\(.*lhs_contracting_dims=\{0\}", hlo.compile().as_text())


def test_dot_table_counts_loop_trips_and_names_the_backend():
    """`experiments.benchmark --what=dots` reads FLOPs and the CPU backend of every dot from
    compiled HLO: a (64, 32) x (32, 32) product inside a 5-step scan is 5 x 131,072 FLOPs,
    and the weight-gradient form `x^T y` (contracting x's first axis) is left to Eigen."""
    from experiments.bench.dots import dot_table

    x, w = jnp.ones((64, 32)), jnp.ones((32, 32))

    def looped(x, w):  # the carry makes each step's product depend on the last
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=5)[0]

    rows = dot_table(jax.jit(looped).lower(x, w).compile().as_text())
    assert len(rows) == 1 and rows[0]["gflop"] == pytest.approx(5 * 2 * 64 * 32 * 32 / 1e9)
    (grad,) = dot_table(
        jax.jit(lambda x, y: x.T @ y).lower(x, jnp.ones((64, 8))).compile().as_text()
    )
    assert grad["lhs_contracting"] == [0] and grad["backend"] == "eigen"


def test_conv_layers_benchmark_walks_the_encoders_layers():
    """`--what=conv_layers` times each encoder layer at the shapes `ConvEncoder` runs: the
    paper's 64 px through four k4 s2 VALID layers is 31, 14, 6, 2 px at 32..256 channels,
    whose flatten is the 1024-d embedding, and each layer's patch matrix is (16 C, N H' W')."""
    from experiments.bench.conv_layers import _layer_shapes

    shapes = _layer_shapes(64, 3, 32, 4)
    assert shapes == [(3, 32, 64, 31), (32, 64, 31, 14), (64, 128, 14, 6), (128, 256, 6, 2)]
    enc = networks.ConvEncoder(32, 4, conv_impl="matmul_cm")
    x = jnp.zeros((1, 64, 64, 3))
    out = enc.apply(enc.init(jax.random.key(0), x), x)
    _, o, _, side = shapes[-1]
    assert out.shape == (1, o * side * side) == (1, 1024)


def _bf16(x):
    return np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def test_mixed_matmul_rounds_every_operand_of_forward_and_backward_and_accumulates_in_f32():
    """`mixed_matmul` (model.precision=bfloat16_matmul): x @ w of bf16-rounded operands in
    float32, and a VJP whose cotangent is rounded too, with float32 gradients."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 40)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(40, 7)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(3, 5, 7)), jnp.float32)
    y, vjp = jax.vjp(lambda x, w: networks.mixed_matmul(x, w, jnp.bfloat16), x, w)
    dx, dw = vjp(g)
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32
    xb, wb, gb = _bf16(x), _bf16(w), _bf16(g)
    np.testing.assert_allclose(y, xb @ wb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, gb @ wb.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, np.einsum("abk,abo->ko", xb, gb), rtol=1e-5, atol=1e-4)
    # Not the float32 product: the rounding is really there (bf16 keeps 8 significant bits).
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    assert np.abs(np.asarray(y) - exact).max() > 1e-3
    with pytest.raises(ValueError, match="Dense contraction"):
        networks._mixed_dot_general(jnp.bfloat16)(x, w, (((0,), (0,)), ((), ())))


def _dot_operand_dtypes(fn, *args):
    """The operand dtypes of every dot_general in `fn`'s jaxpr, custom VJPs included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("impl", ["matmul", "matmul_cm"])
def test_bfloat16_matmul_encoder_decoder_and_expert_multiply_in_bf16_only(impl):
    """Under `bfloat16_matmul` every product of the image networks' forward and backward takes
    bf16 operands (where the CPU's speed is), while parameters, activations and outputs are
    float32 and the parameters those of the float32 networks."""
    dtype, md = networks.precision_dtypes("bfloat16_matmul")
    assert dtype is None and md == jnp.bfloat16
    x = jnp.asarray(np.random.default_rng(1).uniform(-0.5, 0.5, (6, 64, 64, 3)), jnp.float32)
    enc = lambda md: networks.ConvEncoder(4, 4, None, impl, md)
    expert = lambda md: networks.ExpertHead(16, 8, matmul_dtype=md)
    nets = {
        "encoder": (enc(None), enc(md), x),
        "expert": (expert(None), expert(md), jnp.ones((6, 64))),
    }
    if impl != "matmul_cm":  # the decoders' layout is NHWC either way
        dec32 = networks.ImageDecoder(64, 3, 4, None, impl)
        dec16 = networks.ImageDecoder(64, 3, 4, None, impl, md)
        nets["decoder"] = (dec32, dec16, jnp.ones((6, 10)))
    for name, (f32, mixed, inp) in nets.items():
        params = jax.jit(f32.init)(jax.random.key(0), inp)
        jax.tree.map(
            np.testing.assert_array_equal, params, jax.jit(mixed.init)(jax.random.key(0), inp)
        )
        # Jitted: op by op, the 64 x 64 networks' forward and backward take seconds each.
        out = lambda p, net=mixed, inp=inp: jax.tree.leaves(net.apply(p, inp))[0]
        ref = lambda p, net=f32, inp=inp: jax.tree.leaves(net.apply(p, inp))[0]
        y = jax.jit(out)(params)
        assert y.dtype == jnp.float32, name
        np.testing.assert_allclose(y, jax.jit(ref)(params), rtol=0.05, atol=0.02)
        loss = lambda p, out=out: jnp.sum(jnp.sin(out(p)))
        grads = jax.jit(jax.grad(loss))(params)
        assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads)), name
        dots = _dot_operand_dtypes(jax.grad(loss), params)
        assert dots and all(d == ("bfloat16", "bfloat16") for d in dots), (name, dots)


def test_bfloat16_matmul_reaches_every_dense_network():
    """The RSSM (its GRU included), the heads and the representation heads multiply in bf16
    under `bfloat16_matmul`, with the float32 networks' parameters. (The sensors' MLP
    encoders stay float32: precision_dtypes.)"""
    md = jnp.bfloat16
    state = {k: jnp.ones((3, n)) for k, n in (("mean", 4), ("std", 4), ("stoch", 4), ("deter", 8))}
    noise = jnp.zeros((2, 3, 4))
    cases = {
        "rssm": (
            lambda d: networks.RSSMCell(4, 8, 16, 0.1, 2, d),
            (state, jnp.ones((3, 2)), jnp.ones((3, 5)), noise),
        ),
        "head": (lambda d: networks.DenseHead(16, 2, 3, d), (jnp.ones((3, 12)),)),
        "twin_q": (lambda d: networks.TwinQ(16, 2, d), (jnp.ones((3, 12)), jnp.ones((3, 2)))),
        "touch_decoder": (lambda d: networks.MLPDecoder(2, 16, 2, d), (jnp.ones((3, 12)),)),
        "g": (lambda d: networks.GHead(8, "relu", d), (jnp.ones((3, 12)),)),
        "cvrl": (
            lambda d: networks.CVRLHeads("reference", 16, 8, d),
            (jnp.ones((3, 12)), jnp.ones((3, 5))),
        ),
        "coral": (
            lambda d: networks.CoRALHeads(8, 16, 1.0, d),
            (jnp.ones((3, 5)), jnp.ones((3, 12))),
        ),
    }
    for name, (make, args) in cases.items():
        params = make(None).init(jax.random.key(0), *args)
        jax.tree.map(np.testing.assert_array_equal, params, make(md).init(jax.random.key(0), *args))
        loss = lambda p, net=make(md), args=args: sum(
            jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(net.apply(p, *args))
        )
        dots = _dot_operand_dtypes(jax.grad(loss), params)
        assert dots and all(d == ("bfloat16", "bfloat16") for d in dots), (name, dots)
        f32 = lambda p, net=make(None), args=args: jax.tree.leaves(net.apply(p, *args))
        for a, b in zip(f32(params), jax.tree.leaves(make(md).apply(params, *args)), strict=True):
            assert b.dtype == a.dtype
            np.testing.assert_allclose(b, a, rtol=0.05, atol=0.05)


def test_bfloat16_matmul_refuses_the_xla_conv_form():
    # JAX's VJP of a bf16 lax.conv runs the backward in f32 and rounds the gradients to bf16.
    enc = networks.ConvEncoder(4, 2, None, "xla", jnp.bfloat16)
    with pytest.raises(ValueError, match="bfloat16_matmul needs a matmul conv form"):
        enc.init(jax.random.key(0), jnp.ones((1, 16, 16, 3)))


def test_elu_matches_jax_elu_values_and_gradients():
    """`networks.elu` (exp(x) - 1, the released code's form) against `jax.nn.elu` (expm1):
    values within a float32 ulp of 1, gradients equal, at 0, at the extremes (no overflow
    from the positive side's exp) and in bfloat16."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=4096) * 4, [0.0, -0.0, 1e-30, -1e-30, -1e-7, 88.0, 200.0]])
    x = jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(networks.elu(x), jax.nn.elu(x), rtol=1e-6, atol=1.2e-7)
    assert bool(jnp.all(jnp.isfinite(networks.elu(x))))
    grad = jax.vmap(jax.grad(networks.elu))(x)
    np.testing.assert_allclose(grad, jax.vmap(jax.grad(jax.nn.elu))(x), rtol=1e-6, atol=1e-7)
    assert float(jax.grad(networks.elu)(0.0)) == 1.0
    assert float(networks.elu(-100.0)) == -1.0
    xb = x.astype(jnp.bfloat16)
    assert networks.elu(xb).dtype == jnp.bfloat16
    np.testing.assert_allclose(
        networks.elu(xb).astype(jnp.float32), jax.nn.elu(xb).astype(jnp.float32), atol=1e-2
    )


@pytest.mark.parametrize("lead", [(7,), (3, 5), ()])
def test_feature_major_head_has_the_same_parameters_outputs_and_gradients(lead):
    """DenseHead(layout="features") (transposed activations, `kernel^T h` products) against
    the row form: the same parameter tree and initial values from one key, the same outputs
    and gradients for any leading shape."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(*lead, 23)), jnp.float32)
    rows = networks.DenseHead(16, 3, 4, layout="rows")
    feats = networks.DenseHead(16, 3, 4, layout="features")
    p_rows, p_feats = rows.init(jax.random.key(0), x), feats.init(jax.random.key(0), x)
    assert jax.tree.structure(p_rows) == jax.tree.structure(p_feats)
    for a, b in zip(jax.tree.leaves(p_rows), jax.tree.leaves(p_feats), strict=True):
        np.testing.assert_array_equal(a, b)
    with jax.default_matmul_precision("highest"):
        out_rows, out_feats = rows.apply(p_rows, x), feats.apply(p_rows, x)
        assert out_feats.shape == (*lead, 4)
        np.testing.assert_allclose(out_feats, out_rows, rtol=1e-5, atol=1e-5)

        def loss(module):
            return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))

        g_rows = jax.grad(loss(rows), argnums=(0, 1))(p_rows, x)
        g_feats = jax.grad(loss(feats), argnums=(0, 1))(p_rows, x)
    for a, b in zip(jax.tree.leaves(g_rows), jax.tree.leaves(g_feats), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_head_layout_resolves_by_backend_and_precision_and_refuses_mixed_products():
    def tiny(*overrides):
        return presets.make_config("mummi", "walker_walk", "tiny", overrides=list(overrides))

    assert C.resolve_head_layout(tiny(), backend="cpu") == "features"
    assert C.resolve_head_layout(tiny(), backend="gpu") == "rows"
    bf16 = tiny("model.precision=bfloat16_matmul")
    assert C.resolve_head_layout(bf16, backend="cpu") == "rows"
    assert C.resolve_head_layout(tiny("model.head_layout=rows"), backend="cpu") == "rows"
    with pytest.raises(ValueError, match="head_layout=rows or auto"):
        tiny("model.precision=bfloat16_matmul", "model.head_layout=features")
    with pytest.raises(ValueError, match="float32"):
        networks.DenseHead(8, 1, 1, jnp.bfloat16, "features").init(
            jax.random.key(0), jnp.ones((2, 3))
        )


def test_the_train_step_has_no_expm1_and_feature_major_heads_on_a_cpu():
    """What the speed choices above rely on, read off a lowered MuMMI train step (toy task,
    tiny): no `expm1` anywhere (XLA:CPU runs it unvectorized; `networks.elu`), and on a CPU
    the heads' products contract their left operand's first axis (`kernel^T h`)."""
    import re

    from dm_env import specs

    from mummi_jax.agent import Agent

    # B = 3: B x T (30 rows) unlike any layer width, so that rows cannot pass for features.
    cfg = presets.make_config("mummi", "toy_position_camera", "tiny", overrides=["train.batch=3"])
    obs = {
        "camera": specs.BoundedArray((cfg.env.image_size,) * 2 + (3,), np.uint8, 0, 255),
        "position": specs.Array((2,), np.float32),
    }
    obs.update({f"{m}_flag": specs.Array((), np.float32) for m in ("camera", "position")})
    agent = Agent(cfg, obs, specs.BoundedArray((2,), np.float32, -1, 1))
    state = jax.eval_shape(agent.init, jax.random.key(0))
    K, B, T = cfg.train.updates_per_call, cfg.train.batch, cfg.train.length
    batch = {m: jax.ShapeDtypeStruct((K, B, T) + s.shape, s.dtype) for m, s in obs.items()}
    batch.update(
        {k: jax.ShapeDtypeStruct((K, B, T), np.float32) for k in ("reward", "discount", "is_first")}
    )
    batch["action"] = jax.ShapeDtypeStruct((K, B, T, 2), np.float32)
    text = agent._train_jit.lower(state, batch).as_text()
    assert "stablehlo.exponential_minus_one" not in text and "stablehlo.exponential" in text
    # A DenseHead layer's forward product in feature-major form: the (K, units) kernel, K the
    # features in (the latent's or the previous layer's units), contracted on its first axis
    # with the (K, M) activations. In rows the only products contracting axis 0 of both are
    # weight gradients, whose operands lead with the rows M instead (none match at B = 3).
    m = cfg.model
    k_in = f"(?:{m.stoch + m.deter}|{m.units})"
    pattern = rf"contracting_dims = \[0\] x \[0\].*\(tensor<({k_in})x{m.units}xf32>, tensor<\1x"
    assert C.resolve_head_layout(cfg) == "features"
    assert re.search(pattern, text)
