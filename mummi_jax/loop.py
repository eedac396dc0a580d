"""A compact host loop: episode replay, atomic checkpoints, metrics.jsonl, train/evaluate.

The environment stays on the host (dm_env); everything after the replay sample runs inside
the agent's one jitted train step. Checkpoints are taken at episode boundaries, and every
per-episode random source is derived from (seed, episode index), so a run resumed from a
checkpoint continues exactly as an uninterrupted one would (on CPU).
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import pickle
import queue
import tempfile
import threading
import time

import jax
import numpy as np

from mummi_jax import envs
from mummi_jax.parallel import seed_key


# ----------------------------------------------------------------------------- files
def atomic_write(path: str, data: bytes) -> None:
    """Writes via a temp file in the same folder, fsync, then rename: never half-written."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class MetricsLog:
    """`metrics.jsonl`: one JSON object per line with "step" (env steps) and "wall"."""

    def __init__(self, logdir: str):
        self.path = os.path.join(logdir, "metrics.jsonl")
        self.start = time.time()

    def write(self, step: int, values: dict) -> None:
        record = {"step": int(step), "wall": round(time.time() - self.start, 3)}
        for k, v in values.items():
            v = float(v)
            record[k] = v if math.isfinite(v) else str(v)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- replay
class Replay:
    """Whole episodes in NumPy, uniform sequence sampling, a capacity cap in env steps.

    Each stored episode is a dict of `(L, ...)` arrays in the batch format of
    docs/ARCHITECTURE.md (images uint8, depth float16). Episodes are also written to
    `<logdir>/episodes/` so a run can resume.
    """

    def __init__(self, directory: str | None, capacity: int, seed: int, action_repeat: int):
        self.directory = directory
        self.capacity = capacity
        self.repeat = action_repeat
        self.episodes: list[dict] = []
        self.indices: list[int] = []
        self.rng = np.random.default_rng([seed, 0x5EED])
        if directory:
            os.makedirs(directory, exist_ok=True)
            for path in sorted(glob.glob(os.path.join(directory, "*.npz"))):
                with np.load(path) as data:
                    index = int(os.path.basename(path).split(".")[0])
                    self._keep({k: data[k] for k in data.files}, index)

    def _keep(self, episode, index):
        self.episodes.append(episode)
        self.indices.append(index)
        while self.steps > self.capacity and len(self.episodes) > 1:
            self.episodes.pop(0)
            self.indices.pop(0)

    def truncate(self, num_episodes: int) -> None:
        """Forgets episodes collected after a checkpoint (index >= num_episodes)."""
        keep = [i for i, idx in enumerate(self.indices) if idx < num_episodes]
        self.episodes = [self.episodes[i] for i in keep]
        self.indices = [self.indices[i] for i in keep]

    @property
    def steps(self) -> int:
        return sum((len(e["reward"]) - 1) * self.repeat for e in self.episodes)

    def add(self, episode: dict, index: int) -> None:
        episode = {k: _storage(k, v) for k, v in episode.items()}
        if self.directory:
            import io

            buf = io.BytesIO()
            np.savez_compressed(buf, **episode)
            atomic_write(os.path.join(self.directory, f"{index:06d}.npz"), buf.getvalue())
        self._keep(episode, index)

    def sample(self, K: int, B: int, T: int) -> dict:
        """`(K, B, T, ...)` batches: uniform episode, then a uniform start."""
        out = {k: [] for k in self.episodes[0]}
        for _ in range(K * B):
            ep = self.episodes[self.rng.integers(len(self.episodes))]
            length = len(ep["reward"])
            start = int(self.rng.integers(0, max(length - T, 0) + 1))
            for k, v in ep.items():
                seq = v[start : start + T]
                if len(seq) < T:  # a short episode: repeat its last step (padding)
                    seq = np.concatenate([seq, np.repeat(seq[-1:], T - len(seq), 0)])
                out[k].append(seq)
        return {k: np.stack(v).reshape((K, B, T) + v[0].shape[1:]) for k, v in out.items()}


def _storage(key, value):
    value = np.asarray(value)
    if key == "depth":
        return value.astype(np.float16)  # quantised, as the reference's float16 replay
    if value.dtype == np.float64:
        return value.astype(np.float32)
    return value


