"""Our side of the parity check, the shared inputs, and the comparison.

Inputs are made here and given to both implementations: weights (by `mapping.py` name),
raw batches `(B, T, ...)` and the sampling noise of each update (`Agent.draw_noise`'s
layout). Outputs use the reference side's names (`reference_side.py`): `init/<name>`,
`step<k>/term/<term>`, `step1/grad/<name>` and `step<k>/param/<name>`, `<name>` being the
reference's variable name.

Terms compared (step 1 unless noted; "loss" terms as the reference logs them):
  experts/<m>/mean|std   each modality's expert q(s^f | x^m), `(B, T, 1024)`
  fused                  the PoE output fed to the RSSM posterior
  post|prior/<field>     every state of the observe scan: mean, std, stoch, deter
  kl                     mean KL(post || prior) over B x T, before free nats
  div                    the KL term after free nats (every step)
  reward_loss            -mean log N(r; r_hat, 1) (every step)
  image|depth|touch_loss each modality's MuMMI InfoNCE, times its weight (every step)
  model_loss             the world-model total (every step)
  g                      g(z) of eq. 16 for every posterior state
  imagine/feat           the imagined trajectory's features `(H, B T, F)`
  returns                the lambda-returns `(H - 1, B T)`
  actor_loss|value_loss  the behaviour losses (every step; value with the reference's
                         Gaussian constant, see `_ours_terms`)
  <net>_grad_norm        global gradient norm of model, actor and value (every step)
  grad/<name>            every gradient tensor (step 1), and per module norms
  param/<name>           every parameter after step 1 and after the last step
"""

from __future__ import annotations

import json
import math

import numpy as np

from experiments.parity import mapping

# Sizes the released code can be built at: its images are 64x64 and its experts, touch
# embedding and g(z) 1024-wide (all fixed in its mummi.py); these vary.
SIZES = {
    "small": dict(batch=4, length=8, cnn_depth=8, deter=32, stoch=8, units=32, horizon=5),
    "paper": dict(batch=50, length=50, cnn_depth=32, deter=200, stoch=30, units=400, horizon=15),
}
ACTION_DIM, TOUCH_DIM, IMAGE = 6, 2, 64  # walker

# Relative tolerances per kind of row (docs/PARITY.md says why each is what it is).
# Pass criteria (docs/PARITY.md). The first update is compared by the norm-wise relative
# error: at the paper's size a few of the 77 M ReLU units of an image encoder sit within
# float rounding of zero and switch on one side only, which moves single gradient entries
# by up to 3e-3 of the tensor's largest while the tensor as a whole agrees to 1e-5 (the
# largest-entry error is reported beside it). From then on those weights follow different
# gradients and Adam moves each by up to its learning rate (6e-4 against weights of about
# 0.1): later updates' terms and the last parameters are held to 5e-3 of the largest entry.
TOLERANCE = {"first": ("norm", 1e-4), "later": ("max", 5e-3)}
# With our updates also computed in float64 (`float64.py`), a row may instead be within
# this many times our own float32 error in the same norm (ours in float32 against ours in
# float64): that error is rounding alone, whatever the computation, so a wrong computation
# still fails.
ROUNDING_FACTOR = 3.0

SCALAR_TERMS = (
    "model_loss",
    "div",
    "reward_loss",
    "image_loss",
    "depth_loss",
    "touch_loss",
    "actor_loss",
    "value_loss",
    "model_grad_norm",
    "actor_grad_norm",
    "value_grad_norm",
)


def make_config(size: str, steps: int, init: str = "given") -> dict:
    if size not in SIZES:
        raise ValueError(f"unknown parity size {size!r}; valid: {', '.join(SIZES)}")
    return dict(SIZES[size], action_dim=ACTION_DIM, touch_dim=TOUCH_DIM, steps=steps, init=init)


