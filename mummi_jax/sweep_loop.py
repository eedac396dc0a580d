"""S seeds of one configuration trained together: one vmapped acting call per env step and one
vmapped train call per update call for all of them, the seed axis sharded over the local
devices (`mummi_jax.parallel.SeedParallel`).

Each seed keeps everything a single run has, through its own `loop.Runner` (replay, episodes
on disk, `metrics.jsonl`, checkpoints, evaluation) in `<logdir>/seed<N>/`, and draws the same
random numbers: episode seeds ``default_rng([seed, episode]).integers(2**31)``, prefill actions,
acting keys ``fold_in(fold_in(seed_key(episode_seed), 1), agent_step)`` and replay samples are
those of ``python -m experiments.train --seed=N``. Seed s of a sweep therefore logs what the
single run logs, to float tolerance (the vmapped program may fuse and reduce differently;
tests/test_sweep.py checks it on 1 and 4 devices).

A seed's batch is never split across devices: its InfoNCE negatives are the whole batch.

Seeds need not stay in step. Every round each unfinished seed plays its next episode (the
environments in lockstep, a finished one waits for the others), then trains as many phases as
its own counters ask for. Seeds that need fewer phases in a round than others (episodes of
different lengths, e.g. early terminations in `wipe`, or seeds resumed from different
checkpoints) are masked: they get a stand-in batch, their replay RNG is not drawn from, and
their state rows are put back afterwards. The host steps one environment per seed in this
process.

Resuming: each seed restores its own newest checkpoint, exactly as `Runner.train` would, so a
sweep may be re-run with more seeds or after a kill during the per-seed saves.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence

import jax
import numpy as np

from mummi_jax import envs, loop
from mummi_jax.config import Config, check_logdir, override
from mummi_jax.networks import resolve_conv_impl
from mummi_jax.parallel import SeedParallel, seed_key, seeds_per_device, unstack

_FRESH = {"env_steps": 0, "episodes": 0, "updates": 0, "last_train": 0}


def seed_logdir(logdir: str, seed: int) -> str:
    """Where seed `seed` of the sweep in `logdir` writes its single-run directory."""
    return os.path.join(logdir, f"seed{int(seed)}")


def _without_seed(config: Config) -> dict:
    d = json.loads(config.to_json())
    d.pop("seed", None)
    return d


def _per_seed_configs(config, seeds) -> list[Config]:
    """A Config plus seeds, or a list of configs equal but for their seed -> S configs."""
    if isinstance(config, Config):
        if seeds is None:
            raise ValueError("seeds are required with a single config")
        return [override(config, {"seed": int(s)}) for s in seeds]
    configs = list(config)
    if not configs:
        raise ValueError("empty config list")
    if seeds is not None and [int(s) for s in seeds] != [c.seed for c in configs]:
        raise ValueError(f"seeds {list(seeds)} do not match the configs' seeds")
    base = _without_seed(configs[0])
    for c in configs[1:]:
        if _without_seed(c) != base:
            raise ValueError("a sweep runs one configuration: configs may differ only in seed")
    return configs


def _timestep_record(ts, modalities, prev_action, first) -> dict:
    """One replay step, built exactly as `loop.run_episode` builds it."""
    obs = ts.observation
    return {
        **{m: obs[m] for m in modalities},
        **{f"{m}_flag": np.float32(obs[f"{m}_flag"]) for m in modalities},
        "action": prev_action,
        "reward": np.float32(ts.reward or 0.0),
        "discount": np.float32(1.0 if ts.discount is None else ts.discount),
        "is_first": np.float32(first),
    }


def agent_config(config: Config, num_seeds: int, devices=None) -> Config:
    """`config` with `model.conv_impl` resolved for a sweep of `num_seeds` seeds on `devices`
    (`networks.resolve_conv_impl`: the matmul forms where a device runs several seeds)."""
    per_device = seeds_per_device(num_seeds, devices)
    return override(
        config, {"model.conv_impl": resolve_conv_impl(config.model.conv_impl, per_device)}
    )


class SweepRunner:
    """Trains one configuration for every seed in `seeds`; see the module docstring.

    Args:
      config: a resolved `Config` (its seed is replaced by each of `seeds`), or a list of
        per-seed configs that differ only in `seed` (then `seeds` may be None).
      seeds: the seeds this process runs (after `distributed.local_seeds`), S of them.
      logdir: the sweep directory; seed N writes `<logdir>/seed<N>/` (config.json included;
        a directory holding a different config is refused with ValueError).
      agent: an `Agent` for this config (seed-independent); built from a probe env if None,
        with the conv form `networks.resolve_conv_impl` picks for the seeds per device.
      env_kwargs: `envs.make` options; default `loop.env_kwargs_from_config(config)`.
      progress: show a tqdm bar (env steps summed over seeds).
      devices: devices for the seed axis (default: this process's local devices).

    Attributes:
      seeds, configs, runners (one `loop.Runner` per seed), parallel (the `SeedParallel`).
    """

    def __init__(
        self,
        config,
        seeds: Sequence[int] | None,
        logdir: str,
        agent=None,
        env_kwargs: dict | None = None,
        progress: bool = True,
        devices=None,
    ):
        self.configs = _per_seed_configs(config, seeds)
        self.seeds = [c.seed for c in self.configs]
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"duplicate seeds in {self.seeds}")
        c0 = self.configs[0]
        if c0.train.envs != 1:
            raise ValueError("a sweep steps one env per seed; leave train.envs at 1")
        self.env_kwargs = loop.env_kwargs_from_config(c0) if env_kwargs is None else env_kwargs
        if agent is None:
            from mummi_jax.agent import Agent

            # The agent alone sees the resolved conv form; config.json keeps `auto`, as a single
            # run's does (both forms have the same parameters and numbers).
            c_agent = agent_config(c0, len(self.seeds), devices)
            probe = envs.make(**self.env_kwargs, seed=c0.seed)
            try:
                agent = Agent(c_agent, probe.observation_spec(), probe.action_spec())
            finally:
                probe.close()
        self.agent = agent
        self.progress = progress
        self.logdir = logdir
        dirs = [seed_logdir(logdir, c.seed) for c in self.configs]
        for d, c in zip(dirs, self.configs, strict=True):
            check_logdir(d, c)  # all checked before anything is written
        self.runners = []
        for d, c in zip(dirs, self.configs, strict=True):
            os.makedirs(d, exist_ok=True)
            loop.atomic_write(os.path.join(d, "config.json"), c.to_json().encode())
            self.runners.append(loop.Runner(c, agent, d, self.env_kwargs, progress=False))
        self.parallel = SeedParallel(agent, len(self.seeds), devices)
        # (S,) keys, step -> (S,) keys: one call rather than S host-side fold_ins per env step.
        self._fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))

    # ------------------------------------------------------------------ state
    def _restore(self):
        """Per seed, (state, counters) from its newest checkpoint, or fresh; also trims the
        seed's metrics and replay to that checkpoint, exactly as `Runner.train` does."""
        states, counters = [], []
        for r, s in zip(self.runners, self.seeds, strict=True):
            template = self.agent.init(seed_key(s))
            state, count = r.restore(template)
            if state is None:
                state, count = template, dict(_FRESH)
            r._trim_metrics(count["env_steps"])
            r.replay.truncate(count["episodes"])
            states.append(state)
            counters.append(count)
        return states, counters

    # ------------------------------------------------------------------ loop
    def train(self):
        """Runs every seed to `train.steps`. Returns (list of S states, list of S counters)."""
        t = self.configs[0].train
        env_list = [envs.make(**self.env_kwargs, seed=c.seed) for c in self.configs]
        try:
            states, counters = self._restore()
            stacked = self.parallel.put_states(states)
            del states
            done = sum(min(c["env_steps"], t.steps) for c in counters)
            bar = loop._progress(t.steps * len(self.seeds), done, self.progress)
            while True:
                active = [i for i, c in enumerate(counters) if c["env_steps"] < t.steps]
                if not active:
                    break
                results = self._play_round(env_list, stacked, counters, active)
                lengths = {}
                for i in active:
                    r, count = self.runners[i], counters[i]
                    episode, ret = results[i]
                    r.replay.add(episode, count["episodes"])
                    lengths[i] = (len(episode["reward"]) - 1) * r.config.env.action_repeat
                    count["env_steps"] += lengths[i]
                    count["episodes"] += 1
                    r.log.write(
                        count["env_steps"], {"train/return": ret, "train/length": lengths[i]}
                    )
                stacked = self._train_due(stacked, counters, active)
                now = {i: counters[i]["env_steps"] for i in active}
                due = [
                    i
                    for i in active
                    if t.eval_every
                    and now[i] // t.eval_every > (now[i] - lengths[i]) // t.eval_every
                ]
                per_seed = {i: unstack(stacked, i) for i in active}
                for i in due:
                    r = self.runners[i]
                    score = r.evaluate(per_seed[i], episodes=t.eval_episodes, split="test")
                    r.log.write(now[i], {"eval/return": score})
                for i in active:
                    self.runners[i].save(per_seed[i], counters[i])
                del per_seed
                if bar is not None:
                    bar.update(sum(lengths.values()))
                    bar.set_postfix(
                        seeds=len(active), ret=f"{np.mean([results[i][1] for i in active]):.1f}"
                    )
            if bar is not None:
                bar.close()
        finally:
            for e in env_list:
                e.close()
        return self.parallel.states(stacked), counters

    # ------------------------------------------------------------------ acting
    def _play_round(self, env_list, stacked, counters, active):
        """The next episode of every seed in `active`, the environments in lockstep.

        Each seed acts as its single run would: uniform random actions during its prefill
        episodes, otherwise the agent (one `SeedParallel.act` for all seeds per agent step).
        Rows of seeds that are not acting this step get another row's observation as a
        stand-in; their actions and carries are thrown away. Returns {i: (episode, return)}.
        """
        t = self.configs[0].train
        modalities = self.agent.modalities
        dim = self.agent.action_dim
        S = len(self.seeds)
        runners = self.runners
        ep_index = {i: counters[i]["episodes"] for i in active}
        ep_seed = {i: runners[i]._episode_seed(ep_index[i]) for i in active}
        rngs = {
            i: runners[i]._random_actions(ep_index[i])
            for i in active
            if ep_index[i] < t.prefill_episodes
        }
        agent_rows = [i for i in active if i not in rngs]
        if agent_rows:
            carry = self.parallel.initial_carry(1)
            # Row i's acting key is the one its single run folds from the episode seed; rows
            # not acting repeat an acting row's key (any valid key would do).
            base = jax.numpy.stack(
                [
                    jax.random.fold_in(
                        seed_key(ep_seed[i if i in agent_rows else agent_rows[0]]), 1
                    )
                    for i in range(S)
                ]
            )
        ts = {}
        for i in active:
            env = env_list[i]
            if hasattr(env, "reseed"):
                env.reseed(ep_seed[i])
            ts[i] = env.reset()
        steps = {i: [] for i in active}
        prev = {i: np.zeros(dim, np.float32) for i in active}
        totals = {i: 0.0 for i in active}
        alive = list(active)
        first, step = True, 0
        while True:
            for i in alive:
                steps[i].append(_timestep_record(ts[i], modalities, prev[i], first))
            alive = [i for i in alive if not ts[i].last()]
            if not alive:
                break
            acting = [i for i in alive if i not in rngs]
            if acting:
                action, carry = self._act(stacked, carry, base, step, ts, acting, first)
            for i in alive:
                if i in rngs:
                    a = np.asarray(rngs[i].uniform(-1, 1, dim).astype(np.float32), np.float32)
                else:
                    a = np.asarray(action[i, 0], np.float32)
                ts[i] = env_list[i].step(a)
                totals[i] += float(ts[i].reward or 0.0)
                prev[i] = a
            first, step = False, step + 1
        return {
            i: ({k: np.stack([s[k] for s in steps[i]]) for k in steps[i][0]}, totals[i])
            for i in active
        }

    def _act(self, stacked, carry, base_keys, step, ts, acting, first):
        """One vmapped acting call. Row i's observation is shaped as `Runner`'s single-env
        batch, (1, ...), so the stacked input is (S, 1, ...). Returns (action (S, 1, A), carry)."""
        names = self.agent.modalities
        rows = [i if i in acting else acting[0] for i in range(len(self.seeds))]
        obs = {
            k: np.stack([np.stack([np.asarray(ts[r].observation[k])]) for r in rows])
            for m in names
            for k in (m, f"{m}_flag")
        }
        obs["is_first"] = np.full((len(rows), 1), float(first), np.float32)
        keys = self._fold(base_keys, np.uint32(step))
        action, carry = self.parallel.act(stacked, carry, obs, keys, training=True)
        return np.asarray(action), carry

    # ------------------------------------------------------------------ training
    def _train_due(self, stacked, counters, active):
        """Every train phase the seeds' counters ask for (as `Runner.train`'s while loop)."""
        t = self.configs[0].train
        need = [0] * len(self.seeds)
        for i in active:
            c = counters[i]
            if c["episodes"] >= t.prefill_episodes:
                need[i] = max(0, (c["env_steps"] - c["last_train"]) // t.train_every)
        for phase in range(max(need)):
            mask = [n > phase for n in need]
            stacked = self._train_phase(stacked, counters, mask)
            for i, on in enumerate(mask):
                if on:
                    counters[i]["last_train"] += t.train_every
        return stacked

    def _train_phase(self, stacked, counters, mask):
        """One train phase (`train.train_steps` updates) for the seeds with mask True: one
        vmapped call per `updates_per_call`, batches `(S, K, B, T, ...)`; writes each trained
        seed's averaged metrics as its single run does."""
        t = self.configs[0].train
        calls = max(1, t.train_steps // t.updates_per_call)
        on = [i for i, m in enumerate(mask) if m]
        # Seeds sitting this phase out keep their state: saved now, put back at the end.
        kept = {}
        if len(on) < len(mask):
            kept = {i: unstack(stacked, i) for i in range(len(mask)) if not mask[i]}
            jax.block_until_ready(kept)  # before `train` donates the rows they were cut from
        sums = {i: None for i in on}
        t0 = time.time()
        with contextlib.closing(self._batches(calls, mask)) as batches:  # stops the prefetch
            for batch in batches:
                stacked, metrics = self.parallel.train(stacked, batch)
                metrics = jax.device_get(metrics)
                for i in on:
                    row = {k: v[i] for k, v in metrics.items()}
                    for k, v in row.items():
                        if not np.isfinite(v):
                            raise FloatingPointError(
                                f"{k} is {v} for seed {self.seeds[i]} at env step "
                                f"{counters[i]['env_steps']}; the sweep stopped and the last "
                                "checkpoints are intact. Lower optim.model_lr or check inputs."
                            )
                    sums[i] = row if sums[i] is None else {k: sums[i][k] + row[k] for k in row}
                    counters[i]["updates"] += t.updates_per_call
        # Each seed did calls * K updates in this wall time: the single run's per-seed figure.
        rate = calls * t.updates_per_call / (time.time() - t0)
        for i in on:
            values = {k: v / calls for k, v in sums[i].items()}
            values["perf/updates_per_second"] = rate
            self.runners[i].log.write(counters[i]["env_steps"], values)
        if kept:
            states = self.parallel.states(stacked)
            states = [kept.get(i, s) for i, s in enumerate(states)]
            stacked = self.parallel.put_states(states)
        return stacked

    def _batches(self, calls: int, mask):
        """Yields `calls` stacked NumPy batches `(S, K, B, T, ...)`. Row i is seed i's replay
        sample for a seed in the phase (its replay RNG drawn in the single run's order), else
        a trained seed's sample as a stand-in. Sampled `train.prefetch` calls ahead on one
        thread, so the S host-side samples overlap the update."""
        t = self.configs[0].train
        on = [i for i, m in enumerate(mask) if m]

        def sample():
            own = {
                i: self.runners[i].replay.sample(t.updates_per_call, t.batch, t.length) for i in on
            }
            rows = [own[i] if i in own else own[on[0]] for i in range(len(mask))]
            return {k: np.stack([b[k] for b in rows]) for k in rows[0]}

        return loop.prefetch(sample, calls, t.prefetch, "sweep-prefetch")
