"""Representation objectives: one registry entry per loss, its heads and its weighted term.

`loss.representation` picks an objective per modality ("mummi", or "image=coral_v,touch=recon").
Each name is an `Objective` in `OBJECTIVES`: how to build its heads, how to initialise them, and
the weighted loss of the modalities that chose it (DreamerV3's dict of heads and scales: the
world model and the agent loop over the chosen entries; neither names an objective). A new
objective is one loss function and one `register(...)` line, plus a preset that names it:

    def _l2(ctx, modalities): ...  # -> (weighted loss, {"wm/l2/<m>": ...})
    register(Objective("l2", _l2, build=..., init=...))

The built-in entries, in the order their terms are summed (and their heads initialised):

- `mummi`: MuMMI's per-modality InfoNCE with the kernel `exp(-||mu^m(x) - g(z)||^2)`, one
  term `lambda^m L_nce^m` per modality (MuMMI eq. 14-17); head `g`; needs PoE experts.
- `mummi_b`: the same density ratio on the fused mean instead of each expert's (MuMMI Sec. V,
  MuMMI-b), one term weighted `loss.weights` `fused=`; head `g`; needs PoE; not mixable.
- `bilinear_nce`: CVRL's InfoNCE with the bilinear score `exp(z^T W x)` of the concatenated
  embeddings of its modalities (CVRL Sec. 3.1, eq. 5); head `cvrl`; one unweighted term.
- `recon`: the reconstruction term of the ELBO, `-lambda^m log p(x^m | s)` (MuMMI eq. 10,
  Dreamer); one head `dec_<m>` per modality; `loss.recon_latent="prior"` decodes the
  one-step prior features instead (P-CoRAL, CoRAL eq. 4).
- `coral_v` / `coral_p`: CoRAL's symmetric InfoNCE with a learned temperature between the
  observation embedding and the posterior (V) or prior (P) features (CoRAL eq. 3-4); one head
  `coral_<m>` per modality; the temperature trains at `loss.coral_temp_lr`.
- `none`: no representation term for that modality.

Shapes: everything a loss reads is `(B, T, ...)` (`LossContext`); the contrastive losses
flatten it to `N = B * T` rows, because every other position is a negative (losses.py).

This module is model core: it imports no config (the config imports it, lazily, for the
names) and no world model (it reaches the heads through `ctx.wm.apply`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mummi_jax import losses, networks

Modules = dict  # {module name: flax module}
Params = dict  # {module name: params}


class LossContext(NamedTuple):
    """What the representation losses read, for one batch `(B, T, ...)`.

    params: world-model params keyed by module name; wm: the `WorldModel` (`wm.apply`);
    obs: preprocessed observations `{m: (B, T, *shape)}`; flags: presence `{m: (B, T)}`,
    after modality drops; embeds: `{m: (B, T, E)}`; fused: s^f `(B, T, F)`; experts:
    `{m: (mean, std)}` each `(B, T, fused)` (PoE only, else empty); post, prior: RSSM state
    dicts of `(B, T, ...)`; feat: posterior features `[s, h]` `(B, T, S + D)`; weights:
    lambda^m `{m: float}` plus `"fused"`; config: the resolved `Config`; key: a PRNG key
    for objectives that sample (none of the built-in ones does).
    """

    params: dict
    wm: Any
    obs: dict
    flags: dict
    embeds: dict
    fused: jax.Array
    experts: dict
    post: dict
    prior: dict
    feat: jax.Array
    weights: dict
    config: Any
    key: jax.Array


def _no_heads(config, shapes, modalities) -> Modules:
    return {}


def _no_params(modules, keys, embeds, feat) -> Params:
    return {}


@dataclass(frozen=True)
class Objective:
    """One representation objective.

    name: the value of `loss.representation` that selects it.
    loss: `(ctx: LossContext, modalities) -> (loss, metrics)`: the weighted scalar term of the
      modalities (in the task's order) that chose it, and its `group/name` metrics.
    build: `(config, shapes, modalities) -> {module name: flax module}`, its heads; `shapes`
      is `{m: observation shape}` of every modality; `config.model.conv_impl` arrives
      resolved (`xla` or `matmul`).
    init: `(modules, keys, embeds, feat) -> {module name: params}`, with `keys` one PRNG key
      per module, `embeds` `{m: (1, E)}` of its modalities and `feat` `(1, S + D)`.
    per_modality: its heads belong to one modality each (`dec_<m>`): they are built and
      initialised one modality at a time, in the task's modality order, after the heads
      shared over modalities (`g`, `cvrl`), which keeps each head's PRNG key where it was.
    label: `(parameter path) -> label or None`, for parameters of its heads that train at
      their own learning rate; `learning_rates(config) -> {label: lr}` gives those rates.
    needs_poe: reads the PoE experts (`ctx.experts`); the config rejects it under concat.
    alone: a single term over all modalities; it cannot be mixed with other objectives.
    """

    name: str
    loss: Callable[[LossContext, list], tuple[jax.Array, dict]]
    build: Callable[[Any, dict, list], Modules] = _no_heads
    init: Callable[[Modules, dict, dict, jax.Array], Params] = _no_params
    per_modality: bool = False
    label: Callable[[str], str | None] | None = None
    learning_rates: Callable[[Any], dict] | None = None
    needs_poe: bool = False
    alone: bool = False


OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Adds `objective` to `OBJECTIVES` (a name may be registered once)."""
    if objective.name in OBJECTIVES:
        raise ValueError(f"representation objective {objective.name!r} is already registered")
    OBJECTIVES[objective.name] = objective
    return objective


def unregister(name: str) -> None:
    """Removes a registered objective (tests register toy ones and must not leak them)."""
    del OBJECTIVES[name]


def groups(rep: dict) -> dict[str, list[str]]:
    """`{modality: objective name}` -> `{objective name: [modalities]}`, objectives in
    registry order (the order their terms are summed), modalities in `rep`'s order."""
    unknown = sorted(set(rep.values()) - set(OBJECTIVES))
    if unknown:
        raise ValueError(
            f"unknown loss.representation {unknown[0]!r}; valid choices: {', '.join(OBJECTIVES)}"
        )
    return {
        name: [m for m, r in rep.items() if r == name]
        for name in OBJECTIVES
        if name in rep.values()
    }


def _flat(x):
    return x.reshape((-1,) + x.shape[2:])  # (B, T, ...) -> (N, ...)


def _dtypes(config):
    # Image decoders follow the encoders' precision (world_model.py); losses stay f32.
    return networks.precision_dtypes(config.model.precision)


# ----------------------------------------------------------------------------- MuMMI
def _g_head(config, shapes, modalities):
    md = _dtypes(config)[1]
    return {"g": networks.GHead(config.model.fused, config.model.g_activation, md)}


def _g_init(modules, keys, embeds, feat):
    return {"g": modules["g"].init(keys["g"], feat)}


def _mummi_loss(ctx: LossContext, modalities):
    """`sum_m lambda^m L_nce^m` with z = g(s) against each expert mean (MuMMI eq. 14-17)."""
    c = ctx.config.loss
    z = _flat(ctx.wm.apply(ctx.params, "g", ctx.feat))
    means = jnp.stack([_flat(ctx.experts[m][0]) for m in modalities])
    flags = jnp.stack([_flat(ctx.flags[m]) for m in modalities])
    per_modality = losses.mummi_nce_stacked(z, means, flags, c.nce_mask, c.nce_mean)
    total, metrics = 0.0, {}
    for m, loss in zip(modalities, per_modality, strict=True):
        metrics[f"wm/nce/{m}"] = loss
        total = total + ctx.weights[m] * loss
    return total, metrics


def _mummi_b_loss(ctx: LossContext, modalities):
    """MuMMI-b: one InfoNCE of g(s) against b(x) = the mean of the fused PoE distribution
    (MuMMI Sec. V, f_b), present if any modality is. The mean, not s^f: with
    `model.poe=gaussian` (the paper fidelity) s^f is a sample of that distribution."""
    c = ctx.config.loss
    z = _flat(ctx.wm.apply(ctx.params, "g", ctx.feat))
    present = functools.reduce(jnp.maximum, [ctx.flags[m] for m in modalities])
    fused_mean, _ = ctx.wm.product(ctx.experts, ctx.flags)
    loss = losses.mummi_nce(z, _flat(fused_mean), _flat(present), c.nce_mask, c.nce_mean)
    return ctx.weights["fused"] * loss, {"wm/nce/fused": loss}


# ----------------------------------------------------------------------------- CVRL
def _cvrl_head(config, shapes, modalities):
    m = config.model
    md = _dtypes(config)[1]
    return {"cvrl": networks.CVRLHeads(m.cvrl_head, m.cvrl_obs_hidden, m.cvrl_state_hidden, md)}


def _cvrl_init(modules, keys, embeds, feat):
    x = jnp.zeros((1, sum(e.shape[-1] for e in embeds.values())))
    return {"cvrl": modules["cvrl"].init(keys["cvrl"], feat, x)}


def _cvrl_loss(ctx: LossContext, modalities):
    """CVRL's InfoNCE over the concatenated embeddings of its modalities (CVRL eq. 5)."""
    x = jnp.concatenate([ctx.embeds[m] for m in modalities], axis=-1)
    zs, xs = ctx.wm.apply(ctx.params, "cvrl", ctx.feat, x)
    present = functools.reduce(jnp.maximum, [ctx.flags[m] for m in modalities])
    c = ctx.config.loss
    # The released CVRL code masks nothing (a missing step's positive is a blank input):
    # that is what the reference options mean here; any other choice masks by presence.
    unmasked = c.nce_mask == "reference" and c.nce_mean == "all_rows"
    mask = None if unmasked else _flat(present)
    # The paper's form has an explicit W; the released one folds it into the last layers.
    paper = ctx.config.model.cvrl_head == "paper"
    bilinear = ctx.params["cvrl"]["params"].get("bilinear") if paper else None
    loss = losses.cvrl_nce(
        _flat(zs), _flat(xs), mask=mask, bilinear=bilinear, mask_mode=c.nce_mask,
        mean_mode=c.nce_mean,
    )  # fmt: skip
    return loss, {"wm/nce/concat": loss}


# ----------------------------------------------------------------------------- reconstruction
def _decoders(config, shapes, modalities):
    m = config.model
    dtype, matmul_dtype = _dtypes(config)
    out = {}
    for name in modalities:
        shape = shapes[name]
        if len(shape) == 3:
            out[f"dec_{name}"] = networks.ImageDecoder(
                shape[0], shape[-1], m.cnn_depth, dtype, m.conv_impl, matmul_dtype
            )
        else:
            out[f"dec_{name}"] = networks.MLPDecoder(
                shape[-1], m.decoder_touch_hidden, 3, matmul_dtype
            )
    return out


def _decoders_init(modules, keys, embeds, feat):
    return {name: module.init(keys[name], feat) for name, module in modules.items()}


def prior_features(prior: dict) -> jax.Array:
    """[s_t ~ p(s_t | h_t), h_t] `(B, T, S + D)`: the one-step-ahead features of P-CoRAL's
    terms (CoRAL eq. 4, "prior features"); at t = 0 they come from the zero state."""
    return jnp.concatenate([prior["stoch"], prior["deter"]], axis=-1)


def _recon_loss(ctx: LossContext, modalities):
    """`sum_m lambda^m E[-log p(x^m | s)]`, the ELBO's reconstruction terms (MuMMI eq. 10).

    `loss.recon_latent="prior"` decodes the prior features instead, for t >= 1: the
    one-step-ahead likelihood E[log p(o_t | z_{t-1}, a_{t-1})] of P-CoRAL (CoRAL eq. 4); the
    posterior then reaches these terms only through h_t (coral.md §3.2)."""
    feat, obs, flags = ctx.feat, ctx.obs, ctx.flags
    if ctx.config.loss.recon_latent == "prior":
        feat = prior_features(ctx.prior)[:, 1:]
        obs = {m: obs[m][:, 1:] for m in modalities}
        flags = {m: flags[m][:, 1:] for m in modalities}
    total, metrics = 0.0, {}
    for m in modalities:
        pred = ctx.wm.apply(ctx.params, f"dec_{m}", feat)
        loss = losses.reconstruction_loss(pred, obs[m], flags[m])
        metrics[f"wm/recon/{m}"] = loss
        total = total + ctx.weights[m] * loss
    return total, metrics


# ----------------------------------------------------------------------------- CoRAL
def _coral_heads(config, shapes, modalities):
    m, temp = config.model, config.loss.coral_temp_init
    return {
        f"coral_{name}": networks.CoRALHeads(
            m.coral_proj, m.coral_state_hidden, temp, _dtypes(config)[1]
        )
        for name in modalities
    }


def _coral_init(modules, keys, embeds, feat):
    return {
        f"coral_{m}": modules[f"coral_{m}"].init(keys[f"coral_{m}"], embeds[m], feat)
        for m in embeds
    }


def _coral_loss(variant: str):
    def loss_fn(ctx: LossContext, modalities):
        """CoRAL's symmetric InfoNCE, posterior (V) or prior (P) features (CoRAL eq. 3-4)."""
        state_feat = ctx.feat if variant == "coral_v" else prior_features(ctx.prior)
        total, metrics = 0.0, {}
        for m in modalities:
            e, f, fl = ctx.embeds[m], state_feat, ctx.flags[m]
            if variant == "coral_p":  # the t=0 prior comes from the zero state (coral.md §3.1)
                e, f, fl = e[:, 1:], f[:, 1:], fl[:, 1:]
            obs_proj, state_proj, temp = ctx.wm.apply(ctx.params, f"coral_{m}", e, f)
            loss = losses.coral_nce(_flat(obs_proj), _flat(state_proj), temp, mask=_flat(fl))
            metrics[f"wm/nce/{m}"] = loss
            total = total + ctx.weights[m] * loss
        return total, metrics

    return loss_fn


def _coral_label(path: str):
    # CoRAL trains its temperature with its own learning rate (coral.md §3.3).
    return "temp" if "temperature" in path else None


def _coral_rates(config):
    return {"temp": config.loss.coral_temp_lr}


# ----------------------------------------------------------------------------- registry
register(Objective("mummi", _mummi_loss, _g_head, _g_init, needs_poe=True))
register(Objective("mummi_b", _mummi_b_loss, _g_head, _g_init, needs_poe=True, alone=True))
register(Objective("bilinear_nce", _cvrl_loss, _cvrl_head, _cvrl_init))
register(Objective("recon", _recon_loss, _decoders, _decoders_init, per_modality=True))
for _variant in ("coral_v", "coral_p"):
    register(
        Objective(
            _variant,
            _coral_loss(_variant),
            _coral_heads,
            _coral_init,
            per_modality=True,
            label=_coral_label,
            learning_rates=_coral_rates,
        )
    )
register(Objective("none", lambda ctx, modalities: (0.0, {})))
