"""The host loop for S seeds of one configuration; a single run is S = 1.

Like purejaxrl's `make_train`, which serves one seed or many through `vmap`, there is one
loop: every round each unfinished seed plays its next `train.envs` episodes (all environments
in lockstep, one vmapped acting call per agent step for all seeds, `SeedParallel`), stores
them, trains the phases its own counters ask for (one vmapped train call per K updates),
evaluates and films when due, and checkpoints. A single run (`experiments.train`) is this loop
with one seed on one device; a sweep (`experiments.sweep`) runs S seeds with the seed axis
sharded over the local devices. Seed s of a sweep therefore logs what the single run with seed
s logs, by construction, to the float tolerance of a batched program (tests/test_sweep.py).

Each seed keeps everything a run has in its own directory (the run directory of a single run,
`<logdir>/seed<N>/` in a sweep): config.json, metrics.jsonl, checkpoints/, episodes/, videos/.
Every random source derives from the seed alone: episode seeds
``default_rng([seed, episode]).integers(2**31)``, prefill actions ``default_rng([seed,
episode, 1])``, acting keys ``fold_in(fold_in(seed_key(episode_seed), 1), agent_step)``,
replay samples from the replay's RNG, evaluation episodes ``default_rng([seed, 10000 + i])``.
Checkpoints are taken at episode boundaries, so a resumed run continues exactly as an
uninterrupted one would (on CPU); each seed resumes from its own newest checkpoint, so a sweep
may be re-run with more seeds or after a kill during the per-seed saves.

Seeds need not stay in step. Seeds that need fewer train phases in a round than others
(episodes of different lengths, e.g. early terminations in `wipe`, or seeds resumed from
different checkpoints) are masked: they get a stand-in batch, their replay RNG is not drawn
from, and the train step keeps their state rows. A seed's batch is never split across devices:
its InfoNCE negatives are the whole batch.

Host reads of the seed-sharded state (checkpoints) copy each array once and split seeds in
NumPy (`SeedParallel.fetch`); no program the host waits on has a collective.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import numpy as np

from mummi_jax import checkpoint, envs, host_memory, prng, video
from mummi_jax.config import (
    Config,
    check_logdir,
    override,
    resolve_config_conv,
    resolve_touch_site,
)
from mummi_jax.episodes import EnvList, env_kwargs_from_config, run_episodes
from mummi_jax.metrics import MetricsLog
from mummi_jax.parallel import SeedParallel, seed_devices, seed_key, seeds_per_device
from mummi_jax.replay import Replay, prefetch

EVAL_OFFSET = 10_000  # evaluation envs and episode seeds: disjoint from training's


def fresh_counters() -> dict:
    """A run's counters before its first episode (env steps, episodes, updates, and the env
    step of the last train phase)."""
    return {"env_steps": 0, "episodes": 0, "updates": 0, "last_train": 0}


def seed_logdir(logdir: str, seed: int) -> str:
    """Where seed `seed` of the sweep in `logdir` writes its run directory."""
    return os.path.join(logdir, f"seed{int(seed)}")


def episode_seed(seed: int, episode: int) -> int:
    """Seed of training episode `episode` of the run with `seed` (env reseed, acting keys)."""
    return int(np.random.default_rng([seed, episode]).integers(2**31))


def eval_episode_seed(seed: int, episode: int) -> int:
    return int(np.random.default_rng([seed, EVAL_OFFSET + episode]).integers(2**31))


def agent_config(config: Config, num_seeds: int = 1, devices=None) -> Config:
    """`config` with `model.conv_impl` resolved for `num_seeds` seeds on `devices`
    (`config.resolve_config_conv`: oneDNN's form on a CPU for large encoder batches when the
    seeds share one device, else the matmul forms, as where a GPU runs several seeds). Only
    the agent sees it: config.json keeps what the user asked for (`auto`)."""
    per_device = seeds_per_device(num_seeds, devices)
    impl = resolve_config_conv(config, per_device, seed_devices(num_seeds, devices))
    return override(config, {"model.conv_impl": impl})


def build_agent(config: Config, env_kwargs: dict):
    """An `Agent` for `config`, its specs read from a probe environment."""
    from mummi_jax.agent import Agent

    probe = envs.make(**env_kwargs, seed=config.seed)
    try:
        return Agent(config, probe.observation_spec(), probe.action_spec())
    finally:
        probe.close()


@dataclass
class SeedRun:
    """Host-side state of one seed: its config, run directory, metrics log and replay (opened
    by `Runner.train` only: evaluation never reads the replay)."""

    config: Config
    logdir: str
    log: MetricsLog
    replay: Replay | None = None

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.logdir, "checkpoints")


@dataclass
class Evaluation:
    """One seed's evaluation: per-episode returns and missing fractions, the first episode."""

    returns: list[float] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)
    first_episode: dict | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))


