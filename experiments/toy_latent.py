"""MuMMI Fig. 1 (and Fig. 19/20): do the modality experts of a PoE world model share one
latent space? Trains on the toy 2D robot, then measures and plots each expert q(s^f | x^m).

    MUJOCO_GL=egl python -m experiments.toy_latent --out=DIR

For each toy variant (`toy_position_camera`: position sensor + ceiling camera, Fig. 1;
`toy_front_back`: front + back cameras, Fig. 19; `toy_xy`: x and y sensors, Fig. 20) and each
method it trains a tiny world model (`presets.make_config(preset, task, "tiny", "reference",
seed, ...)`) with the agent's own jitted train step on replay batches:

- `mummi`: the `mummi` preset, PoE + per-modality MuMMI InfoNCE (eq. 14-17);
- `recon_poe`: the `mssm_e` preset, PoE (Gaussian) + reconstruction ELBO (eq. 10). Fig. 1's
  caption says only "PoE + reconstruction-based loss", but Sec. III cites Fig. 1 as the
  evidence that "randomly dropping modalities during training" is not robust, which only
  holds if that model was trained with drops; so recon_poe keeps mssm_e's random modality
  drops (p = 0.2 per modality and step, never all at once). `--recon_drop=0` turns them off.

Both methods get the same random modality drops by default (`--mummi_drop`, mssm_e's
`loss.modality_drop` in the mummi preset: the PoE drops the expert, eq. 11, and its InfoNCE
masks it). The paper trains MuMMI on randomly dropped data (Sec. V), and the comparison
then differs in the objective only. The drops matter: without them MuMMI's experts do not
share a space on Fig. 1 (README, "Toy experiment"), because eq. 15-16 alone do not require
it. With f = exp(-||mu^m(x_j) - g(z_i)||^2) and the softmax over the observations j, the loss
depends on an expert only through 2 g_i.mu_j - ||mu_j||^2, so a translation of mu^m along a
direction in which mu^m does not vary changes the logits only by a row constant: it is free,
and two experts that use different directions of s^f are each optimal. What ties them
together in the measurements is the fused state, which must serve the RSSM from either expert
alone when the other is dropped. `--mummi_drop=0 --image_size=32` is the earlier setting.

Both methods train only the world model (`behavior.learner=none`, `behavior.planner=none`:
the latent space does not depend on the behaviour learner, and an update is ~3x cheaper), on
the same episodes of a uniform random policy with no missing data (`env.missing=none`; the
train-time drops are the only masking). Images are 64 x 64 (`--image_size`), the paper's
size, not the tiny preset's 32: at 32 the tiny conv encoder's camera expert decodes position
with R^2 0.86-0.88 only. Analysis data: `--eval_episodes` fresh episodes
(other seeds, no missing data), every observation encoded by each trained model's experts
(`Agent.expert_posteriors`); the first half of the episodes is the regression's train
split, the second half its held-out split.

Metrics, per expert m, with means mu^m_n and stds sigma^m_n `(N, F)` over N observations:

- `r2`: linear R^2 of the true position p_n = (x, y) from mu^m_n: least squares with an
  intercept (z-scored features, ridge 1e-3 relative, see `linear_r2`) fitted on the train
  split, then on the held-out split
  R^2 = 1 - sum_{n,d} (p_nd - phat_nd)^2 / sum_{n,d} (p_nd - mean_n p_nd)^2.
  `r2_x`, `r2_y`: the same per coordinate. (An expert that sees only x, as in toy_xy,
  reaches at most r2_x = 1, r2_y = 0, r2 ~ 0.5.)
- `distance`: mean_n ||mu^m_n - mu^k_n||_2, averaged over the other experts k, divided by
  the RMS spread of all experts' means around their joint centroid c,
  sqrt(mean_{n,k} ||mu^k_n - c||^2). 0: every expert maps each observation to the same
  point (one shared latent space). Two independent clouds of equal spread and one centre
  give 1.13 / 1.25 / 1.34 / 1.41 when they vary in 1 / 2 / 5 / 64 dimensions (a mean
  distance over an RMS spread: sqrt 2 only in many dimensions), an offset between the
  clouds' centres more. It weighs directions by their variance: two experts sharing an x
  code ten times stronger than y but putting y in orthogonal directions score 0.12, an
  aligned expert at half the gain 0.59 (RESULTS.md, "Scripts behind the thirty-first
  sitting's hand-measured figures"). Read it with `cross_r2`.
- `cross_r2`: the held-out R^2 of the position decoder fitted on expert m's means, applied
  to the other experts' means (their average over the others): equal to `r2` when the
  experts share one space, about 0 or below when they code position in different directions
  or gains.
- `var`: mean_{n,d} (sigma^m_nd)^2. `var_ratio`: var of m over the mean var of the other
  experts (the paper's "camera expert predicts a much higher variance": var_ratio >> 1).
- `poe_weight`: the expert's mean share of the PoE fusion weights, mean_{n,d} of
  w^m / sum_k w^k with w = 1/sigma (the `reference` PoE of the mummi preset) or 1/sigma^2
  (`gaussian`, mssm_e), so 0.5 is an even fusion of two experts and ~1 means s^f follows m.

Outputs (every file written atomically):

- `DIR/metrics.json`: `{method: {expert: {"r2", "r2_x", "r2_y", "distance", "cross_r2",
  "var", "var_ratio", "poe_weight"}}}`, methods `mummi` and `recon_poe`, experts the modality
  names of one variant: the Fig. 1 variant `toy_position_camera` (experts `position`,
  `camera`) when `--task=all` (the default), else the `--task` given.
- `DIR/<variant>/metrics.json`: the same shape for every variant trained.
- `DIR/summary.json`: `{"variants": {variant: {method: {expert: {...}}}}, "fused_r2":
  {variant: {method: r2 of the PoE-fused mean}}, "losses": {variant: {method: {metric:
  value}}}` (the last train call's world-model metrics), "untrained": {variant: {method:
  {expert: {...}}}} (the same metrics for the model at initialisation: what a random
  encoder already gives), plus "settings" and "wall_s" (seconds per variant/method, total).
- `DIR/<variant>/latents.npz`: the analysis data, `true_position` `(N, 2)` and
  `<method>/<m>/mean`, `<method>/<m>/std` `(N, F)`, for re-plotting without retraining.
- `DIR/latent.png` (the metrics.json variant) and `DIR/<variant>/latent.png`: one row per
  method; a column per expert with the expert's means projected on the first two
  principal components (PCA fitted on all experts' means of that method jointly, so the
  experts share axes), coloured by true position (red = x, blue = y), then the experts
  overlaid (coloured by expert), as Fig. 1's left (reconstruction) and right (MuMMI) plots.

Measured figures are in README.md ("Toy experiment (Fig. 1)").
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

import numpy as np
from absl import app, flags

VARIANTS = ("toy_position_camera", "toy_front_back", "toy_xy")
PRIMARY = "toy_position_camera"  # Fig. 1: the variant of DIR/metrics.json under --task=all
FIGURES = {"toy_position_camera": "Fig. 1", "toy_front_back": "Fig. 19", "toy_xy": "Fig. 20"}
METHODS = {"mummi": "mummi", "recon_poe": "mssm_e"}  # our name -> config preset
# World model only, no missing data (see the module docstring).
COMMON_OVERRIDES = ("behavior.learner=none", "behavior.planner=none", "env.missing=none")


# ----------------------------------------------------------------------------- metrics
def linear_fit(x_train, y_train, ridge=1e-3):
    """A linear map with intercept, x `(N, F)` -> y `(N, D)`, fitted by least squares on
    z-scored features with a small ridge penalty `ridge * N_train` (a fraction `ridge` of one
    unit-variance feature's sum of squares): numerically ordinary least squares along the
    directions the means really vary in, but it keeps collinear expert means (e.g. toy_xy's
    x expert, a 1-D curve in F dims) from blowing up the fit. Returns `predict(x) -> y`,
    which z-scores any `(n, F)` input with the training features' statistics."""
    x_train = np.asarray(x_train, np.float64)
    y_train = np.asarray(y_train, np.float64)
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)  # a constant feature stays zero after centring
    a = (x_train - mu) / sd
    y_mean = y_train.mean(axis=0)
    gram = a.T @ a + ridge * len(a) * np.eye(a.shape[1])
    coef = np.linalg.solve(gram, a.T @ (y_train - y_mean))
    return lambda x: ((np.asarray(x, np.float64) - mu) / sd) @ coef + y_mean


