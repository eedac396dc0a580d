"""The agent: architecture fidelity, one compile per train step, learning on a fixed batch."""

from __future__ import annotations

import collections
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dm_env import specs

from mummi_jax import config as C
from mummi_jax import networks, presets, prng
from mummi_jax.agent import Agent, drop_modalities, get_path, optimizer_paths
from mummi_jax.parallel import SeedParallel


def walker_spec(touch: int = 2) -> dict:
    obs = {
        "image": specs.Array((64, 64, 3), np.uint8),
        "depth": specs.Array((64, 64, 1), np.float32),
        "touch": specs.Array((touch,), np.float32),
    }
    for m in list(obs):
        obs[f"{m}_flag"] = specs.Array((), np.float32)
    return obs


# Programs lowered in this process (each jit lowering, whether XLA then compiles it or the
# compilation cache has it): what an agent costs to start.
LOWERINGS = collections.Counter()
jax.monitoring.register_event_duration_secs_listener(
    lambda event, _secs, **_kw: LOWERINGS.update([event])
)
LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"

ACTION6 = specs.BoundedArray((6,), np.float32, -1.0, 1.0)
ACTION2 = specs.BoundedArray((2,), np.float32, -1, 1)


@pytest.mark.parametrize(
    "method, wm",
    [("mummi", 12_038_833), ("cvrl", 4_391_305)],
)
def test_parameter_counts_match_the_released_code(method, wm):
    """Counts derived from the released code (reference-code.md §2.7), walker (6, 2)."""
    agent = Agent(presets.make_config(method, "walker_walk", "paper"), walker_spec(), ACTION6)
    counts = agent.param_counts(jax.eval_shape(agent.init, jax.random.key(0)))
    assert counts == {"wm": wm, "actor": 578_412, "value": 413_601}


def toy_spec(image=16):
    obs = {
        "position": specs.Array((2,), np.float32),
        "camera": specs.BoundedArray((image, image, 3), np.uint8, 0, 255),
    }
    for m in list(obs):
        obs[f"{m}_flag"] = specs.Array((), np.float32)
    return obs


def fixed_batch(agent, obs_spec, K, B, T, seed=0):
    rng = np.random.default_rng(seed)
    batch = {}
    for m in agent.modalities:
        s = obs_spec[m]
        shape = (K, B, T) + tuple(s.shape)
        if s.dtype == np.uint8:  # one random colour per frame: learnable, not noise
            colour = rng.integers(0, 256, (K, B, T, 1, 1, s.shape[-1]), dtype=np.uint8)
            batch[m] = np.broadcast_to(colour, shape).copy()
        else:
            batch[m] = rng.normal(size=shape).astype(np.float32)
        batch[f"{m}_flag"] = (rng.uniform(size=(K, B, T)) > 0.25).astype(np.float32)
    batch["action"] = rng.uniform(-1, 1, (K, B, T, agent.action_dim)).astype(np.float32)
    batch["reward"] = rng.normal(size=(K, B, T)).astype(np.float32)
    batch["discount"] = np.ones((K, B, T), np.float32)
    batch["is_first"] = np.zeros((K, B, T), np.float32)
    batch["is_first"][:, :, 0] = 1.0
    return batch


TINY = [
    "env.image_size=16",
    "model.cnn_layers=2",
    "train.batch=4",
    "train.length=6",
]


