"""The registry of representation objectives: a new one is a function and a config line."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dm_env import specs

from mummi_jax import objectives, presets
from mummi_jax.agent import Agent
from tests.test_agent import TINY, fixed_batch, toy_spec


# ----------------------------------------------------------------------------- a toy objective
# Everything a new objective needs, and nothing else: its head, its init and its loss. No
# other file of the library is edited to use it (the config, world model and agent loop over
# the registry).
def _toy_heads(config, shapes, modalities):
    return {"toy_head": nn.Dense(config.model.fused)}  # features -> the experts' space


def _toy_init(modules, keys, embeds, feat):
    return {"toy_head": modules["toy_head"].init(keys["toy_head"], feat)}


def _toy_loss(ctx, modalities):
    """`lambda^m mean ||head(s) - mu^m(x^m)||^2`: pulls each expert mean towards the latent."""
    pred = ctx.wm.apply(ctx.params, "toy_head", ctx.feat)  # (B, T, fused)
    total, metrics = 0.0, {}
    for m in modalities:
        loss = jnp.mean(jnp.sum((pred - ctx.experts[m][0]) ** 2, axis=-1))
        metrics[f"wm/toy_l2/{m}"] = loss
        total = total + ctx.weights[m] * loss
    return total, metrics


TOY = objectives.Objective("toy_l2", _toy_loss, _toy_heads, _toy_init, needs_poe=True)


@pytest.fixture
def toy_objective():
    objectives.register(TOY)
    try:
        yield TOY
    finally:
        objectives.unregister(TOY.name)  # the registry must not leak into other tests


def test_a_registered_objective_trains_its_own_head_with_no_other_edit(toy_objective):
    line = "loss.representation=camera=mummi,position=toy_l2"  # the preset line
    cfg = presets.make_config("mummi", "toy_position_camera", "tiny", overrides=[*TINY, line])
    spec = toy_spec()
    agent = Agent(cfg, spec, specs.BoundedArray((2,), np.float32, -1, 1))
    assert agent.rep == {"position": "toy_l2", "camera": "mummi"}
    state = agent.init(jax.random.key(0))
    before = jax.tree.map(np.asarray, state.params["wm"]["toy_head"])
    assert before["params"]["kernel"].shape == (agent.nets.feat_size, cfg.model.fused)
    assert "g" in state.params["wm"]  # the other modality's objective is still there
    state, metrics = agent.train(state, fixed_batch(agent, spec, 1, 4, 6))
    assert "wm/toy_l2/position" in metrics and "wm/nce/camera" in metrics
    assert "wm/nce/position" not in metrics
    chex.assert_tree_all_finite(metrics)
    after = state.params["wm"]["toy_head"]
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, after)
    assert all(jax.tree.leaves(changed)), changed


def test_the_config_takes_its_objective_names_from_the_registry(toy_objective):
    over = [*TINY, "loss.representation=toy_l2", "model.fusion=concat"]
    with pytest.raises(ValueError, match="needs model.fusion='poe'"):
        presets.make_config("mummi", "toy_position_camera", "tiny", overrides=over)
    with pytest.raises(ValueError, match="already registered"):
        objectives.register(TOY)


def test_an_unregistered_objective_is_rejected_with_the_valid_names():
    over = [*TINY, "loss.representation=toy_l2"]
    with pytest.raises(ValueError, match=r"unknown loss.representation 'toy_l2'.*mummi, mummi_b"):
        presets.make_config("mummi", "toy_position_camera", "tiny", overrides=over)


def test_the_built_in_objectives_sum_in_a_fixed_order():
    # Their terms are summed, and their heads' PRNG keys drawn, in this order.
    assert list(objectives.OBJECTIVES)[:7] == [
        "mummi",
        "mummi_b",
        "bilinear_nce",
        "recon",
        "coral_v",
        "coral_p",
        "none",
    ]
    rep = {"image": "coral_v", "depth": "recon", "touch": "recon"}
    assert objectives.groups(rep) == {"recon": ["depth", "touch"], "coral_v": ["image"]}


def test_mummi_b_reads_the_fused_mean_not_the_sampled_fused_state():
    """f_b compares g(z) with the mean of the fused PoE distribution (MuMMI Sec. V). With the
    paper fidelity s^f is a sample of it, and the loss must not read that sample."""
    cfg = presets.make_config("mummi_b", "toy_position_camera", "tiny", "paper", overrides=TINY)
    assert cfg.model.poe == "gaussian"
    spec = toy_spec()
    agent = Agent(cfg, spec, specs.BoundedArray((2,), np.float32, -1, 1))
    wm = agent.init(jax.random.key(0)).params["wm"]
    batch = jax.tree.map(lambda x: x[0], fixed_batch(agent, spec, 1, 4, 6))
    obs = agent.preprocess(batch)
    flags = {m: obs[f"{m}_flag"] for m in agent.modalities}
    flags["camera"] = jnp.asarray(flags["camera"]).at[:, ::2].set(0.0)  # some experts dropped
    embeds = agent.nets.encode(wm, obs)
    fused, experts, _ = agent.nets.fuse(wm, embeds, flags, jax.random.key(1))
    mean, _ = agent.nets.product(experts, flags)
    assert not np.allclose(fused, mean)  # s^f is a sample here
    feat = jax.random.normal(jax.random.key(2), (4, 6, agent.nets.feat_size))
    ctx = objectives.LossContext(
        params=wm, wm=agent.nets, obs=obs, flags=flags, embeds=embeds, fused=fused,
        experts=experts, post={}, prior={}, feat=feat, weights={"fused": 1.0}, config=cfg,
        key=jax.random.key(3),
    )  # fmt: skip
    loss, metrics = objectives.OBJECTIVES["mummi_b"].loss(ctx, agent.modalities)
    z = agent.nets.apply(wm, "g", feat).reshape(24, -1)
    present = jnp.maximum(flags["position"], flags["camera"]).reshape(24)
    c = cfg.loss
    want = objectives.losses.mummi_nce(z, mean.reshape(24, -1), present, c.nce_mask, c.nce_mean)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    other, _ = objectives.OBJECTIVES["mummi_b"].loss(
        ctx._replace(fused=fused + 5.0), agent.modalities
    )
    np.testing.assert_allclose(other, loss, rtol=1e-6)  # the sample is not read


def test_cvrl_honours_the_nce_mask_options():
    """CVRL's InfoNCE follows `loss.nce_mask` / `loss.nce_mean` (it followed the fidelity
    name, so a user's `--set` was silently ignored): the reference values leave it unmasked,
    as released; `exact` + `present_rows` mask missing steps."""
    spec = toy_spec()
    ctxs, losses_ = {}, {}
    for name, over in (
        ("reference", []),
        ("exact", ["loss.nce_mask=exact", "loss.nce_mean=present_rows"]),
    ):
        cfg = presets.make_config("cvrl", "toy_position_camera", "tiny", overrides=[*TINY, *over])
        agent = Agent(cfg, spec, specs.BoundedArray((2,), np.float32, -1, 1))
        wm = agent.init(jax.random.key(0)).params["wm"]
        batch = jax.tree.map(lambda x: x[0], fixed_batch(agent, spec, 1, 4, 6))
        obs = agent.preprocess(batch)
        flags = {m: obs[f"{m}_flag"] for m in agent.modalities}
        flags = {m: jnp.asarray(f).at[:, ::3].set(0.0) for m, f in flags.items()}
        embeds = agent.nets.encode(wm, obs)
        feat = jax.random.normal(jax.random.key(2), (4, 6, agent.nets.feat_size))
        ctx = objectives.LossContext(
            params=wm, wm=agent.nets, obs=obs, flags=flags, embeds=embeds, fused=None,
            experts={}, post={}, prior={}, feat=feat, weights={}, config=cfg,
            key=jax.random.key(3),
        )  # fmt: skip
        losses_[name], _ = objectives.OBJECTIVES["bilinear_nce"].loss(ctx, agent.modalities)
        ctxs[name] = ctx
    ctx = ctxs["exact"]  # same parameters and inputs on both sides
    x = jnp.concatenate([ctx.embeds[m] for m in ("position", "camera")], axis=-1)
    zs, xs = ctx.wm.apply(ctx.params, "cvrl", ctx.feat, x)
    zs, xs = zs.reshape(24, -1), xs.reshape(24, -1)
    present = jnp.maximum(ctx.flags["position"], ctx.flags["camera"]).reshape(24)
    np.testing.assert_allclose(losses_["reference"], objectives.losses.cvrl_nce(zs, xs), rtol=1e-5)
    want = objectives.losses.cvrl_nce(zs, xs, mask=present)
    np.testing.assert_allclose(losses_["exact"], want, rtol=1e-5)
    assert abs(float(losses_["exact"]) - float(losses_["reference"])) > 1e-4
