"""experiments/compare.py and mummi_jax/stats.py on tiny run directories in tmp_path."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import compare
from mummi_jax import stats

REPO = os.path.join(os.path.dirname(__file__), "..")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(path, method, task, seed, evals=None, curve=None, protocol="table1", config=True):
    """A run directory in the documented formats (docs/ARCHITECTURE.md "Run directory").

    evals: {evaluation name: list of returns}; curve: [(env step, eval return)].
    """
    os.makedirs(path, exist_ok=True)
    if config:
        cfg = {"method": method, "seed": seed, "env": {"task": task}, "train": {"steps": 1000}}
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f)
    if evals is not None:
        results = {
            "method": method,
            "task": task,
            "seed": seed,
            "env_steps": 1000,
            "fidelity": "reference",
            "missing_process": "reference",
            "protocol": protocol,
            "evaluations": {
                name: {
                    "modalities": ["image"],
                    "missing_rate": 0.0,
                    "returns": list(r),
                    "mean": float(np.mean(r)),
                    "std": float(np.std(r)),
                    "actual_missing": {"image": 0.0},
                }
                for name, r in evals.items()
            },
        }
        with open(os.path.join(path, "results.json"), "w") as f:
            json.dump(results, f)
    if curve is not None:
        with open(os.path.join(path, "metrics.jsonl"), "w") as f:
            for i, (step, value) in enumerate(curve):
                f.write(json.dumps({"step": step, "wall": float(i), "wm/loss": 1.0}) + "\n")
                f.write(json.dumps({"step": step, "wall": float(i), "eval/return": value}) + "\n")
    return str(path)


def call(logdirs, out=None, table="auto", **kw):
    """run_compare with captured streams: (exit status, stdout, stderr)."""
    o, e = io.StringIO(), io.StringIO()
    rc = compare.run_compare(
        [str(d) for d in logdirs],
        out and str(out),
        table,
        n_resamples=2000,
        stdout=o,
        stderr=e,
        **kw,
    )
    return rc, o.getvalue(), e.getvalue()


# -- stats -----------------------------------------------------------------------------------
def test_pooled_mean_std_by_hand_and_from_summaries():
    a = stats.SeedEval.from_returns([900.0, 950.0])
    b = stats.SeedEval.from_returns([1000.0, 1050.0])
    # Deviations from 975: -75, -25, 25, 75 -> var = (2 * 5625 + 2 * 625) / 4 = 3125.
    assert stats.pooled_mean_std([a, b]) == pytest.approx((975.0, np.sqrt(3125.0)))
    # Summaries with unequal counts pool exactly like the raw returns.
    r1, r2 = [1.0, 2.0, 6.0], [10.0, 12.0]
    s1 = stats.SeedEval.from_summary(np.mean(r1), np.std(r1), 3)
    s2 = stats.SeedEval.from_summary(np.mean(r2), np.std(r2), 2)
    assert stats.pooled_mean_std([s1, s2]) == pytest.approx((np.mean(r1 + r2), np.std(r1 + r2)))


def test_two_seed_bootstrap_is_the_range_of_seed_means():
    # Resampling 2 seed means gives {a, (a+b)/2, b} with probabilities 1/4, 1/2, 1/4, so the
    # 2.5/97.5 percentiles are exactly a and b.
    s = stats.summarize(
        [stats.SeedEval.from_returns([900, 950]), stats.SeedEval.from_returns([1000, 1050])]
    )
    assert s.ci == (925.0, 1025.0) and s.ci_unit == "seed range"
    assert (s.seed_std, s.n_seeds, s.n_episodes) == (50.0, 2, 4)
    assert s.contains(954.5) is True and s.contains(924.9) is False
    assert s.contains(1025.0) is True  # closed interval


def test_bootstrap_contains_mean_shrinks_with_seeds_and_is_seeded():
    rng = np.random.default_rng(3)
    draws = rng.normal(500.0, 60.0, size=40)
    widths = []
    for n in (3, 10, 40):
        seeds = [stats.SeedEval.from_returns([v - 5, v + 5]) for v in draws[:n]]
        s = stats.summarize(seeds, n_resamples=4000, seed=1)
        assert s.ci[0] < s.mean < s.ci[1]
        widths.append(s.ci[1] - s.ci[0])
        assert stats.summarize(seeds, n_resamples=4000, seed=1).ci == s.ci
    assert widths[0] > widths[1] > widths[2]
    # Roughly 2 * 1.96 * 60 / sqrt(40) = 37 for 40 seeds.
    assert 25.0 < widths[2] < 50.0


def test_single_seed_resamples_episodes_or_has_no_interval():
    s = stats.summarize([stats.SeedEval.from_returns([10.0, 20.0, 30.0, 40.0])])
    assert s.ci_unit == "episodes" and s.ci[0] < 25.0 < s.ci[1]
    assert s.ci[0] >= 10.0 and s.ci[1] <= 40.0
    none = stats.summarize([stats.SeedEval.from_summary(25.0, 3.0, 10)])
    assert none.ci is None and none.contains(25.0) is None
    assert (none.mean, none.std) == (25.0, 3.0)


def test_ema_smooth_by_hand():
    assert stats.ema_smooth([0.0, 10.0, 10.0], 0.9) == pytest.approx([0.0, 1.0, 1.9])
    assert stats.ema_smooth([5.0, 7.0], 0.0) == pytest.approx([5.0, 7.0])


# -- discovery -------------------------------------------------------------------------------
def test_discovers_seed_runs_recursively_and_skips_run_internals(tmp_path):
    for s in range(3):
        write_run(
            tmp_path / "sweep" / "mummi" / f"seed{s}", "mummi", "walker_walk", s, {"none": [1]}
        )
    # A results.json inside checkpoints/ must not count as a nested run.
    write_run(
        tmp_path / "sweep/mummi/seed0/checkpoints/x", "mummi", "walker_walk", 9, {"none": [1]}
    )
    runs, problems = compare.discover_runs(str(tmp_path / "sweep"))
    assert problems == []
    assert [os.path.basename(r) for r in runs] == ["seed0", "seed1", "seed2"]


# -- aggregation and outputs -----------------------------------------------------------------
def test_aggregate_by_hand_against_table1(tmp_path):
    write_run(tmp_path / "seed0", "mummi", "walker_walk", 0, {"none": [900, 950], "high": [800]})
    write_run(tmp_path / "seed1", "mummi", "walker_walk", 1, {"none": [1000, 1050], "high": [9]})
    runs, problems = compare.collect_runs([str(tmp_path)])
    assert problems == [] and len(runs) == 2
    rows, problems = compare.aggregate(runs, compare.load_reference(), n_resamples=2000)
    assert problems == []
    none, high = rows  # ordered as the table: none, medium, high
    assert (none["evaluation"], high["evaluation"]) == ("none", "high")
    assert none["table"] == "mummi_table1"
    assert none["mean"] == pytest.approx(975.0)
    assert none["std"] == pytest.approx(np.sqrt(3125.0))
    assert (none["ci_lo"], none["ci_hi"]) == (925.0, 1025.0)
    assert (none["published_mean"], none["published_std"]) == (954.5, 21.5)
    assert none["diff"] == pytest.approx(20.5)
    assert none["inside"] is True
    # high: seed means 800 and 9 -> interval [9, 800]; published 890.0 lies outside.
    assert high["mean"] == pytest.approx(404.5)
    assert (high["ci_lo"], high["ci_hi"], high["published_mean"]) == (9.0, 800.0, 890.0)
    assert high["diff"] == pytest.approx(404.5 - 890.0)
    assert high["inside"] is False


def test_writes_markdown_json_and_curves(tmp_path):
    logs = tmp_path / "logs"
    for s in range(2):
        curve = [(0, 10.0 + s), (5000, 200.0 + s), (10000, 400.0 + 10 * s)]
        write_run(
            logs / "mummi" / f"seed{s}",
            "mummi",
            "walker_walk",
            s,
            {"none": [940.0 + 30.0 * s]},
            curve,
        )
        write_run(logs / "cvrl" / f"seed{s}", "cvrl", "walker_walk", s, {"none": [700.0]}, curve)
    write_run(logs / "dreamer_cup", "dreamer", "cup_catch", 0, None, [(0, 1.0), (100, 2.0)])
    out = tmp_path / "out"
    rc, stdout, stderr = call([logs], out)
    assert rc == 0, stderr
    md = (out / "compare.md").read_text()
    assert md.startswith("# Comparison")
    row = "| walker_walk | mummi | none | 2 | 2 | 955.0 ± 15.0 | [940.0, 970.0] (seed range) |"
    assert row in md
    assert "954.5 ± 21.5 (mummi_table1) | +0.5 | yes |" in md
    # CVRL: both seeds 700 -> a zero-width interval that excludes 732.7.
    assert "732.7 ± 61.7 (mummi_table1) | -32.7 | no |" in md
    assert "| walker_walk | mummi | none |" in stdout
    data = json.loads((out / "compare.json").read_text())
    assert {(r["method"], r["evaluation"]) for r in data["rows"]} == {
        ("cvrl", "none"),
        ("mummi", "none"),
    }
    png = (out / "curves.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 5000


def test_mean_curve_stays_inside_the_common_step_range():
    a = (np.array([0.0, 10.0, 20.0]), np.array([0.0, 10.0, 20.0]))
    b = (np.array([0.0, 10.0]), np.array([0.0, 30.0]))
    steps, mean, sd = compare._mean_curve([a, b], weight=0.0)
    assert steps.tolist() == [0.0, 10.0]
    assert mean.tolist() == [0.0, 20.0] and sd.tolist() == [0.0, 10.0]


def test_table2_picked_from_protocol(tmp_path):
    evals = {"all_full": [50.0, 70.0], "robot_full": [60.0]}
    write_run(tmp_path / "w", "mssm_e", "wipe", 0, evals, protocol="table2")
    rc, stdout, _ = call([tmp_path], tmp_path / "out")
    assert rc == 0
    assert "| wipe | mssm_e | all_full | 1 | 2 | 60.0 ± 10.0 |" in stdout
    assert "64.9 ± 85.3 (mummi_table2)" in stdout and "60.4 ± 98.2 (mummi_table2)" in stdout


# -- bad input -------------------------------------------------------------------------------
def test_missing_directory_is_named(tmp_path):
    missing = tmp_path / "nope"
    rc, _, stderr = call([missing])
    assert rc == 1
    assert f"logdir '{missing}' does not exist" in stderr and "results.json" in stderr
    assert "nothing usable" in stderr


def test_empty_and_foreign_directories(tmp_path):
    empty, foreign = tmp_path / "empty", tmp_path / "foreign"
    empty.mkdir()
    (foreign / "sub").mkdir(parents=True)
    (foreign / "notes.txt").write_text("hello")
    (foreign / "sub" / "data.csv").write_text("1,2")
    rc, _, stderr = call([empty, foreign])
    assert rc == 1
    for d in (empty, foreign):
        assert f"no runs under '{d}': no results.json or metrics.jsonl" in stderr
    assert "seed<N>" in stderr


def test_one_good_logdir_is_enough(tmp_path):
    good = write_run(tmp_path / "good", "mummi", "finger_spin", 0, {"none": [960.0, 970.0]})
    rc, stdout, stderr = call([tmp_path / "missing", good], tmp_path / "out")
    assert rc == 0
    assert "does not exist" in stderr
    assert "965.6 ± 10.9" in stdout


def test_task_and_method_without_published_numbers(tmp_path):
    write_run(tmp_path / "toy", "mummi", "toy_xy", 0, {"none": [5.0, 7.0]})
    write_run(tmp_path / "coral", "coral_v", "walker_walk", 0, {"none": [100.0]})
    rc, stdout, stderr = call([tmp_path], tmp_path / "out")
    assert rc == 0
    assert "task 'toy_xy' is not in mummi_table1" in stderr
    assert "method 'coral_v' has no mummi_table1 entry for walker_walk" in stderr
    assert "published: cvrl, dreamer, mummi, mummi_b" in stderr
    # Our numbers are still printed, flagged as having no published figure.
    assert "| toy_xy | mummi | none | 1 | 2 | 6.0 ± 1.0 |" in stdout
    assert stdout.count("no published figure") == 2


def test_explicit_table_and_unknown_table(tmp_path):
    write_run(tmp_path / "r", "cvrl", "cheetah_run", 0, {"none": [250.0, 260.0]})
    rc, stdout, _ = call([tmp_path], tmp_path / "out", table="cvrl_table1_natural")
    assert rc == 0 and "248.7 ± - (cvrl_table1_natural)" in stdout
    rc, _, stderr = call([tmp_path], tmp_path / "out", table="table9")
    assert rc == 2 and "unknown --table 'table9'" in stderr and "mummi_table1" in stderr


def test_broken_files_are_named(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    shapeless = tmp_path / "shapeless"
    shapeless.mkdir()
    (shapeless / "results.json").write_text(json.dumps({"method": "mummi", "task": "cup_catch"}))
    anonymous = write_run(
        tmp_path / "anon", "mummi", "cup_catch", 0, None, [(0, 1.0)], config=False
    )
    rc, _, stderr = call([tmp_path])
    assert rc == 1
    assert f"cannot read {bad / 'results.json'}" in stderr
    assert f"{shapeless / 'results.json'}: no 'evaluations' object" in stderr
    assert f"{anonymous}: cannot tell the run's method and task" in stderr


def test_cli_exit_status_and_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.compare", f"--logdirs={tmp_path / 'absent'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "absent' does not exist" in proc.stderr


def test_what_the_table_cannot_show_is_said_and_random_baselines_are_not_flagged(tmp_path):
    """A seed with a curve but no results.json, or one that kept only its mean, is named on
    stderr; a random baseline beside its run's config.json (experiments.reproduce) is not a
    method mismatch."""
    write_run(tmp_path / "mummi0", "mummi", "walker_walk", 0, {"none": [900.0, 910.0]})
    write_run(tmp_path / "mummi1", "mummi", "walker_walk", 1, None, [(0, 1.0), (100, 2.0)])
    summary = write_run(tmp_path / "mummi2", "mummi", "walker_walk", 2, {"none": [500.0]})
    with open(os.path.join(summary, "results.json")) as f:
        results = json.load(f)
    del results["evaluations"]["none"]["returns"]
    with open(os.path.join(summary, "results.json"), "w") as f:
        json.dump(results, f)
    rand = write_run(tmp_path / "random0", "random", "walker_walk", 0, {"none": [20.0]})
    with open(os.path.join(rand, "config.json"), "w") as f:  # the run it was scored for
        json.dump({"method": "mummi", "seed": 0, "env": {"task": "walker_walk"}}, f)
    rc, stdout, stderr = call([tmp_path], tmp_path / "out")
    assert rc == 0
    assert "mummi1: no results.json, so only its learning curve is used" in stderr
    assert f"--logdir={tmp_path / 'mummi1'}" in stderr
    assert "mummi2: evaluation 'none' kept only its mean" in stderr
    assert "config.json says" not in stderr
    assert "| walker_walk | random | none | 1 | 1 | 20.0" in stdout
