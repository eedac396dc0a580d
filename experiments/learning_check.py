"""Does the agent learn? Train, then score it and a random policy on the same test episodes.

    python -m experiments.learning_check --logdir=runs/learning_check

    python -m experiments.learning_check --task=walker_walk --seed=3 --logdir=runs/lc_walker

Defaults: MuMMI, the toy 2D robot with a position sensor and a ceiling camera (a reaching
reward, at most 200 per episode), the tiny size (20k env steps, a few minutes on a 2-core
CPU). A Multi-modal Natural MuJoCo task defaults to the CPU budget's size, `--size=small`
(60k env steps, 500-step episodes, RGB + depth + touch with the reference missing data, one
RSSM noise draw per row since 2026-12-07; about 40 minutes on a 2-core CPU, RESULTS.md). The
run is an ordinary `experiments.train` logdir (re-running resumes). It then plays
`--episodes` test episodes, without missing data, with the trained agent and with uniform
random actions on the very same episode seeds, and passes when

    mean(agent) >= mean(random) + --margin   and   mean(agent) >= --ratio * mean(random)
    and   p <= --alpha,

p being the one-sided Mann-Whitney U test's chance of a lead this large over random when the
two policies score alike. Why the test: on a sparse task a ratio of means can rest on one
lucky episode (`cup_catch`: 2 catches against 1 in 10 episodes gave a ratio of 5.97 at
p = 0.25; RESULTS.md), while a learnt walker's 10 episodes all beat random's (p = 5e-6).

The thresholds default per task (issue 14's targets): the toy robot margin 50 and ratio 2,
walker tasks ratio 3, every other task ratio 2 (margin 0).

Prints one JSON line (agent and random mean returns, their ratio (null when random scored
nothing), `p_value`, `passed`, and, to read beside them, `separation`: the chance that an
agent episode beats a random one, the U statistic over n * m, and each side's count of
episodes with any reward; `seconds` and
`train_seconds`, this invocation's wall time, and `resumed_from`, the env steps of the
checkpoint it resumed, 0 for a run from scratch), writes
`<logdir>/learning_check.json` (with every episode's return) and exits 1 when the check
fails. Measured figures are in BENCHMARKS.md ("Learning check").
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np
from absl import app, flags

from mummi_jax import config as C
from mummi_jax import presets
from mummi_jax.envs.tasks import task_info

FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a script: tests import `check`, and `logdir` / `episodes`
    would clash with experiments.evaluate's flags in one process."""
    flags.DEFINE_string("method", "mummi", "Method preset.")
    flags.DEFINE_string("task", "toy_position_camera", "Task (a toy task learns in CPU minutes).")
    flags.DEFINE_enum(
        "size",
        None,
        list(C.SIZES),
        "Model size (default: tiny for toy tasks, small, the CPU budget's size, for the others).",
    )
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_string("logdir", "runs/learning_check", "Run directory (re-running resumes).")
    flags.DEFINE_integer("episodes", 10, "Test episodes for the agent and for the random policy.")
    flags.DEFINE_float(
        "margin",
        None,
        "Required lead of the agent's mean return over random (default: 50 on toy tasks, else 0).",
    )
    flags.DEFINE_float(
        "ratio", None, "Required agent / random mean return (default: 3 on walker tasks, else 2)."
    )
    flags.DEFINE_float(
        "alpha",
        0.05,
        "Largest one-sided Mann-Whitney p-value (agent > random) that passes; 1 turns it off.",
    )
    flags.DEFINE_multi_string("set", [], "Config override section.key=value (repeatable).")
    flags.DEFINE_bool("progress", True, "Show a progress bar while training.")


def random_policy(action_dim):
    def factory(ep_seed):
        rng = np.random.default_rng([ep_seed, 7])
        return lambda obs, first: rng.uniform(-1, 1, action_dim).astype(np.float32)

    return factory


def defaults(task: str) -> dict:
    """The size and pass thresholds a task is checked at unless flags say otherwise."""
    toy = task_info(task).suite == "toy"
    return {
        "size": "tiny" if toy else "small",
        "margin": 50.0 if toy else 0.0,
        "ratio": 3.0 if task.startswith("walker_") else 2.0,
    }


def separation(agent, rand) -> float:
    """P(an agent episode beats a random one) over every pair, ties counting a half (the
    Mann-Whitney U over n * m). Why beside the ratio: on sparse tasks (cup_catch) a ratio of
    means can rest on one or two successful episodes; 0.5 means the two are not told apart,
    1.0 that every agent episode beats every random one."""
    a = np.asarray(agent, np.float64)[:, None]
    r = np.asarray(rand, np.float64)[None, :]
    return float(np.mean((a > r) + 0.5 * (a == r)))


def p_value(agent, rand) -> float:
    """One-sided Mann-Whitney U test of `agent` scoring above `rand`: exact when no two
    returns tie (10 against 10, all ahead: 1 / C(20, 10) = 5.4e-6), else the tie-corrected
    normal approximation, as the exact distribution assumes distinct values (sparse tasks
    tie at 0). Two samples of one repeated value (every episode 0) give 1."""
    from scipy.stats import mannwhitneyu  # a dependency of jax; only this check needs it

    a, r = np.asarray(agent, np.float64), np.asarray(rand, np.float64)
    both = np.concatenate([a, r])
    if np.ptp(both) == 0:
        return 1.0
    method = "exact" if len(np.unique(both)) == len(both) else "asymptotic"
    return float(mannwhitneyu(a, r, alternative="greater", method=method).pvalue)