def make_agent(cfg: dict, overrides=()):
    """Our MuMMI agent at the reference's sizes, `--fidelity=reference`, float32;
    `overrides` (`section.key=value`) change our side only, to measure an option's effect."""
    import dm_env.specs as specs

    from mummi_jax import config as C
    from mummi_jax import presets
    from mummi_jax.agent import Agent

    over = {
        "model.cnn_depth": cfg["cnn_depth"],
        "model.deter": cfg["deter"],
        "model.hidden": cfg["deter"],  # the reference builds RSSM(stoch, deter, deter)
        "model.stoch": cfg["stoch"],
        "model.units": cfg["units"],
        "behavior.horizon": cfg["horizon"],
        "train.batch": cfg["batch"],
        "train.length": cfg["length"],
    }
    config = presets.make_config("mummi", "walker_walk", "paper", "reference", overrides=over)
    config = C.override(config, list(overrides))
    spec = {
        "image": specs.Array((IMAGE, IMAGE, 3), np.uint8),
        "depth": specs.Array((IMAGE, IMAGE, 1), np.float32),
        "touch": specs.Array((cfg["touch_dim"],), np.float32),
    }
    spec.update({f"{m}_flag": specs.Array((), np.float32) for m in list(spec)})
    action = specs.BoundedArray((cfg["action_dim"],), np.float32, -1.0, 1.0)
    return Agent(config, spec, action)


# ----------------------------------------------------------------------------- inputs
def make_inputs(size, steps, weights, batch, seed, overrides=()):
    """`(cfg, agent, weights or None, batches, noise)`: what both sides are given."""
    import jax

    init = "reference" if weights == "reference" else "given"
    cfg = make_config(size, steps, init)
    agent = make_agent(cfg, overrides)
    params = agent.init(jax.random.key(seed)).params
    named = param_names(params)
    if weights == "procedural":
        given = procedural_weights({k: v.shape for k, v in named.items()}, seed)
    elif weights == "ours":
        given = named
    else:
        given = None
    if batch == "synthetic":
        batches = synthetic_batches(cfg, seed, steps)
    else:
        batches = walker_batches(cfg, seed, steps)
    noise = noises(agent, seed, steps, cfg["batch"], cfg["length"])
    return cfg, agent, given, batches, noise


