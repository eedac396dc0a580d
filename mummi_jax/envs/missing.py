"""`MissingData`: the missing-data process of `mummi_jax.masks` as a dm_env wrapper.

Applied per agent step on the host, after action repeat and any compositing (as the released
code's `MissingMultimodal`, reference-code.md §4.1): a missing observation of modality `m` is
`zeros_like(obs[m])` and `obs[f"{m}_flag"] = 0.0`. The flags live in the observation, so the
masks are recorded with the episode in replay and training never sees the clean data.
"""

from __future__ import annotations

from collections.abc import Iterable

import dm_env
import numpy as np

from mummi_jax import masks

# Mixed into the seed so the mask stream differs from an inner env seeded with the same seed.
_SEED_TAG = 0x6D61736B  # "mask"
# Observations drawn at a time when the inner env does not say how long an episode is.
_CHUNK = 128


class MissingData(dm_env.Environment):
    """Wraps a dm_env whose observation dict has `m` and `f"{m}_flag"` per modality `m`.

    `missing`: "reference" | "paper" | "none"; `missing_rate`: p (reference) or the exact
    fraction (paper); `max_missing_len`: the longest segment (agent steps). Modalities are
    independent; the schedule of an episode is drawn at reset from a NumPy Generator seeded
    with `seed` (same seed, same masks). Other attributes are forwarded to the inner env.
    """

    def __init__(
        self,
        env: dm_env.Environment,
        seed: int = 0,
        missing: str = "none",
        missing_rate: float = 0.0,
        max_missing_len: int = 14,
    ):
        self._env = env
        spec = env.observation_spec()
        self._modalities = tuple(k for k in spec if f"{k}_flag" in spec)
        self._max_missing_len = int(max_missing_len)
        self._process = masks.make_process(missing, missing_rate, max_missing_len)
        self._rng = np.random.default_rng([int(seed), _SEED_TAG])
        self._dropped: frozenset[str] = frozenset()
        self._schedule = {m: np.zeros(0, bool) for m in self._modalities}
        self._index = 0  # observations of the current episode so far
        self._missing_count = dict.fromkeys(self._modalities, 0)

    # ------------------------------------------------------------------ configuration

    @property
    def modalities(self) -> tuple[str, ...]:
        return self._modalities

    @property
    def missing(self) -> str:
        return self._process.name

    @property
    def missing_rate(self) -> float:
        return self._process.rate

    def set_missing(self, missing: str, rate: float = 0.0) -> None:
        """Changes the process and level from the next reset on (evaluation at 0/medium/high)."""
        self._process = masks.make_process(missing, rate, self._max_missing_len)

    def drop(self, modalities: Iterable[str]) -> None:
        """Makes `modalities` missing at every step from now on; `drop(())` restores them.

        For the robosuite Wipe "robot camera only" evaluation (MuMMI Table II).
        """
        if isinstance(modalities, str):
            modalities = (modalities,)
        modalities = frozenset(modalities)
        bad = sorted(modalities - set(self._modalities))
        if bad:
            raise ValueError(
                f"cannot drop unknown modality {bad[0]!r}; valid: {', '.join(self._modalities)}"
            )
        self._dropped = modalities

    def reseed(self, seed: int) -> None:
        """Re-seeds the mask stream and, if it has one, the inner env (exact resumption)."""
        self._rng = np.random.default_rng([int(seed), _SEED_TAG])
        if hasattr(self._env, "reseed"):
            self._env.reseed(seed)

    def missing_fraction(self) -> dict[str, float]:
        """Actual fraction of missing observations per modality over the current episode."""
        n = self._index
        return {m: (self._missing_count[m] / n if n else 0.0) for m in self._modalities}

    # ------------------------------------------------------------------ dm_env

    def reset(self) -> dm_env.TimeStep:
        return self._apply(self._env.reset())

    def step(self, action) -> dm_env.TimeStep:
        return self._apply(self._env.step(action))

    def observation_spec(self):
        return self._env.observation_spec()

    def action_spec(self):
        return self._env.action_spec()

    def reward_spec(self):
        return self._env.reward_spec()

    def discount_spec(self):
        return self._env.discount_spec()

    def close(self):
        return self._env.close()

    def __getattr__(self, name):
        # Only reached for attributes not found on the wrapper; guard against recursion while
        # unpickling (when `_env` is not set yet).
        if name.startswith("__") or "_env" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self._env, name)

    # ------------------------------------------------------------------ internals

    def _begin_episode(self) -> None:
        length = getattr(self._env, "episode_length", None)
        num_obs = int(length) + 1 if length is not None else self._block()
        self._schedule = {m: self._process.sample(num_obs, self._rng) for m in self._modalities}
        self._index = 0
        self._missing_count = dict.fromkeys(self._modalities, 0)

    def _block(self) -> int:
        # The paper process keeps its exact fraction per block, so its blocks are short.
        return masks.PAPER_BLOCK if self._process.name == "paper" else _CHUNK

    def _is_missing(self, m: str, i: int) -> bool:
        sched = self._schedule[m]
        while i >= len(sched):  # longer episode than announced: grow the schedule
            more = self._process.sample(self._block(), self._rng, start=len(sched))
            sched = self._schedule[m] = np.concatenate([sched, more])
        return bool(sched[i])

    def _apply(self, ts: dm_env.TimeStep) -> dm_env.TimeStep:
        if ts.first():
            self._begin_episode()
        i = self._index
        obs = dict(ts.observation)
        for m in self._modalities:
            if m in self._dropped or self._is_missing(m, i):
                obs[m] = np.zeros_like(obs[m])
                obs[f"{m}_flag"] = np.float32(0.0)
                self._missing_count[m] += 1
        self._index = i + 1
        return ts._replace(observation=obs)
