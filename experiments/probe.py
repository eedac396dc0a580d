"""What has a trained agent's world model learnt? Perception and control measured apart.

    MUJOCO_GL=egl python -m experiments.probe --logdir=RUN [--episodes=16] [--rate=0]
        [--split=test|train] [--policy=agent|random]

Plays `--episodes` evaluation episodes with the run's newest checkpoint (`--split` background
videos: `test`, unseen in training, or `train`; missing rate `--rate`), recording the
simulator's true state beside every observation, then runs each whole episode through the
world model (the observe scan of eq. 3-5 on the fused experts) and measures, training the
probes on the first half of the episodes and scoring them on the second:

- `r2_qpos`, `r2_qvel`: held-out R^2 of a linear probe (ridge) from the posterior features
  [s, h] to the joint positions (free translations such as the walker's `rootx` left out: the
  picture cannot tell where along the floor the robot is) and to the joint velocities; the
  mean of the per-joint R^2 (each joint counts once, whatever its scale). `r2_qpos_<m>`,
  `r2_qvel_<m>`: the same from expert m's mean alone (PoE methods), which says what each
  sensor carries. `r2_qpos_columns`, `r2_qvel_columns`: the per-column R^2 from the
  features, by name (`probe_columns`; NaN for a column that never moves);
  `r2_qpos_columns_<m>` the same from expert m's mean.
- `reward_r2`, `reward_rmse`: the reward head on the posterior features against the real
  rewards (MuMMI eq. 10's reward term). `reward_r2_at_mean`: the same with s_t replaced by
  the posterior's mean, so the cost of the sample's noise shows apart from what [s, h] hold.
- `post_std`: the posterior's std, geometric mean over steps and dimensions; `post_snr`: per
  dimension the std over steps of the posterior mean over the mean posterior std, the median
  over dimensions. The ELBO's KL does not fix the latent's scale (scaling every mean and std
  of both posterior and prior leaves it unchanged), so `post_std` alone compares runs only
  together with `post_snr`.
- `poe_share_<m>` (PoE methods): expert m's share of the fusion weight (1/sigma in the
  released code's form), averaged over steps and dimensions; `r2_qpos_fused`,
  `r2_qvel_fused`: the probes from s^f itself, what the posterior is given.
- `action_abs_mean`, `action_std_within`: the played actions' mean |a| and their std within
  an episode (a collapsed actor: |a| near 1, std near 0).
- `imagined_vs_real`: from every posterior state the actor's H-step imagination (eq. 18-19's
  rollout) sums predicted rewards; the real sum of the next H rewards of the same episode
  beside it (correlation, means). An optimistic model shows as imagined >> real.

`--policy=random` plays uniform random actions instead of the agent: every run of a task and
seed is then probed on the same episodes, so two methods' numbers compare on equal data (with
the agent's own policy, each model is scored on the states its policy visits).
`imagined_vs_real` is then left out: the actor imagines its own actions, not the random
ones played, so the two sums would not measure the same thing.

Writes `<logdir>/probe.json` (`probe_train.json` for `--split=train`, a `_random` suffix for
`--policy=random`) and prints it.
Proprioception-only runs get the same numbers (the probe then checks the sensor path).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

# Joints whose position no sensor here can observe: the floor has no landmarks, and the
# tasks' proprioception leaves them out too (dm_control's walker/cheetah observations).
UNOBSERVABLE_JOINTS = ("rootx",)


def _joints(model):
    """Per joint: (name, is a hinge, qpos addresses, qvel addresses)."""
    for j in range(model.njnt):
        kind = int(model.jnt_type[j])
        width, dof = {0: (7, 6), 1: (4, 3), 2: (1, 1), 3: (1, 1)}[kind]  # free ball slide hinge
        start, vstart = int(model.jnt_qposadr[j]), int(model.jnt_dofadr[j])
        name = model.id2name(j, "joint")
        yield name, kind == 3, range(start, start + width), range(vstart, vstart + dof)


def joint_layout(physics):
    """(qpos indices, hinge flags, qvel indices) of the joints a probe should be able to read;
    a hinge's angle is probed as (cos, sin), which a linear map can follow through a turn."""
    qpos, qvel, hinge = [], [], []
    for name, is_hinge, pos, vel in _joints(physics.model):
        if name not in UNOBSERVABLE_JOINTS:
            qpos.extend(pos)
            hinge.extend([is_hinge] * len(pos))
        qvel.extend(vel)
    return np.asarray(qpos), np.asarray(hinge, bool), np.asarray(qvel)