def walker_batches(cfg, seed, steps):
    """Real walker_walk sequences (64x64 RGB over the natural backgrounds, depth, touch,
    the reference's missing data) from random-action episodes: data the harness did not
    make up."""
    from mummi_jax import envs
    from mummi_jax.episodes import run_episode
    from mummi_jax.replay import Replay

    B, T = cfg["batch"], cfg["length"]
    env = envs.make("walker_walk", seed=seed, image_size=64, missing="reference", missing_rate=0.05)
    replay = Replay(None, 10**9, seed, 2)
    rng = np.random.default_rng([seed, 7])
    episodes = max(2, -(-B * T * steps // 500))
    for i in range(episodes):
        policy = lambda obs, first: rng.uniform(-1, 1, cfg["action_dim"]).astype(np.float32)
        episode, _ = run_episode(env, policy, ("image", "depth", "touch"), seed * 100 + i)
        replay.add(episode, i)
    env.close()
    out = []
    for _ in range(steps):
        batch = {k: v[0] for k, v in replay.sample(1, B, T).items()}
        batch["depth"] = batch["depth"].astype(np.float32)
        batch["is_first"] = np.zeros_like(batch["reward"])  # the reference has no resets
        out.append(batch)
    return out


def procedural_weights(shapes: dict, seed: int) -> dict:
    """Weights neither side chose: `{our name: array}` from a seeded NumPy generator.

    Kernels glorot-uniform over their fan-in/out, biases uniform in [-0.1, 0.1] (not zero,
    so a bias wired to the wrong place shows). Reproducible on any machine (PCG64).
    """
    out = {}
    for i, name in enumerate(sorted(shapes)):
        shape = shapes[name]
        rng = np.random.default_rng([seed, i])
        if name.endswith("bias"):
            out[name] = rng.uniform(-0.1, 0.1, shape).astype(np.float32)
            continue
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        out[name] = rng.uniform(-limit, limit, shape).astype(np.float32)
    return out


def synthetic_batches(cfg: dict, seed: int, steps: int) -> list[dict]:
    """Raw batches in the replay's format, with missing segments zeroed and flagged."""
    B, T = cfg["batch"], cfg["length"]
    out = []
    for k in range(steps):
        rng = np.random.default_rng([seed, 1000 + k])
        batch = {
            "image": rng.integers(0, 256, (B, T, IMAGE, IMAGE, 3), dtype=np.uint8),
            "depth": rng.uniform(0.5, 12.0, (B, T, IMAGE, IMAGE, 1)).astype(np.float32),
            "touch": rng.exponential(40.0, (B, T, cfg["touch_dim"])).astype(np.float32),
            "action": rng.uniform(-1, 1, (B, T, cfg["action_dim"])).astype(np.float32),
            "reward": rng.uniform(0, 1, (B, T)).astype(np.float32),
            "discount": np.ones((B, T), np.float32),
            "is_first": np.zeros((B, T), np.float32),
        }
        for m in ("image", "depth", "touch"):
            present = (rng.uniform(size=(B, T)) > 0.3).astype(np.float32)
            batch[f"{m}_flag"] = present
            shape = (B, T) + (1,) * (batch[m].ndim - 2)
            batch[m] = (batch[m] * present.reshape(shape)).astype(batch[m].dtype)
        out.append(batch)
    return out


def noises(agent, seed: int, steps: int, batch: int, length: int) -> list[dict]:
    """The sampling noise of each update, from our own `draw_noise` (a seeded key)."""
    import jax

    return [
        jax.tree.map(np.asarray, agent.draw_noise(jax.random.key(seed * 1000 + k), batch, length))
        for k in range(steps)
    ]


# ----------------------------------------------------------------------------- our side
def param_names(params) -> dict:
    """`{our name: array}` of a params tree (Flax's `params` level dropped)."""
    import jax

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [getattr(p, "key", getattr(p, "name", None)) for p in path]
        out["/".join(str(k) for k in keys if k != "params")] = np.asarray(leaf)
    return out


def _set_params(params, named: dict):
    import jax

    def put(path, leaf):
        keys = [getattr(p, "key", getattr(p, "name", None)) for p in path]
        name = "/".join(str(k) for k in keys if k != "params")
        value = named[name]
        if value.shape != leaf.shape:
            raise ValueError(f"{name}: given shape {value.shape}, ours {leaf.shape}")
        return jax.numpy.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(put, params)


def run_ours(agent, weights: dict, batches: list[dict], noise: list[dict], dtype=np.float32):
    """K updates of our train step from `weights` (our names); outputs in reference names.

    `dtype` float64 (`float64.py`) casts the parameters and optimiser states up: with x64
    on, the whole computation then runs in that precision."""
    import jax

    from mummi_jax.agent import get_path, set_path

    to_ref = dict(mapping.pairs())
    state = agent.init(jax.random.key(0))
    params = _set_params(state.params, weights)
    if dtype != np.float32:
        params = jax.tree.map(lambda x: x.astype(dtype), params)
        state = state.replace(opt_state=agent.init_opt_state(params))
    # Target networks (none in the parity presets) start as copies of the given weights.
    targets = {}
    for path in agent.target_decays:
        targets = set_path(targets, path, get_path(params, path))
    state = state.replace(params=params, targets=targets)
    out = {f"init/{to_ref[k]}": v for k, v in param_names(state.params).items()}
    out.update(first_update_terms(agent, state, batches[0], noise[0]))
    step = jax.jit(agent.update_with_noise)
    key = jax.random.key(1)
    for k, batch in enumerate(batches):
        state, metrics = step(state, batch, noise[k], key)
        out.update({f"step{k + 1}/term/{n}": v for n, v in _ours_terms(agent, metrics).items()})
        if k == 0 or k == len(batches) - 1:
            for name, v in param_names(state.params).items():
                out[f"step{k + 1}/param/{to_ref[name]}"] = v
    return out


def first_update_terms(agent, state, batch, noise) -> dict:
    """Every intermediate value and gradient of one update, from `Agent.inspect_update`."""
    from mummi_jax import behavior
    from mummi_jax.world_model import features

    to_ref = dict(mapping.pairs())
    b = agent.config.behavior
    out = {}
    grads, metrics, aux = agent.inspect_update(state, batch, noise)
    wm, value = state.params["wm"], state.params["value"]
    for m, (mean, std) in aux["experts"].items():
        out[f"step1/term/experts/{m}/mean"] = np.asarray(mean)
        out[f"step1/term/experts/{m}/std"] = np.asarray(std)
    out["step1/term/fused"] = np.asarray(aux["fused"])
    for key in ("mean", "std", "stoch", "deter"):
        out[f"step1/term/post/{key}"] = np.asarray(aux["post"][key])
        out[f"step1/term/prior/{key}"] = np.asarray(aux["prior"][key])
    out["step1/term/kl"] = np.float64(metrics["wm/kl"])
    out["step1/term/g"] = np.asarray(agent.nets.apply(wm, "g", features(aux["post"])))
    feats = aux["imagine"]["feats"]
    out["step1/term/imagine/feat"] = np.asarray(feats)
    rewards = agent.nets.reward(wm, feats)
    values = agent.nets.value.apply(value, feats)[..., 0]
    out["step1/term/returns"] = np.asarray(
        behavior.lambda_return(rewards[:-1], values[:-1], b.gamma, values[-1], b.lam)
    )
    out.update({f"step1/term/{n}": v for n, v in _ours_terms(agent, metrics).items()})
    for k, v in param_names(grads).items():
        out[f"step1/grad/{to_ref[k]}"] = v
    return out


def _ours_terms(agent, metrics) -> dict:
    """Our logged metrics under the reference's names and conventions.

    The reference's value loss is `-mean(w log N(R; v, 1))`, ours `mean(w (v - R)^2 / 2)`
    (same gradients): the difference is the Gaussian constant `log(2 pi) / 2 * mean(w)`,
    added here. Its touch loss carries the touch weight (0.001); so does ours here.
    """
    m = {k: float(v) for k, v in metrics.items()}
    b = agent.config.behavior
    weights = agent.weights
    mean_w = float(np.mean(b.gamma ** np.arange(b.horizon - 1)))
    return {
        "model_loss": m["wm/loss"],
        "div": m["wm/kl_loss"],
        "reward_loss": m["wm/reward"],
        "image_loss": weights["image"] * m["wm/nce/image"],
        "depth_loss": weights["depth"] * m["wm/nce/depth"],
        "touch_loss": weights["touch"] * m["wm/nce/touch"],
        "actor_loss": m["actor/loss"],
        "value_loss": m["value/loss"] + 0.5 * math.log(2 * math.pi) * mean_w,
        "model_grad_norm": m["grad_norm/wm"],
        "actor_grad_norm": m["grad_norm/actor"],
        "value_grad_norm": m["grad_norm/value"],
    }


def compare_initialisers(agent, reference_init: dict, seed: int) -> dict:
    """Our initialisation against the reference's own, tensor by tensor: the ratio of
    standard deviations (1 for the same distribution, up to sampling), whether a tensor is
    all zeros on either side, and the worst ratio. Values differ (different generators);
    distributions should not."""
    import jax

    ours = param_names(agent.init(jax.random.key(seed)).params)
    ratios, zeros = {}, []
    for name, ref in reference_init.items():
        a, b = np.asarray(ours[name], np.float64), np.asarray(ref, np.float64)
        if not a.any() or not b.any():
            if a.any() != b.any():
                zeros.append(name)
            continue
        ratios[name] = float(a.std() / b.std())
    worst = max(ratios, key=lambda k: abs(math.log(ratios[k])))
    return {"std_ratio": ratios, "zero_mismatch": zeros, "worst": [worst, ratios[worst]]}


# ----------------------------------------------------------------------------- comparing
def relative_error(ours, ref) -> float:
    """`max |ours - ref| / max |ref|`: the largest deviation against the tensor's scale, so
    that one wrong element of a large tensor still shows."""
    a, b = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a - b))) if b.size else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def norm_error(ours, ref) -> float:
    """`||ours - ref|| / ||ref||` (Frobenius): the tensor's error as a whole."""
    a, b = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale, diff = float(np.linalg.norm(b)), float(np.linalg.norm(a - b))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def compare(ours: dict, ref: dict, tolerance: dict = TOLERANCE, f64: dict | None = None):
    """One row per compared quantity: term, ours, reference, the largest-entry and the
    norm-wise relative errors, and the criterion it is held to (`tolerance`: "first" for
    the first update's terms, gradients and parameters, "later" for the rest).

    `f64`: our updates in float64 (`float64.py`); its rows get `ours_f32_error` (ours in
    float32 against it, in the row's criterion: our rounding), `ref_f32_error` (the
    reference against it), and pass within `ROUNDING_FACTOR` times our rounding when that
    is above the tolerance."""
    rows = []
    names = sorted(set(ours) & set(ref))
    missing = [n for n in sorted(set(ref) ^ set(ours)) if not n.startswith("init/")]
    for name in missing:
        rows.append(
            dict(
                term=name,
                ours=None,
                reference=None,
                rel_error=float("inf"),
                rel_norm=float("inf"),
                criterion="max",
                tol=0.0,
                ok=False,
            )
        )
    for name in names:
        if name.startswith("init/"):
            continue
        step = name.split("/")[0]
        criterion, tol = tolerance["first" if step == "step1" else "later"]
        err, err_norm = relative_error(ours[name], ref[name]), norm_error(ours[name], ref[name])
        value = err if criterion == "max" else err_norm
        row = dict(
            term=name,
            ours=_show(ours[name]),
            reference=_show(ref[name]),
            rel_error=err,
            rel_norm=err_norm,
            criterion=criterion,
            tol=tol,
        )
        if f64 is not None and name in f64:
            error = relative_error if criterion == "max" else norm_error
            row["ours_f32_error"] = error(ours[name], f64[name])
            row["ref_f32_error"] = error(ref[name], f64[name])
            row["tol"] = tol = max(tol, ROUNDING_FACTOR * row["ours_f32_error"])
        row["ok"] = bool(value <= tol)
        rows.append(row)
    return rows