def verdict(trained, rand, margin, ratio, alpha) -> dict:
    """Both sides' returns, the statistics and the pass rule (module docstring) for one check."""
    a, r = float(np.mean(trained)), float(np.mean(rand))
    p = p_value(trained, rand)
    return {
        "agent": {"mean": a, "std": float(np.std(trained)), "returns": [float(x) for x in trained]},
        "random": {"mean": r, "std": float(np.std(rand)), "returns": [float(x) for x in rand]},
        # None (JSON null) when random scored nothing, as on finger_spin: an infinite ratio
        # would print as `Infinity`, which strict JSON readers (jq, JavaScript) reject.
        "ratio": a / r if r > 0 else None,
        "p_value": p,
        "separation": separation(trained, rand),
        "successes": {  # episodes with any reward: the count that matters on sparse tasks
            "agent": int(np.sum(np.asarray(trained) > 0)),
            "random": int(np.sum(np.asarray(rand) > 0)),
        },
        "margin_required": margin,
        "ratio_required": ratio,
        "alpha": alpha,
        "passed": bool(a >= r + margin and a >= ratio * r and p <= alpha),
    }


def check(config, logdir, episodes, margin, progress=False, ratio=2.0, alpha=0.05) -> dict:
    """Trains (or resumes) `config` in `logdir`, then scores agent and random policy."""
    from mummi_jax import checkpoint
    from mummi_jax.runner import Runner

    start = time.perf_counter()
    runner = Runner(config, logdir, progress=progress)
    ckpts = runner.runs[0].ckpt_dir
    # A resumed check's wall time covers its last part only: say from where.
    resumed_from = max(checkpoint.steps(ckpts), default=0) if os.path.isdir(ckpts) else 0
    state, counters = runner.train()
    trained_at = time.perf_counter()
    trained = runner.evaluate(state, episodes=episodes, split="test", rate=0.0)[0].returns
    rand = runner.evaluate(
        state,
        episodes=episodes,
        split="test",
        rate=0.0,
        policy=random_policy(runner.agent.action_dim),
    )[0].returns
    result = {
        "method": config.method,
        "task": config.env.task,
        "size": config.size,
        "seed": config.seed,
        "env_steps": counters[0]["env_steps"],
        "updates": counters[0]["updates"],
        # Wall seconds of this invocation (issue 14's 45-minute budget is a wall time).
        "seconds": round(time.perf_counter() - start, 1),
        "train_seconds": round(trained_at - start, 1),
        "resumed_from": resumed_from,
        **verdict(trained, rand, margin, ratio, alpha),
    }
    checkpoint.atomic_write(
        os.path.join(logdir, "learning_check.json"), json.dumps(result, indent=2).encode()
    )
    return result


def main(argv):
    del argv
    try:
        auto = defaults(FLAGS.task)
        size = FLAGS.size or auto["size"]
        config = presets.make_config(
            FLAGS.method, FLAGS.task, size, seed=FLAGS.seed, overrides=FLAGS.set
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if FLAGS.episodes < 1:
        print(f"error: --episodes={FLAGS.episodes} must be >= 1", file=sys.stderr)
        return 2
    if not 0.0 < FLAGS.alpha <= 1.0:
        print(
            f"error: --alpha={FLAGS.alpha} must be in (0, 1]; 1 turns the test off", file=sys.stderr
        )
        return 2
    best_p = 1.0 / math.comb(2 * FLAGS.episodes, FLAGS.episodes)  # every agent episode ahead
    if best_p > FLAGS.alpha:
        print(
            f"error: with --episodes={FLAGS.episodes} the test's smallest p-value is "
            f"{best_p:.3g} > --alpha={FLAGS.alpha}: the check could never pass; use more "
            "episodes (10 gives 1e-5) or --alpha=1 to drop the test",
            file=sys.stderr,
        )
        return 2
    try:
        margin = auto["margin"] if FLAGS.margin is None else FLAGS.margin
        ratio = auto["ratio"] if FLAGS.ratio is None else FLAGS.ratio
        result = check(
            config, FLAGS.logdir, FLAGS.episodes, margin, FLAGS.progress, ratio, FLAGS.alpha
        )
    except ValueError as e:  # a logdir holding another config, bad environment options
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, MemoryError, RuntimeError) as e:  # e.g. a corrupt checkpoint
        print(f"error: {e}", file=sys.stderr)
        return 1
    # One JSON line (the per-episode returns are in <logdir>/learning_check.json).
    line = {k: v for k, v in result.items() if k not in ("agent", "random")}
    for who in ("agent", "random"):
        line[who] = round(result[who]["mean"], 3)
        line[f"{who}_std"] = round(result[who]["std"], 3)
    line["episodes"] = FLAGS.episodes
    print(json.dumps(line))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