def held_out_r2(y_test, y_pred):
    """`(r2, per_dim)`: R^2 of predictions `(N, D)` pooled over the D outputs (a float) and
    one per output `(D,)`, both against the held-out mean."""
    y_test = np.asarray(y_test, np.float64)
    resid = np.square(y_test - y_pred).sum(axis=0)
    total = np.square(y_test - y_test.mean(axis=0)).sum(axis=0)
    return float(1.0 - resid.sum() / total.sum()), 1.0 - resid / total


def linear_r2(x_train, y_train, x_test, y_test, ridge=1e-3):
    """Held-out R^2 of a linear map with intercept, x `(N, F)` -> y `(N, D)` (`linear_fit`).

    Returns `(r2, per_dim)` (`held_out_r2`): ~1 for an exact linear relation, ~0 (a little
    below) for independent noise; it can be negative.
    """
    return held_out_r2(y_test, linear_fit(x_train, y_train, ridge)(x_test))


def cross_r2(means: dict, positions, n_train: int) -> dict:
    """`{m: held-out R^2 of the position decoder fitted on expert m's means, read from each
    other expert's means (averaged over them)}`. Experts that map every observation to one
    point of one space share their decoder (cross_r2 = r2); experts that code the position
    in different directions or gains of s^f do not (about 0 or below), whatever their
    `distance`. `means`: `{m: (N, F)}`; `positions`: `(N, 2)`; rows before `n_train` fit."""
    out = {}
    for m, mu in means.items():
        predict = linear_fit(mu[:n_train], positions[:n_train])
        scores = [
            held_out_r2(positions[n_train:], predict(other[n_train:]))[0]
            for k, other in means.items()
            if k != m
        ]
        out[m] = float(np.mean(scores))
    return out