def module_grad_norms(out: dict) -> dict:
    """Per-module gradient norms (`grad_norm/<module>`) from step 1's gradient tensors."""
    from_ref = {r: o for o, r in mapping.pairs()}
    sums: dict = {}
    for name, g in out.items():
        if name.startswith("step1/grad/"):
            module = mapping.module_of(from_ref[name[len("step1/grad/") :]])
            sums[module] = sums.get(module, 0.0) + float(np.sum(np.square(np.float64(g))))
    return {f"step1/term/grad_norm/{m}": np.float64(math.sqrt(v)) for m, v in sums.items()}


def _show(x):
    x = np.asarray(x)
    if x.size == 1:
        return float(x.ravel()[0])
    return f"{x.shape}, max abs {float(np.max(np.abs(x))):.4g}"


def digest(out: dict, max_full: int = 1024, samples: int = 256) -> dict:
    """A small stand-in of every output for the CI fixture: arrays of up to `max_full`
    entries in full; a larger one as an evenly strided sample of `samples` entries plus
    `<name>#abs` (sum of |x|) and `<name>#sq` (sum of x^2), which see every entry. Digests of
    two outputs compare with `relative_error` entry by entry, like the outputs."""
    small = {}
    for name, x in out.items():
        x = np.asarray(x)
        if name.startswith("init/"):
            continue
        if x.size <= max_full:
            small[name] = x
            continue
        flat = x.ravel().astype(np.float64)
        small[name] = flat[:: max(1, flat.size // samples)][:samples].astype(x.dtype)
        small[f"{name}#abs"] = np.abs(flat).sum()
        small[f"{name}#sq"] = np.square(flat).sum()
    return small


def table_markdown(rows: list[dict], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| term | ours | reference | largest-entry rel. error | norm rel. error | "
        "ours f32 vs f64 | reference f32 vs f64 | held to | |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        held = f"{r['criterion']} <= {r['tol']:.1e}"
        f64 = [f"{r[k]:.1e}" if k in r else "" for k in ("ours_f32_error", "ref_f32_error")]
        lines.append(
            f"| `{r['term']}` | {_fmt(r['ours'])} | {_fmt(r['reference'])} | "
            f"{r['rel_error']:.2e} | {r['rel_norm']:.2e} | {f64[0]} | {f64[1]} | {held} | "
            f"{'ok' if r['ok'] else '**FAIL**'} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(x):
    if isinstance(x, float):
        return f"{x:.7g}"
    return "" if x is None else str(x)


def dumps(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1, default=str)
