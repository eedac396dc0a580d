"""Summary statistics for evaluation returns: pooled mean/std and bootstrap intervals.

Plain NumPy, host side. The published tables (MuMMI Table I/II) give the mean and std of the
pooled evaluation episodes (3 seeds x 10 episodes = 30); `summarize` reproduces those two
numbers and adds a percentile-bootstrap interval over seeds, which is the honest unit of
replication (episodes of one seed share one policy and are not independent draws of a run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_RESAMPLES = 10_000


@dataclasses.dataclass(frozen=True)
class SeedEval:
    """One seed's evaluation at one level.

    `returns`: (N,) per-episode returns, or empty when only the summary was saved; then
    `mean`/`std`/`count` carry the seed's summary (std with ddof=0 over its episodes).
    """

    returns: np.ndarray
    mean: float
    std: float
    count: int

    @classmethod
    def from_returns(cls, returns: Sequence[float]) -> SeedEval:
        r = np.asarray(returns, dtype=np.float64).reshape(-1)
        if r.size == 0:
            raise ValueError("SeedEval.from_returns needs at least one return")
        return cls(r, float(r.mean()), float(r.std()), int(r.size))

    @classmethod
    def from_summary(cls, mean: float, std: float = 0.0, count: int = 1) -> SeedEval:
        return cls(np.zeros((0,), np.float64), float(mean), float(std), max(int(count), 1))


@dataclasses.dataclass(frozen=True)
class Summary:
    """Aggregate of one (method, task, level) over seeds.

    mean: pooled mean over every episode (equals the mean of seed means for equal counts).
    std: pooled std over every episode, ddof=0, as the paper's "30 episodes" std.
    seed_std: std (ddof=0) of the per-seed means; 0 for one seed.
    ci: (lo, hi) 95% percentile bootstrap of the mean, or None when it cannot be formed
      (a single seed that saved no per-episode returns). `ci_unit` says what it is:
      "seeds" (bootstrap of the per-seed means), "seed range" (2-3 seeds, where that
      bootstrap is exactly the lowest and highest seed mean: `summarize`) or "episodes"
      (bootstrap of one seed's returns).
    """

    mean: float
    std: float
    seed_std: float
    n_seeds: int
    n_episodes: int
    seed_means: tuple[float, ...]
    ci: tuple[float, float] | None
    ci_unit: str | None

    def contains(self, value: float) -> bool | None:
        """Whether `value` lies in the closed interval; None without an interval."""
        if self.ci is None:
            return None
        return bool(self.ci[0] <= value <= self.ci[1])


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` (default: the mean) of 1-D `values`.

    Args:
      values: (N,) samples, N >= 1. With N == 1 the interval is the single value.
      statistic: maps (R, N) resamples to (R,); defaults to the row mean.
      n_resamples: R, the number of resamples.
      confidence: two-sided level, e.g. 0.95 -> the 2.5 and 97.5 percentiles.
      seed: seeds `np.random.default_rng` so the interval is reproducible.
    Returns:
      (lo, hi) floats.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    stat = statistic or (lambda a: a.mean(axis=-1))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    stats = np.asarray(stat(x[idx]), dtype=np.float64)
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(stats, [tail, 100.0 - tail])
    return float(lo), float(hi)


def pooled_mean_std(seeds: Sequence[SeedEval]) -> tuple[float, float]:
    """Mean and std (ddof=0) of all episodes pooled, from per-seed (count, mean, std).

    Law of total variance: var = sum_i n_i (std_i^2 + (mean_i - M)^2) / sum_i n_i, exact for
    ddof=0, so seeds that kept only their summary pool the same way as raw returns.
    """
    n = np.array([s.count for s in seeds], np.float64)
    m = np.array([s.mean for s in seeds], np.float64)
    sd = np.array([s.std for s in seeds], np.float64)
    total = n.sum()
    mean = float((n * m).sum() / total)
    var = float((n * (sd**2 + (m - mean) ** 2)).sum() / total)
    return mean, float(np.sqrt(max(var, 0.0)))


def summarize(
    seeds: Sequence[SeedEval],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> Summary:
    """Pools per-seed evaluations of one level into a `Summary` (see its docstring).

    With >= 2 seeds the bootstrap resamples the per-seed means (between-run variation is what
    a reproduction must match); with one seed it falls back to resampling that seed's episodes,
    which understates the run-to-run spread. With 2 or 3 seeds (3 is the papers' protocol) the
    percentile bootstrap is exactly the range of the seed means, reported as such (`ci_unit`
    "seed range"); for a symmetric spread of runs that range holds the true mean with
    probability 1 - 2^(1-n), 50 % for 2 seeds and 75 % for 3, not 95 %: read "published mean
    outside our interval" as a flag to look closer, not as a test.
    """
    if not seeds:
        raise ValueError("summarize needs at least one seed")
    mean, std = pooled_mean_std(seeds)
    seed_means = np.array([s.mean for s in seeds], np.float64)
    ci, unit = None, None
    n = len(seeds)
    if n >= 2 and float(n) ** -n >= (1.0 - confidence) / 2:
        # Each extreme seed mean is a whole resample with probability n^-n (1/4 for 2 seeds,
        # 1/27 for 3), above the 2.5 % tail: the percentile bootstrap is the seeds' range, and
        # is named so rather than passed off as a 95 % interval.
        ci, unit = (float(seed_means.min()), float(seed_means.max())), "seed range"
    elif n >= 2:
        ci, unit = (
            bootstrap_ci(seed_means, n_resamples=n_resamples, confidence=confidence, seed=seed),
            "seeds",
        )
    elif seeds[0].returns.size:
        ci, unit = (
            bootstrap_ci(
                seeds[0].returns, n_resamples=n_resamples, confidence=confidence, seed=seed
            ),
            "episodes",
        )
    return Summary(
        mean=mean,
        std=std,
        seed_std=float(seed_means.std()),
        n_seeds=len(seeds),
        n_episodes=int(sum(s.count for s in seeds)),
        seed_means=tuple(float(v) for v in seed_means),
        ci=ci,
        ci_unit=unit,
    )


def ema_smooth(values: Sequence[float] | np.ndarray, weight: float = 0.9) -> np.ndarray:
    """TensorBoard-style exponential moving average, as MuMMI Fig. 5 ("weight 0.9").

    s_0 = x_0, s_t = weight * s_{t-1} + (1 - weight) * x_t. Input and output are (T,).
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out = np.empty_like(x)
    last = x[0] if x.size else 0.0
    for i, v in enumerate(x):
        last = weight * last + (1.0 - weight) * v
        out[i] = last
    return out
