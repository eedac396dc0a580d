"""`--what=train_step`: seconds per update of the one jitted train step.

Paper size: B=50, T=50, 64x64 RGB + depth + touch (walker), H=15, MuMMI preset; tiny: the
tiny preset. Prints compile time, median seconds per update over K-update calls, peak RSS,
and a per-component breakdown on the same batch (each part jitted alone, forward and
backward): image encoders, expert heads + fusion, the RSSM observe scan, the whole
world-model gradient and the imagination actor/value gradients. Each part's record carries
its matrix products' GFLOP (read from its compiled HLO, loop trip counts included:
`bench.dots.dot_table`), the rate it ran them at, and that rate against a float32 GEMM
timed in the same process (`of_gemm`): how near each part runs to what the machine can do.

On a CPU the process's allocator matters (BENCHMARKS.md, "One update"): glibc hands the
step's multi-GB temporaries back to the kernel and faults them in again on every call, while
tcmalloc or jemalloc keep them, and so does glibc once told (`mummi_jax.host_memory`, which
every entry point applies unless `MUMMI_JAX_MALLOPT=0`). The record names the allocator.
"""

from __future__ import annotations

import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from dm_env import specs

from mummi_jax import config as C
from mummi_jax import host_memory, presets, prng, xla_cpu
from mummi_jax.agent import Agent
from mummi_jax.envs.tasks import PARTIAL_PROPRIO, task_modalities


def _spec(size, config=None):
    """Walker's observation specs: image, depth, touch at `size`; with `config`, the modalities
    and render size it asks for (CoRAL: image + proprio, rendered `env.crop_margin` larger)."""
    names = ("image", "depth", "touch")
    proprio = 24  # walker's full state
    if config is not None:
        names = task_modalities(config.env.task, config.env.modalities)
        size = config.env.image_size + config.env.crop_margin
        if config.env.proprio == "partial":
            proprio = sum(b - a for _, a, b in PARTIAL_PROPRIO[config.env.task])
    every = {
        "image": specs.BoundedArray((size, size, 3), np.uint8, 0, 255),
        "depth": specs.Array((size, size, 1), np.float32),
        "touch": specs.Array((2,), np.float32),
        "proprio": specs.Array((proprio,), np.float32),
    }
    obs = {m: every[m] for m in names}
    for m in list(obs):
        obs[f"{m}_flag"] = specs.Array((), np.float32)
    return obs


def _batch(agent, spec, K, B, T):
    rng = np.random.default_rng(0)
    out = {}
    for m in agent.modalities:
        shape = (K, B, T) + tuple(spec[m].shape)
        if spec[m].dtype == np.uint8:
            out[m] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            out[m] = rng.uniform(0, 5, shape).astype(np.float32)
        out[f"{m}_flag"] = (rng.uniform(size=(K, B, T)) > 0.28).astype(np.float32)
    out["action"] = rng.uniform(-1, 1, (K, B, T, 6)).astype(np.float32)
    out["reward"] = rng.uniform(0, 1, (K, B, T)).astype(np.float32)
    out["discount"] = np.ones((K, B, T), np.float32)
    out["is_first"] = np.zeros((K, B, T), np.float32)
    return out


