"""Placeholder objectives (lead's), replaced by losses.py when it lands."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mummi_jax import distributions as dist


def kl_loss(mq, sq, mp, sp, free_nats=3.0, mode="batch_mean", balance=0.0):
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
    return -jnp.mean(dist.log_prob(target, pred, 1.0))


def reconstruction_loss(pred, target, flags):
    lp = dist.log_prob(target, pred, 1.0)
    lp = lp.reshape(lp.shape[:2] + (-1,)).sum(-1)
    return -jnp.mean(flags * lp)


def _nce(logits, row_mask, col_mask, mask_mode, mean_mode):
    n = logits.shape[0]
    diag = jnp.diagonal(logits)
    if col_mask is not None:
        if mask_mode == "reference":
            logits = logits * col_mask[None] - (1 - col_mask[None]) * 100.0
        else:
            logits = jnp.where(col_mask[None] > 0, logits, -jnp.inf)
            logits = jnp.where(jnp.eye(n, dtype=bool), diag[:, None], logits)
    nce = diag - jax.nn.logsumexp(logits, axis=-1)
    if row_mask is None:
        return -jnp.mean(nce)
    nce = nce * row_mask
    if mean_mode == "all_rows":
        return -jnp.mean(nce)
    return -jnp.sum(nce) / jnp.maximum(jnp.sum(row_mask), 1.0)


def mummi_nce(z, x, mask, mask_mode="reference", mean_mode="all_rows"):
    z, x = z.astype(jnp.float32), x.astype(jnp.float32)
    logits = 2 * z @ x.T - jnp.sum(z * z, -1)[:, None] - jnp.sum(x * x, -1)[None]
    return _nce(logits, mask, mask, mask_mode, mean_mode)


def cvrl_nce(z, x, mask=None, bilinear=None):
    logits = (z @ bilinear @ x.T) if bilinear is not None else z @ x.T
    return _nce(logits, mask, mask, "exact", "present_rows")


def coral_nce(o, z, temp, mask=None):
    logits = temp * (z @ o.T)
    a = _nce(logits, mask, mask, "exact", "present_rows")
    b = _nce(logits.T, mask, mask, "exact", "present_rows")
    return 0.5 * (a + b)
