"""experiments.toy_latent (MuMMI Fig. 1/19/20): hand-checked metric numbers and one tiny run."""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from experiments import toy_latent as tl

KEYS = {"r2", "r2_x", "r2_y", "distance", "cross_r2", "var", "var_ratio", "poe_weight"}


def test_r2_of_exact_linear_relation_is_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = x @ rng.normal(size=(5, 2)) + np.array([0.3, -1.0])
    r2, per_dim = tl.linear_r2(x[:200], y[:200], x[200:], y[200:])
    assert r2 == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(per_dim, 1.0, atol=1e-3)


def test_r2_of_independent_noise_is_about_zero():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4000, 3)), rng.normal(size=(4000, 2))
    r2, per_dim = tl.linear_r2(x[:2000], y[:2000], x[2000:], y[2000:])
    assert abs(r2) < 0.01 and np.all(np.abs(per_dim) < 0.01)


def test_r2_is_pooled_over_outputs():
    # y0 = x exactly, y1 independent of x with the same variance: pooled R^2 = 1/2.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4000, 1))
    y = np.concatenate([x, rng.normal(size=(4000, 1))], axis=1)
    r2, per_dim = tl.linear_r2(x[:2000], y[:2000], x[2000:], y[2000:])
    assert r2 == pytest.approx(0.5, abs=0.03)
    assert per_dim[0] == pytest.approx(1.0, abs=1e-3) and abs(per_dim[1]) < 0.01


def test_r2_survives_collinear_features():
    # A 1-D curve in 8 dims (toy_xy's x expert): plain least squares extrapolates wildly.
    rng = np.random.default_rng(3)
    t = rng.uniform(-1, 1, (600, 1))
    x = np.concatenate([t, t**2, t**3, np.sin(3 * t), np.tanh(t), t, 2 * t, t**2], axis=1)
    y = np.concatenate([t, rng.uniform(-1, 1, (600, 1))], axis=1)
    r2, per_dim = tl.linear_r2(x[:300], y[:300], x[300:], y[300:])
    assert per_dim[0] > 0.99 and -0.1 < per_dim[1] < 0.05 and 0.4 < r2 < 0.55


def test_distance_of_identical_experts_is_zero():
    mu = np.random.default_rng(4).normal(size=(50, 6))
    assert tl.expert_distance({"a": mu, "b": mu.copy()}) == {"a": 0.0, "b": 0.0}


def test_distance_of_a_known_case():
    # a = (+1, 0), b = (-1, 0) for every sample: ||a - b|| = 2, centroid 0, RMS spread 1.
    n = 10
    a = np.tile([1.0, 0.0], (n, 1))
    b = np.tile([-1.0, 0.0], (n, 1))
    assert tl.expert_distance({"a": a, "b": b}) == {"a": 2.0, "b": 2.0}
    # Unrelated high-dimensional clouds of equal spread: sqrt(2).
    rng = np.random.default_rng(5)
    far = tl.expert_distance({"a": rng.normal(size=(500, 400)), "b": rng.normal(size=(500, 400))})
    assert far["a"] == pytest.approx(math.sqrt(2), rel=0.02)


def test_cross_r2_tells_a_shared_code_from_a_low_distance():
    """`distance` can be small for experts that share a strong x code but put y in other
    directions; the decoder of one read from the other shows it."""
    rng = np.random.default_rng(6)
    pos = rng.uniform(-1, 1, (600, 2))
    x, y = pos[:, :1], pos[:, 1:]
    zeros = np.zeros((600, 1))
    a = np.concatenate([10 * x, y, zeros], axis=1)  # y in dimension 1
    b = np.concatenate([10 * x, zeros, y], axis=1)  # y in dimension 2
    assert tl.expert_distance({"a": a, "b": b})["a"] < 0.2
    cross = tl.cross_r2({"a": a, "b": b}, pos, 300)
    assert cross["a"] == pytest.approx(0.5, abs=0.05)  # x read right, y not at all
    # One space, the same point per observation up to noise: the decoder carries over.
    shared = {"a": a, "b": a + rng.normal(scale=0.01, size=a.shape)}
    assert min(tl.cross_r2(shared, pos, 300).values()) > 0.99
    # Unrelated linear codes of the same positions: nothing carries over.
    other = pos @ rng.normal(size=(2, 3))
    assert (
        max(tl.cross_r2({"a": pos @ rng.normal(size=(2, 3)), "b": other}, pos, 300).values()) < 0.5
    )


