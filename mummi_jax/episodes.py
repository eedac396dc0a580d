"""Playing episodes on the host: the replay step record, lockstep play in many environments,
and the `envs.make` options a config implies. No JAX: a policy is any callable.

Every episode of the project, training or evaluation, one env or many, single run or sweep,
is played by `run_episodes` and recorded by `step_record`, so all of them store the same
fields in the same order (the batch format of docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mummi_jax import envs


def step_record(ts, modalities, prev_action, first: bool, extra=()) -> dict:
    """One replay step from a dm_env TimeStep: each modality and its flag, `extra`
    observation keys as they are, the action that led here, reward, discount, is_first."""
    obs = ts.observation
    return {
        **{m: obs[m] for m in modalities},
        **{f"{m}_flag": np.float32(obs[f"{m}_flag"]) for m in modalities},
        **{k: obs[k] for k in extra},
        "action": prev_action,
        "reward": np.float32(ts.reward or 0.0),
        "discount": np.float32(1.0 if ts.discount is None else ts.discount),
        "is_first": np.float32(first),
    }


class EnvList:
    """In-process environments behind the interface `run_episodes` uses (that of
    `envs.workers.EnvPool`, whose environments step in worker processes)."""

    def __init__(self, env_list: Sequence):
        self.envs = list(env_list)

    def __len__(self):
        return len(self.envs)

    @property
    def action_specs(self):
        return [env.action_spec() for env in self.envs]

    def reseed(self, i: int, seed: int) -> None:
        if hasattr(self.envs[i], "reseed"):
            self.envs[i].reseed(int(seed))

    def reset_many(self, indices):
        return [self.envs[i].reset() for i in indices]

    def step_many(self, indices, actions):
        return [self.envs[i].step(a) for i, a in zip(indices, actions, strict=True)]

    def call(self, i: int, method: str, *args):
        return getattr(self.envs[i], method)(*args)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def run_episodes(
    env_set,
    policy: Callable[[list, bool], np.ndarray],
    modalities,
    episode_seeds: Sequence[int | None],
    extra=(),
    indices: Sequence[int] | None = None,
) -> list[tuple[dict, float]]:
    """Plays one episode in each env `indices` (default all) of `env_set` (an `EnvList` or
    an `EnvPool`) in lockstep.

    `policy(obs_list, first) -> (n, A)` acts for all n of them in one call; an env that has
    finished keeps its last observation in `obs_list` and its action is ignored (it is not
    stepped again). Env j is reseeded with `episode_seeds[j]` (None: not reseeded) before its
    reset. Returns [(episode, return)], one per env: the episode a dict of `(L, ...)` arrays
    of `step_record`s, L = agent steps + 1."""
    indices = list(range(len(env_set)) if indices is None else indices)
    n = len(indices)
    for i, seed in zip(indices, episode_seeds, strict=True):
        if seed is not None:
            env_set.reseed(i, seed)
    timesteps = env_set.reset_many(indices)
    specs = env_set.action_specs
    steps: list[list[dict]] = [[] for _ in range(n)]
    prev = [np.zeros(specs[i].shape, np.float32) for i in indices]
    totals = [0.0] * n
    alive = list(range(n))
    first = True
    while True:
        for j in alive:
            steps[j].append(step_record(timesteps[j], modalities, prev[j], first, extra))
        alive = [j for j in alive if not timesteps[j].last()]
        if not alive:
            break
        actions = np.asarray(policy([ts.observation for ts in timesteps], first), np.float32)
        first = False
        stepped = env_set.step_many([indices[j] for j in alive], [actions[j] for j in alive])
        for j, ts in zip(alive, stepped, strict=True):
            timesteps[j] = ts
            totals[j] += float(ts.reward or 0.0)
            prev[j] = actions[j].copy()
    return [
        ({k: np.stack([s[k] for s in ep]) for k in ep[0]}, total)
        for ep, total in zip(steps, totals, strict=True)
    ]


def run_episode(env, policy, modalities, episode_seed: int | None = None, extra=()):
    """Plays one episode in `env`. `policy(obs, first) -> action (A,)`. Returns
    (episode, return) as `run_episodes` does.

    `extra`: observation keys recorded as they are, with no flag (e.g. the toy robot's
    `true_position`, for analysis only)."""
    batched = lambda obs_list, first: np.asarray(policy(obs_list[0], first))[None]
    return run_episodes(EnvList([env]), batched, modalities, [episode_seed], extra)[0]


def env_kwargs_from_config(config) -> dict:
    """The `envs.make` options a config implies (training environment). Images are rendered
    `env.crop_margin` pixels larger than `env.image_size`: the agent crops them back."""
    e = config.env
    size = e.image_size + e.crop_margin
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
            image_size=size,
            action_repeat=e.action_repeat,
            background=e.background,
            composite=e.composite,
            fast_render=e.fast_render,
            # Empty: the task's default site (validated against the task in config.validate).
            touch_site=e.touch_site or None,
        )
        if e.proprio != "full":  # CoRAL's partial proprioception
            kwargs["proprio"] = e.proprio
    elif suite == "toy":
        kwargs.update(image_size=size, action_repeat=e.action_repeat)
    else:
        kwargs.update(image_size=size)
    return kwargs