def assert_learns_a_fixed_batch(run: SeedParallel, state, spec, updates: int = 200):
    """Trains `run`'s one seed from `state` for `updates` updates (2 per call) on one fixed
    batch `(B=4, T=6)` and checks that its world-model loss falls clearly: the excess over the
    floor no model can beat (free nats, unit-variance Gaussian constants) drops by 25 %.
    tests/test_loop.py runs it on every preset after its end-to-end run, with the run's own
    train step (one trace for every train phase and this). Returns the final state."""
    agent, cfg = run.agent, run.agent.config
    one = fixed_batch(agent, spec, 1, 4, 6)
    batches = jax.tree.map(lambda x: np.repeat(x, 2, axis=0), one)
    agent.check_batch(batches, leading=3)
    placed = run.shard(jax.tree.map(lambda x: x[None], batches))
    first = jax.tree.map(lambda x: x[0], one)
    noise = agent.draw_noise(jax.random.key(8), *first["reward"].shape)

    @jax.jit
    def wm_loss(wm_params):  # fixed key and noise: the same samples and modality drops
        return agent._world_model_loss(wm_params, first, noise, jax.random.key(7))[0]

    params = lambda state: run.states(state)[0].params
    losses = [float(wm_loss(params(state)["wm"]))]
    step = int(run.states(state)[0].step)
    for _ in range(updates // 2):
        state, metrics = run.train(state, placed)
    chex.assert_tree_all_finite(metrics)
    losses.append(float(wm_loss(params(state)["wm"])))
    chex.assert_tree_all_finite(params(state))
    assert int(run.states(state)[0].step) == step + updates
    floor = _loss_floor(cfg, agent, first, jax.random.key(7))
    assert losses[-1] - floor < 0.75 * (losses[0] - floor), (cfg.method, floor, losses)
    return state


def _loss_floor(cfg, agent, batch, key):
    """The world-model loss no model can beat on `batch` `(B, T, ...)` with the loss's `key`:
    free nats, and unit-variance Gaussian constants of the reward and of every observation
    the reconstruction terms see (after MSSM-e's drops, drawn as the loss draws them)."""
    half_log_2pi = 0.5 * np.log(2 * np.pi)
    floor = cfg.loss.kl_scale * cfg.loss.free_nats + half_log_2pi  # KL + reward
    weights = cfg.loss_weights(agent.modalities)
    flags = {m: batch[f"{m}_flag"].astype(np.float32) for m in agent.modalities}
    if cfg.loss.modality_drop > 0:
        k_drop = jax.random.split(key, 3)[0]  # as Agent._world_model_loss splits it
        flags = drop_modalities(k_drop, flags, agent.modalities, cfg.loss.modality_drop)
    for m, loss in agent.rep.items():
        if loss == "recon":
            dims = int(np.prod(batch[m].shape[2:]))
            floor += weights[m] * half_log_2pi * dims * float(np.mean(flags[m]))
    return floor


IMAGINATION = {("wm",), ("actor",), ("value",)}
HYBRID_SAC = {("sac", "critic"), ("sac", "log_alpha")}
MODEL_FREE_SAC = {("wm",), ("sac", "critic"), ("sac", "actor"), ("sac", "log_alpha")}


def _dict_paths(tree, prefix=()):
    """Paths of a nested dict's non-dict values (optax states, arrays)."""
    if not isinstance(tree, dict):
        return {prefix}
    return {p for k, v in tree.items() for p in _dict_paths(v, (*prefix, k))}


@pytest.mark.parametrize(
    "method, fidelity, overrides, trained, targets",
    [
        *[(m, "reference", [], IMAGINATION, set()) for m in ("mummi", "mummi_b", "mssm_e")],
        ("cvrl", "reference", [], IMAGINATION, set()),
        # CVRL app. B's SAC optimizer: its state at ("sac", "actor"), stepping params["actor"].
        ("cvrl", "paper", [], IMAGINATION | HYBRID_SAC | {("sac", "actor")}, {("sac", "critic")}),
        (
            "cvrl",
            "paper",
            ["optim.sac_actor_optimizer=shared"],
            IMAGINATION | HYBRID_SAC,
            {("sac", "critic")},
        ),
        ("dreamer", "reference", [], IMAGINATION, set()),
        ("dreamer", "reference", ["behavior.slow_value=true"], IMAGINATION, {("value",)}),
        ("coral_v", "reference", [], MODEL_FREE_SAC, {("sac", "critic")}),
        ("coral_p", "reference", [], MODEL_FREE_SAC, {("sac", "critic")}),
        ("coral_v", "walker", [], MODEL_FREE_SAC, {("sac", "critic")}),  # with obs_norm
    ],
)
def test_optimiser_states_and_targets_are_keyed_like_the_parameters(
    method, fidelity, overrides, trained, targets
):
    """`TrainState.opt_state` has one optax state at the path of each trained subtree of
    `params` (its moments shaped like that subtree); `targets` holds each target network at
    the path of the network it tracks, shaped like it."""
    if fidelity == "walker":  # CoRAL's image + proprio: params["obs_norm"], never trained
        cfg = presets.make_config(method, "walker_walk", "tiny", overrides=TINY)
        spec = {
            "image": specs.Array((16 + cfg.env.crop_margin,) * 2 + (3,), np.uint8),
            "proprio": specs.Array((5,), np.float32),
        }
        spec.update({f"{m}_flag": specs.Array((), np.float32) for m in list(spec)})
    else:
        cfg = presets.make_config(
            method, "toy_position_camera", "tiny", fidelity, overrides=TINY + overrides
        )
        spec = toy_spec(16 + cfg.env.crop_margin)
    agent = Agent(cfg, spec, ACTION2)
    state = jax.eval_shape(agent.init, jax.random.key(0))
    assert set(optimizer_paths(agent.optimizers)) == trained
    assert _dict_paths(state.opt_state) == trained
    untrained = {k for k in state.params if not any(p[0] == k for p in trained)}
    assert untrained == ({"obs_norm"} if fidelity == "walker" else set())
    for path in trained:
        params = get_path(state.params, agent.param_path(path))
        moments = optax.tree_utils.tree_get_all_with_path(get_path(state.opt_state, path), "mu")
        assert moments, path
        for _, mu in moments:
            assert jax.tree.structure(mu) == jax.tree.structure(params), path
            assert jax.tree.map(lambda x: x.shape, mu) == jax.tree.map(lambda x: x.shape, params)
    assert set(agent.target_decays) == targets
    # Nothing else: `{}` when the method has no target network.
    assert all(any(p[: len(t)] == t for t in targets) for p in _dict_paths(state.targets))
    for path in targets:
        want = jax.tree.map(lambda x: (x.shape, x.dtype), get_path(state.params, path))
        assert jax.tree.map(lambda x: (x.shape, x.dtype), get_path(state.targets, path)) == want


def test_act_step_gives_bounded_actions_and_keeps_its_latent():
    cfg = presets.make_config("mummi", "toy_position_camera", "tiny", overrides=TINY)
    spec = toy_spec()
    agent = Agent(cfg, spec, specs.BoundedArray((2,), np.float32, -1, 1))
    key = jax.random.key(0)
    before = LOWERINGS[LOWERING]
    state = agent.init(key)
    # One program, not one per initialiser op (eager init lowered about 200 of them).
    assert LOWERINGS[LOWERING] - before == 1
    obs = {k: v[0, :, 0] for k, v in fixed_batch(agent, spec, 1, 3, 1).items()}
    obs["is_first"] = np.ones((3,), np.float32)
    carry = agent.initial_carry(3)
    keys = [jax.random.key(t) for t in range(3)]
    before = LOWERINGS[LOWERING]
    for t in range(3):
        action, carry = agent.act(state, carry, obs, keys[t], training=t % 2 == 0)
        assert action.shape == (3, 2)
        assert np.all(np.abs(np.asarray(action)) <= 1.0)
        obs["is_first"] = np.zeros((3,), np.float32)
    assert LOWERINGS[LOWERING] - before == 1  # collection and evaluation: one program
    # The flag is live: from the same carry and key, collection adds exploration noise
    # (behavior.expl_noise) that evaluation does not.
    collect, _ = agent.act(state, agent.initial_carry(3), obs, jax.random.key(9), training=True)
    evaluate, _ = agent.act(state, agent.initial_carry(3), obs, jax.random.key(9), training=False)
    assert cfg.behavior.expl_noise > 0 and not np.allclose(collect, evaluate)
    assert float(np.abs(np.asarray(carry["state"]["deter"])).sum()) > 0


def test_bad_batches_fail_before_compiling():
    cfg = presets.make_config("mummi", "toy_position_camera", "tiny", overrides=TINY)
    spec = toy_spec()
    agent = Agent(cfg, spec, specs.BoundedArray((2,), np.float32, -1, 1))
    batch = fixed_batch(agent, spec, 1, 2, 3)
    wrong = dict(batch, camera=batch["camera"][..., :2])
    with pytest.raises(ValueError, match=r"batch\['camera'\] has shape"):
        agent.check_batch(wrong, leading=3)
    floats = dict(batch, camera=batch["camera"].astype(np.float32))
    with pytest.raises(ValueError, match="images must stay uint8"):
        agent.check_batch(floats, leading=3)
    with pytest.raises(ValueError, match="batch lacks 'reward'"):
        agent.check_batch({k: v for k, v in batch.items() if k != "reward"}, leading=3)


def test_device_out_of_memory_becomes_a_memory_error_that_names_the_fix():
    cfg = presets.make_config("mummi", "toy_position_camera", "tiny", overrides=TINY)
    spec = toy_spec()
    agent = Agent(cfg, spec, specs.BoundedArray((2,), np.float32, -1, 1))
    batch = fixed_batch(agent, spec, 1, 2, 3)

    def fail(message):
        def train(state, batches):
            raise jax.errors.JaxRuntimeError(message)

        return train

    agent._train_jit = fail("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB.")
    with pytest.raises(MemoryError, match=r"lower train.batch.*allocate 9.1GiB") as info:
        agent.train(None, batch)
    assert isinstance(info.value.__cause__, jax.errors.JaxRuntimeError)
    agent._train_jit = fail("INTERNAL: something else")  # other XLA errors pass unchanged
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        agent.train(None, batch)


def test_agent_rejects_a_spec_without_the_configured_modalities():
    cfg = presets.make_config("mummi", "walker_walk", "tiny")
    spec = walker_spec()
    del spec["touch"], spec["touch_flag"]
    with pytest.raises(ValueError, match="observation spec lacks"):
        Agent(cfg, spec, ACTION6)


def test_bfloat16_precision_computes_convs_in_bf16_and_keeps_params_and_losses_f32():
    """`model.precision=bfloat16` (the counterpart of the reference's mixed float16)."""
    cfg32 = presets.make_config("dreamer", "toy_position_camera", "tiny", overrides=TINY)
    cfg16 = C.override(cfg32, {"model.precision": "bfloat16"})
    spec = toy_spec(16)
    a32, a16 = Agent(cfg32, spec, ACTION2), Agent(cfg16, spec, ACTION2)
    s32, s16 = a32.init(jax.random.key(0)), a16.init(jax.random.key(0))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(s16.params))
    chex.assert_trees_all_equal(s32.params, s16.params)  # same init, only compute differs
    batch = fixed_batch(a32, spec, 2, 4, 6)  # test_loop.py's end-to-end shapes: compile reused
    one = jax.tree.map(lambda x: x[0], batch)
    noise = a16.draw_noise(jax.random.key(2), *one["reward"].shape)
    hlo = jax.jit(a16._world_model_loss).lower(s16.params["wm"], one, noise, jax.random.key(1))
    hlo = hlo.as_text()
    # The encoder's and decoder's conv matmuls (`model.conv_impl=auto` on CPU) run in bf16:
    # the decoders' as (N, H, W, K) patches times a kernel, the channel-major encoder's as a
    # (C_out, K) kernel times (K, N H W) patches; the dense layers stay f32.
    dots = [line for line in hlo.splitlines() if "dot_general" in line]
    decoder = [line for line in dots if re.search(r": \(tensor<\d+x\d+x\d+x\d+x", line)]
    encoder = [line for line in dots if re.search(r": \(tensor<\d+x\d+xbf16>, tensor<", line)]
    assert len(decoder) >= 3 and all("bf16" in line for line in decoder), decoder[:3]
    assert len(encoder) >= cfg16.model.cnn_layers, dots
    assert sum("bf16" in line for line in dots) == len(decoder) + len(encoder), dots

    # Through a single run's train step, as the end-to-end tests (f32: their compile is reused).
    def train(agent):
        run = SeedParallel(agent, 1, jax.devices()[:1])
        return run.train(run.init([0]), jax.tree.map(lambda x: x[None], batch))[1]

    m32, m16 = train(a32), train(a16)
    for k in ("wm/loss", "wm/recon/camera", "wm/kl"):
        assert np.isfinite(m16[k][0]) and m16[k][0] == pytest.approx(m32[k][0], rel=0.05), k