# ----------------------------------------------------------------------------- episodes
def run_episode(env, policy, modalities, episode_seed: int | None = None, extra=()):
    """Plays one episode. `policy(obs, first) -> action (A,)`. Returns (episode, return).

    `extra`: observation keys recorded as they are, with no flag (e.g. the toy robot's
    `true_position`, for analysis only)."""
    if episode_seed is not None and hasattr(env, "reseed"):
        env.reseed(episode_seed)
    ts = env.reset()
    action_dim = env.action_spec().shape[0]
    steps = []
    prev_action = np.zeros(action_dim, np.float32)
    total = 0.0
    first = True
    while True:
        obs = ts.observation
        steps.append(
            {
                **{m: obs[m] for m in modalities},
                **{f"{m}_flag": np.float32(obs[f"{m}_flag"]) for m in modalities},
                **{k: obs[k] for k in extra},
                "action": prev_action,
                "reward": np.float32(ts.reward or 0.0),
                "discount": np.float32(1.0 if ts.discount is None else ts.discount),
                "is_first": np.float32(first),
            }
        )
        if ts.last():
            break
        action = np.asarray(policy(obs, first), np.float32)
        first = False
        ts = env.step(action)
        total += float(ts.reward or 0.0)
        prev_action = action
    episode = {k: np.stack([s[k] for s in steps]) for k in steps[0]}
    return episode, total


def run_episodes(pool, policy, modalities, episode_seeds):
    """Plays one episode in each env of `pool` (an `EnvPool`) in lockstep, the envs stepping
    in parallel processes. `policy(obs_list, first) -> (n, A)` acts for all of them in one
    call. Envs that finish early are stepped on but their steps are ignored. Returns a list of
    (episode, return), one per env."""
    n = len(pool)
    for i, seed in enumerate(episode_seeds):
        pool.call(i, "reseed", int(seed))
    timesteps = pool.reset_all()
    action_dim = pool.action_specs[0].shape[0]
    steps = [[] for _ in range(n)]
    prev = np.zeros((n, action_dim), np.float32)
    totals = [0.0] * n
    done = [False] * n
    first = True
    while True:
        for i, ts in enumerate(timesteps):
            if done[i]:
                continue
            obs = ts.observation
            steps[i].append(
                {
                    **{m: obs[m] for m in modalities},
                    **{f"{m}_flag": np.float32(obs[f"{m}_flag"]) for m in modalities},
                    "action": prev[i].copy(),  # prev is overwritten in place below
                    "reward": np.float32(ts.reward or 0.0),
                    "discount": np.float32(1.0 if ts.discount is None else ts.discount),
                    "is_first": np.float32(first),
                }
            )
            done[i] = ts.last()
        if all(done):
            break
        actions = np.asarray(policy([ts.observation for ts in timesteps], first), np.float32)
        first = False
        timesteps = pool.step(list(actions))
        for i, ts in enumerate(timesteps):
            if not done[i]:
                totals[i] += float(ts.reward or 0.0)
                prev[i] = actions[i]
    return [
        ({k: np.stack([s[k] for s in ep]) for k in ep[0]}, total)
        for ep, total in zip(steps, totals, strict=True)
    ]