def _angles_as_circle(q, hinge):
    return np.concatenate([q[..., ~hinge], np.cos(q[..., hinge]), np.sin(q[..., hinge])], -1)


def probe_columns(physics) -> tuple[list[str], list[str]]:
    """Names of the probed columns, `(qpos, qvel)`, in the order `play` stacks them: a
    slide's name, `cos(name)` / `sin(name)` for a hinge, `name[i]` within a free or ball
    joint; velocities by degree of freedom."""
    label = lambda name, span, i: name if len(span) == 1 else f"{name}[{i}]"  # noqa: E731
    pos, vel = {}, []
    for name, is_hinge, qpos, qvel in _joints(physics.model):
        if name not in UNOBSERVABLE_JOINTS:
            pos.update({label(name, qpos, i): is_hinge for i in range(len(qpos))})
        vel.extend(label(name, qvel, i) for i in range(len(qvel)))
    plain = [n for n, h in pos.items() if not h]
    hinges = [n for n, h in pos.items() if h]
    return plain + [f"cos({n})" for n in hinges] + [f"sin({n})" for n in hinges], vel


def _per_column_r2(x, y, half):
    """Held-out R^2 of each column of `y` (NaN for a column that never moves)."""
    from experiments.toy_latent import linear_r2

    keep = np.std(y[:half], axis=0) > 1e-8  # a joint that never moves has no R^2
    out = np.full(y.shape[1], np.nan)
    if keep.any():
        out[keep] = linear_r2(x[:half], y[:half, keep], x[half:], y[half:, keep])[1]
    return out


def _nanmean(per_column):
    """The mean over the columns that move; NaN if none does."""
    return float(np.nanmean(per_column)) if np.isfinite(per_column).any() else float("nan")


def _mean_r2(x, y, half):
    return _nanmean(_per_column_r2(x, y, half))


def poe_shares(
    stds: dict, form: str, present: dict | None = None, prior_expert: bool = False
) -> dict:
    """Each expert's share of the PoE weight (MuMMI eq. 11; `distributions.poe_weights`,
    the weights the fusion uses), `{m: (..., D)}`. A missing expert (`present[m]` `(...)`
    0) has share 0; where every expert is missing all shares are 0, else they sum to 1
    (less than 1 with `prior_expert`, the gaussian form's N(0, I) expert of weight 1,
    `model.poe_prior_expert`). A share near 1 means that expert alone decides s^f."""
    import jax.numpy as jnp

    from mummi_jax import distributions

    names = list(stds)
    if not names:
        return {}
    stacked = jnp.stack([jnp.asarray(stds[m]) for m in names])
    lead = stacked.shape[1:-1]
    flags = jnp.stack(
        [jnp.broadcast_to(1.0 if present is None else present[m], lead) for m in names]
    )
    weights = distributions.poe_weights(stacked, flags, form)
    total = jnp.sum(weights, axis=0) + (1.0 if prior_expert and form == "gaussian" else 0.0)
    safe = jnp.where(total > 0, total, 1.0)
    return {m: weights[i] / safe for i, m in enumerate(names)}


def play(
    runner, stacked, episodes: int, rate: float, seed: int, split: str = "test", policy="agent"
):
    """Episodes with the true joint state: (batch (N, L, ...), qpos (N, L, .), qvel).

    `policy`: "agent" (the run's own evaluation policy) or "random" (uniform actions drawn
    from the episode's seed alone, so runs of any method are probed on the same episodes)."""
    if policy not in ("agent", "random"):
        raise ValueError(f"--policy={policy!r}: 'agent' or 'random'")
    from mummi_jax import envs
    from mummi_jax.episodes import EnvList, run_episodes
    from mummi_jax.runner import EVAL_OFFSET, eval_episode_seed

    kwargs = dict(runner.env_kwargs)
    if envs.task_info(runner.config.env.task).suite == "dmc":
        kwargs["background_split"] = split
    kwargs["missing_rate"] = rate
    env = envs.make(**kwargs, seed=seed + EVAL_OFFSET)
    if not hasattr(env, "physics"):
        raise ValueError(f"task {runner.config.env.task!r} has no MuJoCo physics to probe")
    qpos_idx, hinge, qvel_idx = joint_layout(env.physics)
    columns = probe_columns(env.physics)
    eps, qpos, qvel = [], [], []
    try:
        for j in range(episodes):
            ep_seed = eval_episode_seed(seed, 1000 + j)
            if policy == "agent":
                act = runner._policy(stacked, [0], 1, {}, {0: ep_seed}, training=False)
            else:
                rng = np.random.default_rng(ep_seed)
                shape = (1, runner.agent.action_dim)
                act = lambda obs_list, first, rng=rng, shape=shape: rng.uniform(-1, 1, shape)
            states = []

            # Not named `policy`: that is the argument, read again on the next episode.
            def record(obs_list, first, act=act, states=states):
                states.append((env.physics.data.qpos.copy(), env.physics.data.qvel.copy()))
                return act(obs_list, first)

            ((episode, _),) = run_episodes(
                EnvList([env]), record, runner.agent.modalities, [ep_seed]
            )
            # The last observation is never acted on; its state is read now.
            states.append((env.physics.data.qpos.copy(), env.physics.data.qvel.copy()))
            eps.append(episode)
            qpos.append(_angles_as_circle(np.stack([s[0][qpos_idx] for s in states]), hinge))
            qvel.append(np.stack([s[1][qvel_idx] for s in states]))
    finally:
        env.close()
    batch = {k: np.stack([e[k] for e in eps]) for k in eps[0]}
    return batch, np.stack(qpos), np.stack(qvel), columns


