"""Missing-data processes (mummi_jax/masks.py): rates, segments, the reset quirk, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from mummi_jax import masks

OBS = 501  # one Natural MuJoCo episode: 500 agent steps + the reset observation


def _episodes(process, n, num_obs=OBS, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([process.sample(num_obs, rng)[:num_obs] for _ in range(n)])


@pytest.mark.parametrize("p, analytic", [(0.05, 0.283), (0.10, 0.455)])
def test_reference_hits_the_stationary_fraction(p, analytic):
    assert masks.stationary_fraction(p) == pytest.approx(analytic, abs=1e-3)
    sched = _episodes(masks.ReferenceProcess(p), 400)
    # Episodes start with no segment active, so the simulated mean sits a little below the
    # stationary value (reference-code.md §4.2: 0.280 and 0.452).
    assert abs(sched.mean() - analytic) < 0.02
    runs = np.concatenate([masks.run_lengths(s) for s in sched])
    # Segments, not scattered steps: mean run ~ E[L] = 7.5 (a little more from merged runs).
    assert 7.0 < runs.mean() < 9.0
    assert runs.max() >= 14


@pytest.mark.parametrize("rate", [0.375, 0.75, 0.2, 1.0])
@pytest.mark.parametrize("num_obs", [OBS, 101, 37])
def test_paper_is_exact_per_episode(rate, num_obs):
    sched = _episodes(masks.PaperProcess(rate), 50, num_obs=num_obs)
    assert sched.shape == (50, num_obs)
    np.testing.assert_array_equal(sched.sum(1), round(rate * num_obs))


@pytest.mark.parametrize("rate", [0.375, 0.75])
def test_paper_draws_separate_uniform_segments(rate):
    process = masks.PaperProcess(rate)
    sched = _episodes(process, 200)
    runs = np.concatenate([masks.run_lengths(s) for s in sched])
    # Segments are kept apart (one observed step at least), so runs are the drawn lengths:
    # uniform on 1..14 (mean 7.5), the last one of each episode cut to fit.
    assert runs.max() == 14 and runs.min() == 1
    assert 6.8 < runs.mean() < 7.8
    # Starts spread over the whole episode: both halves hold about the same share.
    first, second = sched[:, : OBS // 2].mean(), sched[:, OBS // 2 :].mean()
    assert abs(first - second) < 0.03


@pytest.mark.parametrize("rate", [0.375, 0.75])
def test_paper_misses_every_step_at_the_rate_the_first_and_last_too(rate):
    """Segments laid out from step 0 left the first observation missing in about 8 % of
    episodes at 37.5 % (40 % at 75 %): episodes began observed. Every step, the ends
    included, is missing with probability `rate`."""
    sched = _episodes(masks.PaperProcess(rate), 3000)
    per_step = sched.mean(0)
    for step in (0, 1, OBS // 2, OBS - 2, OBS - 1):  # binomial sd at 3000 episodes: <= 0.009
        assert abs(per_step[step] - rate) < 0.035, (step, per_step[step])
    # The first ten and the last ten observations together, and the whole episode's spread.
    assert abs(per_step[:10].mean() - rate) < 0.02 and abs(per_step[-10:].mean() - rate) < 0.02
    assert np.abs(per_step - rate).max() < 0.05


def test_reference_segment_at_reset_covers_one_more_observation():
    # Released-code quirk: reset and the first step both evaluate at t = 0, so a segment
    # drawn at reset covers L + 1 observations (2..15), elsewhere L (1..14).
    rng = np.random.default_rng(1)
    process = masks.ReferenceProcess(0.05)
    first, later = [], []
    for _ in range(6000):
        runs_start = process.sample(40, rng)[:40]
        runs = masks.run_lengths(runs_start)
        if runs_start[0]:
            first.append(runs[0])
            later.extend(runs[1:])
        else:
            later.extend(runs)
    first, later = np.array(first), np.array(later)
    assert len(first) > 200
    assert first.min() == 2 and later.min() == 1
    # E[L + 1] = 8.5 (cut by the 40-step window and raised by merges; ~8.5 measured).
    assert 7.8 < first.mean() < 9.2
    assert first.mean() - later.mean() > 0.6


def test_reference_schedule_grows_without_changing_the_rate():
    # Growing a schedule chunk by chunk (unknown episode length) continues the same chain.
    rng = np.random.default_rng(2)
    process = masks.ReferenceProcess(0.10)
    fractions = []
    for _ in range(100):
        sched = process.sample(50, rng)
        while len(sched) < 2000:
            sched = np.concatenate([sched, process.sample(50, rng, start=len(sched))])
        fractions.append(sched[:2000].mean())
    assert abs(np.mean(fractions) - masks.stationary_fraction(0.10)) < 0.02


@pytest.mark.parametrize("name", ["reference", "paper", "none"])
def test_rate_zero_and_none_draw_nothing(name):
    rng = np.random.default_rng(0)
    process = masks.make_process(name, 0.0)
    assert not any(process.sample(OBS, rng).any() for _ in range(20))
    assert not masks.make_process("none", 0.5).sample(OBS, rng).any()


def test_same_seed_same_masks_and_streams_differ():
    process = masks.make_process("reference", 0.1)
    a = _episodes(process, 5, seed=3)
    b = _episodes(process, 5, seed=3)
    c = _episodes(process, 5, seed=4)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert (a[0] != a[1]).any()  # episodes differ from each other


def test_helpers():
    s = np.array([1, 1, 0, 0, 1, 0, 1, 1, 1], bool)
    np.testing.assert_array_equal(masks.run_lengths(s), [2, 1, 3])
    assert masks.missing_fraction(s) == pytest.approx(6 / 9)
    assert masks.missing_fraction(np.zeros(0, bool)) == 0.0
    assert masks.run_lengths(np.zeros(5, bool)).size == 0


def test_invalid_names_and_rates():
    with pytest.raises(ValueError, match="reference, paper, none"):
        masks.make_process("bernoulli", 0.1)
    for name in ("reference", "paper"):
        for rate in (-0.1, 1.5):
            with pytest.raises(ValueError, match=r"\[0, 1\]"):
                masks.make_process(name, rate)
    with pytest.raises(ValueError, match="max_missing_len"):
        masks.make_process("reference", 0.1, max_missing_len=0)