def test_bfloat16_matmul_precision_trains_like_float32():
    """`model.precision=bfloat16_matmul` (bf16 products, f32 accumulation and activations)
    through a single run's train step: same parameters, float32 metrics close to float32's."""
    cfg32 = presets.make_config("dreamer", "toy_position_camera", "tiny", overrides=TINY)
    cfg16 = C.override(cfg32, {"model.precision": "bfloat16_matmul"})
    spec = toy_spec(16)
    a32, a16 = Agent(cfg32, spec, ACTION2), Agent(cfg16, spec, ACTION2)
    init = lambda agent: agent.init(jax.random.key(0)).params
    chex.assert_trees_all_equal(init(a32), init(a16))
    batch = fixed_batch(a32, spec, 2, 4, 6)

    def train(agent):
        run = SeedParallel(agent, 1, jax.devices()[:1])
        state, metrics = run.train(run.init([0]), jax.tree.map(lambda x: x[None], batch))
        assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
        return metrics

    m32, m16 = train(a32), train(a16)
    for k in ("wm/loss", "wm/recon/camera", "wm/kl"):
        assert np.isfinite(m16[k][0]) and m16[k][0] == pytest.approx(m32[k][0], rel=0.05), k
    assert m16["wm/loss"][0] != m32["wm/loss"][0]  # the products really were rounded