def expert_distance(means: dict) -> dict:
    """Spread-relative distance between experts' means (see the module docstring).

    `means`: `{m: (N, F)}`, two or more experts on the same N observations. Returns
    `{m: mean_n ||mu^m_n - mu^k_n|| averaged over k != m, over the RMS spread of all means
    around their joint centroid}`; 0 for identical experts.
    """
    names = list(means)
    stack = np.stack([np.asarray(means[m], np.float64) for m in names])  # (M, N, F)
    centroid = stack.reshape(-1, stack.shape[-1]).mean(axis=0)
    spread = np.sqrt(np.mean(np.sum(np.square(stack - centroid), axis=-1)))
    out = {}
    for i, m in enumerate(names):
        dists = [
            np.mean(np.linalg.norm(stack[i] - stack[j], axis=-1))
            for j in range(len(names))
            if j != i
        ]
        out[m] = float(np.mean(dists) / max(spread, 1e-12))
    return out


def variance_ratio(stds: dict) -> dict:
    """`{m: (var, ratio)}`: var = mean sigma^2 of expert m over samples and dims, ratio =
    var over the mean var of the other experts. `stds`: `{m: (N, F)}`."""
    var = {m: float(np.mean(np.square(np.asarray(s, np.float64)))) for m, s in stds.items()}
    out = {}
    for m in var:
        others = [v for k, v in var.items() if k != m]
        out[m] = (var[m], var[m] / float(np.mean(others)))
    return out


