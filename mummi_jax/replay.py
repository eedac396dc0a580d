"""Host-side replay: whole episodes in NumPy, uniform sequence sampling, a prefetch thread.

Each stored episode is a dict of `(L, ...)` arrays in the batch format of
docs/ARCHITECTURE.md (images uint8, depth float16). Episodes are also written to
`<logdir>/episodes/<index>.npz` so that a run can resume. No JAX here: batches leave as NumPy
and the caller places them on its devices.
"""

from __future__ import annotations

import glob
import io
import os
import queue
import threading

import numpy as np

from mummi_jax.checkpoint import atomic_write


class Replay:
    """Whole episodes, uniform sequence sampling, a capacity cap in env steps.

    Args:
      directory: where episodes are written and read back on resume (None: memory only).
      capacity: env steps kept in memory; the oldest episodes go first (one always stays).
      seed: the run's seed; the sampler's RNG is `default_rng([seed, 0x5EED])`.
      action_repeat: env steps per stored step (to count env steps).
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
        """Stores episode number `index` (a dict of `(L, ...)` arrays), on disk too."""
        episode = {k: _storage(k, v) for k, v in episode.items()}
        if self.directory:
            buf = io.BytesIO()
            np.savez_compressed(buf, **episode)
            atomic_write(os.path.join(self.directory, f"{index:06d}.npz"), buf.getvalue())
        self._keep(episode, index)

    def sample(self, K: int, B: int, T: int) -> dict:
        """`(K, B, T, ...)` batches: a uniform episode among those with at least T steps,
        then a uniform start.

        Episodes shorter than T (Table Wiping's early ends) are skipped, as the released
        code's `tools.load_episodes` skips them: padding one would teach the
        world model a made-up self-loop (the last observation and reward again after the
        last action) and hand SAC transitions from the end state to itself. Only when no
        episode is long enough (a first prefill of short episodes) are they padded by
        repeating their last step."""
        out = {k: [] for k in self.episodes[0]}
        pool = [e for e in self.episodes if len(e["reward"]) >= T] or self.episodes
        for _ in range(K * B):
            ep = pool[self.rng.integers(len(pool))]
            length = len(ep["reward"])
            start = int(self.rng.integers(0, max(length - T, 0) + 1))
            for k, v in ep.items():
                seq = v[start : start + T]
                if len(seq) < T:  # no episode long enough: repeat its last step (padding)
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
