"""Why do MuMMI's experts share a latent space, or not, on the toy robot? (issue 14)

    MUJOCO_GL=egl python -m experiments.toy_probe --out=DIR/name [--set=...]

Trains one method on `toy_position_camera` exactly as `experiments.toy_latent` does (same
config, data and seed, so the same experts), then runs the 20 analysis episodes as whole
sequences through the world model, so that g(z) of MuMMI's density ratio (eq. 16) is
available next to the expert means mu^m, and writes `DIR/name.json` (and `.npz`: g, means,
positions). The numbers it measures (README, "Toy experiment"):

- `distance`: toy_latent's metric; `offset_over_spread`: ||centroid of camera - centroid of
  position|| over the same spread; `centred_distance`: the metric's numerator after each
  expert's centroid is removed (same denominator); `cloud_cosine`: cosine between the two
  centred clouds; `spread_ratio`: RMS spread of the camera's centred means over position's.
- `dims_<m>`: principal components holding 99.9 % of expert m's (or g's) variance;
  `offset_in_span_g`: share of the squared centroid offset inside g's 99.9 % span.
- The invariance of eq. 15-16 (softmax over observations j of -||g_i - mu_j||^2): moving an
  expert's means by c changes the logits by a row constant minus 2 c.mu_j, constant over j
  when c is orthogonal to every mu_j - mu_k. `nce_camera` is the camera InfoNCE on 8 x 10
  batches of the analysis sequences (the training batch shape) with g fixed;
  `nce_camera_shift_perp` / `distance_shift_perp` the same after moving the camera means by
  the part of the centroid offset orthogonal to their own 99.9 % span (`offset_perp`, over
  the spread); `nce_camera_shift_full` after moving them by the whole offset.
- `angles`: principal angles (degrees) between the two experts' linear position directions
  (least-squares mu ~ A p + b, the columns of A); `gain_sv_<m>`: singular values of A.
- Softmax mass on those batches: `p_positive`, `p_same_sequence` (other steps of the
  positive's sequence), `p_other_sequences`; `median_logit_gap`: median over rows and
  negatives of logit_ii - logit_ij (a negative at 30 or more has no weight).
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
from absl import app, flags

TASK = "toy_position_camera"
BATCH, LENGTH = 8, 10  # the tiny preset's training batch, for the InfoNCE numbers


def _basis(x, frac=0.999):
    """Orthonormal `(F, k)` basis of the principal axes holding `frac` of x's variance."""
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), frac) + 1)
    return vt[:k].T


def _angles(a, b):
    qa, qb = np.linalg.qr(a)[0], np.linalg.qr(b)[0]
    cos = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), -1.0, 1.0)
    return np.degrees(np.arccos(cos)).tolist()


def _nce_batches(g, x, n_seq, length):
    """Mean InfoNCE (eq. 15) and softmax masses over BATCH x LENGTH tiles of the sequences."""
    import jax.numpy as jnp

    from mummi_jax import losses

    gs, xs = g.reshape(n_seq, length, -1), x.reshape(n_seq, length, -1)
    seq = np.repeat(np.arange(BATCH), LENGTH)
    same = (seq[:, None] == seq[None]) & ~np.eye(len(seq), dtype=bool)
    nce, pos, same_mass, other, gaps = [], [], [], [], []
    for b0 in range(0, n_seq - BATCH + 1, BATCH):
        for t0 in range(0, length - LENGTH + 1, LENGTH):
            gb = gs[b0 : b0 + BATCH, t0 : t0 + LENGTH].reshape(BATCH * LENGTH, -1)
            xb = xs[b0 : b0 + BATCH, t0 : t0 + LENGTH].reshape(BATCH * LENGTH, -1)
            nce.append(float(losses.mummi_nce(jnp.asarray(gb), jnp.asarray(xb), None)))
            logits = -np.sum((gb[:, None].astype(np.float64) - xb[None]) ** 2, -1)
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            pos.append(np.mean(np.diag(p)))
            same_mass.append(np.mean(np.sum(p * same, 1)))
            other.append(np.mean(np.sum(p * (seq[:, None] != seq[None]), 1)))
            off = ~np.eye(len(seq), dtype=bool)
            gaps.append(np.median((np.diag(logits)[:, None] - logits)[off]))
    return {
        "nce": float(np.mean(nce)),
        "p_positive": float(np.mean(pos)),
        "p_same_sequence": float(np.mean(same_mass)),
        "p_other_sequences": float(np.mean(other)),
        "median_logit_gap": float(np.mean(gaps)),
    }