def poe_weight_share(stds: dict, form: str, prior_expert: bool = False) -> dict:
    """`{m: mean_{n,d} w^m / sum_k w^k}`, w = 1/sigma (`reference` PoE, the released code's
    fusion) or 1/sigma^2 (`gaussian`); `stds`: `{m: (N, F)}` (MuMMI eq. 11 weights). With
    `prior_expert` (gaussian only, `model.poe_prior_expert`) the N(0, I) expert's weight 1
    is in the sum, so the shares add up to less than 1."""
    power = 1.0 if form == "reference" else 2.0
    w = {m: np.asarray(s, np.float64) ** -power for m, s in stds.items()}
    total = sum(w.values()) + (1.0 if prior_expert and form == "gaussian" else 0.0)
    return {m: float(np.mean(v / total)) for m, v in w.items()}


def pca_2d(points):
    """`(N, F)` -> a function projecting `(n, F)` on the first two principal axes `(n, 2)`."""
    points = np.asarray(points, np.float64)
    centre = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    axes = vt[:2].T
    if axes.shape[1] < 2:  # F = 1: a flat second axis
        axes = np.concatenate([axes, np.zeros_like(axes)], axis=1)
    return lambda x: (np.asarray(x, np.float64) - centre) @ axes


def analyse(
    experts: dict, positions, n_train: int, poe_form: str, prior_expert: bool = False
) -> dict:
    """Every metric of the module docstring for one trained model.

    `experts`: `{m: (mean, std)}`, each `(N, F)`; `positions`: `(N, 2)` true positions;
    the first `n_train` rows fit the regression, the rest test it.
    Returns `{m: {"r2", "r2_x", "r2_y", "distance", "cross_r2", "var", "var_ratio",
    "poe_weight"}}`.
    """
    means = {m: mu for m, (mu, _) in experts.items()}
    stds = {m: sd for m, (_, sd) in experts.items()}
    dist = expert_distance(means)
    cross = cross_r2(means, positions, n_train)
    var = variance_ratio(stds)
    share = poe_weight_share(stds, poe_form, prior_expert)
    out = {}
    for m, mu in means.items():
        r2, per_dim = linear_r2(
            mu[:n_train], positions[:n_train], mu[n_train:], positions[n_train:]
        )
        out[m] = {
            "r2": r2,
            "r2_x": float(per_dim[0]),
            "r2_y": float(per_dim[1]),
            "distance": dist[m],
            "cross_r2": cross[m],
            "var": var[m][0],
            "var_ratio": var[m][1],
            "poe_weight": share[m],
        }
    return out


# ----------------------------------------------------------------------------- data
def collect(env, modalities, seeds, seed, extra=()):
    """Episodes of a uniform random policy, one per episode seed, as replay dicts."""
    from mummi_jax.episodes import run_episode

    episodes = []
    dim = env.action_spec().shape[0]
    for seed_i in seeds:
        rng = np.random.default_rng([seed, int(seed_i), 1])
        policy = lambda obs, first, rng=rng: rng.uniform(-1, 1, dim).astype(np.float32)
        episode, _ = run_episode(env, policy, modalities, int(seed_i), extra=extra)
        episodes.append(episode)
    return episodes


def collect_positions(env, modalities, seeds, seed):
    """Like `collect`, also returning each observation's `true_position`: (obs, `(N, 2)`)."""
    episodes = collect(env, modalities, seeds, seed, extra=("true_position",))
    obs = {m: np.concatenate([e[m] for e in episodes]) for m in modalities}
    return obs, np.concatenate([e["true_position"] for e in episodes])


# ----------------------------------------------------------------------------- run
def make_config(method, task, seed, drop, overrides=(), image_size=64):
    """The resolved tiny config of `method` (`mummi` | `recon_poe`) on a toy `task`; `drop`:
    this method's train-time modality-drop probability (`loss.modality_drop`)."""
    from mummi_jax import presets

    extra = [f"env.image_size={image_size}", f"loss.modality_drop={drop}"]
    return presets.make_config(
        METHODS[method], task, "tiny", "reference", seed, [*COMMON_OVERRIDES, *extra, *overrides]
    )


