"""experiments.reproduce: the grid, resumable statuses, the ordering verdicts and the RESULTS.md
block it rewrites (the training itself is experiments.train's, tested elsewhere)."""

import json
import os

import pytest

from experiments import reproduce as R
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


def test_status_reads_results_then_checkpoints(tmp_path):
    out = str(tmp_path)
    assert R.status(out, "mummi", "walker_walk", 0) == ("pending", 0)
    d = R.run_dir(out, "mummi", "walker_walk", 0)
    atomic_write(os.path.join(d, "checkpoints", "ckpt-000004000.msgpack"), b"x")
    assert R.status(out, "mummi", "walker_walk", 0) == ("partial", 4000)
    atomic_write(os.path.join(d, "results.json"), json.dumps({"env_steps": 9000}).encode())
    assert R.status(out, "mummi", "walker_walk", 0) == ("done", 9000)


def _row(method, level, mean, task="walker_walk"):
    return {"task": task, "method": method, "evaluation": level, "mean": mean}


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
    assert "walker_walk, high: mummi > dreamer > cvrl" in lines and "does not hold" in lines
    # Drops: mummi 10 %, cvrl 50 %, dreamer -17 % (dreamer gained): MuMMI's is not the smallest.
    assert "MuMMI's drop the smallest does not hold" in lines
    assert R.ordering([]) == ["- not enough finished runs to compare methods yet"]


def test_report_rewrites_only_its_block(tmp_path):
    out = tmp_path / "grid"
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nHand-written analysis.\n")
    d = R.run_dir(str(out), "mummi", "walker_walk", 0)
    evals = {
        lvl: {"returns": [10.0 + i, 12.0 + i], "mean": 11.0 + i, "std": 1.0}
        for i, lvl in enumerate(R.LEVELS)
    }
    atomic_write(
        os.path.join(d, "results.json"),
        json.dumps(
            {
                "method": "mummi",
                "task": "walker_walk",
                "seed": 0,
                "env_steps": 100,
                "protocol": "table1",
                "evaluations": evals,
            }
        ).encode(),
    )
    rows = [{"step": s, "eval/return": float(s) / 10} for s in (100, 200, 300)]
    atomic_write(
        os.path.join(d, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows).encode()
    )
    first = R.report("cpu", str(out), str(results))
    assert "| 1 | mummi | walker_walk | 0 | done | 100 |" in first
    assert "| walker_walk | mummi | none | 1 |" in first  # compare's table row
    R.report("cpu", str(out), str(results))
    text = results.read_text()
    assert text.startswith("# Results\n\nHand-written analysis.\n")
    assert text.count("<!-- reproduce:cpu:begin") == 1 and text.count("reproduce:cpu:end") == 1
    assert os.path.exists(out / "compare.md")
    assert "![curves](docs/results/curves_cpu.png)" in text
    assert (tmp_path / "docs" / "results" / "curves_cpu.png").exists()
