"""Final evaluation protocol: `python -m experiments.evaluate --logdir=DIR` -> results.json.

MuMMI Table I (task != wipe): `train.test_episodes` episodes at each missing level of
`env.missing_test` (none / medium / high), backgrounds of the "test" split (disjoint
from training's). Table II (wipe): all modalities and the robot camera alone (workspace
camera dropped), each with no missing data and with medium missing data. Mean, std and the
actual missing fractions are recorded.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    """Defined when run as a script, not on import: tests import several entry points'
    functions into one process, where flags of one name from two modules clash."""
    flags.DEFINE_string("logdir", None, "A training run directory.")
    flags.DEFINE_integer("episodes", 0, "Episodes per evaluation (0: config.train.test_episodes).")
    flags.DEFINE_bool("videos", True, "Write a GIF of the first episode of each level.")


def protocol(config):
    """[(name, missing rate, dropped modalities)] and the protocol's name."""
    none, medium, high = config.env.missing_test  # three rates: config.validate
    if config.env.task == "wipe":
        return "table2", [
            ("all_full", none, ()),
            ("all_medium", medium, ()),
            ("robot_full", none, ("workspace",)),
            ("robot_medium", medium, ("workspace",)),
        ]
    return "table1", [("none", none, ()), ("medium", medium, ()), ("high", high, ())]


def main(argv):
    del argv
    try:
        evaluate_logdir(FLAGS.logdir, FLAGS.episodes, FLAGS.videos)
    except (FileNotFoundError, ValueError) as e:  # no run there, or a bad config.json
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a checkpoint that cannot be read
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def load_config(logdir: str):
    """The validated config of a run started by experiments.train (its `config.json`)."""
    from mummi_jax import config as C
    from mummi_jax.envs import task_modalities

    path = os.path.join(logdir or "", "config.json")
    if not logdir or not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found; pass --logdir of a run started by experiments.train"
        )
    try:
        config = C.from_dict(C.read_saved(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it or retrain") from None
    C.validate(config, task_modalities(config.env.task, config.env.modalities))
    return config


def evaluation_entry(run, rate: float, drop, modalities) -> dict:
    """One level of results.json from a `runner.Evaluation`."""
    return {
        "modalities": [m for m in modalities if m not in drop],
        "missing_rate": rate,
        "returns": run.returns,
        "mean": run.mean,
        "std": float(np.std(run.returns)),
        "actual_missing": {m: float(np.mean([f[m] for f in run.missing])) for m in modalities},
    }


def evaluate_logdir(logdir: str, episodes: int = 0, videos: bool = True) -> dict:
    """Runs the protocol on the newest checkpoint of `logdir`; writes and returns results.

    With `videos`, the first episode of each level goes to `<logdir>/videos/<level>.gif`."""
    from mummi_jax import checkpoint, video
    from mummi_jax.runner import Runner

    config = load_config(logdir)
    if episodes < 0:
        raise ValueError(f"--episodes={episodes} must be >= 0 (0: train.test_episodes)")
    runner = Runner(config, logdir, progress=False)
    state, metas = runner.restore()
    if metas[0] is None:
        raise FileNotFoundError(f"no checkpoint in {runner.runs[0].ckpt_dir}; train first")
    episodes = episodes or config.train.test_episodes
    name, levels = protocol(config)
    results = {
        "method": config.method,
        "task": config.env.task,
        "seed": config.seed,
        "env_steps": metas[0]["counters"]["env_steps"],
        "fidelity": config.fidelity,
        "missing_process": config.env.missing,
        "protocol": name,
        "evaluations": {},
    }
    modalities = runner.agent.modalities
    for level, rate, drop in levels:
        run = runner.evaluate(state, episodes=episodes, rate=rate, drop=drop)[0]
        results["evaluations"][level] = evaluation_entry(run, rate, drop, modalities)
        if videos:
            path = video.write_episode(logdir, f"{name}-{level}", run.first_episode, modalities)
            if path:
                results["evaluations"][level]["video"] = os.path.relpath(path, logdir)
        print(f"{level:>12}: {run.mean:8.1f} +- {np.std(run.returns):6.1f}")
    checkpoint.atomic_write(
        os.path.join(logdir, "results.json"), json.dumps(results, indent=2).encode()
    )
    return results


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