def train_world_model(agent, episodes, steps, seed, bar=None):
    """`steps` world-model updates (rounded up to whole K-update calls) of `agent`'s jitted
    train step on replay batches of `episodes`. Returns (state, last call's metrics)."""
    import jax

    from mummi_jax.parallel import seed_key
    from mummi_jax.replay import Replay

    t = agent.config.train
    replay = Replay(None, 10**9, seed, agent.config.env.action_repeat)
    for i, episode in enumerate(episodes):
        replay.add(episode, i)
    state = agent.init(seed_key(seed))
    metrics = {}
    for _ in range(-(-steps // t.updates_per_call)):
        state, metrics = agent.train(state, replay.sample(t.updates_per_call, t.batch, t.length))
        if bar is not None:
            bar.update(t.updates_per_call)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    if bad:
        raise FloatingPointError(f"{bad[0]} is {metrics[bad[0]]} after training {agent.config}")
    return state, metrics


def fused_r2(experts, positions, n_train, form, prior_expert=False):
    """R^2 of the position from the PoE-fused mean of all experts (eq. 11)."""
    import jax.numpy as jnp

    from mummi_jax.distributions import product_of_experts

    means = jnp.stack([mu for mu, _ in experts.values()])
    stds = jnp.stack([sd for _, sd in experts.values()])
    present = jnp.ones(means.shape[:2])
    mean, _ = product_of_experts(means, stds, present, form=form, prior_expert=prior_expert)
    mean = np.asarray(mean)
    return linear_r2(mean[:n_train], positions[:n_train], mean[n_train:], positions[n_train:])[0]


def run(
    out,
    tasks=VARIANTS,
    steps=1500,
    seed=0,
    episodes=40,
    eval_episodes=20,
    recon_drop=0.2,
    overrides=(),
    progress=True,
    mummi_drop=0.2,
    image_size=64,
):
    """Trains both methods on every task in `tasks`, writes every output (module
    docstring). Returns the summary dict (also `out/summary.json`)."""
    from mummi_jax import envs
    from mummi_jax.agent import Agent
    from mummi_jax.checkpoint import atomic_write
    from mummi_jax.envs.tasks import task_modalities
    from mummi_jax.episodes import env_kwargs_from_config
    from mummi_jax.parallel import seed_key

    start = time.time()
    os.makedirs(out, exist_ok=True)
    bar = None
    drops = {"mummi": mummi_drop, "recon_poe": recon_drop}
    configs_of = lambda task: {
        m: make_config(m, task, seed, drops[m], overrides, image_size) for m in METHODS
    }
    if progress:
        from tqdm import tqdm

        per_call = configs_of(tasks[0])["mummi"].train
        calls = -(-steps // per_call.updates_per_call)
        total = len(tasks) * len(METHODS) * calls * per_call.updates_per_call
        bar = tqdm(total=total, unit="update", dynamic_ncols=True)
    summary = {
        "variants": {},
        "fused_r2": {},
        "losses": {},
        "untrained": {},
        "wall_s": {},
        "settings": {
            "steps": steps,
            "seed": seed,
            "episodes": episodes,
            "eval_episodes": eval_episodes,
            "recon_drop": recon_drop,
            "mummi_drop": mummi_drop,
            "image_size": image_size,
            "overrides": [*COMMON_OVERRIDES, *overrides],
            "presets": METHODS,
        },
    }
    for task in tasks:
        configs = configs_of(task)
        env = envs.make(**env_kwargs_from_config(configs["mummi"]), seed=seed)
        modalities = task_modalities(task)
        train_eps = collect(env, modalities, range(episodes), seed)
        # Analysis episodes: seeds disjoint from the training episodes'.
        eval_seeds = range(10_000, 10_000 + eval_episodes)
        obs, positions = collect_positions(env, modalities, eval_seeds, seed)
        n_train = len(positions) * (eval_episodes // 2) // eval_episodes
        results, fused, loss, baseline, experts_by_method = {}, {}, {}, {}, {}
        for method, config in configs.items():
            t0 = time.time()
            if bar is not None:
                bar.set_description(f"{task} {method}")
            agent = Agent(config, env.observation_spec(), env.action_spec())
            # The same model before training: how much a random encoder already decodes.
            untrained = agent.expert_posteriors(agent.init(seed_key(seed)), obs)
            poe = (config.model.poe, config.model.poe_prior_expert)
            baseline[method] = analyse(untrained, positions, n_train, *poe)
            state, loss[method] = train_world_model(agent, train_eps, steps, seed, bar)
            experts = agent.expert_posteriors(state, obs)
            experts_by_method[method] = experts
            results[method] = analyse(experts, positions, n_train, *poe)
            fused[method] = fused_r2(experts, positions, n_train, *poe)
            summary["wall_s"][f"{task}/{method}"] = round(time.time() - t0, 1)
        env.close()
        summary["variants"][task] = results
        summary["fused_r2"][task] = fused
        summary["losses"][task] = loss
        summary["untrained"][task] = baseline
        folder = os.path.join(out, task)
        _write_json(os.path.join(folder, "metrics.json"), results)
        png = plot_latents(experts_by_method, positions, task)
        arrays = {"true_position": positions}
        for method, experts in experts_by_method.items():
            for m, (mu, sd) in experts.items():
                arrays[f"{method}/{m}/mean"], arrays[f"{method}/{m}/std"] = mu, sd
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write(os.path.join(folder, "latents.npz"), buf.getvalue())
        atomic_write(os.path.join(folder, "latent.png"), png)
        if task == (PRIMARY if PRIMARY in tasks else tasks[0]):
            _write_json(os.path.join(out, "metrics.json"), results)
            atomic_write(os.path.join(out, "latent.png"), png)
    if bar is not None:
        bar.close()
    summary["wall_s"]["total"] = round(time.time() - start, 1)
    _write_json(os.path.join(out, "summary.json"), summary)
    return summary


def _write_json(path, data):
    from mummi_jax.checkpoint import atomic_write

    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


# ----------------------------------------------------------------------------- figure
def position_colours(positions):
    """`(N, 2)` positions in [-1, 1]^2 -> RGB `(N, 3)`: red grows with x, blue with y."""
    p = (np.clip(np.asarray(positions), -1, 1) + 1) / 2
    return np.stack([p[:, 0], 0.25 + 0.0 * p[:, 0], p[:, 1]], axis=1)


def plot_latents(experts_by_method: dict, positions, task: str) -> bytes:
    """Fig.-1-style PNG bytes: per method a row of PCA projections, one per expert coloured
    by true position, then all experts overlaid; a colour key in the last column.

    `experts_by_method`: `{method: {m: (mean, std)}}`, means `(N, F)`; `positions`: `(N, 2)`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = position_colours(positions)
    names = list(next(iter(experts_by_method.values())))
    markers = ["o", "^", "s", "x"]
    rows, cols = len(experts_by_method), len(names) + 2
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for r, (method, experts) in enumerate(experts_by_method.items()):
        means = {m: experts[m][0] for m in names}
        project = pca_2d(np.concatenate(list(means.values())))
        proj = {m: project(mu) for m, mu in means.items()}
        both = np.concatenate(list(proj.values()))
        pad = 0.05 * (both.max(axis=0) - both.min(axis=0) + 1e-9)
        lo, hi = both.min(axis=0) - pad, both.max(axis=0) + pad
        for c, m in enumerate(names):
            ax = axes[r, c]
            ax.scatter(*proj[m].T, c=colours, s=4, marker=markers[c], linewidths=0)
            ax.set_title(f"{method}: {m} expert", fontsize=9)
        ax = axes[r, len(names)]
        # One solid colour per expert here: overlap (a shared latent space) is what to see.
        for c, m in enumerate(names):
            ax.scatter(*proj[m].T, c=f"C{c}", s=4, marker=markers[c], alpha=0.4, linewidths=0)
            ax.scatter([], [], c=f"C{c}", s=12, marker=markers[c], label=m)
        ax.set_title(f"{method}: overlaid (colour = expert)", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        for c in range(len(names) + 1):
            axes[r, c].set_xlim(lo[0], hi[0])
            axes[r, c].set_ylim(lo[1], hi[1])
            axes[r, c].set_xlabel("PC 1", fontsize=8)
            axes[r, c].set_ylabel("PC 2", fontsize=8)
            axes[r, c].tick_params(labelsize=7)
        key = axes[r, -1]
        grid = np.linspace(-1, 1, 64)
        gx, gy = np.meshgrid(grid, grid[::-1])
        key.imshow(
            position_colours(np.stack([gx.ravel(), gy.ravel()], 1)).reshape(64, 64, 3),
            extent=(-1, 1, -1, 1),
        )
        key.set_title("colour = true position", fontsize=9)
        key.set_xlabel("x", fontsize=8)
        key.set_ylabel("y", fontsize=8)
        key.tick_params(labelsize=7)
    figure = FIGURES.get(task, "Fig. 1")
    fig.suptitle(f"{task}: expert means q(s^f | x^m), PCA per method (MuMMI {figure})", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


# ----------------------------------------------------------------------------- main
FLAGS = flags.FLAGS


def define_flags():
    """Flags are defined only when run as a script, so that importing this module (tests)
    cannot clash with other entry points' flags of the same name in one process."""
    flags.DEFINE_string("out", None, "Output directory (required).")
    flags.DEFINE_enum("task", "all", ["all", *VARIANTS], "Toy variant, or all three.")
    flags.DEFINE_integer("steps", 1500, "World-model updates per method and variant.")
    flags.DEFINE_integer("seed", 0, "Random seed (model, data and analysis episodes).")
    flags.DEFINE_integer("episodes", 40, "Training episodes (uniform random policy).")
    flags.DEFINE_integer("eval_episodes", 20, "Fresh analysis episodes (half fit, half test).")
    flags.DEFINE_float("recon_drop", 0.2, "recon_poe's modality-drop probability (mssm_e).")
    flags.DEFINE_float("mummi_drop", 0.2, "MuMMI's modality-drop probability (as recon_poe's).")
    flags.DEFINE_integer("image_size", 64, "Camera images, pixels per side (tiny preset: 32).")
    flags.DEFINE_multi_string("set", [], "Config override section.key=value (both methods).")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
    del argv
    if not FLAGS.out:
        print("error: --out is required (the output directory)", file=sys.stderr)
        return 2
    tasks = VARIANTS if FLAGS.task == "all" else (FLAGS.task,)
    if FLAGS.eval_episodes < 2 or FLAGS.episodes < 1 or FLAGS.steps < 1:
        print("error: need --eval_episodes >= 2, --episodes >= 1, --steps >= 1", file=sys.stderr)
        return 2
    try:
        for task in tasks:  # a bad --set answers before anything trains
            for method, drop in (("mummi", FLAGS.mummi_drop), ("recon_poe", FLAGS.recon_drop)):
                make_config(method, task, FLAGS.seed, drop, FLAGS.set, FLAGS.image_size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = run(
        FLAGS.out,
        tasks,
        FLAGS.steps,
        FLAGS.seed,
        FLAGS.episodes,
        FLAGS.eval_episodes,
        FLAGS.recon_drop,
        FLAGS.set,
        FLAGS.progress,
        FLAGS.mummi_drop,
        FLAGS.image_size,
    )
    for task, results in summary["variants"].items():
        for method, experts in results.items():
            row = ", ".join(
                f"{m}: r2 {v['r2']:.2f} dist {v['distance']:.2f} cross_r2 {v['cross_r2']:.2f} "
                f"var_ratio {v['var_ratio']:.2f}"
                for m, v in experts.items()
            )
            print(f"{task} {method}: {row}; fused r2 {summary['fused_r2'][task][method]:.2f}")
    print(
        f"wrote {FLAGS.out}/metrics.json, latent.png, summary.json "
        f"({summary['wall_s']['total']:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