def test_variance_ratio_and_poe_weight_of_a_known_case():
    # sigma 2 vs sigma 1: var 4 vs 1, ratio 4 and 1/4.
    stds = {"camera": np.full((7, 3), 2.0), "position": np.ones((7, 3))}
    out = tl.variance_ratio(stds)
    assert out["camera"] == (4.0, 4.0) and out["position"] == (1.0, 0.25)
    # Gaussian PoE: precisions 1/4 and 1 -> shares 0.2 and 0.8; reference: 1/2 and 1.
    gauss = tl.poe_weight_share(stds, "gaussian")
    ref = tl.poe_weight_share(stds, "reference")
    assert gauss["camera"] == pytest.approx(0.2) and gauss["position"] == pytest.approx(0.8)
    assert ref["camera"] == pytest.approx(1 / 3) and ref["position"] == pytest.approx(2 / 3)
    # With the N(0, I) prior expert (weight 1): 0.25 / 2.25 and 1 / 2.25; the reference
    # form has no prior expert, so the option leaves it alone.
    prior = tl.poe_weight_share(stds, "gaussian", prior_expert=True)
    assert prior["camera"] == pytest.approx(1 / 9) and prior["position"] == pytest.approx(4 / 9)
    assert tl.poe_weight_share(stds, "reference", prior_expert=True) == ref


def test_pca_keeps_the_two_main_axes():
    rng = np.random.default_rng(6)
    pts = rng.normal(size=(300, 3)) * np.array([5.0, 2.0, 0.01])
    proj = tl.pca_2d(pts)(pts)
    assert proj.shape == (300, 2)
    np.testing.assert_allclose(np.std(proj, axis=0), np.std(pts[:, :2], axis=0), rtol=0.05)


def test_both_methods_get_the_drops_and_image_size_they_are_given():
    # The Fig. 1 comparison differs in the objective only: the same train-time drops.
    for method, preset in tl.METHODS.items():
        config = tl.make_config(method, "toy_position_camera", 0, 0.2)
        assert config.method == preset
        assert config.loss.modality_drop == 0.2 and config.env.image_size == 64
        assert config.env.missing == "none"
    clean = tl.make_config("mummi", "toy_position_camera", 0, 0.0, image_size=32)
    assert clean.loss.modality_drop == 0.0 and clean.env.image_size == 32


@pytest.mark.slow
def test_end_to_end_smoke(tmp_path):
    out = tmp_path / "run"
    summary = tl.run(
        str(out),
        tasks=("toy_position_camera", "toy_xy"),
        steps=5,
        episodes=2,
        eval_episodes=4,
        progress=False,
        image_size=32,  # the paper's 64 px (the default, below) compiles slower
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"mummi", "recon_poe"}
    for method in metrics:
        assert set(metrics[method]) == {"position", "camera"}
        for expert, values in metrics[method].items():
            assert set(values) == KEYS, expert
            assert all(math.isfinite(v) for v in values.values())
            assert values["r2"] <= 1 and values["r2_x"] <= 1 and values["r2_y"] <= 1
            assert values["distance"] >= 0 and values["var"] > 0 and values["var_ratio"] > 0
            assert 0 < values["poe_weight"] < 1
        assert sum(v["poe_weight"] for v in metrics[method].values()) == pytest.approx(1.0)
    assert (
        metrics["mummi"]["position"]["r2"]
        == summary["variants"]["toy_position_camera"]["mummi"]["position"]["r2"]
    )
    xy = json.loads((out / "toy_xy" / "metrics.json").read_text())
    assert set(xy["mummi"]) == {"x", "y"}
    saved = json.loads((out / "summary.json").read_text())
    assert set(saved["variants"]) == {"toy_position_camera", "toy_xy"}
    assert set(saved["untrained"]["toy_xy"]) == {"mummi", "recon_poe"}
    assert saved["settings"]["mummi_drop"] == saved["settings"]["recon_drop"] == 0.2
    assert saved["settings"]["image_size"] == 32
    assert inspect.signature(tl.run).parameters["image_size"].default == 64
    for png in (out / "latent.png", out / "toy_xy" / "latent.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(out / "toy_xy" / "latents.npz") as data:
        assert data["true_position"].shape == (4 * 101, 2)
        assert data["recon_poe/x/std"].shape == data["mummi/y/mean"].shape == (4 * 101, 64)
    assert not [p for p in out.rglob(".tmp-*")]


def test_missing_out_is_a_clear_error():
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.toy_latent"], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "--out" in proc.stderr


def test_probe_smoke(tmp_path):
    from experiments import toy_probe

    res = toy_probe.probe(str(tmp_path / "p"), steps=5, episodes=2, eval_episodes=8)
    assert res["distance"] >= 0 and 0 <= res["offset_in_span_g"] <= 1 + 1e-9
    assert len(res["angles"]) == 2 and all(0 <= a <= 90 for a in res["angles"])
    total = res["p_positive_camera"] + res["p_same_sequence_camera"]
    assert total + res["p_other_sequences_camera"] == pytest.approx(1.0)
    with np.load(tmp_path / "p.npz") as data:
        assert data["g"].shape == data["camera"].shape == (8 * 101, 64)
    assert json.loads((tmp_path / "p.json").read_text())["method"] == "mummi"
