"""Final evaluation protocol: `python -m experiments.evaluate --logdir=DIR` -> results.json.

MuMMI Table I (task != wipe): `train.test_episodes` episodes at each missing level of
`env.missing_test` (none / medium / high), validation backgrounds. Table II (wipe): all
modalities and the robot camera alone (workspace camera dropped), each with no missing data
and with medium missing data. Mean, std and the actual missing fractions are recorded.
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
    levels = list(config.env.missing_test) + [0.0] * 3
    none, medium, high = levels[0], levels[1], levels[2]
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
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def evaluate_logdir(logdir: str, episodes: int = 0, videos: bool = True) -> dict:
    """Runs the protocol on the newest checkpoint of `logdir`; writes and returns results.

    With `videos`, the first episode of each level goes to `<logdir>/videos/<level>.gif`."""
    from mummi_jax import config as C
    from mummi_jax import envs, loop
    from mummi_jax.agent import Agent
    from mummi_jax.parallel import seed_key

    path = os.path.join(logdir or "", "config.json")
    if not logdir or not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found; pass --logdir of a run started by experiments.train"
        )
    with open(path) as f:
        config = C.from_dict(json.load(f))
    env_kwargs = loop.env_kwargs_from_config(config)
    probe = envs.make(**env_kwargs, seed=config.seed)
    agent = Agent(config, probe.observation_spec(), probe.action_spec())
    probe.close()
    runner = loop.Runner(config, agent, logdir, env_kwargs, progress=False)
    state, counters = runner.restore(agent.init(seed_key(config.seed)))
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {runner.ckpt_dir}; train first")
    episodes = episodes or config.train.test_episodes
    name, levels = protocol(config)
    results = {
        "method": config.method,
        "task": config.env.task,
        "seed": config.seed,
        "env_steps": counters["env_steps"],
        "fidelity": config.fidelity,
        "missing_process": config.env.missing,
        "protocol": name,
        "evaluations": {},
    }
    for level, rate, drop in levels:
        runner.evaluate(state, episodes=episodes, rate=rate, drop=drop)
        returns = runner.last_eval["returns"]
        fractions = runner.last_eval["missing"]
        results["evaluations"][level] = {
            "modalities": [m for m in agent.modalities if m not in drop],
            "missing_rate": rate,
            "returns": returns,
            "mean": float(np.mean(returns)),
            "std": float(np.std(returns)),
            "actual_missing": {
                m: float(np.mean([f[m] for f in fractions])) for m in agent.modalities
            },
        }
        if videos:
            path = runner.write_video(f"{name}-{level}")
            if path:
                results["evaluations"][level]["video"] = os.path.relpath(path, logdir)
        print(f"{level:>12}: {np.mean(returns):8.1f} +- {np.std(returns):6.1f}")
    loop.atomic_write(os.path.join(logdir, "results.json"), json.dumps(results, indent=2).encode())
    return results


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
