"""Missing-data processes (MuMMI Sec. V "Methodology"; reference-code.md §4). Host NumPy only.

A process draws, per modality and independently, a boolean schedule over one episode's
observations: `schedule[i]` is True when observation `i` is missing, where observation 0 is
the one returned by `reset()` and observation `i >= 1` the one returned by the `i`-th agent
step. `envs.missing.MissingData` applies the schedule on the host, so the masks are recorded
with the episode (zeroed arrays and 0.0 flags), as in the released code.

Two processes:

- `reference` (the released code, `wrappers.py:MissingMultimodal`): when no segment is
  active, a segment starts with probability `p` at each step, with a length uniform on
  `1..max_missing_len`. The stationary missing fraction is E[L] / ((1 - p) / p + E[L]):
  ~0.283 at p = 0.05 (the paper's "37.5 %" = p * E[L]) and ~0.455 at p = 0.10 ("75 %").
- `paper` (the process as the paper describes it): segments of uniformly random length and
  start, placed without overlap, constrained so the fraction of missing observations in the
  episode is exactly the requested rate (37.5 % training; 0, 37.5, 75 % testing).

`none` draws nothing. Rates of 0 draw nothing for either process.
"""

from __future__ import annotations

import numpy as np

PROCESSES = ("reference", "paper", "none")

# Observations per block when the paper process must draw a schedule without knowing the
# episode length: each block then holds the exact fraction on its own.
PAPER_BLOCK = 100


def _check_rate(name: str, rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"missing_rate for {name!r} must be in [0, 1], got {rate}")
    return rate


class NoMissing:
    """Nothing is ever missing."""

    name = "none"

    def __init__(self, rate: float = 0.0, max_missing_len: int = 14):
        # The rate is ignored: configs keep a training rate even when the process is off.
        self.rate = 0.0
        self.max_missing_len = int(max_missing_len)

    def sample(self, num_obs: int, rng: np.random.Generator, start: int = 0) -> np.ndarray:
        """bool `(num_obs,)`, all False."""
        return np.zeros(int(num_obs), bool)


class ReferenceProcess:
    """Bernoulli segment starts, as in the released code (reference-code.md §4.1).

    Equivalent in distribution to the released per-step loop: between segments each step
    starts one with probability `p`, so the gap before a start is geometric (drawn in one
    call instead of step by step); the length is `randint(1, max_missing_len + 1)`.
    """

    name = "reference"

    def __init__(self, rate: float, max_missing_len: int = 14):
        self.rate = _check_rate(self.name, rate)
        if int(max_missing_len) < 1:
            raise ValueError(f"max_missing_len must be >= 1, got {max_missing_len}")
        self.max_missing_len = int(max_missing_len)

    def sample(self, num_obs: int, rng: np.random.Generator, start: int = 0) -> np.ndarray:
        """bool `(n,)` with `n >= num_obs`: observations `start .. start + n - 1` of an episode.

        `start > 0` continues an episode whose earlier schedule ended at observation `start`
        with no segment active (the returned arrays always end at a segment's end or after
        `num_obs`), so a schedule can grow when the episode length is unknown.
        """
        num_obs = int(num_obs)
        if self.rate == 0.0 or num_obs <= 0:
            return np.zeros(max(num_obs, 0), bool)
        out = np.zeros(num_obs + self.max_missing_len + 1, bool)
        pos = end = 0
        while True:
            # Failures before the first success of Bernoulli(p) draws, one per step.
            pos += int(rng.geometric(self.rate)) - 1
            if pos >= num_obs:
                # No start before `num_obs`: stop there (the draws are memoryless, so a longer
                # schedule continues with fresh draws from `num_obs`, not from `pos`).
                break
            length = int(rng.integers(1, self.max_missing_len + 1))
            # Released-code quirk, reproduced on purpose: reset() and the first step() are
            # both evaluated at t = 0, so a segment drawn at reset also covers the first
            # step's observation: L + 1 observations instead of L.
            if start + pos == 0:
                length += 1
            out[pos : pos + length] = True
            pos = end = pos + length
        # Up to the end of a segment that runs past `num_obs`: the next chunk starts free.
        return out[: max(end, num_obs)]