@pytest.mark.parametrize("method", ["mummi", "cvrl", "dreamer", "mssm_e"])
def test_bfloat16_matmul_reaches_every_network_but_the_sensor_encoders(method):
    """Every module the agent multiplies with takes bf16 operands under `bfloat16_matmul`,
    but the low-dimensional sensors' MLP encoders (float32: networks.precision_dtypes)."""
    cfg = presets.make_config(
        method, "walker_walk", "tiny", overrides=["model.precision=bfloat16_matmul"]
    )
    nets = Agent(cfg, walker_spec(), ACTION6).nets
    modules = {**nets.modules, "actor": nets.actor, "value": nets.value}
    modules.update(sac_actor=nets.sac_actor, sac_critic=nets.sac_critic)
    for name, module in modules.items():
        if isinstance(module, networks.MLPEncoder):
            assert not hasattr(module, "matmul_dtype"), name
        else:
            assert module.matmul_dtype == jnp.bfloat16, name
    assert any(isinstance(m, networks.MLPEncoder) for m in modules.values())  # touch


def test_mssm_e_drops_never_leave_a_step_without_its_present_modalities():
    """MSSM-e drops each present modality at random but never every present one (MuMMI
    Sec. VI). The old rule counted a missing modality's draw as a survivor, so a step whose
    only present modality was dropped went empty (5 % of steps at the reference's missing
    rates)."""
    mods = ("image", "depth", "touch")
    shape = (64, 50)
    only_depth = {"image": np.zeros(shape), "depth": np.ones(shape), "touch": np.zeros(shape)}
    out = drop_modalities(jax.random.key(0), only_depth, mods, 0.99)
    np.testing.assert_array_equal(out["depth"], 1.0)  # the only present one is always kept
    assert float(out["image"].sum() + out["touch"].sum()) == 0.0  # missing stays missing

    rng = np.random.default_rng(0)
    flags = {m: (rng.uniform(size=shape) > 0.28).astype(np.float32) for m in mods}
    out = drop_modalities(jax.random.key(1), flags, mods, 0.2)
    before = np.stack([flags[m] for m in mods]).sum(0)
    after = np.stack([np.asarray(out[m]) for m in mods]).sum(0)
    assert np.all(after[before > 0] >= 1) and np.all(after[before == 0] == 0)
    for m in mods:
        assert np.all(np.asarray(out[m]) <= flags[m])  # only drops, never additions
    # Each present modality is dropped at about the rate, less the few steps restored.
    dropped = 1 - sum(float(np.asarray(out[m]).sum()) for m in mods) / float(before.sum())
    assert 0.15 < dropped < 0.2, dropped

    # Where all three were drawn for dropping, the one kept is chosen uniformly.
    all_present = {m: np.ones((200, 100)) for m in mods}
    out = drop_modalities(jax.random.key(2), all_present, mods, 0.95)
    shares = [float(np.asarray(out[m]).mean()) for m in mods]
    assert np.all(np.stack([np.asarray(out[m]) for m in mods]).sum(0) >= 1)
    assert max(shares) - min(shares) < 0.03, shares  # about 0.05 + 0.95^3 / 3 each


