"""mummi_jax.losses against hand-computed numbers and the invariances the objectives promise."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mummi_jax import losses

# --------------------------------------------------------------------------- helpers


def np_infonce_rows(logits):
    """Row terms log f_ii - log sum_j f_ij, with the log-sum-exp written out."""
    logits = np.asarray(logits, np.float64)
    out = []
    for i in range(logits.shape[0]):
        row = logits[i]
        top = row.max()
        lse = top + math.log(sum(math.exp(v - top) for v in row))
        out.append(logits[i, i] - lse)
    return np.array(out)


def np_sqdist(z, x):
    z, x = np.asarray(z, np.float64), np.asarray(x, np.float64)
    return ((z[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def random_pair(seed, n=6, d=4, scale=0.5):
    kz, kx = jax.random.split(jax.random.PRNGKey(seed))
    return scale * jax.random.normal(kz, (n, d)), scale * jax.random.normal(kx, (n, d))


# Bilinear scores with z = I make the logit matrix equal to S^T's transpose, i.e. S itself.
S3 = np.array([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0]])
# By hand: row 0: 2 - log(e^2 + 1 + e) = 2 - log(11.107338) = -0.407606
#          row 1: 1 - log(1 + e + 1)   = 1 - log(4.718282)  = -0.551445
#          row 2: 3 - log(e + e + e^3) = 3 - log(25.522100) = -0.239545
S3_LOSS = (0.407606 + 0.551445 + 0.239545) / 3  # 0.399532


# --------------------------------------------------------------------------- InfoNCE core


def test_infonce_3x3_by_hand():
    z, x = jnp.eye(3), jnp.asarray(S3.T)
    loss = losses.cvrl_nce(z, x)
    np.testing.assert_allclose(loss, S3_LOSS, atol=2e-6)
    np.testing.assert_allclose(loss, -np_infonce_rows(S3).mean(), rtol=1e-6)


def test_infonce_bilinear_matches_formula():
    z, x = random_pair(0, n=5, d=3)
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3))
    expected = -np_infonce_rows(np.asarray(z) @ np.asarray(w) @ np.asarray(x).T).mean()
    np.testing.assert_allclose(losses.cvrl_nce(z, x, bilinear=w), expected, rtol=1e-5)


def test_infonce_invariant_to_joint_batch_permutation():
    z, x = random_pair(2, n=7)
    mask = jnp.array([1, 0, 1, 1, 0, 1, 1], jnp.float32)
    perm = jnp.array([3, 6, 0, 5, 1, 4, 2])
    for fn in (
        lambda z, x, m: losses.cvrl_nce(z, x, mask=m),
        lambda z, x, m: losses.mummi_nce(z, x, m, "reference", "all_rows"),
        lambda z, x, m: losses.mummi_nce(z, x, m, "exact", "present_rows"),
        lambda z, x, m: losses.coral_nce(x, z, 1.7, mask=m),
    ):
        np.testing.assert_allclose(fn(z, x, mask), fn(z[perm], x[perm], mask[perm]), rtol=1e-5)


@pytest.mark.parametrize("n", [1, 4, 9])
def test_constant_scores_give_log_n(n):
    zeros = jnp.zeros((n, 3))
    same = jnp.ones((n, 3))
    np.testing.assert_allclose(losses.cvrl_nce(zeros, same), math.log(n), atol=1e-6)
    np.testing.assert_allclose(losses.mummi_nce(same, same, None), math.log(n), atol=1e-6)
    np.testing.assert_allclose(losses.coral_nce(same, same, 2.0), math.log(n), atol=1e-6)


# --------------------------------------------------------------------------- MuMMI kernel


def test_mummi_logits_are_negative_squared_distance():
    z, x = random_pair(3, n=6, d=5, scale=1.0)
    d2 = np_sqdist(z, x)
    expected = -np_infonce_rows(-d2).mean()
    np.testing.assert_allclose(losses.mummi_nce(z, x, None), expected, rtol=1e-5)
    # A per-row constant (here dropping -|z_i|^2) does not move the softmax: the kernel
    # only has to match -||z_i - x_j||^2 up to it.
    row_shift = (np.asarray(z, np.float64) ** 2).sum(-1)[:, None]
    np.testing.assert_allclose(-np_infonce_rows(-d2 + row_shift).mean(), expected, rtol=1e-9)


def test_mummi_prefers_aligned_pairs():
    x = jnp.eye(4) * 3.0
    aligned = losses.mummi_nce(x, x, None)
    shuffled = losses.mummi_nce(x[jnp.array([1, 2, 3, 0])], x, None)
    assert aligned < 0.01 < math.log(4) < shuffled


def test_mummi_ignores_expert_offsets_outside_the_experts_own_span():
    # Why eq. 15-16 alone do not put two experts in one space (README, "Toy experiment"):
    # moving mu by c changes logit_ij by 2 g_i.c - ||c||^2 (a row constant) - 2 c.mu_j,
    # which is constant over j when c is orthogonal to every mu_j - mu_k. Experts that vary
    # in the first 3 of 8 dims: an offset in the other 5 costs nothing, one inside costs.
    rng = np.random.default_rng(7)
    x = np.zeros((12, 8), np.float32)
    x[:, :3] = rng.normal(size=(12, 3))
    z = (x + 0.3 * rng.normal(size=x.shape)).astype(np.float32)
    base = losses.mummi_nce(z, x, None)
    outside = np.zeros(8, np.float32)
    outside[3:] = 5.0
    inside = np.zeros(8, np.float32)
    inside[:3] = 0.5
    np.testing.assert_allclose(losses.mummi_nce(z, x + outside, None), base, rtol=1e-4)
    assert abs(float(losses.mummi_nce(z, x + inside, None)) - float(base)) > 0.05


def test_mummi_logit_products_run_at_full_float32_precision_forward_and_backward():
    """The expanded logit 2 z.x - |z|^2 - |x|^2 cancels large terms, so its product must not
    take TF32 (a float32 dot's default on recent NVIDIA GPUs): HIGHEST on the forward product
    and on both gradient products."""
    z, xs = jnp.ones((4, 3)), jnp.ones((2, 4, 3))
    loss = lambda z, xs: losses.mummi_nce_stacked(z, xs, None).sum()
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(z, xs).jaxpr
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 3, dots  # forward, d/dz, d/dxs
    highest = jax.lax.Precision.HIGHEST
    for eqn in dots:
        assert eqn.params["precision"] == (highest, highest), eqn


def test_mummi_half_precision_inputs_are_evaluated_in_float32():
    z, x = (a.astype(jnp.bfloat16) for a in random_pair(4, n=5, d=8))
    loss = losses.mummi_nce(z, x, None)
    assert loss.dtype == jnp.float32
    f32 = losses.mummi_nce(z.astype(jnp.float32), x.astype(jnp.float32), None)
    np.testing.assert_allclose(loss, f32, rtol=1e-6)


# --------------------------------------------------------------------------- masking

MASK = np.array([1, 0, 1, 1, 0, 1], np.float32)


@pytest.mark.parametrize("modes", [("reference", "all_rows"), ("exact", "present_rows")])
def test_stacked_nce_equals_one_loss_per_modality(modes):
    # Three modalities with their own masks against one z: each of the stacked losses, and
    # the gradients of their weighted sum, equal the modality's loss computed alone (one
    # modality's `mummi_nce`, checked against NumPy by the tests above).
    z, _ = random_pair(11, n=6)
    xs = jnp.stack([random_pair(12 + k, n=6)[1] for k in range(3)])
    masks = jnp.stack([jnp.asarray(MASK), jnp.asarray(MASK[::-1]), jnp.ones(6)])
    weights = jnp.array([1.0, 0.3, 0.001])
    alone = lambda z, xs: jnp.stack(
        [losses.mummi_nce(z, xs[k], masks[k], *modes) for k in range(3)]
    )
    stacked = lambda z, xs: losses.mummi_nce_stacked(z, xs, masks, *modes)
    np.testing.assert_allclose(stacked(z, xs), alone(z, xs), rtol=1e-6)
    assert len(set(np.round(np.asarray(alone(z, xs)), 4))) == 3  # the masks matter
    grads = [
        jax.grad(lambda *a, f=f: jnp.sum(weights * f(*a)), (0, 1))(z, xs) for f in (stacked, alone)
    ]
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_exact_mask_equals_sub_batch_with_masked_samples_deleted():
    z, x = random_pair(5, n=6)
    keep = MASK > 0
    drop = np.flatnonzero(~keep)
    sub = losses.mummi_nce(z[keep], x[keep], None)
    exact = losses.mummi_nce(z, x, jnp.asarray(MASK), "exact", "present_rows")
    np.testing.assert_allclose(exact, sub, rtol=1e-6)
    # The garbage in masked samples is irrelevant.
    z2 = z.at[drop].set(123.0)
    x2 = x.at[drop].set(-50.0)
    np.testing.assert_allclose(
        losses.mummi_nce(z2, x2, jnp.asarray(MASK), "exact", "present_rows"), sub, rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.cvrl_nce(z, x, mask=jnp.asarray(MASK)), losses.cvrl_nce(z[keep], x[keep]), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.coral_nce(x, z, 0.7, mask=jnp.asarray(MASK)),
        losses.coral_nce(x[keep], z[keep], 0.7),
        rtol=1e-6,
    )


def test_reference_mask_is_minus_100_columns():
    z, x = random_pair(6, n=6)
    w = -np_sqdist(z, x)
    masked = w * MASK[None] - (1 - MASK[None]) * 100.0
    rows = []
    for i in range(6):
        lse = math.log(sum(math.exp(v) for v in masked[i]))
        rows.append(MASK[i] * (w[i, i] - lse))  # numerator: the unmasked W_ii
    expected = -sum(rows) / 6
    got = losses.mummi_nce(z, x, jnp.asarray(MASK), "reference", "all_rows")
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_reference_mask_differs_from_exact_when_distances_are_large():
    # Positives 144 apart and negatives 344 apart: the masked column's constant -100 beats
    # the positive (-144) in every present row's denominator, so each row loses ~44 nats
    # that "exact" (which drops the column) does not.
    x = jnp.eye(4, 5) * 10.0
    z = x + 12.0 * jnp.eye(5)[4]
    mask = jnp.array([1.0, 1.0, 1.0, 0.0])
    ref = losses.mummi_nce(z, x, mask, "reference", "present_rows")
    exact = losses.mummi_nce(z, x, mask, "exact", "present_rows")
    np.testing.assert_allclose(ref, 44.0, rtol=1e-5)
    np.testing.assert_allclose(exact, 0.0, atol=1e-6)
    # With ordinary distances the -100 constant is negligible.
    z, x2 = random_pair(7, n=4)
    np.testing.assert_allclose(
        losses.mummi_nce(z, x2, mask, "reference", "present_rows"),
        losses.mummi_nce(z, x2, mask, "exact", "present_rows"),
        rtol=1e-6,
    )


@pytest.mark.parametrize("mask_mode", ["reference", "exact"])
def test_present_rows_and_all_rows_differ_by_n_over_present(mask_mode):
    z, x = random_pair(8, n=6)
    mask = jnp.asarray(MASK)
    all_rows = losses.mummi_nce(z, x, mask, mask_mode, "all_rows")
    present = losses.mummi_nce(z, x, mask, mask_mode, "present_rows")
    np.testing.assert_allclose(present, all_rows * 6 / MASK.sum(), rtol=1e-6)


@pytest.mark.parametrize("mask_mode", ["reference", "exact"])
def test_all_missing_is_zero_and_finite(mask_mode):
    z, x = random_pair(9, n=4)
    zero = jnp.zeros(4)
    for mean_mode in ("all_rows", "present_rows"):
        loss, grads = jax.value_and_grad(losses.mummi_nce, argnums=(0, 1))(
            z, x, zero, mask_mode, mean_mode
        )
        assert float(loss) == 0.0
        assert all(bool(jnp.all(g == 0)) for g in grads)


def test_unknown_modes_are_rejected():
    z, x = random_pair(10, n=3)
    with pytest.raises(ValueError, match="mask_mode"):
        losses.mummi_nce(z, x, None, "ignore", "all_rows")
    with pytest.raises(ValueError, match="mean_mode"):
        losses.mummi_nce(z, x, None, "exact", "rows")
    with pytest.raises(ValueError, match="kl mode"):
        losses.kl_loss(z, z + 1, x, x + 1, mode="per_sample")


# --------------------------------------------------------------------------- CoRAL


def test_coral_is_symmetric_in_o_and_z():
    o, z = random_pair(11, n=5)
    mask = jnp.array([1.0, 1.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(losses.coral_nce(o, z, 1.3), losses.coral_nce(z, o, 1.3), rtol=1e-6)
    np.testing.assert_allclose(
        losses.coral_nce(o, z, 1.3, mask=mask), losses.coral_nce(z, o, 1.3, mask=mask), rtol=1e-6
    )


def test_coral_is_mean_of_row_and_column_cross_entropies():
    o, z = random_pair(12, n=5)
    temp = 2.5
    logits = temp * np.asarray(z, np.float64) @ np.asarray(o, np.float64).T
    expected = -0.5 * (np_infonce_rows(logits).mean() + np_infonce_rows(logits.T).mean())
    np.testing.assert_allclose(losses.coral_nce(o, z, temp), expected, rtol=1e-5)


# --------------------------------------------------------------------------- KL


def gauss(mean, std):
    return jnp.array([[[mean]]]), jnp.array([[[std]]])  # (B=1, T=1, S=1)


def test_kl_matches_closed_form_1d():
    # KL(N(1, .5^2) || N(0, 1)) = log(1/.5) + (.25 + 1) / 2 - 1/2 = ln 2 + 0.125
    _, kl = losses.kl_loss(*gauss(1.0, 0.5), *gauss(0.0, 1.0), free_nats=0.0)
    np.testing.assert_allclose(kl, 0.818147, atol=1e-6)
    # KL(N(0, 2^2) || N(1, 1)) = log(1/2) + (4 + 1) / 2 - 1/2 = 2 - ln 2
    loss, kl = losses.kl_loss(*gauss(0.0, 2.0), *gauss(1.0, 1.0), free_nats=0.0)
    np.testing.assert_allclose(kl, 1.306853, atol=1e-6)
    np.testing.assert_allclose(loss, kl)


def test_kl_sums_latent_dims_and_averages_steps():
    mq = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])  # (1, 2, 2)
    sq = jnp.array([[[0.5, 2.0], [1.0, 1.0]]])
    mp = jnp.array([[[0.0, 1.0], [0.0, 0.0]]])
    sp = jnp.ones((1, 2, 2))
    # Step 0 sums the two 1-D cases above, (ln 2 + 0.125) + (2 - ln 2); step 1 is q = p.
    _, kl = losses.kl_loss(mq, sq, mp, sp, free_nats=0.0)
    np.testing.assert_allclose(kl, (0.818147 + 1.306853 + 0.0) / 2, atol=1e-6)


def _two_steps():
    # Unit stds and mean offsets 1 and sqrt(8): per-step KLs 0.5 and 4.0 (mean 2.25).
    mq = jnp.array([[[1.0], [math.sqrt(8.0)]]])
    one = jnp.ones((1, 2, 1))
    return mq, one, jnp.zeros((1, 2, 1)), one


@pytest.mark.parametrize(
    "free_nats, batch_mean, per_step",
    [(3.0, 3.0, (3.0 + 4.0) / 2), (1.0, 2.25, (1.0 + 4.0) / 2), (0.0, 2.25, 2.25)],
)
def test_free_nats_clamp_in_both_modes(free_nats, batch_mean, per_step):
    args = _two_steps()
    loss_b, kl_b = losses.kl_loss(*args, free_nats=free_nats, mode="batch_mean")
    loss_s, kl_s = losses.kl_loss(*args, free_nats=free_nats, mode="per_step")
    np.testing.assert_allclose(kl_b, 2.25, rtol=1e-6)
    np.testing.assert_allclose(kl_s, 2.25, rtol=1e-6)
    np.testing.assert_allclose(loss_b, batch_mean, rtol=1e-6)
    np.testing.assert_allclose(loss_s, per_step, rtol=1e-6)


def test_free_nats_gradients():
    mq, sq, mp, sp = _two_steps()
    grad = lambda mode: jax.grad(lambda m: losses.kl_loss(m, sq, mp, sp, 3.0, mode)[0])(mq)
    # Batch mean 2.25 < 3: the whole term is flat.
    np.testing.assert_array_equal(grad("batch_mean"), 0.0)
    # Per step: only the step above the floor (KL 4) is pushed; d/dm (m^2 / 2) / 2 = m / 2.
    np.testing.assert_allclose(grad("per_step")[0, :, 0], [0.0, math.sqrt(8.0) / 2], rtol=1e-6)


def test_kl_balance_splits_gradients_not_value():
    mq, sq, mp, sp = _two_steps()
    mp = mp + 0.1
    f = lambda bal: lambda q, p: losses.kl_loss(q, sq, p, sp, 0.0, "per_step", bal)[0]
    plain_v = f(0.0)(mq, mp)
    bal_v = f(0.8)(mq, mp)
    np.testing.assert_allclose(bal_v, plain_v, rtol=1e-6)
    gq0, gp0 = jax.grad(f(0.0), argnums=(0, 1))(mq, mp)
    gq, gp = jax.grad(f(0.8), argnums=(0, 1))(mq, mp)
    np.testing.assert_allclose(gp, 0.8 * gp0, rtol=1e-6)  # alpha trains the prior
    np.testing.assert_allclose(gq, 0.2 * gq0, rtol=1e-5)  # 1 - alpha the posterior


# --------------------------------------------------------------------------- likelihoods


def test_reward_loss_by_hand():
    # -log N(1; 0, 1) = 1/2 + log(2 pi) / 2
    np.testing.assert_allclose(
        losses.reward_loss(jnp.zeros((1, 1)), jnp.ones((1, 1))), 1.4189385, atol=1e-6
    )


def test_reconstruction_by_hand_and_ignores_absent_frames():
    pred = jnp.zeros((2, 3, 2, 2))
    target = jnp.ones((2, 3, 2, 2))
    flags = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    # Each present frame: 4 pixels * (1/2 + log(2 pi)/2); mean over all 6 steps.
    expected = 4 * 1.4189385 * 4 / 6
    loss = losses.reconstruction_loss(pred, target, flags)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # Changing a masked target (or prediction) changes nothing, value or gradient.
    target2 = target.at[0, 1].set(1e3).at[1, 2].set(-7.0)
    np.testing.assert_allclose(losses.reconstruction_loss(pred, target2, flags), loss)
    g = jax.grad(losses.reconstruction_loss)(pred, target2, flags)
    np.testing.assert_array_equal(g[0, 1], 0.0)
    np.testing.assert_array_equal(g[1, 2], 0.0)
    # And a present target does matter.
    target3 = target.at[0, 0].set(2.0)
    assert losses.reconstruction_loss(pred, target3, flags) > loss


# --------------------------------------------------------------------------- gradients


def test_gradients_finite():
    z, x = random_pair(13, n=6, d=4, scale=3.0)
    mask = jnp.asarray(MASK)
    for mask_mode in ("reference", "exact"):
        for mean_mode in ("all_rows", "present_rows"):
            g = jax.grad(losses.mummi_nce, argnums=(0, 1))(z, x, mask, mask_mode, mean_mode)
            assert all(bool(jnp.all(jnp.isfinite(a))) for a in g)
            assert any(bool(jnp.any(a != 0)) for a in g)
    w = jnp.eye(4)
    g = jax.grad(losses.cvrl_nce, argnums=(0, 1, 3))(z, x, mask, w)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in g)
    g = jax.grad(losses.coral_nce, argnums=(0, 1, 2))(x, z, 1.5, mask)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in g)
    mq, sq, mp, sp = _two_steps()
    g = jax.grad(lambda *a: losses.kl_loss(*a, 1.0, "per_step", 0.8)[0], argnums=(0, 1, 2, 3))(
        mq, sq, mp, sp
    )
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in g)


def test_exact_mask_gradient_ignores_masked_samples():
    z, x = random_pair(14, n=6)
    mask = jnp.asarray(MASK)
    gz, gx = jax.grad(losses.mummi_nce, argnums=(0, 1))(z, x, mask, "exact", "present_rows")
    np.testing.assert_array_equal(gz[MASK == 0], 0.0)
    np.testing.assert_array_equal(gx[MASK == 0], 0.0)


def test_jit_compatible():
    z, x = random_pair(15, n=6)
    f = jax.jit(losses.mummi_nce, static_argnums=(3, 4))
    np.testing.assert_allclose(
        f(z, x, jnp.asarray(MASK), "exact", "all_rows"),
        losses.mummi_nce(z, x, jnp.asarray(MASK), "exact", "all_rows"),
        rtol=1e-6,
    )
