"""The agent really learns: tiny MuMMI on the toy robot against a random policy.

The same check as `python -m experiments.learning_check` (BENCHMARKS.md, "Learning check"),
run in full: 20k env steps, 5,000 updates, then 10 test episodes each for the trained agent
and for uniform random actions on the same episode seeds. 2-4 minutes on 2 cores.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments.learning_check import defaults
from tests.xla_flags import default_codegen_env

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_mummi_beats_random_on_the_toy_robot(tmp_path):
    # A child process at XLA's default code generation: this check's time is training.
    cmd = [sys.executable, "-m", "experiments.learning_check", "--seed=0", "--episodes=10"]
    cmd += [f"--logdir={tmp_path}", "--progress=false"]
    out = subprocess.run(
        cmd, env=default_codegen_env(), cwd=ROOT, capture_output=True, text=True, timeout=1200
    )
    assert out.returncode in (0, 1), out.stderr[-3000:]  # 1: ran, and the check failed
    line = json.loads(out.stdout.strip().splitlines()[-1])
    result = json.loads((tmp_path / "learning_check.json").read_text())
    assert line["passed"] == result["passed"] == (out.returncode == 0)
    assert (result["method"], result["task"], result["size"]) == (
        "mummi",
        "toy_position_camera",
        "tiny",
    )
    agent, rand = result["agent"]["mean"], result["random"]["mean"]
    assert result["env_steps"] == 20_000 and result["updates"] == 5_000
    # Random actions score 52 on these episodes, of a possible 200; trained agents 155-163
    # (seeds 0-3, BENCHMARKS.md "Learning check").
    assert agent >= rand + 50 and agent >= 2 * rand, (agent, rand)
    assert agent >= 120, result["agent"]["returns"]
    assert np.all(np.isfinite(result["agent"]["returns"]))


def test_a_task_s_check_defaults_to_its_cpu_budget_and_its_target():
    # The toy robot learns at tiny in minutes; the Natural MuJoCo tasks only at small, the CPU
    # budget (RESULTS.md), and the targets are 3x random on walker, 2x elsewhere.
    assert defaults("toy_position_camera") == {"size": "tiny", "margin": 50.0, "ratio": 2.0}
    assert defaults("walker_walk") == {"size": "small", "margin": 0.0, "ratio": 3.0}
    assert defaults("cup_catch") == {"size": "small", "margin": 0.0, "ratio": 2.0}
    with pytest.raises(ValueError, match="unknown task 'walker_jog'"):
        defaults("walker_jog")