class Runner:
    """Trains one configuration for S seeds (S = 1: a single run) per `config.train`.

    Args:
      config: a resolved `Config` (an empty `env.touch_site` becomes the task's default).
      logdir: the run directory; with `seeds`, the sweep directory holding `seed<N>/` per seed.
      seeds: None for a single run of `config.seed` in `logdir`; else the seeds of a sweep.
        Every directory is checked against its config (`config.check_logdir`: ValueError, and
        nothing written) before any is written; config.json is written here.
      agent: an `Agent` for this config (seed-independent); built from a probe environment
        if None, with `agent_config`'s conv form for these seeds on these devices.
      env_kwargs: `envs.make` options; default `episodes.env_kwargs_from_config(config)`.
      progress: show a tqdm bar (env steps summed over seeds).
      devices: devices for the seed axis (default: this process's local devices).
      parallel: a `SeedParallel` for as many seeds to reuse, with its compiled steps (e.g.
        several single runs of one agent in one process); it brings the agent and devices.

    Attributes:
      seeds, configs, runs (one `SeedRun` per seed), agent, parallel (the `SeedParallel`).
    """

    def __init__(
        self,
        config: Config,
        logdir: str,
        seeds: Sequence[int] | None = None,
        *,
        agent=None,
        env_kwargs: dict | None = None,
        progress: bool = True,
        devices=None,
        parallel: SeedParallel | None = None,
    ):
        # A Config built by hand (not through presets) may leave the touch site to the
        # task's default; config.json must still name it (config.LEGACY_TOUCH_SITES).
        config = resolve_touch_site(config)
        if seeds is None:
            self.configs, dirs = [config], [logdir]
        else:
            self.configs = [override(config, {"seed": int(s)}) for s in seeds]
            dirs = [seed_logdir(logdir, s) for s in seeds]
            if not self.configs:
                raise ValueError("no seeds given")
        self.seeds = [c.seed for c in self.configs]
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"duplicate seeds in {self.seeds}")
        if len(self.seeds) > 1 and config.train.envs != 1:
            raise ValueError("a sweep steps one env per seed; leave train.envs at 1")
        for d, c in zip(dirs, self.configs, strict=True):
            check_logdir(d, c)  # all checked before anything is written
        self.config = self.configs[0]
        self.env_kwargs = env_kwargs_from_config(config) if env_kwargs is None else env_kwargs
        if parallel is not None:
            if parallel.num_seeds != len(self.seeds):
                raise ValueError(f"parallel runs {parallel.num_seeds} seeds, not {self.seeds}")
            agent = parallel.agent
        elif agent is None:
            agent = build_agent(
                agent_config(self.config, len(self.seeds), devices), self.env_kwargs
            )
        self.agent = agent
        self.progress = progress
        self.runs = []
        for d, c in zip(dirs, self.configs, strict=True):
            checkpoint.atomic_write(os.path.join(d, "config.json"), c.to_json().encode())
            self.runs.append(SeedRun(c, d, MetricsLog(d)))
        self.parallel = parallel or SeedParallel(agent, len(self.seeds), devices)
        # Per-episode (S,) acting keys from S episode seeds, and per agent step the keys
        # folded with the step: one small program each rather than S host-side fold_ins.
        self._base_keys = prng.jit(jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 1)))
        self._fold = prng.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))
        self.last_updates_per_second = 0.0
        # Bytes of the train step's temporaries (SeedParallel.train_temp_bytes): read after its
        # first call, None until then; they decide whether the loop settles between calls.
        self.train_temp_bytes: int | None = None
        self._train_temp_read = False

    # ------------------------------------------------------------------ state
    def restore(self, max_step: int | None = None):
        """Every seed's newest checkpoint (at most `max_step` env steps, if given).

        Returns (stacked state (P, ...) on the devices, metas): metas[i] is seed i's
        checkpoint metadata ({"counters", "replay_rng"}), or None when it has no checkpoint
        (its row is then the fresh `agent.init(seed_key(seed))`). Raises
        `checkpoint.CheckpointError` (one line naming the file and the fix) for a file that
        cannot be used."""
        # Every file read and checked before the first template is built (compiled).
        paths = [checkpoint.latest(run.ckpt_dir, max_step) for run in self.runs]
        saved = [None if p is None else checkpoint.read(p) for p in paths]
        states = []
        for run, path, loaded in zip(self.runs, paths, saved, strict=True):
            # Eager, not jitted: its small per-op programs are shared by every agent in the
            # process, where one jitted init would compile per configuration.
            template = self.agent.init(seed_key(run.seed))
            states.append(template if path is None else checkpoint.fill(path, loaded[0], template))
        return self.parallel.put_states(states), [None if x is None else x[1] for x in saved]

    def _save(self, stacked, counters, rows) -> None:
        """A checkpoint per seed in `rows`: the state copied to the host once for all seeds."""
        host = self.parallel.fetch(stacked)
        for i in rows:
            run = self.runs[i]
            meta = {"counters": counters[i], "replay_rng": run.replay.rng.bit_generator.state}
            state = jax.tree.map(lambda x, i=i: x[i], host)
            step = counters[i]["env_steps"]
            checkpoint.save(run.ckpt_dir, step, state, meta, self.config.train.checkpoints_kept)

    # ------------------------------------------------------------------ loop
    def train(self):
        """Runs every seed to `train.steps`. Returns (stacked state, list of S counters);
        `parallel.states(stacked)` splits the state per seed."""
        t = self.config.train
        # Checkpoints first: a corrupt one ends the run before any environment or compile.
        stacked, metas = self.restore()
        counters = [fresh_counters() if m is None else dict(m["counters"]) for m in metas]
        for run, meta, count in zip(self.runs, metas, counters, strict=True):
            # The replay and log hold exactly the checkpoint's episodes (later ones were not
            # counted): a killed run's tail is dropped.
            run.log.trim(count["env_steps"])
            run.replay = Replay(
                os.path.join(run.logdir, "episodes"),
                t.replay_capacity,
                run.seed,
                run.config.env.action_repeat,
            )
            run.replay.truncate(count["episodes"])
            if meta is not None:
                run.replay.rng.bit_generator.state = meta["replay_rng"]
        env_set = self._make_envs()
        done = sum(min(c["env_steps"], t.steps) for c in counters)
        bar = _progress(t.steps * len(self.seeds), done, self.progress)
        try:
            while True:
                active = [i for i, c in enumerate(counters) if c["env_steps"] < t.steps]
                if not active:
                    break
                added, returns = self._collect(env_set, stacked, counters, active)
                stacked = self._set_input_stats(stacked, counters, active)
                stacked = self._train_due(stacked, counters, active)
                self._evaluate_due(stacked, counters, added)
                self._save(stacked, counters, active)
                if bar is not None:
                    bar.update(sum(added.values()))
                    # tqdm's own rate is env steps/s; updates/s is the last train phase's.
                    bar.set_postfix(
                        seeds=len(active),
                        ret=f"{np.mean(returns):.1f}",
                        updates=counters[active[0]]["updates"],
                        upd_s=f"{self.last_updates_per_second:.1f}",
                    )
        finally:
            if bar is not None:
                bar.close()
            env_set.close()
        return stacked, counters

    def _make_envs(self):
        """`train.envs` environments per seed, flat: env k of seed i at index i * n + k, built
        with seed `seed + k`. In this process for one per seed, else in worker processes."""
        n = self.config.train.envs
        kwargs = [dict(self.env_kwargs, seed=s + k) for s in self.seeds for k in range(n)]
        if n == 1:
            return EnvList([envs.make(**kw) for kw in kwargs])
        from mummi_jax.envs.workers import EnvPool

        return EnvPool(kwargs)

    # ------------------------------------------------------------------ acting
    def _collect(self, env_set, stacked, counters, active):
        """The next `train.envs` episodes of every seed in `active`, stored and logged.

        A seed acts with uniform random actions while its episode index is in the prefill
        (a group of envs is all prefill or all agent, so the prefill rounds up to a multiple
        of `train.envs`), else with the agent. Returns ({i: env steps added}, returns)."""
        t, n = self.config.train, self.config.train.envs
        first = {i: counters[i]["episodes"] for i in active}
        seeds = {i: [episode_seed(self.seeds[i], first[i] + k) for k in range(n)] for i in active}
        dim = self.agent.action_dim
        host = {
            i: [
                _uniform(np.random.default_rng([self.seeds[i], first[i] + k, 1]), dim)
                for k in range(n)
            ]
            for i in active
            if first[i] < t.prefill_episodes
        }
        policy = self._policy(stacked, active, n, host, {i: seeds[i][0] for i in active}, True)
        indices = [i * n + k for i in active for k in range(n)]
        flat_seeds = [s for i in active for s in seeds[i]]
        results = run_episodes(env_set, policy, self.agent.modalities, flat_seeds, (), indices)
        added, returns = {}, []
        for p, i in enumerate(active):
            run, count = self.runs[i], counters[i]
            added[i] = 0
            for k in range(n):
                episode, ret = results[p * n + k]
                run.replay.add(episode, first[i] + k)
                length = (len(episode["reward"]) - 1) * run.config.env.action_repeat
                added[i] += length
                count["env_steps"] += length
                count["episodes"] += 1
                returns.append(ret)
                run.log.write(count["env_steps"], {"train/return": ret, "train/length": length})
        return added, returns

    def _policy(self, stacked, rows, n, host, key_seeds, training) -> Callable:
        """`policy(obs_list, first) -> (len(rows) * n, A)` for `run_episodes`: obs_list[p*n+k]
        is env k of seed rows[p].

        Seeds in `host` act through their n callables `(obs, first) -> (A,)`; the others
        through one `SeedParallel.act` for all S seeds per agent step, seed i keyed by
        `fold_in(fold_in(seed_key(key_seeds[i]), 1), step)`. Seeds not acting get an acting
        seed's observations and key as stand-ins; their actions and carries are thrown away."""
        S, names = len(self.seeds), self.agent.modalities
        pos = {i: p for p, i in enumerate(rows)}
        acting = [i for i in rows if i not in host]
        stand_in = [i if i in acting else acting[0] for i in range(S)] if acting else []
        carry, keys, step = None, None, 0
        if acting:
            carry = self.parallel.initial_carry(n)
            keys = self._base_keys(np.asarray([key_seeds[i] for i in stand_in], np.uint32))

        def policy(obs_list, first):
            nonlocal carry, step
            out = np.zeros((len(obs_list), self.agent.action_dim), np.float32)
            if acting:
                obs = []
                for i in stand_in:
                    envs_i = obs_list[pos[i] * n : (pos[i] + 1) * n]
                    batch = {
                        k: np.stack([np.asarray(o[k]) for o in envs_i])
                        for m in names
                        for k in (m, f"{m}_flag")
                    }
                    batch["is_first"] = np.full(n, float(first), np.float32)
                    obs.append(batch)
                step_keys = self._fold(keys, np.uint32(step))
                action, carry = self.parallel.act(
                    stacked, carry, self.parallel.shard_rows(obs), step_keys, training
                )
                for i in acting:
                    out[pos[i] * n : (pos[i] + 1) * n] = action[i]
            for i, fns in host.items():
                for k, fn in enumerate(fns):
                    out[pos[i] * n + k] = fn(obs_list[pos[i] * n + k], first)
            step += 1
            return out

        return policy

    # ------------------------------------------------------------------ training
    def _set_input_stats(self, stacked, counters, active):
        """Sets the input statistics (`Agent.with_input_stats`: CoRAL's z-scored
        proprioception) of every seed whose prefill is done and who has not trained yet, from
        its prefill episodes (all its stored ones if capacity dropped them), once per run:
        a checkpoint keeps them. One host round trip of the stacked state."""
        t = self.config.train
        due = [
            i
            for i in active
            if counters[i]["episodes"] >= t.prefill_episodes and counters[i]["updates"] == 0
        ]
        if not due or not self.agent.uses_input_stats:
            return stacked
        states = self.parallel.states(stacked)
        for i in due:
            replay = self.runs[i].replay
            pairs = zip(replay.indices, replay.episodes, strict=True)
            episodes = [ep for idx, ep in pairs if idx < t.prefill_episodes] or replay.episodes
            states[i] = self.agent.with_input_stats(states[i], episodes)
        return self.parallel.put_states(states)

    def _train_due(self, stacked, counters, active):
        """Every train phase the seeds' counters ask for: one per `train.train_every` env steps
        since the last, once a seed's prefill is done. Phases run for all seeds together,
        a seed needing fewer sitting the later ones out (masked).

        With `train.after_prefill="pretrain"` a seed's first phase (no update yet) has
        `train.pretrain` updates and restarts the count at its env steps (the released code's
        `Every`); with "catch_up" the count runs from env step 0."""
        t = self.config.train
        ready = [i for i in active if counters[i]["episodes"] >= t.prefill_episodes]
        if t.after_prefill == "pretrain":
            first = [i for i in ready if counters[i]["updates"] == 0]
            if first:
                stacked = self._train_phase(stacked, counters, first, t.pretrain)
                for i in first:
                    counters[i]["last_train"] = counters[i]["env_steps"]
        need = [0] * len(self.seeds)
        for i in ready:
            c = counters[i]
            need[i] = max(0, (c["env_steps"] - c["last_train"]) // t.train_every)
        for phase in range(max(need)):
            on = [i for i, k in enumerate(need) if k > phase]
            stacked = self._train_phase(stacked, counters, on, t.train_steps)
            for i in on:
                counters[i]["last_train"] += t.train_every
        return stacked

    def _train_phase(self, stacked, counters, on, updates):
        """One train phase (`updates` updates) for the seeds in `on`: one vmapped call per
        `updates_per_call`; writes each trained seed's averaged metrics."""
        t = self.config.train
        calls = updates // t.updates_per_call
        active = np.isin(np.arange(len(self.seeds)), on)
        sums = {i: None for i in on}
        t0 = time.time()
        with contextlib.closing(self._batches(calls, on)) as batches:  # stops the prefetch
            for batch in batches:
                # `train` returns the metrics on the host, so the call has finished; its
                # temporaries are freed just after, and the next call must not allocate
                # before (host_memory.settling; skipped where they are too few to matter).
                with host_memory.settling(self.train_temp_bytes):
                    stacked, metrics = self.parallel.train(stacked, batch, active)
                if not self._train_temp_read:
                    self.train_temp_bytes = self.parallel.train_temp_bytes(stacked, batch)
                    self._train_temp_read = True
                for i in on:
                    row = {k: v[i] for k, v in metrics.items()}
                    for k, v in row.items():
                        if not np.isfinite(v):
                            raise FloatingPointError(
                                f"{k} is {v} at env step {counters[i]['env_steps']} (seed "
                                f"{self.seeds[i]}); training stopped and the last checkpoints "
                                "are intact. Lower optim.model_lr or check inputs."
                            )
                    sums[i] = row if sums[i] is None else {k: sums[i][k] + row[k] for k in row}
                    counters[i]["updates"] += t.updates_per_call
        # Each seed did calls * K updates in this wall time: the single run's per-seed figure.
        self.last_updates_per_second = calls * t.updates_per_call / (time.time() - t0)
        for i in on:
            values = {k: v / calls for k, v in sums[i].items()}
            values["perf/updates_per_second"] = self.last_updates_per_second
            self.runs[i].log.write(counters[i]["env_steps"], values)
        return stacked

    def _batches(self, calls: int, on):
        """Yields `calls` batches `(S, K, B, T, ...)`, already on the devices. Row i is seed i's
        replay sample for a seed in `on` (its replay RNG drawn in order), else a stand-in.
        Sampled and placed `train.prefetch` calls ahead on one thread, so that sampling and
        the host-to-device copy overlap the update."""
        t = self.config.train

        def sample():
            own = {i: self.runs[i].replay.sample(t.updates_per_call, t.batch, t.length) for i in on}
            rows = [own.get(i, own[on[0]]) for i in range(len(self.seeds))]
            return self.parallel.shard_rows(rows)

        return prefetch(sample, calls, t.prefetch, "replay-prefetch")

    # ------------------------------------------------------------------ evaluation
    def _evaluate_due(self, stacked, counters, added) -> None:
        """Evaluates (`train.eval_episodes`, held-out backgrounds) every seed that crossed a
        multiple of `train.eval_every` env steps this round, and films the first episode when
        it also crossed one of `train.video_every`."""
        t = self.config.train
        due = [i for i, n in added.items() if _crossed(counters[i]["env_steps"], n, t.eval_every)]
        if not due:
            return
        results = self.evaluate(stacked, episodes=t.eval_episodes, split="test", rows=due)
        for i in due:
            run, now = self.runs[i], counters[i]["env_steps"]
            run.log.write(now, {"eval/return": results[i].mean})
            if _crossed(now, added[i], t.video_every):
                episode = results[i].first_episode
                video.write_episode(run.logdir, f"eval-{now:09d}", episode, self.agent.modalities)

    def evaluate(
        self,
        stacked,
        episodes: int = 1,
        split: str = "test",
        missing: str | None = None,
        rate: float | None = None,
        drop=(),
        policy=None,
        rows: Sequence[int] | None = None,
    ) -> dict[int, Evaluation]:
        """Plays `episodes` evaluation episodes per seed in `rows` (default all), one
        environment per seed (built with seed `seed + 10000`), the seeds in lockstep.

        Args:
          stacked: the stacked state (`restore`, `train`).
          split: background split ("test": the held-out backgrounds); `missing`, `rate`: the
            missing-data process and rate (default the config's `env.missing` and
            `env.missing_eval`); `drop`: modalities the environment blanks out.
          policy: `policy(episode_seed) -> (obs, first) -> action` replaces the agent (e.g. a
            random baseline scored on exactly the same episodes).

        Returns {seed index: `Evaluation`}."""
        rows = list(range(len(self.seeds))) if rows is None else list(rows)
        e = self.config.env
        kwargs = dict(self.env_kwargs)
        if envs.task_info(e.task).suite == "dmc":
            kwargs["background_split"] = split
        kwargs["missing"] = missing or e.missing
        kwargs["missing_rate"] = e.missing_eval if rate is None else rate
        env_set = EnvList([envs.make(**kwargs, seed=self.seeds[i] + EVAL_OFFSET) for i in rows])
        results = {i: Evaluation() for i in rows}
        try:
            if drop:
                for env in env_set.envs:
                    env.drop(list(drop))
            for j in range(episodes):
                seeds = {i: eval_episode_seed(self.seeds[i], j) for i in rows}
                host = {} if policy is None else {i: [policy(seeds[i])] for i in rows}
                act = self._policy(stacked, rows, 1, host, seeds, training=False)
                played = run_episodes(env_set, act, self.agent.modalities, list(seeds.values()))
                for p, i in enumerate(rows):
                    episode, ret = played[p]
                    results[i].returns.append(ret)
                    results[i].missing.append(env_set.call(p, "missing_fraction"))
                    if j == 0:
                        results[i].first_episode = episode
        finally:
            env_set.close()
        return results


def _uniform(rng: np.random.Generator, dim: int):
    return lambda obs, first: rng.uniform(-1, 1, dim).astype(np.float32)


def _crossed(now: int, added: int, every: int) -> bool:
    """Whether the last `added` env steps up to `now` crossed a multiple of `every` (0: never)."""
    return bool(every) and now // every > (now - added) // every


def _progress(total, initial, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="env step", dynamic_ncols=True)
