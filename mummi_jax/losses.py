"""World-model objectives: KL with free nats, likelihood heads and the three InfoNCE variants.

Everything here is a pure function of arrays, so the agent can jit and differentiate it as
one step. Conventions:

- Sequences arrive as `(B, T, ...)`; the contrastive losses take them already flattened to
  `N = B * T` rows, because every other position of the batch (other time steps of the same
  sequence included) is a negative (MuMMI Sec. III "In-Practice"; CVRL Sec. 3.1).
- Logit matrices are `(N, N)` with `logits[i, j] = log f(z_i, x_j)`: row i is a latent, column
  j an observation, and the positive pair sits on the diagonal. The row loss is
  `-(logits[i, i] - logsumexp_j logits[i, j])`, the cross-entropy of picking x_i among all
  observations for z_i (InfoNCE, MuMMI eq. 15 / CVRL eq. 5).
- Losses are returned as positive numbers to minimise (negated bounds).

Missing observations (MuMMI's dropped modalities) are handled by two independent switches:

- `mask_mode`, for the columns (which observations may serve as negatives):
  "reference" reproduces the released code: a masked column's logit becomes the constant
  -100 (not -inf), so it still sits in every denominator and is only negligible while
  typical squared distances stay well below 100 (reference-code.md §3.1, §8 #10).
  "exact" removes masked columns from the denominator, so the loss of each present row is
  the InfoNCE of the sub-batch from which masked samples were deleted.
- `mean_mode`, for the rows (how row losses are averaged): masked rows always contribute 0.
  "all_rows" divides by N, as the released code does, so missing data also shrinks the
  term's weight; "present_rows" divides by the number of present rows, so the loss is the
  mean over the samples that exist. The two differ by exactly N / num_present.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mummi_jax import distributions as dist

# The released MuMMI code writes this constant into masked NCE columns (models.py, §3.1).
_REFERENCE_MASK_LOGIT = 100.0

_KL_MODES = ("batch_mean", "per_step")
_MASK_MODES = ("reference", "exact")
_MEAN_MODES = ("all_rows", "present_rows")


def _check(name: str, value: str, valid: tuple[str, ...]) -> None:
    # Static Python strings: a typo would otherwise silently select the other branch.
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def kl_loss(mq, sq, mp, sp, free_nats=3.0, mode="batch_mean", balance=0.0):
    """KL(posterior q || prior p) of the RSSM with free nats (MuMMI eq. 17, third term).

    Args:
      mq, sq: posterior mean and std, `(B, T, S)`.
      mp, sp: prior mean and std, `(B, T, S)`.
      free_nats: floor below which the KL is not penalised.
      mode: where the floor applies to the per-step KL `k_bt` (summed over S):
        "batch_mean" (released MuMMI/CVRL/Dreamer-v1 code): `max(mean_bt k_bt, free_nats)`;
        once the batch mean is under the floor the whole term has zero gradient.
        "per_step" (CoRAL, DreamerV2): `mean_bt max(k_bt, free_nats)`; only the steps under
        the floor stop receiving gradient.
      balance: KL balancing weight alpha (DreamerV2; CoRAL uses 0.8, MuMMI 0 = off):
        `alpha KL(sg(q) || p) + (1 - alpha) KL(q || sg(p))`. The forward value is the plain
        KL; only the gradients are split, alpha of it training the prior toward the
        posterior and 1 - alpha the posterior toward the prior.

    Returns:
      `(loss, kl)`: the scalar loss (before `kl_scale`) and the unclamped mean KL for logging.
      Clamping the mixed KL once is equivalent to DreamerV2's clamping of each side, since
      both sides have the same forward value.
    """
    _check("kl mode", mode, _KL_MODES)
    sg = jax.lax.stop_gradient
    if balance > 0:
        kl = balance * dist.kl(sg(mq), sg(sq), mp, sp) + (1 - balance) * dist.kl(
            mq, sq, sg(mp), sg(sp)
        )
    else:
        kl = dist.kl(mq, sq, mp, sp)
    value = jnp.mean(kl)
    if mode == "batch_mean":
        return jnp.maximum(value, free_nats), value
    return jnp.mean(jnp.maximum(kl, free_nats)), value


def reward_loss(pred, target):
    """`-mean log N(r; r_hat, 1)` over `(B, T)` (MuMMI eq. 17, second term).

    The Gaussian constant is kept, as in the released code, so logged values compare.
    """
    return -jnp.mean(dist.log_prob(target, pred, 1.0))


def reconstruction_loss(pred, target, flags):
    """Masked unit-variance Gaussian reconstruction (Dreamer and the CoRAL "vi" terms).

    Args:
      pred, target: `(B, T, ...)` predicted mean and observation.
      flags: `(B, T)` presence, 1 observed and 0 missing.

    Returns:
      `-mean_bt flags_bt * sum_dims log N(target; pred, 1)`. A missing frame is the zeroed
      placeholder the wrapper stored, not data, so it must not be fitted; the mean still runs
      over all B*T steps, as in the released Dreamer baseline (reference-code.md §3.4).
    """
    lp = dist.log_prob(target, pred, 1.0)
    lp = lp.reshape(lp.shape[:2] + (-1,)).sum(-1)
    return -jnp.mean(flags * lp)


def _nce(logits, row_mask, col_mask, mask_mode, mean_mode):
    """InfoNCE loss of an `(N, N)` logit matrix with positives on the diagonal.

    `row_mask`, `col_mask`: `(N,)` presence or None; see the module docstring for the modes.
    """
    _check("mask_mode", mask_mode, _MASK_MODES)
    _check("mean_mode", mean_mode, _MEAN_MODES)
    n = logits.shape[0]
    # The numerator always uses the unmasked positive, as the released code does.
    diag = jnp.diagonal(logits)
    if col_mask is not None:
        if mask_mode == "reference":
            logits = logits * col_mask[None] - (1 - col_mask[None]) * _REFERENCE_MASK_LOGIT
        else:
            logits = jnp.where(col_mask[None] > 0, logits, -jnp.inf)
            # With every column masked a row would be all -inf, and its NaN would survive
            # the row mask (0 * NaN). Restoring each row's own positive keeps it finite and
            # is a no-op for present rows, whose diagonal column is present anyway.
            logits = jnp.where(jnp.eye(n, dtype=bool), diag[:, None], logits)
    nce = diag - jax.nn.logsumexp(logits, axis=-1)
    if row_mask is None:
        return -jnp.mean(nce)
    nce = nce * row_mask
    if mean_mode == "all_rows":
        return -jnp.mean(nce)
    return -jnp.sum(nce) / jnp.maximum(jnp.sum(row_mask), 1.0)


def mummi_nce(z, x, mask, mask_mode="reference", mean_mode="all_rows"):
    """MuMMI's per-modality InfoNCE (eq. 14-16), one term of the sum in eq. 17.

    The density ratio is the squared-exponential kernel of eq. 16 taken per time step,
    `f(x_j, z_i) = exp(-||mu^m(x_j) - g(z_i)||^2)`, with no temperature. Its log is expanded
    as `2 z_i.x_j - |z_i|^2 - |x_j|^2`, one matmul instead of an `(N, N, D)` difference
    tensor; algebraically it is `-||z_i - x_j||^2` (float32 keeps the cancellation mild).
    Each row's softmax runs over the observations, with the other `B*T - 1` samples of the
    batch as negatives (eq. 15).

    Args:
      z: `(N, D)` transformed latents g(z_t), `N = B*T`.
      x: `(N, D)` expert means mu^m(x_t^m) for modality m (or the fused mean, MuMMI-b).
      mask: `(N,)` presence of modality m, or None; used for both rows and columns.
      mask_mode: "reference" (-100 columns) or "exact" (masked columns dropped).
      mean_mode: "all_rows" (divide by N) or "present_rows" (divide by the present count).

    Returns:
      Scalar loss; the agent multiplies it by lambda^m.
    """
    masks = None if mask is None else mask[None]
    return mummi_nce_stacked(z, x[None], masks, mask_mode, mean_mode)[0]


def mummi_nce_stacked(z, xs, masks, mask_mode="reference", mean_mode="all_rows"):
    """`mummi_nce` of one z against K modalities' expert means at once: `(K,)` losses.

    Args:
      z: `(N, D)` g(z_t), shared by every modality (eq. 17 sums over m with one g).
      xs: `(K, N, D)` expert means mu^m(x^m); masks: `(K, N)` presence, or None.

    Why stacked: the K logit matrices come from one `(N, D) @ (D, K*N)` product, and the
    backward pass's products are K times wider too. On a 2-core CPU the three modalities'
    loss, forward and backward at the paper's N = 2500, D = 1024, took 0.89 s this way
    against 1.35 s as three products (the released code's form, 0.93 s in its TensorFlow);
    a whole update 3 % less (BENCHMARKS.md, "The contrastive loss as one product"). Every
    logit is the same sum either way.
    """
    # Squared norms of 1024-d vectors overflow in half precision (the reference's float16
    # did), so the kernel is always evaluated in float32, and its product at full float32
    # precision: the expanded form cancels |z|^2 + |x|^2 against 2 z.x, so an error of about
    # |z| |x| 2^-11 in the product (TF32, what a float32 dot defaults to on recent NVIDIA
    # GPUs) lands whole in the logit, a small difference of large squared norms. A CPU
    # computes the product in float32 either way: the same numbers, bit for bit.
    z, xs = z.astype(jnp.float32), xs.astype(jnp.float32)
    k, n, d = xs.shape
    flat = xs.reshape(k * n, d)
    cross = jnp.matmul(2 * z, flat.T, precision=jax.lax.Precision.HIGHEST)
    logits = cross - jnp.sum(z * z, -1)[:, None] - jnp.sum(flat * flat, -1)[None]
    logits = logits.reshape(n, k, n)  # row i, modality, column j
    if masks is None:
        return jax.vmap(lambda lg: _nce(lg, None, None, mask_mode, mean_mode), 1)(logits)
    return jax.vmap(lambda lg, m: _nce(lg, m, m, mask_mode, mean_mode), (1, 0))(logits, masks)


def cvrl_nce(z, x, mask=None, bilinear=None, mask_mode="exact", mean_mode="present_rows"):
    """CVRL's InfoNCE (CVRL Sec. 3.1, eq. 5) with the score `f = exp(z_i^T W x_j)`.

    Args:
      z: `(N, H)` state-side head outputs (rows).
      x: `(N, H)` observation-side head outputs (columns; the softmax runs over them).
      mask: `(N,)` presence or None. The released code masks nothing (a missing step's
        positive is its blank input), and the agent passes None to reproduce it.
      bilinear: `(H, H)` matrix W of the paper's form, or None for the released code's plain
        dot product (its W is folded into the last dense layers). The paper writes
        `o^T W s` with the observation first; here the state is first, which only
        transposes the learned W.
      mask_mode: with a mask, `"exact"` excludes missing columns; `"reference"` leaves the
        columns unmasked (CVRL's released code has no column mask) and masks rows only.
      mean_mode: with a mask, `"present_rows"` or `"all_rows"` (module docstring).
    """
    logits = (z @ bilinear @ x.T) if bilinear is not None else z @ x.T
    col_mask = mask if mask_mode == "exact" else None
    return _nce(logits, mask, col_mask, "exact", mean_mode)


def coral_nce(o, z, temp, mask=None):
    """CoRAL's symmetric InfoNCE with a learned temperature (coral.md §3.3).

    Logits `L_ij = temp * <rho_z(z_i), rho_o(o_j)>`; the loss is the mean of the
    state-to-observation cross-entropy (softmax over each row) and the
    observation-to-state one (softmax over each column), so swapping `o` and `z` leaves it
    unchanged.

    Args:
      o: `(N, P)` projected observation embeddings.
      z: `(N, P)` projected latent features (posterior for V-CoRAL, prior for P-CoRAL).
      temp: scalar inverse temperature, `softplus(raw)` from the head.
      mask: `(N,)` presence or None. CoRAL itself has no masks; here missing samples are
        excluded exactly, on both sides, and the mean runs over present samples.
    """
    logits = temp * (z @ o.T)
    a = _nce(logits, mask, mask, "exact", "present_rows")
    b = _nce(logits.T, mask, mask, "exact", "present_rows")
    return 0.5 * (a + b)