class PaperProcess:
    """Segments with random start and length and an exact missing fraction (MuMMI Sec. V).

    For `n` observations, `k = round(rate * n)` are missing. Lengths are drawn uniform on
    `1..max_missing_len` until they cover `k` (the last one is cut to fit) and laid on a
    circle of `n` steps, alternating with observed gaps drawn uniformly over all compositions
    of the `n - k` observed steps, with at least one observed step between segments when there
    is room (so segments stay separate segments and do not merge into longer ones); the
    circle is then cut at a uniformly random step. The cut is what makes every step of the
    episode missing with the same probability `k / n`: laid out from step 0 instead, the
    first observation was missing only when the first gap happened to be empty (about 8 %
    of episodes at 37.5 %, 40 % at 75 %), so episodes began observed far more often than the
    rate says. A segment the cut falls in shows as two runs, at the end and at the start.
    """

    name = "paper"

    def __init__(self, rate: float, max_missing_len: int = 14):
        self.rate = _check_rate(self.name, rate)
        if int(max_missing_len) < 1:
            raise ValueError(f"max_missing_len must be >= 1, got {max_missing_len}")
        self.max_missing_len = int(max_missing_len)

    def sample(self, num_obs: int, rng: np.random.Generator, start: int = 0) -> np.ndarray:
        """bool `(num_obs,)` with exactly `round(rate * num_obs)` True entries."""
        num_obs = int(num_obs)
        out = np.zeros(max(num_obs, 0), bool)
        k = int(round(self.rate * num_obs))
        if k == 0:
            return out
        lengths = []
        while sum(lengths) < k:
            lengths.append(int(rng.integers(1, self.max_missing_len + 1)))
        lengths[-1] -= sum(lengths) - k
        n = len(lengths)
        free = num_obs - k
        # On the circle, n segments need n gaps of at least one observed step each.
        inner = 1 if free >= n else 0
        # Stars and bars: the n gaps' (free - inner * n) spare steps, uniformly over the
        # compositions into n parts (n - 1 bars among stars + n - 1 places).
        stars = free - inner * n
        bars = np.sort(rng.choice(stars + n - 1, size=n - 1, replace=False))
        gaps = np.diff(np.concatenate([[-1], bars, [stars + n - 1]])) - 1 + inner  # (n,)
        pos = 0
        for length, gap in zip(lengths, gaps, strict=True):
            out[pos : pos + length] = True
            pos += length + int(gap)
        return np.roll(out, int(rng.integers(num_obs)))


def make_process(missing: str, rate: float = 0.0, max_missing_len: int = 14):
    """Builds a process by name: "reference" (rate = p), "paper" (rate = fraction), "none"."""
    classes = {"reference": ReferenceProcess, "paper": PaperProcess, "none": NoMissing}
    if missing not in classes:
        raise ValueError(f"unknown missing-data process {missing!r}; valid: {', '.join(PROCESSES)}")
    return classes[missing](rate, max_missing_len)


def missing_fraction(schedule: np.ndarray) -> float:
    """Fraction of True entries of a bool schedule `(n,)`; 0.0 for an empty one."""
    schedule = np.asarray(schedule, bool)
    return float(schedule.mean()) if schedule.size else 0.0


def run_lengths(schedule: np.ndarray) -> np.ndarray:
    """Lengths of the maximal runs of True in a bool schedule `(n,)` -> int `(num_runs,)`."""
    x = np.concatenate([[0], np.asarray(schedule, np.int8), [0]])
    edges = np.flatnonzero(np.diff(x))
    return edges[1::2] - edges[::2]


def stationary_fraction(rate: float, max_missing_len: int = 14) -> float:
    """The reference process's long-run missing fraction E[L] / ((1 - p) / p + E[L])."""
    if rate <= 0:
        return 0.0
    mean_len = (1 + max_missing_len) / 2
    return mean_len / ((1 - rate) / rate + mean_len)