def prefetch(sample, calls: int, depth: int, name: str = "prefetch"):
    """Yields `sample()` `calls` times, computed up to `depth` ahead on one thread (in order,
    so random draws inside `sample` match a serial loop); `depth <= 0` samples inline.

    An exception in the thread is raised in the consumer; a consumer that stops early (a
    NaN stop, `close()`) releases and joins the thread."""
    if depth <= 0:
        for _ in range(calls):
            yield sample()
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:  # False once the consumer has stopped: never block on a full queue
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for _ in range(calls):
                if not put(sample()):
                    return
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            put(e)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        for _ in range(calls):
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class Runner:
    """Trains `agent` on `env` per `config.train`, writing into `logdir`."""

    def __init__(self, config, agent, logdir: str, env_kwargs: dict, progress: bool = True):
        self.config = config
        self.agent = agent
        self.logdir = logdir
        self.env_kwargs = env_kwargs
        self.progress = progress
        self.log = MetricsLog(logdir)
        t = config.train
        self.replay = Replay(
            os.path.join(logdir, "episodes"),
            t.replay_capacity,
            config.seed,
            config.env.action_repeat,
        )
        self.ckpt_dir = os.path.join(logdir, "checkpoints")

    # -------------------------------------------------------------- checkpoints
    def save(self, state, counters) -> None:
        blob = pickle.dumps(
            {
                "state": jax.tree.map(np.asarray, jax.device_get(_untyped(state))),
                "counters": counters,
                "replay_rng": self.replay.rng.bit_generator.state,
            }
        )
        path = os.path.join(self.ckpt_dir, f"ckpt-{counters['env_steps']:09d}.pkl")
        atomic_write(path, blob)
        kept = sorted(glob.glob(os.path.join(self.ckpt_dir, "ckpt-*.pkl")))
        for old in kept[: -self.config.train.checkpoints_kept]:
            os.remove(old)

    def checkpoint_steps(self) -> list[int]:
        """Env steps of the checkpoints on disk, oldest first."""
        paths = sorted(glob.glob(os.path.join(self.ckpt_dir, "ckpt-*.pkl")))
        return [int(os.path.basename(p)[5:14]) for p in paths]

    def restore(self, template, max_step: int | None = None):
        """Newest checkpoint (at most `max_step` env steps, if given) -> (state, counters);
        (None, None) when there is none."""
        for path in sorted(glob.glob(os.path.join(self.ckpt_dir, "ckpt-*.pkl")), reverse=True):
            if max_step is not None and int(os.path.basename(path)[5:14]) > max_step:
                continue
            try:
                with open(path, "rb") as f:
                    data = pickle.load(f)
            except Exception as e:  # noqa: BLE001 - any unreadable file is a corrupt checkpoint
                raise RuntimeError(
                    f"corrupt checkpoint {path} ({type(e).__name__}); delete it to resume from "
                    "the previous one"
                ) from None
            state = _retype(template, data["state"])
            self.replay.rng.bit_generator.state = data["replay_rng"]
            return state, data["counters"]
        return None, None

    # -------------------------------------------------------------- loop
    def train(self):
        c, t = self.config, self.config.train
        if t.envs > 1:
            from mummi_jax.envs.workers import EnvPool

            env = None
            pool = EnvPool([dict(self.env_kwargs, seed=c.seed + i) for i in range(t.envs)])
        else:
            env, pool = envs.make(**self.env_kwargs, seed=c.seed), None
        template = self.agent.init(seed_key(c.seed))
        state, counters = self.restore(template)
        if state is None:
            state = template
            counters = {"env_steps": 0, "episodes": 0, "updates": 0, "last_train": 0}
        self._trim_metrics(counters["env_steps"])
        # Replay holds exactly the episodes of the checkpoint (later ones were not counted).
        self.replay.truncate(counters["episodes"])
        bar = _progress(t.steps, counters["env_steps"], self.progress)
        last_return = float("nan")
        while counters["env_steps"] < t.steps:
            ep_index = counters["episodes"]
            if pool is None:
                results = [self._play_one(env, state, ep_index)]
            else:
                results = self._play_group(pool, state, ep_index)
            steps = 0
            for i, (episode, ret) in enumerate(results):
                self.replay.add(episode, ep_index + i)
                length = (len(episode["reward"]) - 1) * c.env.action_repeat
                steps += length
                counters["env_steps"] += length
                counters["episodes"] += 1
                last_return = ret
                self.log.write(counters["env_steps"], {"train/return": ret, "train/length": length})
            # Train every `train_every` env steps once the prefill is done.
            if counters["episodes"] >= t.prefill_episodes:
                while counters["env_steps"] - counters["last_train"] >= t.train_every:
                    state = self._train_phase(state, counters)
                    counters["last_train"] += t.train_every
            if (
                t.eval_every
                and counters["env_steps"] // t.eval_every
                > (counters["env_steps"] - steps) // t.eval_every
            ):
                score = self.evaluate(state, episodes=t.eval_episodes, split="test")
                self.log.write(counters["env_steps"], {"eval/return": score})
                now = counters["env_steps"]
                if t.video_every and now // t.video_every > (now - steps) // t.video_every:
                    self.write_video(f"eval-{now:09d}")
            self.save(state, counters)
            if bar is not None:
                bar.update(steps)
                # tqdm's own rate is env steps/s; updates/s is the last train phase's.
                bar.set_postfix(
                    ret=f"{last_return:.1f}",
                    updates=counters["updates"],
                    upd_s=f"{getattr(self, 'last_updates_per_second', 0.0):.1f}",
                )
        if bar is not None:
            bar.close()
        (env or pool).close()
        return state, counters

    def _episode_seed(self, ep_index: int) -> int:
        return int(np.random.default_rng([self.config.seed, ep_index]).integers(2**31))

    def _random_actions(self, ep_index: int):
        return np.random.default_rng([self.config.seed, ep_index, 1])

    def _play_one(self, env, state, ep_index):
        ep_seed = self._episode_seed(ep_index)
        if ep_index < self.config.train.prefill_episodes:
            rng = self._random_actions(ep_index)
            policy = lambda obs, first: rng.uniform(-1, 1, self.agent.action_dim).astype(np.float32)
        else:
            policy = self._agent_policy(state, ep_seed, training=True)
        return run_episode(env, policy, self.agent.modalities, ep_seed)

    def _play_group(self, pool, state, ep_index):
        """`train.envs` episodes at once, one batched acting call per step. A group is all
        prefill (random) or all agent, so the prefill rounds up to a multiple of the envs."""
        n = len(pool)
        seeds = [self._episode_seed(ep_index + i) for i in range(n)]
        if ep_index < self.config.train.prefill_episodes:
            rngs = [self._random_actions(ep_index + i) for i in range(n)]
            dim = self.agent.action_dim
            policy = lambda obs, first: np.stack([r.uniform(-1, 1, dim) for r in rngs])
        else:
            policy = self._batched_policy(state, seeds[0], n, training=True)
        return run_episodes(pool, policy, self.agent.modalities, seeds)

    def _batched_policy(self, state, seed, n, training):
        carry = [self.agent.initial_carry(n)]
        key = jax.random.fold_in(seed_key(seed), 1)
        step = [0]
        names = self.agent.modalities

        def policy(obs_list, first):
            batch = {
                k: np.stack([np.asarray(o[k]) for o in obs_list])
                for m in names
                for k in (m, f"{m}_flag")
            }
            batch["is_first"] = np.full(n, float(first), np.float32)
            k = jax.random.fold_in(key, step[0])
            step[0] += 1
            action, carry[0] = self.agent.act(state, carry[0], batch, k, training=training)
            return np.asarray(action)

        return policy

    def write_video(self, name: str) -> str | None:
        """`<logdir>/videos/<name>.gif` of the last evaluation's first episode (None when
        the task has no image modality)."""
        from mummi_jax import video

        try:
            frames = video.episode_frames(self.last_episode, self.agent.modalities)
        except ValueError:
            return None
        path = os.path.join(self.logdir, "videos", f"{name}.gif")
        video.write_gif(path, frames)
        return path

    def _trim_metrics(self, env_steps: int) -> None:
        """Drops log lines written after the checkpoint we resume from (a killed run's tail),
        so metrics.jsonl reads as one uninterrupted run. Rewritten atomically."""
        path = self.log.path
        if not os.path.exists(path):
            return
        with open(path) as f:
            lines = f.readlines()
        keep = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= env_steps:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError):
                continue  # a line cut short by a kill
        if len(keep) != len(lines):
            atomic_write(path, "".join(keep).encode())

    def _train_phase(self, state, counters):
        t = self.config.train
        calls = max(1, t.train_steps // t.updates_per_call)
        metrics_sum = None
        t0 = time.time()
        with contextlib.closing(self._batches(calls)) as batches:  # stops the prefetch on errors
            for batch in batches:
                state, metrics = self.agent.train(state, batch)
                metrics = jax.device_get(metrics)
                for k, v in metrics.items():
                    if not np.isfinite(v):
                        raise FloatingPointError(
                            f"{k} is {v} at env step {counters['env_steps']}; the run stopped and "
                            "its last checkpoint is intact. Lower optim.model_lr or check inputs."
                        )
                metrics_sum = (
                    metrics
                    if metrics_sum is None
                    else {k: metrics_sum[k] + metrics[k] for k in metrics}
                )
                counters["updates"] += t.updates_per_call
        values = {k: v / calls for k, v in metrics_sum.items()}
        values["perf/updates_per_second"] = calls * t.updates_per_call / (time.time() - t0)
        self.last_updates_per_second = values["perf/updates_per_second"]
        self.log.write(counters["env_steps"], values)
        return state

    def _batches(self, calls: int):
        """Yields `calls` stacked batches `(K, B, T, ...)`, sampled `train.prefetch` ahead on
        a thread so that sampling and the host-to-device copy overlap the update. One thread
        draws from the replay RNG in order, so the batches are those of a serial loop."""
        t = self.config.train
        sample = lambda: jax.device_put(self.replay.sample(t.updates_per_call, t.batch, t.length))
        return prefetch(sample, calls, t.prefetch, "replay-prefetch")

    def _agent_policy(self, state, ep_seed, training):
        """The agent acting in one env: `policy(obs, first) -> (A,)`."""
        batched = self._batched_policy(state, ep_seed, 1, training)
        return lambda obs, first: batched([obs], first)[0]

    def evaluate(
        self, state, episodes=1, split="test", missing=None, rate=None, drop=(), policy=None
    ):
        """Mean return over `episodes` evaluation episodes (validation backgrounds).

        `policy(ep_seed) -> (obs, first) -> action` replaces the agent (e.g. a random
        baseline scored on exactly the same episodes)."""
        c = self.config
        kwargs = dict(self.env_kwargs)
        if "background" in kwargs or _is_dmc(c.env.task):
            kwargs["background_split"] = split
        kwargs["missing"] = missing or c.env.missing
        kwargs["missing_rate"] = c.env.missing_eval if rate is None else rate
        env = envs.make(**kwargs, seed=c.seed + 10_000)
        if drop:
            env.drop(list(drop))
        returns, fractions = [], []
        for i in range(episodes):
            ep_seed = int(np.random.default_rng([c.seed, 10_000 + i]).integers(2**31))
            if policy is None:
                act = self._agent_policy(state, ep_seed, training=False)
            else:
                act = policy(ep_seed)
            episode, ret = run_episode(env, act, self.agent.modalities, ep_seed)
            if i == 0:
                self.last_episode = episode  # for evaluation videos
            returns.append(ret)
            fractions.append(env.missing_fraction())
        env.close()
        self.last_eval = {"returns": returns, "missing": fractions}
        return float(np.mean(returns))


def _is_dmc(task):
    return envs.task_info(task).suite == "dmc"


def _untyped(state):
    """PRNG key arrays -> raw uint32 data, so they pickle as plain NumPy."""
    return jax.tree.map(
        lambda x: (
            jax.random.key_data(x)
            if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
            else x
        ),
        state,
    )


def _retype(template, loaded):
    def fix(t, x):
        if isinstance(t, jax.Array) and jax.dtypes.issubdtype(t.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(np.asarray(x))
        if np.shape(t) != np.shape(x):
            raise RuntimeError(
                f"checkpoint array shape {np.shape(x)} does not match the model's {np.shape(t)}"
            )
        return jax.numpy.asarray(x, dtype=t.dtype)

    return jax.tree.map(fix, template, loaded)


def _progress(total, initial, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="env step", dynamic_ncols=True)


def env_kwargs_from_config(config) -> dict:
    """The `envs.make` options a config implies (training environment)."""
    e = config.env
    kwargs = {
        "name": e.task,
        "modalities": e.modalities,
        "missing": e.missing,
        "missing_rate": e.missing_train,
        "max_missing_len": e.max_missing_len,
        "time_limit": e.time_limit,
    }
    suite = envs.task_info(e.task).suite
    if suite == "dmc":
        kwargs.update(
            image_size=e.image_size,
            action_repeat=e.action_repeat,
            background=e.background,
            composite=e.composite,
            fast_render=e.fast_render,
        )
        if e.touch_site != "sole" or e.task.startswith("walker"):
            if e.task.startswith(("walker", "cup")):
                kwargs["touch_site"] = e.touch_site if e.task.startswith("walker") else None
    elif suite == "toy":
        kwargs.update(image_size=e.image_size, action_repeat=e.action_repeat)
    else:
        kwargs.update(image_size=e.image_size)
    return kwargs