def _r2(y, pred) -> float:
    """R^2 of `pred` against `y`, both `(N,)`; NaN where `y` never varies (a cup's random
    episodes without a catch: no reward to explain)."""
    spread = np.sum((y - y.mean()) ** 2)
    return float(1 - np.sum((y - pred) ** 2) / spread) if spread > 0 else float("nan")


def posterior_spread(mean: np.ndarray, std: np.ndarray) -> dict:
    """`post_std` and `post_snr` (module docstring) of posterior means and stds `(N, S)`."""
    return {
        "post_std": float(np.exp(np.mean(np.log(std)))),
        "post_snr": float(np.median(mean.std(0) / std.mean(0))),
    }


def probe(
    logdir: str, episodes: int = 16, rate: float = 0.0, split: str = "test", policy="agent"
) -> dict:
    import jax
    import jax.numpy as jnp

    from experiments.evaluate import load_config
    from mummi_jax import behavior
    from mummi_jax.runner import Runner
    from mummi_jax.world_model import features

    if episodes < 2:
        raise ValueError(f"--episodes={episodes}: the probe needs at least 2 (train / test)")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"--rate={rate}: a missing-data rate in [0, 1)")
    config = load_config(logdir)
    runner = Runner(config, logdir, progress=False)
    stacked, metas = runner.restore()
    if metas[0] is None:
        raise FileNotFoundError(f"no checkpoint in {runner.runs[0].ckpt_dir}; train first")
    state = runner.parallel.states(stacked)[0]
    agent = runner.agent
    batch, qpos, qvel, columns = play(runner, stacked, episodes, rate, config.seed, split, policy)
    n, length = batch["reward"].shape
    noise = agent.draw_noise(jax.random.PRNGKey(config.seed + 1), n, length)

    @jax.jit
    def analyse(params, batch, noise, key):
        wm = params["wm"]
        _, aux = agent._world_model_loss(wm, batch, noise, key, params.get("obs_norm"))
        feat = features(aux["post"])
        reward = agent.nets.reward(wm, feat)
        post = aux["post"]
        reward_at_mean = agent.nets.reward(wm, features({**post, "stoch": post["mean"]}))
        starts = behavior.flatten_starts(aux["post"])
        h = config.behavior.horizon
        keys = behavior.step_keys(jax.random.fold_in(key, 1), h)

        def policy(f, k):
            return agent._actor_sample(params["actor"], f, k)

        states, _ = behavior.imagine(agent._img_step(wm), policy, starts, keys)
        imagined = jnp.sum(agent.nets.reward(wm, features(states)), 0).reshape((n, length))
        experts = aux["experts"] or {}
        means = {m: v[0] for m, v in experts.items()}
        flags = {m: batch[f"{m}_flag"] for m in experts}
        stds = {m: v[1] for m, v in experts.items()}
        shares = poe_shares(stds, config.model.poe, flags, config.model.poe_prior_expert)
        spread = post["mean"], post["std"]
        return feat, reward, reward_at_mean, spread, imagined, means, shares, aux["fused"]

    feat, reward, reward_at_mean, spread, imagined, experts, shares, fused = jax.device_get(
        analyse(state.params, batch, noise, jax.random.PRNGKey(config.seed + 2))
    )
    half = (n // 2) * length
    flat = lambda x: np.asarray(x, np.float64).reshape((n * length, -1))
    res = {
        "logdir": logdir,
        "env_steps": metas[0]["counters"]["env_steps"],
        "episodes": n,
        "missing_rate": rate,
        "background_split": split,
        "policy": policy,
        "modalities": list(agent.modalities),
        "returns": [float(r) for r in batch["reward"][:, 1:].sum(1)],
    }
    # Per column, and their mean: which part of the state the features hold (cup: the cup's
    # slides against the ball's, which the mean hides).
    for kind, y, names in (("qpos", qpos, columns[0]), ("qvel", qvel, columns[1])):
        per = _per_column_r2(flat(feat), flat(y), half)
        res[f"r2_{kind}"] = _nanmean(per)
        res[f"r2_{kind}_columns"] = {n: float(v) for n, v in zip(names, per, strict=True)}
    for m, mu in experts.items():
        per = _per_column_r2(flat(mu), flat(qpos), half)
        res[f"r2_qpos_{m}"] = _nanmean(per)
        res[f"r2_qvel_{m}"] = _mean_r2(flat(mu), flat(qvel), half)
        res[f"r2_qpos_columns_{m}"] = {n: float(v) for n, v in zip(columns[0], per, strict=True)}
    if experts:
        # What the posterior is given: s^f, and how much of it each expert decides.
        res["r2_qpos_fused"] = _mean_r2(flat(fused), flat(qpos), half)
        res["r2_qvel_fused"] = _mean_r2(flat(fused), flat(qvel), half)
        for m, share in shares.items():
            res[f"poe_share_{m}"] = float(np.mean(share))
    # The actions the agent took (step t holds the one that led to it): a collapsed actor
    # shows as |a| near 1 with little change within an episode.
    acts = np.asarray(batch["action"], np.float64)[:, 1:]
    res["action_abs_mean"] = float(np.mean(np.abs(acts)))
    res["action_std_within"] = float(np.mean(np.std(acts, axis=1)))
    # Step 0 has no reward (the reset); the model is scored from step 1 on.
    r_true, r_pred = batch["reward"][:, 1:].ravel(), np.asarray(reward)[:, 1:].ravel()
    res["reward_rmse"] = float(np.sqrt(np.mean((r_true - r_pred) ** 2)))
    res["reward_r2"] = _r2(r_true, r_pred)
    res["reward_r2_at_mean"] = _r2(r_true, np.asarray(reward_at_mean)[:, 1:].ravel())
    res.update(posterior_spread(*map(flat, spread)))
    if policy == "agent":  # the actor imagines its own actions: only then a calibration
        h = config.behavior.horizon
        real = np.stack(
            [np.convolve(ep[1:], np.ones(h), "valid")[: length - h] for ep in batch["reward"]]
        )  # real[i, t] = r_{t+1} + ... + r_{t+H}
        imag = np.asarray(imagined)[:, : length - h]
        res["imagined_vs_real"] = {
            "horizon": h,
            "imagined_mean": float(imag.mean()),
            "real_mean": float(real.mean()),
            "correlation": float(np.corrcoef(imag.ravel(), real.ravel())[0, 1]),
        }
    from mummi_jax.checkpoint import atomic_write

    suffix = ("" if split == "test" else f"_{split}") + ("" if policy == "agent" else "_random")
    name = f"probe{suffix}.json"
    atomic_write(os.path.join(logdir, name), json.dumps(res, indent=1).encode())
    return res


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("logdir", None, "Run directory of experiments.train (newest checkpoint).")
    flags.DEFINE_integer("episodes", 16, "Episodes played (half fit the probes, half score).")
    flags.DEFINE_float("rate", 0.0, "Missing-data rate of the probe episodes.")
    flags.DEFINE_enum("split", "test", ["test", "train"], "Backgrounds: unseen or trained on.")
    flags.DEFINE_enum(
        "policy",
        "agent",
        ["agent", "random"],
        "Who plays the probe episodes: the run's agent, or uniform random actions (the same "
        "episodes for every run of a task and seed, so methods compare on equal data).",
    )


def main(argv):
    del argv
    try:
        res = probe(FLAGS.logdir, FLAGS.episodes, FLAGS.rate, FLAGS.split, FLAGS.policy)
    except (FileNotFoundError, ValueError) as e:  # no run there, a bad config or flag
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a checkpoint that cannot be read
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in res.items() if k != "returns"}))
    return 0


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
