"""experiments.reproduce: the grid, resumable statuses, the ordering verdicts and the RESULTS.md
block it rewrites (the training itself is experiments.train's, tested elsewhere)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from experiments import reproduce as R
from mummi_jax import config as C
from mummi_jax.checkpoint import atomic_write


def test_grid_stages_in_order_and_cpu_budget_is_the_small_size():
    grid = R._grid(["1", "2"])
    assert grid[:3] == [
        ("mummi", "walker_walk", 0),
        ("cvrl", "walker_walk", 0),
        ("dreamer", "walker_walk", 0),
    ]
    assert len(grid) == 12 and {t for _, t, _ in grid} == {"walker_walk", "finger_spin"}
    with pytest.raises(ValueError, match="'5' is not a stage"):
        R._grid(["5"])
    config = R.make_config(R.BUDGETS["cpu"], "cvrl", "walker_walk", 1)
    assert (config.size, config.method, config.seed) == ("small", "cvrl", 1)
    assert R.make_config(R.BUDGETS["gpu"], "mummi", "walker_walk", 0).train.steps == 2_000_000


def test_cpu_grid_keeps_the_walker_touch_site_and_noise_it_started_with():
    """The CPU grid's walker runs all sense touch with the box it began with; other tasks and
    the gpu grid take the task's default, the released code's site."""
    cpu, gpu = R.BUDGETS["cpu"], R.BUDGETS["gpu"]
    assert R.make_config(cpu, "mssm_e", "walker_walk", 2).env.touch_site == "sole_box"
    assert R.make_config(cpu, "mummi", "finger_spin", 0).env.touch_site == "fingertip"
    assert R.make_config(gpu, "mummi", "walker_walk", 0).env.touch_site == "sole"
    # and every run draws the released sampler's batch-shared noise, as it started with
    # (the `small` size itself draws per row since).
    assert R.make_config(cpu, "dreamer", "finger_spin", 1).model.shared_noise
    # The run's own sets come last and win.
    sets = ["env.touch_site=foot"]
    assert R.make_config(cpu, "mummi", "walker_walk", 0, sets).env.touch_site == "foot"


def test_the_archived_cpu_grid_matches_the_configs_the_grid_builds_now():
    """`reproduce --budget=cpu` checks every run it knows against the config it would build
    and refuses to start on a difference: each archived run must still match."""
    archive = os.path.join(os.path.dirname(__file__), "..", "docs", "results", "runs_cpu")
    checked = 0
    for m, t, s in R._grid(["1", "2", "3", "4"]):
        d = R.run_dir(archive, m, t, s)
        if os.path.exists(os.path.join(d, "config.json")):
            C.check_logdir(d, R.make_config(R.BUDGETS["cpu"], m, t, s))
            checked += 1
    assert checked >= 22


def test_status_reads_results_then_checkpoints(tmp_path):
    out = str(tmp_path)
    assert R.status(out, "mummi", "walker_walk", 0) == ("pending", 0)
    d = R.run_dir(out, "mummi", "walker_walk", 0)
    atomic_write(os.path.join(d, "checkpoints", "ckpt-000004000.msgpack"), b"x")
    assert R.status(out, "mummi", "walker_walk", 0) == ("partial", 4000)
    atomic_write(os.path.join(d, "results.json"), json.dumps({"env_steps": 9000}).encode())
    assert R.status(out, "mummi", "walker_walk", 0) == ("done", 9000)
    # Scored before the budget's end (experiments.evaluate on a half-trained run): it trains on.
    assert R.status(out, "mummi", "walker_walk", 0, steps=10000) == ("partial", 4000)
    assert R.status(out, "mummi", "walker_walk", 0, steps=9000) == ("done", 9000)
    # A run archived elsewhere is done even where OUT has nothing of it (a fresh machine).
    archive = str(tmp_path / "archive")
    a = R.run_dir(archive, "cvrl", "walker_walk", 1)
    atomic_write(os.path.join(a, "results.json"), json.dumps({"env_steps": 7000}).encode())
    assert R.status(out, "cvrl", "walker_walk", 1) == ("pending", 0)
    assert R.status(out, "cvrl", "walker_walk", 1, archive) == ("done", 7000)


def _row(method, level, mean, task="walker_walk", ci=None, published=None):
    lo, hi = ci or (None, None)
    return {"task": task, "method": method, "evaluation": level, "mean": mean,
            "ci_lo": lo, "ci_hi": hi, "published_mean": published}  # fmt: skip


def test_ordering_verdicts():
    rows = [
        _row("mummi", "none", 100),
        _row("cvrl", "none", 80),
        _row("dreamer", "none", 60),
        _row("mummi", "high", 90),
        _row("cvrl", "high", 40),
        _row("dreamer", "high", 70),
    ]
    lines = "\n".join(R.ordering(rows))
    assert "walker_walk, none: mummi > cvrl > dreamer" in lines and "order holds" in lines
    assert "walker_walk, high: mummi > dreamer > cvrl" in lines
    assert "does not hold (dreamer > cvrl beyond" in lines
    # Drops: mummi 10 %, cvrl 50 %, dreamer -17 % (dreamer gained): MuMMI's is not the smallest.
    assert "ours mummi 10 %, cvrl 50 %, dreamer -17 % (MuMMI's the smallest: no)" in lines
    assert R.ordering([]) == ["- not enough finished runs to compare methods yet"]


def test_ordering_needs_separated_seeds_and_shows_random_and_the_published_drops():
    """Means in the published order whose seed intervals overlap do not count as the order
    holding; random's score and the published table's own drops are shown beside ours."""
    rows = [
        _row("mummi", "none", 43.7, ci=(26.1, 78.2), published=924.0),
        _row("cvrl", "none", 42.8, ci=(27.2, 52.0), published=781.0),
        _row("dreamer", "none", 17.4, ci=(15.0, 19.0), published=659.0),
        _row("random", "none", 22.1),
        _row("mummi", "high", 30.0, ci=(20.0, 40.0), published=859.0),
        _row("cvrl", "high", 30.0, ci=(25.0, 35.0), published=723.0),
        _row("dreamer", "high", 17.0, ci=(16.0, 18.0), published=620.0),
    ]
    lines = R.ordering(rows)
    none = next(line for line in lines if ", none:" in line)
    assert "mummi 43.7 [26.1, 78.2]" in none and "random 22.1" in none
    assert "not resolved (the intervals of mummi/cvrl overlap)" in none
    drop = next(line for line in lines if "drop from none to high" in line)
    # ours: mummi 31 %, cvrl 30 %, dreamer 2 %; published (Table I-like figures) 7, 7, 6 %.
    assert "(MuMMI's the smallest: no); published mummi 7 %, cvrl 7 %, dreamer 6 %" in drop
    assert "dreamer at or below random without missing data" in drop
    # Separated intervals in the published order: it holds.
    apart = [_row("mummi", "none", 90, ci=(85, 95)), _row("cvrl", "none", 50, ci=(45, 55))]
    assert "published order holds" in R.ordering(apart)[0]


def _finished_run(out, method="mummi", seed=0, env_steps=60_000):  # the cpu budget's
    d = R.run_dir(str(out), method, "walker_walk", seed)
    evals = {
        lvl: {"returns": [10.0 + i, 12.0 + i], "mean": 11.0 + i, "std": 1.0}
        for i, lvl in enumerate(R.LEVELS)
    }
    atomic_write(
        os.path.join(d, "results.json"),
        json.dumps(
            {
                "method": method,
                "task": "walker_walk",
                "seed": seed,
                "env_steps": env_steps,
                "protocol": "table1",
                "evaluations": evals,
            }
        ).encode(),
    )
    rows = [{"step": s, "eval/return": float(s) / 10} for s in (100, 200, 300)]
    atomic_write(
        os.path.join(d, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows).encode()
    )
    atomic_write(os.path.join(d, "checkpoints", "ckpt-000000100.msgpack"), b"weights")
    return d


def test_report_rewrites_only_its_block(tmp_path):
    out = tmp_path / "grid"
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nHand-written analysis.\n")
    _finished_run(out)
    first = R.report("cpu", str(out), str(results))
    assert "| 1 | mummi | walker_walk | 0 | done | 60000 |" in first
    assert "| walker_walk | mummi | none | 1 |" in first  # compare's table row
    R.report("cpu", str(out), str(results))
    text = results.read_text()
    assert text.startswith("# Results\n\nHand-written analysis.\n")
    assert text.count("<!-- reproduce:cpu:begin") == 1 and text.count("reproduce:cpu:end") == 1
    assert os.path.exists(out / "compare.md")
    assert "![curves](docs/results/curves_cpu.png)" in text
    assert (tmp_path / "docs" / "results" / "curves_cpu.png").exists()


def test_archive_keeps_finished_runs_across_a_fresh_checkout(tmp_path):
    """The grid's record must outlive its run directory: report() copies each finished run's
    results/metrics/config (no checkpoints, no unfinished run) into the archive beside
    RESULTS.md, the table is built from the archive, and with OUT gone the runs stay done."""
    out = tmp_path / "grid"
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n")
    _finished_run(out, "mummi", 0)
    unfinished = R.run_dir(str(out), "cvrl", "walker_walk", 0)
    atomic_write(os.path.join(unfinished, "checkpoints", "ckpt-000000050.msgpack"), b"w")
    atomic_write(os.path.join(unfinished, "metrics.jsonl"), b'{"step": 50}\n')

    # Scored half way (experiments.evaluate on its newest checkpoint): not finished either.
    short = _finished_run(out, "dreamer", 0, env_steps=30_000)
    atomic_write(
        os.path.join(short, "config.json"), json.dumps({"train": {"steps": 60_000}}).encode()
    )

    block = R.report("cpu", str(out), str(results))
    archive = tmp_path / "docs" / "results" / "runs_cpu"
    kept = archive / "mummi" / "walker_walk" / "seed0"
    assert sorted(os.listdir(kept)) == ["metrics.jsonl", "results.json"]
    assert not (archive / "cvrl").exists() and not (archive / "dreamer").exists()
    assert "| 1 | dreamer | walker_walk | 0 | partial | 100 |" in block

    # A later run of the same name does not overwrite the archived record.
    _finished_run(out, "mummi", 0, env_steps=61_000)
    assert R.archive_runs(str(out), str(archive)) == []
    assert json.loads((kept / "results.json").read_text())["env_steps"] == 60_000

    # A fresh machine: the run directory is gone, the committed archive is not.
    import shutil

    shutil.rmtree(out)
    assert R.status(str(out), "mummi", "walker_walk", 0, str(archive)) == ("done", 60_000)
    block = R.report("cpu", str(out), str(results))
    assert "| 1 | mummi | walker_walk | 0 | done | 60000 |" in block
    assert "| walker_walk | mummi | none | 1 |" in block
    assert "docs/results/runs_cpu" in block
    assert "every run: `model.shared_noise=true`; per task: `walker_walk`: " in block


def test_runs_selects_named_runs_of_the_stages_in_grid_order():
    grid = R._grid(["1", "4"])
    picked = R._select(grid, ["mssm_e/finger_spin/2", "cvrl/walker_walk/1"])
    assert picked == [("cvrl", "walker_walk", 1), ("mssm_e", "finger_spin", 2)]
    assert R._select(grid, []) == grid
    for bad in ("mummi/finger_spin/0", "mummi/walker_walk", "mummi/walker_walk/x"):
        with pytest.raises(ValueError, match=f"--runs: '{bad}' is not a run"):
            R._select(grid, [bad])  # finger_spin's stage 2 is not selected


def _reproduce(tmp_path, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    results = tmp_path / "RESULTS.md"
    cmd = [sys.executable, "-m", "experiments.reproduce", f"--out={tmp_path / 'grid'}"]
    cmd += [f"--results={results}", "--noprogress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_two_grid_processes_never_train_one_run(tmp_path):
    """A claimed run is skipped by every other process (dry run shows who holds it), and the
    claim dies with its process, even a killed one: no stale lock to clear by hand."""
    out = str(tmp_path / "grid")
    key = (out, "mummi", "walker_walk", 0)
    lock = R.claim(*key)
    assert lock is not None and R.holder(*key)["pid"] == os.getpid()
    assert R.claim(*key) is None  # a second claimant, even in this process
    run = "--runs=mummi/walker_walk/0"
    dry = _reproduce(tmp_path, run, "--dry_run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert f"pid {os.getpid()})" in dry.stdout and "mummi walker_walk" in dry.stdout
    skip = _reproduce(tmp_path, run)
    assert skip.returncode == 0, skip.stderr[-2000:]
    assert f"[mummi / walker_walk / seed 0] held by {socket.gethostname()} pid" in skip.stdout
    assert not os.path.exists(R.run_dir(out, "mummi", "walker_walk", 0))  # nothing trained
    assert not os.path.exists(R.run_dir(out, "random", "walker_walk", 0))
    lock.close()
    assert R.holder(*key) is None

    # A process that claims the run and is killed leaves it free.
    code = f"from experiments import reproduce as R; import time; f = R.claim(*{key!r}); print(1)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code + "; time.sleep(60)"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "1"
    assert R.holder(*key)["pid"] == proc.pid and R.claim(*key) is None
    proc.kill()
    proc.wait()
    assert R.holder(*key) is None
    again = R.claim(*key)
    assert again is not None
    again.close()