def probe(
    out,
    steps=1500,
    method="mummi",
    seed=0,
    drop=0.2,
    overrides=(),
    image_size=64,
    episodes=40,
    eval_episodes=20,
):
    """Trains `method` as toy_latent does and returns (and writes) the numbers above;
    `eval_episodes` >= 8 (one 8 x 10 tile of sequences for the InfoNCE numbers)."""
    import jax

    from experiments import toy_latent as tl
    from mummi_jax import envs
    from mummi_jax.agent import Agent
    from mummi_jax.envs.tasks import task_modalities
    from mummi_jax.episodes import env_kwargs_from_config
    from mummi_jax.world_model import features

    config = tl.make_config(method, TASK, seed, drop, overrides, image_size)
    env = envs.make(**env_kwargs_from_config(config), seed=seed)
    modalities = task_modalities(TASK)
    train_eps = tl.collect(env, modalities, range(episodes), seed)
    # Analysis data stays clean when an override adds a missing-data process to training,
    # and every expert is in the fused state, and so in g(z): the trained parameters go
    # through the same model without train-time drops (`loss.modality_drop` acts inside the
    # world-model loss, which the analysis calls).
    full = tl.make_config(method, TASK, seed, 0.0, [*overrides, "env.missing=none"], image_size)
    env = envs.make(**env_kwargs_from_config(full), seed=seed)
    eval_eps = tl.collect(
        env, modalities, range(10_000, 10_000 + eval_episodes), seed, ("true_position",)
    )
    agent = Agent(config, env.observation_spec(), env.action_spec())
    state, last = tl.train_world_model(agent, train_eps, steps, seed)
    wm = state.params["wm"]

    batch = {k: np.stack([e[k] for e in eval_eps]) for k in eval_eps[0]}
    n_seq, length = batch["reward"].shape
    noise = agent.draw_noise(jax.random.PRNGKey(seed + 1), n_seq, length)
    analysis = Agent(full, env.observation_spec(), env.action_spec())
    wm_loss = jax.jit(analysis._world_model_loss)
    _, aux = wm_loss(wm, batch, noise, jax.random.PRNGKey(seed + 2))
    flat = lambda x: np.asarray(x, np.float64).reshape((n_seq * length, -1))
    g = flat(agent.nets.apply(wm, "g", features(aux["post"])))
    mu = {m: flat(aux["experts"][m][0]) for m in modalities}
    pos = flat(batch["true_position"])
    cam, posm = mu["camera"], mu["position"]

    res = {"method": method, "steps": steps, "seed": seed, "drop": drop}
    res.update({"image_size": image_size, "overrides": list(overrides), "train": last})
    res["distance"] = tl.expert_distance(mu)["camera"]
    both = np.concatenate([cam, posm])
    spread = np.sqrt(np.mean(np.sum((both - both.mean(0)) ** 2, -1)))
    offset = cam.mean(0) - posm.mean(0)
    centred = {m: x - x.mean(0) for m, x in mu.items()}
    res["offset_over_spread"] = float(np.linalg.norm(offset) / spread)
    res["centred_distance"] = float(
        np.mean(np.linalg.norm(centred["camera"] - centred["position"], axis=-1)) / spread
    )
    res["cloud_cosine"] = float(
        np.sum(centred["camera"] * centred["position"])
        / np.sqrt(np.sum(centred["camera"] ** 2) * np.sum(centred["position"] ** 2))
    )
    rms = {m: np.sqrt(np.mean(np.sum(c**2, -1))) for m, c in centred.items()}
    res["spread_ratio"] = float(rms["camera"] / rms["position"])
    spans = {m: _basis(x) for m, x in [*mu.items(), ("g", g)]}
    for m, u in spans.items():
        res[f"dims_{m}"] = u.shape[1]
    res["offset_in_span_g"] = float(np.sum((spans["g"].T @ offset) ** 2) / np.sum(offset**2))
    u = spans["camera"]
    perp = offset - u @ (u.T @ offset)
    res["offset_perp"] = float(np.linalg.norm(perp) / spread)
    soft = _nce_batches(g, cam, n_seq, length)
    res.update({f"{k}_camera" if k != "nce" else "nce_camera": v for k, v in soft.items()})
    soft = _nce_batches(g, posm, n_seq, length)
    res.update({f"{k}_position" if k != "nce" else "nce_position": v for k, v in soft.items()})
    res["nce_camera_shift_perp"] = _nce_batches(g, cam - perp, n_seq, length)["nce"]
    res["distance_shift_perp"] = tl.expert_distance({"camera": cam - perp, "position": posm})[
        "camera"
    ]
    res["nce_camera_shift_full"] = _nce_batches(g, cam - offset, n_seq, length)["nce"]
    design = np.concatenate([pos, np.ones((len(pos), 1))], axis=1)
    gains = {m: np.linalg.lstsq(design, x, rcond=None)[0][:2].T for m, x in mu.items()}
    res["angles"] = _angles(gains["camera"], gains["position"])
    for m, a in gains.items():
        res[f"gain_sv_{m}"] = np.linalg.svd(a, compute_uv=False).tolist()
    half = length * (n_seq // 2)  # the first half of the episodes fits, as in toy_latent
    for m, x in mu.items():
        res[f"r2_{m}"] = tl.linear_r2(x[:half], pos[:half], x[half:], pos[half:])[0]

    from mummi_jax.checkpoint import atomic_write

    atomic_write(out + ".json", json.dumps(res, indent=1).encode())
    buf = io.BytesIO()
    np.savez_compressed(buf, g=g, camera=cam, position=posm, true_position=pos)
    atomic_write(out + ".npz", buf.getvalue())
    return res


FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS.out:
        print("error: --out is required (a path prefix)", file=sys.stderr)
        return 2
    from experiments import toy_latent as tl

    try:  # a bad --set answers in one line before anything trains
        tl.make_config(FLAGS.method, TASK, FLAGS.seed, FLAGS.drop, FLAGS.set, FLAGS.image_size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = probe(
        FLAGS.out, FLAGS.steps, FLAGS.method, FLAGS.seed, FLAGS.drop, FLAGS.set, FLAGS.image_size
    )
    for k, v in res.items():
        if k != "train":
            print(f"{k}: {np.round(v, 3).tolist() if isinstance(v, list | float) else v}")
    return 0


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "Output path prefix (writes .json and .npz).")
    flags.DEFINE_integer("steps", 1500, "World-model updates.")
    flags.DEFINE_enum("method", "mummi", ["mummi", "recon_poe"], "Which model to probe.")
    flags.DEFINE_integer("seed", 0, "Random seed (as toy_latent's).")
    flags.DEFINE_float("drop", 0.2, "Train-time modality-drop probability.")
    flags.DEFINE_integer("image_size", 64, "Camera images, pixels per side.")
    flags.DEFINE_multi_string("set", [], "Config override section.key=value.")
    sys.exit(app.run(main))
