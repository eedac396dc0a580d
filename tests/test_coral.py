"""The CoRAL presets follow CoRAL (shared/notes/coral.md): the values, the 76 -> 64 crop, the
z-scored partial proprioception, the SAC actor's std, the mean action at evaluation, P-CoRAL's
prior-feature reconstruction, and a short end-to-end run of each preset on a DMC task."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dm_env import specs

from mummi_jax import distributions as dist
from mummi_jax import inputs, objectives, presets
from mummi_jax.agent import Agent
from mummi_jax.world_model import features


# ----------------------------------------------------------------------------- the presets
@pytest.mark.parametrize("variant", ["coral_v", "coral_p"])
def test_the_coral_presets_resolve_to_coral_s_values(variant):
    cfg = presets.make_config(variant, "walker_walk")
    e, m, loss, b, o, t = cfg.env, cfg.model, cfg.loss, cfg.behavior, cfg.optim, cfg.train
    want = {
        # item: (ours, CoRAL's) -- coral.md section in the comment
        "batch x length": ((t.batch, t.length), (32, 32)),  # §4.1
        "stoch": (m.stoch, 64),  # §2
        "deter": (m.deter, 200),
        "rssm width x layers": ((m.hidden, m.rssm_layers), (400, 2)),
        "modalities": (e.modalities, ("image", "proprio")),  # §3.1
        "missing data": (e.missing, "none"),  # §2 "the paper does not use this"
        "proprio": ((e.proprio, m.proprio_norm), ("partial", "zscore")),  # §2, §5.1
        "render / crop": ((e.image_size + e.crop_margin, e.image_size), (76, 64)),  # §3.5
        "action repeat": (e.action_repeat, 2),  # §5.1 walker
        "actor std init, min": (
            (b.sac_init_std, b.sac_min_std),
            (pytest.approx(math.exp(-4)), 0.005),
        ),  # §4.1
        "exploration noise": (b.expl_noise, 0.0),
        "clips model, critic, alpha": ((o.clip, o.sac_critic_clip, o.alpha_clip), (10, 100, 1)),
        "sac lr, alpha init, tau, width": (
            (o.sac_lr, b.sac_init_alpha, b.sac_tau, b.sac_hidden, b.sac_layers),
            (1e-3, 0.1, 0.005, 1024, 3),
        ),
        "eval action": (b.eval_mode, "mean"),  # §5.4
        "model adam": ((o.model_lr, o.eps, o.adam), (3e-4, 1e-8, "optax")),  # §3.6
        "free nats": ((loss.free_nats, loss.kl_mode), (1.0, "per_step")),  # §3.4
        "learner": ((b.learner, b.planner, cfg.model.fusion), ("sac", "none", "concat")),
    }
    if variant == "coral_v":
        want["kl"] = ((loss.kl_scale, loss.kl_balance, loss.recon_latent), (1.0, 0.8, "posterior"))
    else:
        want["kl"] = ((loss.kl_scale, loss.kl_balance, loss.recon_latent), (0.001, 0.0, "prior"))
    for item, (ours, coral) in want.items():
        assert ours == coral, item
    assert cfg.rep_losses(("image", "proprio")) == {"image": variant, "proprio": "recon"}


@pytest.mark.parametrize(
    "task, repeat, proprio_dims",
    [
        ("cup_catch", 4, 4),
        ("cartpole_swingup", 8, 2),
        ("cheetah_run", 4, 12),
        ("reacher_easy", 4, 4),
        ("walker_run", 2, 20),
        ("quadruped_walk", 2, 44),
    ],
)
def test_action_repeat_and_partial_proprio_per_task_follow_coral_table_1(
    task, repeat, proprio_dims
):
    from mummi_jax.envs.tasks import PARTIAL_PROPRIO

    cfg = presets.make_config("coral_v", task)
    assert cfg.env.action_repeat == repeat and cfg.env.proprio == "partial"
    assert sum(b - a for _, a, b in PARTIAL_PROPRIO[task]) == proprio_dims


def test_other_suites_keep_their_modalities_and_bad_coral_options_name_key_and_choices():
    toy = presets.make_config("coral_p", "toy_position_camera", "tiny")
    assert toy.env.modalities == () and toy.env.proprio == "full" and toy.env.crop_margin == 12
    bad = {
        "env.proprio=some": "env.proprio 'some'; valid choices: full, partial",
        "model.proprio_norm=minmax": "model.proprio_norm 'minmax'; valid choices: none, zscore",
        "loss.recon_latent=next": "loss.recon_latent 'next'; valid choices: posterior, prior",
        "behavior.eval_mode=best": "behavior.eval_mode 'best'; valid choices: sample, mode, mean",
        "model.rssm_layers=0": "model.rssm_layers=0 must be >= 1",
        "env.crop_margin=-2": "env.crop_margin=-2 must be >= 0",
        "behavior.sac_min_std=0": "behavior.sac_min_std=0.0 must be > 0",
        "behavior.sac_init_std=-1": "behavior.sac_init_std=-1.0 must be > 0",
        "optim.alpha_clip=-1": "optim.alpha_clip=-1.0 must be >= 0",
        "optim.sac_critic_clip=-1": "optim.sac_critic_clip=-1.0 must be >= 0",
        "behavior.expl_noise=-0.1": "behavior.expl_noise=-0.1 must be >= 0",
    }
    for override, match in bad.items():
        with pytest.raises(ValueError, match=match.replace("(", r"\(")):
            presets.make_config("coral_v", "walker_walk", overrides=[override])
    with pytest.raises(ValueError, match="env.proprio='partial' has no split for task 'wipe'"):
        presets.make_config("coral_v", "wipe", overrides=["env.proprio=partial"])


# ----------------------------------------------------------------------------- the crop
def test_random_crop_takes_one_76_to_64_window_per_sequence_and_differs_between_keys():
    b, t = 3, 4
    # Pixel value = 1000 * row + column: a window's top-left pixel names its offset.
    grid = 1000 * np.arange(76)[:, None] + np.arange(76)[None, :]
    images = jnp.asarray(np.broadcast_to(grid[None, None, :, :, None], (b, t, 76, 76, 2)))
    crops = jax.jit(inputs.random_crop, static_argnums=2)(images, jax.random.key(0), 64)
    assert crops.shape == (b, t, 64, 64, 2)
    corner = np.asarray(crops[:, :, 0, 0, 0])
    assert (corner == corner[:, :1]).all()  # the same window at every step of a sequence
    top, left = corner[:, 0] // 1000, corner[:, 0] % 1000
    assert ((0 <= top) & (top <= 12) & (0 <= left) & (left <= 12)).all()
    # Each crop is the contiguous window at its offset.
    for i in range(b):
        np.testing.assert_array_equal(
            crops[i, 0, :, :, 0], grid[top[i] : top[i] + 64, left[i] : left[i] + 64]
        )
    others = [inputs.random_crop(images, jax.random.key(k), 64) for k in range(1, 4)]
    assert any(not np.array_equal(crops, o) for o in others)
    centre = inputs.center_crop(images, 64)
    assert centre.shape == (b, t, 64, 64, 2) and int(centre[0, 0, 0, 0, 0]) == 6006
    with pytest.raises(ValueError, match="crop must fit"):
        inputs.center_crop(images, 80)


# ----------------------------------------------------------------------------- z-scoring
def test_zscore_statistics_on_hand_numbers():
    x = np.array([[1.0, 5.0, 0.0], [3.0, 5.0, 0.004], [9.0, 7.0, 100.0]], np.float32)
    present = np.array([1.0, 1.0, 0.0])  # the third row is missing: not counted
    mean, std = inputs.zscore_stats(x, present)
    # column 0: mean 2, std 1; column 1: std 0 -> 1; column 2: std 0.002 < 1e-2 -> 1.
    np.testing.assert_allclose(mean, [2.0, 5.0, 0.002], rtol=1e-6)
    np.testing.assert_allclose(std, [1.0, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(inputs.zscore(jnp.array([4.0, 7.0, 1.002]), mean, std), [2, 2, 1])
    mean, std = inputs.zscore_stats(np.array([[0.0], [4.0]]))
    assert float(mean[0]) == 2.0 and float(std[0]) == 2.0
    mean, std = inputs.zscore_stats(np.ones((2, 2)), np.zeros(2))  # nothing present: identity
    np.testing.assert_array_equal(mean, 0.0) and np.testing.assert_array_equal(std, 1.0)


def dmc_spec(image=44, proprio=2):
    obs = {
        "image": specs.BoundedArray((image, image, 3), np.uint8, 0, 255),
        "proprio": specs.Array((proprio,), np.float32),
    }
    for m in list(obs):
        obs[f"{m}_flag"] = specs.Array((), np.float32)
    return obs


SMALL = ["train.batch=2", "train.length=4"]


@pytest.fixture(scope="module")
def coral_agent():
    cfg = presets.make_config("coral_v", "cartpole_swingup", "tiny", overrides=SMALL)
    agent = Agent(cfg, dmc_spec(), specs.BoundedArray((1,), np.float32, -1, 1))
    return agent, jax.jit(agent.init)(jax.random.key(0))  # one compile, not one per op


def test_agent_sets_its_proprio_statistics_from_episodes_and_inputs_use_them(coral_agent):
    agent, state = coral_agent
    assert agent.uses_input_stats and agent.crop == 32 and agent.random_crop == ["image"]
    np.testing.assert_array_equal(state.params["obs_norm"]["proprio"]["std"], [1.0, 1.0])
    episodes = [
        {"proprio": np.array([[1.0, 2.0], [3.0, 2.0]]), "proprio_flag": np.ones(2)},
        {"proprio": np.array([[2.0, 2.0]]), "proprio_flag": np.ones(1)},
    ]
    state = agent.with_input_stats(state, episodes)
    norm = state.params["obs_norm"]
    np.testing.assert_allclose(norm["proprio"]["mean"], [2.0, 2.0])
    np.testing.assert_allclose(norm["proprio"]["std"], [math.sqrt(2 / 3), 1.0], rtol=1e-6)
    obs = {
        "image": np.zeros((1, 44, 44, 3), np.uint8),
        "image_flag": np.ones(1, np.float32),
        "proprio": np.array([[3.0, 5.0]], np.float32),
        "proprio_flag": np.ones(1, np.float32),
    }
    x = agent.preprocess(obs, norm=norm)
    np.testing.assert_allclose(x["proprio"], [[1 / math.sqrt(2 / 3), 3.0]], rtol=1e-6)
    assert x["image"].shape == (1, 32, 32, 3)  # the centre crop of the 44 px render


# ----------------------------------------------------------------------------- the actor
def test_sac_actor_std_starts_at_init_and_never_falls_below_min(coral_agent):
    agent, state = coral_agent
    b = agent.config.behavior
    actor = state.params["sac"]["actor"]
    feat = jnp.zeros((1, agent.nets.feat_size))  # zero features: raw output = bias = 0
    d = dist.actor_distribution(agent.nets.sac_actor.apply(actor, feat), **agent._sac_std)
    np.testing.assert_allclose(d.std, math.exp(-4) + 0.005, rtol=1e-5)
    low = dist.actor_distribution(jnp.full((1, 2), -1e4), **agent._sac_std)
    np.testing.assert_allclose(low.std, b.sac_min_std, rtol=1e-6)


def test_evaluation_takes_the_mean_action_and_training_adds_no_noise(coral_agent):
    agent, state = coral_agent
    rng = np.random.default_rng(0)
    obs = {
        "image": rng.integers(0, 256, (2, 44, 44, 3), dtype=np.uint8),
        "image_flag": np.ones(2, np.float32),
        "proprio": rng.normal(size=(2, 2)).astype(np.float32),
        "proprio_flag": np.ones(2, np.float32),
        "is_first": np.ones(2, np.float32),
    }
    act = lambda key, training: agent.act(state, agent.initial_carry(2), obs, key, training)
    a1, carry = act(jax.random.key(1), False)
    a2, _ = act(jax.random.key(2), False)
    np.testing.assert_array_equal(a1, a2)  # deterministic: the key plays no part
    post = carry["state"]
    det = jnp.concatenate([post["mean"], post["deter"]], -1)
    raw = agent.nets.sac_actor.apply(state.params["sac"]["actor"], det)
    mean = dist.actor_distribution(raw, **agent._sac_std).deterministic()
    np.testing.assert_allclose(a1, mean, rtol=1e-6)
    # Training samples the policy (std ~ e^-4) with no added 0.3 noise: close to the mean.
    t1, _ = act(jax.random.key(1), True)
    assert not np.array_equal(t1, a1) and np.abs(t1 - a1).max() < 0.1


# ----------------------------------------------------------------------------- P-CoRAL
def _recon_ctx(variant, post_feat, obs):
    cfg = presets.make_config(variant, "cartpole_swingup", "tiny")

    class LinearDecoder:  # a fake world model: dec_proprio(feat) = feat[..., :2]
        def apply(self, params, name, feat):
            assert name == "dec_proprio"
            return feat[..., :2]

    b, t = obs.shape[:2]
    prior = {"stoch": jnp.full((b, t, 3), 0.5), "deter": jnp.full((b, t, 4), 0.25)}
    return objectives.LossContext(
        params={}, wm=LinearDecoder(), obs={"proprio": obs},
        flags={"proprio": jnp.ones((b, t))}, embeds={}, fused=None, experts={}, post={},
        prior=prior, feat=post_feat, weights={"proprio": 1.0}, config=cfg, key=jax.random.key(0),
    )  # fmt: skip


def test_p_coral_reconstructs_from_the_prior_features_from_t_1():
    rng = np.random.default_rng(0)
    obs = jnp.asarray(rng.normal(size=(2, 5, 2)), jnp.float32)
    feat_a = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
    feat_b = feat_a + 3.0  # another posterior
    loss = objectives.OBJECTIVES["recon"].loss
    p_a, _ = loss(_recon_ctx("coral_p", feat_a, obs), ["proprio"])
    p_b, _ = loss(_recon_ctx("coral_p", feat_b, obs), ["proprio"])
    assert float(p_a) == float(p_b)  # the posterior does not enter P-CoRAL's recon term
    # It is the unit-Gaussian NLL of obs[:, 1:] around the prior features' decoding (0.5, 0.5).
    nll = 0.5 * jnp.square(obs[:, 1:] - 0.5) + 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(p_a, jnp.mean(jnp.sum(nll, -1)), rtol=1e-6)
    shifted = obs.at[:, 0].add(10.0)  # t = 0 is dropped (its prior is the zero state's)
    assert float(loss(_recon_ctx("coral_p", feat_a, shifted), ["proprio"])[0]) == float(p_a)
    v_a, _ = loss(_recon_ctx("coral_v", feat_a, obs), ["proprio"])
    v_b, _ = loss(_recon_ctx("coral_v", feat_b, obs), ["proprio"])
    assert float(v_a) != float(v_b)  # V-CoRAL decodes the posterior
    prior = {"stoch": jnp.ones((1, 1, 3)), "deter": jnp.zeros((1, 1, 4))}
    assert objectives.prior_features(prior).shape == (1, 1, 7)
    assert features(prior).shape == (1, 1, 7)


# ----------------------------------------------------------------------------- environments
@pytest.mark.parametrize(
    "task, full_index",
    [
        ("cartpole_swingup", [0, 3]),  # position (3) + velocity (2): the cart's
        ("walker_walk", [*range(14), *range(18, 24)]),  # orientations, height, velocity[3:]
        ("cup_catch", [0, 1, 4, 5]),  # the cup's x, z and their velocities
    ],
)
def test_partial_proprio_is_coral_s_slice_of_the_full_state(task, full_index):
    from mummi_jax import envs

    make = lambda proprio: envs.make(
        task, seed=3, modalities=("proprio",), missing="none", proprio=proprio
    )
    full, part = make("full"), make("partial")
    try:
        assert part.observation_spec()["proprio"].shape == (len(full_index),)
        for ts_full, ts_part in [
            (full.reset(), part.reset()),
            (full.step([0.3]), part.step([0.3])),
        ]:
            want = ts_full.observation["proprio"][full_index]
            np.testing.assert_array_equal(ts_part.observation["proprio"], want)
    finally:
        full.close()
        part.close()


# ----------------------------------------------------------------------------- end to end
# coral_v and coral_p also run end to end on the toy robot in tests/test_loop.py.
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["coral_p"])
def test_coral_trains_end_to_end_on_dmc_with_image_and_z_scored_partial_proprio(variant, tmp_path):
    from mummi_jax.episodes import env_kwargs_from_config
    from mummi_jax.runner import Runner, build_agent

    over = [
        "env.time_limit=80",  # 10 agent steps at cartpole's action repeat 8
        "train.steps=240",
        "train.prefill_episodes=2",
        "train.train_every=80",
        "train.train_steps=2",
        "train.updates_per_call=2",
        "train.pretrain=2",
        "train.batch=2",
        "train.length=4",
        "train.eval_every=0",
        "train.prefetch=0",
    ]
    cfg = presets.make_config(variant, "cartpole_swingup", "tiny", overrides=over)
    kwargs = env_kwargs_from_config(cfg)
    assert kwargs["image_size"] == 44 and kwargs["proprio"] == "partial"
    agent = build_agent(cfg, kwargs)
    runner = Runner(cfg, str(tmp_path), agent=agent, env_kwargs=kwargs, progress=False)
    stacked, counters = runner.train()
    assert counters[0]["env_steps"] == 240 and counters[0]["updates"] > 0
    state = runner.parallel.states(stacked)[0]
    # z-scoring statistics from the two prefill episodes (cart position and velocity).
    replay = runner.runs[0].replay
    prefill = [ep for i, ep in zip(replay.indices, replay.episodes, strict=True) if i < 2]
    want_mean, _ = inputs.zscore_stats(np.concatenate([ep["proprio"] for ep in prefill]))
    np.testing.assert_allclose(state.params["obs_norm"]["proprio"]["mean"], want_mean, rtol=1e-5)
    assert os.listdir(tmp_path / "checkpoints")
    metrics = [line for line in open(tmp_path / "metrics.jsonl") if "wm/recon/proprio" in line]
    assert metrics and "wm/nce/image" in metrics[0]