def test_dreamer_with_mpc_evaluates_from_the_actor_mode():
    """`behavior.eval_mode` applies under the MPC planner too: Dreamer at the paper fidelity
    (latent MPC, eval_mode "mode") starts evaluation's MPC from the actor's mode. With no
    gradient step (mpc_iters=0) MPC returns its start, so the agent acts as without a
    planner, from the same parameters, observations and key, in evaluation and collection."""
    over = [*TINY, "behavior.mpc_iters=0", "behavior.expl_noise=0"]
    spec = toy_spec()
    acts = {}
    for planner in ("latent_mpc", "none"):
        cfg = presets.make_config(
            "dreamer", "toy_position_camera", "tiny", "paper",
            overrides=[*over, f"behavior.planner={planner}"],
        )  # fmt: skip
        assert cfg.behavior.eval_mode == "mode"
        agent = Agent(cfg, spec, specs.BoundedArray((2,), np.float32, -1, 1))
        state = agent.init(jax.random.key(0))
        obs = {k: v[0, :, 0] for k, v in fixed_batch(agent, spec, 1, 3, 1).items()}
        obs["is_first"] = np.ones((3,), np.float32)
        acts[planner] = [
            np.asarray(agent.act(state, agent.initial_carry(3), obs, jax.random.key(5), t)[0])
            for t in (False, True)
        ]
    for with_mpc, without in zip(acts["latent_mpc"], acts["none"], strict=True):
        np.testing.assert_allclose(with_mpc, without, atol=1e-6)