def allocator() -> str:
    """The malloc library preloaded into this process ("glibc" when none is)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "unknown"
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if f"lib{name}" in maps:
            return name
    # glibc told to keep freed memory (the entry points' default) or as it comes.
    return "glibc+mallopt" if host_memory.keep_freed_memory() else "glibc"


def gemm_gflops(n=2048, repeats=5) -> float:
    """Median float32 n^3 matmul rate through XLA in this process (the machine's yardstick)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    mm = jax.jit(lambda x, y: x @ y)
    seconds = _timed(mm, a, a, repeats=repeats)
    return 2 * n**3 / seconds / 1e9


def dot_gflop(compiled) -> float:
    """GFLOP of every matrix product a compiled program runs (loops' trip counts included),
    oneDNN's convolutions counted as the products they compute."""
    from experiments.bench.dots import dot_table

    return sum(r["gflop"] for r in dot_table(compiled.as_text()))


def _timed(fn, *args, repeats):
    # The warm-up settled too, or the first timed call races its temporaries.
    with host_memory.settling():
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        with host_memory.settling():  # as the runner does between updates
            jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def encoders_part(agent, params, obs):
    """`(fn, wm_params, image_obs)`: the image encoders' weight gradient (the sum of squares of
    every embedding, forward + backward), the part that holds the convolutions. `obs` is a
    preprocessed batch `(B, T, ...)` (one update's; `agent.preprocess`)."""
    nets = agent.nets
    images = [m for m in agent.modalities if m in nets.image_modalities]

    def encode_loss(p, image_obs):
        enc = lambda m: nets.modules[f"enc_{m}"].apply(p[f"enc_{m}"], image_obs[m])
        return sum(jnp.sum(jnp.square(enc(m))) for m in images)

    return jax.grad(encode_loss), params["wm"], {m: obs[m] for m in images}


def _components(agent, state, batch, repeats):
    """(name, seconds, dot GFLOP) of each part of one update, forward + backward, jitted
    alone."""
    nets, mods = agent.nets, agent.modalities
    params = state.params
    key = jax.random.key(1)
    obs = jax.jit(agent.preprocess)(batch)
    flags = {m: obs[f"{m}_flag"] for m in mods}
    wm = params["wm"]

    embeds = jax.jit(nets.encode)(wm, obs)

    def fuse_loss(p, embeds):
        fused, _, _ = nets.fuse(p, embeds, flags, key)
        return jnp.sum(jnp.square(fused))

    fused, _, _ = jax.jit(lambda p, e: nets.fuse(p, e, flags, key))(wm, embeds)
    noise = agent.draw_noise(key, *batch["reward"].shape)

    def observe_loss(p, fused):
        post, prior = nets.observe(p, fused, batch["action"], batch["is_first"], noise["observe"])
        return jnp.sum(jnp.square(post["stoch"])) + jnp.sum(jnp.square(prior["mean"]))

    wm_loss = lambda p, b, k: agent._world_model_loss(p, b, noise, k)
    post = jax.jit(wm_loss)(wm, batch, key)[1]["post"]
    parts = {
        "encoders": encoders_part(agent, params, obs),
        "experts_and_fusion": (jax.grad(fuse_loss, argnums=(0, 1)), wm, embeds),
        "observe_scan": (jax.grad(observe_loss, argnums=(0, 1)), wm, fused),
        "world_model_grad": (jax.grad(lambda p, b, k: wm_loss(p, b, k)[0]), wm, batch, key),
    }
    if agent._uses_imagination:
        parts["imagination_grads"] = (
            agent._imagination_grads,
            params,
            state.targets,
            post,
            noise,
            key,
        )
    for name, (fn, *args) in parts.items():
        compiled = prng.jit(fn).lower(*args).compile()  # as the train step draws
        yield name, _timed(compiled, *args, repeats=repeats), dot_gflop(compiled)


def run(flags):
    size = flags.size
    cfg = presets.make_config(flags.method, "walker_walk", size, overrides=flags.set)
    spec = _spec(cfg.env.image_size, cfg)
    agent = Agent(cfg, spec, specs.BoundedArray((6,), np.float32, -1, 1))
    K = flags.updates_per_call or (
        1 if size == "paper" and jax.default_backend() == "cpu" else cfg.train.updates_per_call
    )
    B, T = cfg.train.batch, cfg.train.length
    repeats = flags.repeats or (3 if size == "paper" else 10)
    batch = jax.device_put(_batch(agent, spec, K, B, T))
    state = agent.init(jax.random.key(0))
    agent.check_batch(batch, leading=3)
    # The program `agent.train` runs, compiled once: timed here and its HLO read below (a
    # second `.lower().compile()` would cost another compile, 30 s at paper size).
    t0 = time.perf_counter()
    train = agent._train_jit.lower(state, batch).compile()
    # Settled like the timed calls: a first timed update dispatched while this one's
    # temporaries are still being freed grows the heap (BENCHMARKS.md "The heap growth").
    with host_memory.settling():
        state, metrics = train(state, batch)
        jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0  # compile + the first update, as before
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        with host_memory.settling():  # as the runner does between updates
            state, metrics = train(state, batch)
            jax.block_until_ready(metrics)
        times.append((time.perf_counter() - t) / K)
    record = {
        "what": "train_step",
        "size": size,
        "method": flags.method,
        "B": B,
        "T": T,
        "H": cfg.behavior.horizon,
        "updates_per_call": K,
        "seconds_per_update": float(np.median(times)),
        "compile_seconds": compile_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(jax.devices()[0].device_kind),
        "conv_impl": cfg.model.conv_impl,
        "conv_form": C.resolve_config_conv(cfg),  # what `auto` became here
        "head_layout": C.resolve_head_layout(cfg),
        "allocator": allocator(),
        "cpu_emitter": "loop" if xla_cpu.loop_emitter_requested() else "fusion",
    }
    gemm = gemm_gflops()
    record["update_dot_gflop"] = dot_gflop(train) / K
    record["update_gflops"] = record["update_dot_gflop"] / record["seconds_per_update"]
    record["gemm_gflops"] = gemm
    record["of_gemm"] = record["update_gflops"] / gemm
    yield record
    # Breakdown on one batch; shares of the update are of the median above.
    one = jax.tree.map(lambda x: x[0], batch)
    for name, seconds, gflop in _components(agent, state, one, repeats):
        yield {
            "what": f"train_step/{name}",
            "size": size,
            "method": flags.method,
            "seconds": seconds,
            "share_of_update": seconds / record["seconds_per_update"],
            "dot_gflop": gflop,
            "gflops": gflop / seconds,
            "of_gemm": gflop / seconds / gemm,
        }
