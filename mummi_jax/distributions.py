"""Diagonal Gaussians, the product of experts with a presence mask, and the tanh-Gaussian.

Gaussians are passed around as `(mean, std)` pairs of equal shape `(..., D)`: plain arrays
scan, vmap and donate without any wrapper. The tanh-Gaussian actor distribution (Dreamer v1,
used by MuMMI and CVRL) is a small class over distrax.
"""

from __future__ import annotations

import math

import distrax
import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)


def sample(key: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Reparameterised sample of N(mean, std^2); differentiable in mean and std."""
    return mean + std * jax.random.normal(key, mean.shape, mean.dtype)


def log_prob(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Elementwise log N(x; mean, std^2) (not summed)."""
    z = (x - mean) / std
    return -0.5 * z * z - jnp.log(std) - 0.5 * _LOG_2PI


def kl(mean_q, std_q, mean_p, std_p) -> jax.Array:
    """KL(q || p) for diagonal Gaussians, summed over the last axis: (..., D) -> (...).

    Closed form: sum_d log(sp/sq) + (sq^2 + (mq - mp)^2) / (2 sp^2) - 1/2.
    """
    var_q, var_p = jnp.square(std_q), jnp.square(std_p)
    terms = jnp.log(std_p) - jnp.log(std_q) + (var_q + jnp.square(mean_q - mean_p)) / (2 * var_p)
    return jnp.sum(terms - 0.5, axis=-1)


def entropy(std: jax.Array) -> jax.Array:
    """Entropy of a diagonal Gaussian, summed over the last axis."""
    return jnp.sum(0.5 * (1.0 + _LOG_2PI) + jnp.log(std), axis=-1)


def poe_weights(stds: jax.Array, present: jax.Array, form: str = "reference") -> jax.Array:
    """Each expert's unnormalised weight in the product of experts (MuMMI eq. 11).

    Args:
      stds: `(M, ..., D)` expert standard deviations.
      present: `(M, ...)` presence flags; a missing expert's weight is 0.
      form: "reference" (the released code: `1/sigma`) or "gaussian" (the precision
        `1/sigma^2`). See `product_of_experts`.

    Returns:
      `(M, ..., D)` weights, in the dtype of `stds`.
    """
    if form not in ("reference", "gaussian"):
        raise ValueError(f"unknown PoE form {form!r}; valid: reference, gaussian")
    mask = present.astype(stds.dtype)[..., None]
    return mask / stds if form == "reference" else mask / jnp.square(stds)


def product_of_experts(
    means: jax.Array,
    stds: jax.Array,
    present: jax.Array,
    form: str = "reference",
    prior_expert: bool = False,
    eps: float = 0.01,
) -> tuple[jax.Array, jax.Array]:
    """Fuses M Gaussian experts q(s^f | x^m) into one (MuMMI eq. 11, "PoE").

    Args:
      means, stds: `(M, ..., D)` expert means and standard deviations.
      present: `(M, ...)` presence flags (1 observed, 0 missing). A missing expert is
        dropped: its weight is zero, so its (garbage) mean and std have no effect.
      form: "reference" is the released code's fusion: weights 1/sigma (not 1/sigma^2),
        `mean = sum_m w_m mu_m / (sum_m w_m + eps)`, no prior expert; its mean is used
        deterministically as s^f. The std it returns is `1 / (sum_m w_m + eps)`, which the
        reference never uses. "gaussian" is the textbook product of Gaussians: precisions
        1/sigma^2 add, `mean = sum_m p_m mu_m / sum_m p_m`, `std = (sum_m p_m)^-1/2`,
        optionally with an N(0, I) prior expert.
      prior_expert: gaussian form only; adds N(0, I) as an always-present expert.

    Returns:
      `(mean, std)`, each `(..., D)`. With every expert missing and no prior expert, the
      gaussian form returns N(0, I) and the reference form mean 0.
    """
    if form == "reference":
        weights = poe_weights(stds, present, form)
        total = jnp.sum(weights, axis=0) + eps
        return jnp.sum(weights * means, axis=0) / total, 1.0 / total
    precision = poe_weights(stds, present, form)
    total = jnp.sum(precision, axis=0) + (1.0 if prior_expert else 0.0)
    weighted = jnp.sum(precision * means, axis=0)
    empty = total <= 0
    safe_total = jnp.where(empty, 1.0, total)
    mean = jnp.where(empty, 0.0, weighted / safe_total)
    std = jnp.where(empty, 1.0, jax.lax.rsqrt(safe_total))
    return mean, std


# The reference clips actions before atanh so that log-probs of boundary actions stay finite.
_TANH_CLIP = 0.99999997


class TanhNormal:
    """tanh(N(mean, std)) with a diagonal base, summed over the action axis (Dreamer v1).

    `mean`, `std`: `(..., A)`. Log-probs use the stable log-det
    `log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x))` (distrax's Tanh bijector).
    """

    def __init__(self, mean: jax.Array, std: jax.Array):
        self.mean = mean
        self.std = std
        self._dist = distrax.Independent(
            distrax.Transformed(distrax.Normal(mean, std), distrax.Tanh()), 1
        )

    def sample(self, key: jax.Array) -> jax.Array:
        return self._dist.sample(seed=key)

    def sample_from_noise(self, noise: jax.Array) -> jax.Array:
        """tanh(mean + std * noise) for given standard-normal `noise` `(..., A)`: `sample`
        with the draw passed in (the same arithmetic as distrax's reparameterised sample)."""
        return jnp.tanh(self.mean + noise * self.std)

    def sample_and_log_prob(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Reparameterised sample `(..., A)` and its log-prob `(...)`."""
        return self._dist.sample_and_log_prob(seed=key)

    def log_prob(self, action: jax.Array) -> jax.Array:
        return self._dist.log_prob(jnp.clip(action, -_TANH_CLIP, _TANH_CLIP))

    def mode(self, key: jax.Array, samples: int = 100) -> jax.Array:
        """The reference's `SampleDist.mode`: the most likely of `samples` samples.

        Unlike Dreamer v1, the best index is chosen per batch element (its version takes
        batch element 0's index for all; reference-code.md §8 #21).
        """
        draws, logp = jax.vmap(self.sample_and_log_prob)(jax.random.split(key, samples))
        best = jnp.argmax(logp, axis=0)  # (...)
        return jnp.take_along_axis(draws, best[None, ..., None], axis=0)[0]

    def deterministic(self) -> jax.Array:
        """tanh(mean): a cheap deterministic action."""
        return jnp.tanh(self.mean)

    def saturated(self, threshold: float = 2.0) -> jax.Array:
        """`(..., A)` booleans: the pre-tanh mean beyond `threshold` in magnitude (tanh 0.96
        at 2) and more than `threshold` standard deviations from 0, so that nearly every
        sample (97.7 % at 2) lands on the mean's side, near its bound. There the actor's
        gradient through tanh nearly vanishes (1.8e-4 at Dreamer v1's cap of 5): RESULTS.md,
        "Why learning starts late"."""
        magnitude = jnp.abs(self.mean)
        return (magnitude > threshold) & (magnitude > threshold * self.std)

    def entropy(self, key: jax.Array, samples: int = 1) -> jax.Array:
        """Monte-Carlo entropy estimate `-E[log pi(a)]`, `(...)`."""
        _, logp = jax.vmap(self.sample_and_log_prob)(jax.random.split(key, samples))
        return -jnp.mean(logp, axis=0)


def actor_distribution(
    raw: jax.Array, mean_scale: float = 5.0, init_std: float = 5.0, min_std: float = 1e-4
) -> TanhNormal:
    """Dreamer v1's actor head parameterisation from raw outputs `(..., 2A)`.

    mean = s * tanh(raw_mean / s); std = softplus(raw_std + log(e^init_std - 1)) + min_std,
    so the pre-tanh std starts near `init_std` (reference-code.md §2.5).
    """
    raw_mean, raw_std = jnp.split(raw, 2, axis=-1)
    mean = mean_scale * jnp.tanh(raw_mean / mean_scale)
    std = jax.nn.softplus(raw_std + math.log(math.expm1(init_std))) + min_std
    return TanhNormal(mean, std)