def test_cvrl_paper_steps_the_actor_with_a_separate_sac_optimizer():
    """CVRL app. B: the SAC actor term has its own Adam (`optim.sac_actor_optimizer=separate`,
    the paper fidelity), so at the first update each actor weight moves by about
    actor_lr sign(g_imagination) + sac_lr sign(g_sac) (Adam's first step is lr * sign(g)),
    where one shared Adam would move it by lr sign(g_imagination + g_sac)."""
    spec = toy_spec()
    for choice in ("separate", "shared"):
        cfg = presets.make_config(
            "cvrl", "toy_position_camera", "tiny", "paper",
            overrides=[*TINY, f"optim.sac_actor_optimizer={choice}"],
        )  # fmt: skip
        assert cfg.behavior.sac_weight > 0 and cfg.behavior.sac_actor_grad
        agent = Agent(cfg, spec, ACTION2)
        state = agent.init(jax.random.key(0))
        batch = jax.tree.map(lambda x: x[0], fixed_batch(agent, spec, 1, 4, 6))
        noise = agent.draw_noise(jax.random.key(3), 4, 6)
        grads, _, _ = agent.inspect_update(state, batch, noise)
        key = jax.random.split(state.key, 3)[2]  # the key inspect_update gives the gradients
        new, _ = prng.jit(agent.update_with_noise)(state, batch, noise, key)  # its PRNG form
        moved = jax.tree.map(
            lambda a, b: np.asarray(a - b), new.params["actor"], state.params["actor"]
        )
        leaves = lambda t: [np.asarray(x) for x in jax.tree.leaves(t)]  # noqa: E731
        g_img = leaves(grads["actor"])
        if choice == "shared":  # the SAC term is inside the actor's gradient
            assert "actor" not in grads["sac"]
            g_sac = [np.zeros_like(g) for g in g_img]
            big = [np.abs(g) > 1e-4 for g in g_img]
        else:
            g_sac = leaves(grads["sac"]["actor"])
            big = [
                (np.abs(g) > 1e-4) & (np.abs(s) > 1e-4) for g, s in zip(g_img, g_sac, strict=True)
            ]
        o = cfg.optim
        want = [
            -o.actor_lr * np.sign(g) - o.sac_lr * np.sign(s)
            for g, s in zip(g_img, g_sac, strict=True)
        ]
        checked = 0
        for m, w, b in zip(leaves(moved), want, big, strict=True):
            np.testing.assert_allclose(m[b], w[b], atol=2e-6)
            checked += int(b.sum())
        assert checked > 1000, (choice, checked)


def test_paper_fidelity_imagines_eq18_from_the_start_state():
    """MuMMI eq. 18 sums V_lambda over the whole rollout from its start state, unweighted;
    the released code starts at s_1 and weights by gamma^(k-1) (`behavior.actor_objective`).
    The actor loss the agent reports is rebuilt here from its own imagined features."""
    from mummi_jax import behavior

    spec = toy_spec()
    for fidelity, extra in (("reference", 0), ("paper", 1)):
        cfg = presets.make_config("mummi", "toy_position_camera", "tiny", fidelity, overrides=TINY)
        b = cfg.behavior
        assert b.actor_objective == ("sum" if extra else "discounted")
        agent = Agent(cfg, spec, ACTION2)
        state = agent.init(jax.random.key(0))
        batch = jax.tree.map(lambda x: x[0], fixed_batch(agent, spec, 1, 4, 6))
        noise = agent.draw_noise(jax.random.key(3), 4, 6)
        _, metrics, aux = agent.inspect_update(state, batch, noise)
        feats = aux["imagine"]["feats"]
        assert feats.shape[:2] == (b.horizon + extra, 4 * 6)
        wm, value = state.params["wm"], state.params["value"]
        rewards = agent.nets.reward(wm, feats)
        values = agent._value_fn(value, feats)
        returns = behavior.lambda_return(rewards[:-1], values[:-1], b.gamma, values[-1], b.lam)
        if extra:  # R_0 .. R_{H-1} and v(s_H), unweighted
            want = -np.mean(np.concatenate([returns, values[-1:]]))
        else:  # R_1 .. R_{H-1} weighted gamma^(k-1)
            weights = b.gamma ** np.arange(returns.shape[0])[:, None]
            want = -np.mean(weights * returns)
        np.testing.assert_allclose(metrics["actor/loss"], want, rtol=1e-4)


