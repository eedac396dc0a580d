"""Entry points are importable together (tests import their functions in one process, where
two absl flags of one name from different modules raise DuplicateFlagError), and each turns a
bad input into one line."""

import importlib
import json
import os
import pkgutil
import subprocess
import sys

import experiments


def test_every_experiments_module_imports_in_one_process():
    names = [m.name for m in pkgutil.walk_packages(experiments.__path__, "experiments.")]
    assert {"experiments.train", "experiments.evaluate", "experiments.learning_check"} <= set(names)
    for name in names:
        importlib.import_module(name)


# ----------------------------------------------------------------------------- bad input
# Every entry point answers a bad input with ONE line naming the value and the fix, before any
# collection or compilation: exit status 2 for flags and config, 1 for what only shows at run
# time (a corrupt checkpoint). All cases run at once, as subprocesses.


def _run_dirs(tmp_path):
    """A train logdir, a sweep logdir and an evaluate logdir whose newest checkpoint is
    garbage (their config.json is what the command below resolves to)."""
    from mummi_jax import presets
    from mummi_jax.checkpoint import atomic_write

    config = presets.make_config("mummi", "toy_xy", "tiny")
    dirs = {}
    for name, sub in (("train", ""), ("sweep", "seed0"), ("evaluate", "")):
        d = tmp_path / name / sub
        atomic_write(os.path.join(d, "config.json"), config.to_json().encode())
        atomic_write(os.path.join(d, "checkpoints", "ckpt-000000400.msgpack"), b"\x93garbage")
        dirs[name] = tmp_path / name
    bad = json.loads(config.to_json())
    bad["train"]["batch"] = -3
    atomic_write(str(tmp_path / "edited" / "config.json"), json.dumps(bad).encode())
    return dirs


def test_every_entry_point_turns_bad_input_into_one_line(tmp_path):
    dirs = _run_dirs(tmp_path)
    new = str(tmp_path / "new")
    toy = ["--method=mummi", "--task=toy_xy", "--size=tiny"]
    cases = [  # (module, args, exit status, text the line must hold)
        ("train", [f"--logdir={new}", "--size=tiny", "--set=train.batch=-3"], 2, "train.batch=-3"),
        ("train", [f"--logdir={new}", "--size=tiny", "--set=train.batch=0"], 2, "train.batch=0"),
        ("train", [f"--logdir={new}", "--envs=0"], 2, "train.envs=0"),
        ("train", [f"--logdir={new}", "--set=model.fusion=sum"], 2, "unknown model.fusion 'sum'"),
        (
            "train",
            [f"--logdir={new}", "--set=env.background=/no/such/folder"],
            2,
            "env.background='/no/such/folder' is not a folder",
        ),
        (
            "train",
            [f"--logdir={new}", "--task=cup_catch", "--set=env.touch_site=sole"],
            2,
            "valid: bottom, interior",
        ),
        ("train", [f"--logdir={dirs['train']}", *toy], 1, "corrupt checkpoint"),
        ("sweep", [f"--logdir={new}", "--size=tiny", "--set=train.length=0"], 2, "train.length=0"),
        ("sweep", [f"--logdir={dirs['sweep']}", "--seeds=0", *toy], 1, "corrupt checkpoint"),
        ("evaluate", [f"--logdir={new}"], 2, "config.json not found"),
        ("evaluate", [f"--logdir={tmp_path / 'edited'}"], 2, "train.batch=-3"),
        ("evaluate", [f"--logdir={dirs['evaluate']}"], 1, "corrupt checkpoint"),
        ("learning_check", [f"--logdir={new}", "--set=train.steps=0"], 2, "train.steps=0"),
        ("learning_check", [f"--logdir={new}", "--episodes=0"], 2, "--episodes=0"),
        ("learning_check", [f"--logdir={new}", "--episodes=2"], 2, "could never pass"),
        ("learning_check", [f"--logdir={new}", "--alpha=0"], 2, "--alpha=0.0 must be in"),
        (
            "learning_check",
            [f"--logdir={new}", "--set=train.train_steps=7"],
            2,
            "not a multiple of train.updates_per_call",
        ),
        ("probe", [f"--logdir={new}"], 2, "config.json not found"),
        ("probe", [f"--logdir={dirs['evaluate']}", "--episodes=1"], 2, "--episodes=1"),
        ("probe", [f"--logdir={dirs['evaluate']}"], 1, "corrupt checkpoint"),
        ("reproduce", [f"--out={new}", "--stages=9"], 2, "--stages: '9' is not a stage"),
        ("reproduce", [f"--out={new}", "--set=train.batch=-3"], 2, "train.batch=-3"),
        ("reproduce", [f"--out={new}", "--runs=mummi/walker_fly/0"], 2, "'mummi/walker_fly/0'"),
        ("benchmark", ["--what=train_step", "--set=train.batch=0"], 2, "train.batch=0"),
        ("benchmark", ["--what=env", "--tasks=walker_fly"], 2, "unknown task 'walker_fly'"),
        ("benchmark", ["--what=sweep", "--seeds_list=0"], 2, "--seeds_list"),
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", f"experiments.{module}", "--progress=false", *args]
            if module not in ("evaluate", "benchmark", "probe")
            else [sys.executable, "-m", f"experiments.{module}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for module, args, _, _ in cases
    ]
    for (module, args, status, text), proc in zip(cases, procs, strict=True):
        _, err = proc.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert proc.returncode == status, (module, args, err[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (module, args, lines)
        assert text in lines[0], (module, args, lines[0])
    assert not os.path.exists(new)  # nothing written for a bad flag