def test_update_reports_the_actors_spread_and_saturation():
    """`actor/std` and `actor/saturated` read the actor on the imagination starts: a fresh
    actor has its initial std (about 5) and nothing at a bound; one whose last layer outputs
    means far past the cap and a collapsed std reads std 1e-4 and every dimension saturated."""
    spec = toy_spec()
    cfg = presets.make_config("mummi", "toy_position_camera", "tiny", overrides=TINY)
    agent = Agent(cfg, spec, ACTION2)
    state = agent.init(jax.random.key(0))
    batch = jax.tree.map(lambda x: x[0], fixed_batch(agent, spec, 1, 4, 6))
    noise = agent.draw_noise(jax.random.key(3), 4, 6)
    _, metrics, _ = agent.inspect_update(state, batch, noise)
    assert 4.0 < float(metrics["actor/std"]) < 6.0
    assert float(metrics["actor/saturated"]) == 0.0

    def pinned(path, x):  # the last layer: raw means +-50, raw stds -50
        name = jax.tree_util.keystr(path)
        if x.shape == (4,) and "bias" in name:
            return jnp.array([50.0, -50.0, -50.0, -50.0], x.dtype)
        if x.shape[-1:] == (4,) or x.shape[:1] == (4,):
            return jnp.zeros_like(x)
        return x

    actor = jax.tree_util.tree_map_with_path(pinned, state.params["actor"])
    state = state.replace(params={**state.params, "actor": actor})
    _, metrics, _ = agent.inspect_update(state, batch, noise)
    np.testing.assert_allclose(float(metrics["actor/std"]), 1e-4, rtol=1e-3)
    assert float(metrics["actor/saturated"]) == 1.0


def test_per_row_noise_averages_the_value_gradient_over_the_batch():
    """`model.shared_noise` (the released sampler) perturbs every imagined trajectory of a
    batch alike, so the value's regression targets move together and the batch mean does
    not average the noise out; one draw per row does (RESULTS.md "Batch-shared sampling
    noise"). Gradients over imagination-noise draws, one batch, everything else fixed."""
    spec = toy_spec()
    snr = {}
    for shared in (True, False):
        cfg = presets.make_config(
            "mummi", "toy_position_camera", "tiny",
            overrides=[*TINY, "train.batch=8", f"model.shared_noise={shared}"],
        )  # fmt: skip
        agent = Agent(cfg, spec, ACTION2)
        state = agent.init(jax.random.key(0))
        batch = jax.tree.map(lambda x: x[0], fixed_batch(agent, spec, 1, 8, 6))
        base = agent.draw_noise(jax.random.key(3), 8, 6)
        assert base["imagine_state"].shape[1] == (1 if shared else 8 * 6)
        grads = []
        for k in range(6):
            redrawn = agent.draw_noise(jax.random.key(10 + k), 8, 6)["imagine_state"]
            noise = dict(base, imagine_state=redrawn)
            g = agent.inspect_update(state, batch, noise)[0]["value"]
            grads.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]))
        g = np.stack(grads)
        mean = g.mean(0)
        snr[shared] = mean @ mean / ((g - mean) ** 2).sum(1).mean()
    assert snr[False] > 5 * snr[True], snr


def test_at_the_reference_fidelity_only_the_small_size_draws_per_row():
    small = presets.make_config("mummi", "walker_walk", "small")
    assert not small.model.shared_noise
    assert presets.make_config("mummi", "walker_walk", "paper").model.shared_noise
    assert presets.make_config("mummi", "walker_walk", "tiny").model.shared_noise
