"""A reduced-budget MuMMI Table I: train a grid of (method, task, seed), evaluate, compare.

    MUJOCO_GL=egl python -m experiments.reproduce --budget=cpu [--out=runs/reproduce_cpu]
        [--stages=1,2] [--runs=mummi/walker_walk/0,...] [--max_minutes=0] [--dry_run]

The grid runs in stages, each a set of (method, task, seed) runs, first to last:

    1: mummi, cvrl, dreamer on walker_walk, seeds 0 and 1
    2: the same on finger_spin
    3: a third seed (2) for stages 1 and 2
    4: mummi_b and mssm_e on walker_walk and finger_spin, seeds 0-2

Each run trains to the budget's env steps (`experiments.train`'s run directory
`OUT/<method>/<task>/seed<N>/`, checkpointed), then plays the Table I protocol
(`experiments.evaluate`: none / medium / high missing data, test backgrounds) into its
results.json. Re-running the command resumes: a run whose results.json scored it at the
budget's env steps is done and skipped, a run with checkpoints continues from its newest
one. Per task a uniform-random policy is scored on each seed's evaluation episodes
(`OUT/random/<task>/seed<N>/results.json`).

`--runs` picks named runs of the selected stages. Several processes may work on one grid at
once (on 2 cores, two training processes give about 1.5x the runs per hour of one): each
claims a run before training it (a lock on `OUT/<method>/<task>/seed<N>.lock`, which names
its host and pid and which the system drops when the process ends) and skips a run that
another process holds.

Every finished run's record (results.json, metrics.jsonl, config.json: tens of kB, no
checkpoint) is copied into the archive, `docs/results/runs_<budget>/<method>/<task>/seed<N>/`
beside `--results` (`--archive` to change it). The archive is meant to be committed: a run it
holds counts as done on any machine, so the grid survives a fresh checkout and can be filled
over several sittings and machines; the table is built from the archive alone.

After every finished run `experiments.compare` writes OUT/compare.md, compare.json and
curves.png (from the archive), and the block between this budget's markers in `--results`
(default RESULTS.md) is rewritten: the budget, the grid's status, the table beside the
published Table I, and whether the published ordering (MuMMI > CVRL > Dreamer; MuMMI's
smaller drop from none to high missing data) holds: a pair counts as ordered only where the
seeds' intervals do not overlap, random's score is shown beside, and our drops are set
beside the published table's. Text outside the markers is kept.

Budgets (`BUDGETS`): `cpu` is the `small` size, sized so that one run takes at most about
45 minutes on a 2-core CPU, with the released code's batch-shared RSSM noise that its grid
was run with (`small` itself draws per row since; RESULTS.md); `gpu` is the paper's size
and schedule (2M env steps). With `--dry_run` the grid, each run's status and its estimated
wall time are printed and nothing is trained; the estimate is `--seconds_per_100k`
(default: the budget's measured figure, BENCHMARKS.md) or, with `--measure`,
`experiments.benchmark --what=loop` run here first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app, flags

from mummi_jax import config as C
from mummi_jax import presets

METHODS_MAIN = ("mummi", "cvrl", "dreamer")
METHODS_MORE = ("mummi_b", "mssm_e")
LEVELS = ("none", "medium", "high")
CURVE_SMOOTHING = 0.5


@dataclasses.dataclass(frozen=True)
class Budget:
    size: str
    overrides: tuple[str, ...]
    # Wall seconds per 100k env steps of one run where the budget is meant to run (a 2-core
    # CPU for "cpu", one GPU for "gpu"), from `experiments.benchmark --what=loop`.
    seconds_per_100k: float
    where: str
    # Sets for every run of one task, before the run's own: [(task, sets)].
    task_overrides: tuple[tuple[str, tuple[str, ...]], ...] = ()


BUDGETS = {
    # The `small` preset's own schedule (presets._small): walker episodes of 500 env steps.
    # MuMMI on walker_walk, 2026-12-04, 2-core CPU box: 60k env steps in about 30 minutes of
    # training (RESULTS.md), 3000 s per 100k.
    # Its walker runs started (2026-12-04) with the touch site then the default, a box under
    # the sole; the rest keep it, so that the table compares like with like (the released
    # code's ellipsoid is `sole` since 2026-12-06).
    # Its 30 runs also drew the released code's batch-shared RSSM noise, the `small`
    # preset's until 2026-12-07 (per row since: RESULTS.md "Batch-shared sampling noise").
    # (It would set it for CoRAL too, whose own sampler draws per row; CoRAL is not in the
    # grid.)
    "cpu": Budget(
        "small",
        ("model.shared_noise=true",),
        3000.0,
        "2-core CPU",
        task_overrides=(("walker_walk", ("env.touch_site=sole_box",)),),
    ),
    # 2M env steps at the reference schedule. BENCHMARKS.md "The whole loop": 12.2 min per
    # 100k env steps on an H100 for the toy robot, plus 5.1 min of walker rendering on one
    # core = about 17.3 min (1040 s) per 100k, 5.8 h per run.
    "gpu": Budget("paper", (), 1040.0, "one H100"),
}


def stages() -> list[list[tuple[str, str, int]]]:
    """The grid, stage by stage: [(method, task, seed)]."""
    one = [(m, "walker_walk", s) for s in (0, 1) for m in METHODS_MAIN]
    two = [(m, "finger_spin", s) for s in (0, 1) for m in METHODS_MAIN]
    three = [(m, t, 2) for t in ("walker_walk", "finger_spin") for m in METHODS_MAIN]
    four = [
        (m, t, s) for t in ("walker_walk", "finger_spin") for s in (0, 1, 2) for m in METHODS_MORE
    ]
    return [one, two, three, four]


def run_dir(out: str, method: str, task: str, seed: int) -> str:
    return os.path.join(out, method, task, f"seed{seed}")


def make_config(budget: Budget, method: str, task: str, seed: int, sets=()):
    per_task = dict(budget.task_overrides).get(task, ())
    return presets.make_config(
        method, task, budget.size, "reference", seed, [*budget.overrides, *per_task, *sets]
    )


# What the archive keeps of a run: enough for compare's table, curves and check_logdir.
ARCHIVED = ("results.json", "metrics.jsonl", "config.json")


def _sets_text(budget: Budget) -> str:
    """The budget's own sets, as the table's preamble states them."""
    every = f"; every run: `{' '.join(budget.overrides)}`" if budget.overrides else ""
    sets = [f"`{t}`: `{' '.join(v)}`" for t, v in budget.task_overrides]
    return every + (f"; per task: {', '.join(sets)}" if sets else "")


def default_archive(results_path: str, budget_name: str) -> str:
    return os.path.join(
        os.path.dirname(os.path.abspath(results_path)), "docs", "results", f"runs_{budget_name}"
    )


def _full_length(results: dict, steps: int | None) -> bool:
    """Whether a results.json scored a run trained to `steps` env steps (None: any length);
    a random baseline (0 steps) is always whole."""
    return (
        steps is None
        or results.get("method") == "random"
        or (int(results.get("env_steps", 0)) >= steps)
    )


def status(
    out: str,
    method: str,
    task: str,
    seed: int,
    archive: str | None = None,
    steps: int | None = None,
) -> tuple[str, int]:
    """("done" | "partial" | "pending", env steps of its newest checkpoint). A run is done
    when its results.json is in OUT or in the archive and, given `steps` (the budget's), it
    scored a run trained that far: `experiments.evaluate` on a half-trained run writes a
    results.json too, and that run must go on training, not count as finished."""
    for root in (out, archive) if archive else (out,):
        path = os.path.join(run_dir(root, method, task, seed), "results.json")
        if os.path.exists(path):
            with open(path) as f:
                results = json.load(f)
            if _full_length(results, steps):
                return "done", int(results.get("env_steps", 0))
    d = run_dir(out, method, task, seed)
    from mummi_jax import checkpoint

    ckpts = os.path.join(d, "checkpoints")
    steps = max(checkpoint.steps(ckpts), default=0) if os.path.isdir(ckpts) else 0
    return ("partial" if steps else "pending"), steps


def _lock_path(out: str, method: str, task: str, seed: int) -> str:
    # Beside the run directory, not in it: the run directory is experiments.train's.
    return run_dir(out, method, task, seed) + ".lock"


def claim(out: str, method: str, task: str, seed: int):
    """Claims a run for this process: an open file to keep open while the run trains (close
    it to release the run), or None if another process holds the run. The claim is an
    exclusive flock(2) on OUT/<method>/<task>/seed<N>.lock, which the kernel drops when its
    process exits, however it exits: a killed run leaves no stale claim to clear by hand.
    The file stays (removing it would let a third process lock a new file of the same name
    while the first still trains); it holds the claimant's host and pid for `holder`."""
    import fcntl
    import socket

    path = _lock_path(out, method, task, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    f.flush()
    return f


def holder(out: str, method: str, task: str, seed: int) -> dict | None:
    """{"host", "pid"} of the process that holds this run's claim, or None if none does."""
    import fcntl

    path = _lock_path(out, method, task, seed)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                held = json.loads(f.read())
                return {"host": held.get("host"), "pid": held.get("pid")}
            except (ValueError, AttributeError):  # claimed, its body not yet written
                return {"host": None, "pid": None}
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def archive_runs(out: str, archive: str) -> list[str]:
    """Copies the record (ARCHIVED) of every finished run under OUT (each directory holding a
    results.json of a run trained to its config's `train.steps`, random baselines included)
    into the same place under `archive`, each file written to a temporary name and renamed.
    A run already archived is not overwritten: the archive is the record, and a logdir
    re-created with the same name is a different run. Returns the run directories copied,
    relative to OUT."""
    from mummi_jax.checkpoint import atomic_write

    copied = []
    if not os.path.isdir(out):
        return copied
    for root, dirs, files in os.walk(out):
        dirs[:] = sorted(d for d in dirs if d != "checkpoints")
        if "results.json" not in files:
            continue
        rel = os.path.relpath(root, out)
        dest = os.path.join(archive, rel)
        if os.path.exists(os.path.join(dest, "results.json")):
            continue
        with open(os.path.join(root, "results.json")) as f:
            results = json.load(f)
        config_path = os.path.join(root, "config.json")
        if os.path.exists(config_path):
            with open(config_path) as f:
                steps = json.load(f).get("train", {}).get("steps")
            if not _full_length(results, steps):
                continue  # scored before the end of its training: not a finished run
        # results.json last: an interrupted copy leaves a run the archive does not count.
        for name in sorted(ARCHIVED, key=lambda n: n == "results.json"):
            if name in files:
                with open(os.path.join(root, name), "rb") as f:
                    atomic_write(os.path.join(dest, name), f.read())
        copied.append(rel)
    return copied


def train_and_evaluate(config, out: str, progress: bool) -> dict:
    """One grid run: train (resuming), then the Table I protocol into results.json."""
    from experiments.evaluate import evaluate_logdir
    from mummi_jax.runner import Runner

    pair = os.path.dirname(run_dir(out, config.method, config.env.task, config.seed))
    runner = Runner(config, pair, [config.seed], progress=progress)
    runner.train()
    return evaluate_logdir(runner.runs[0].logdir, videos=True)


def random_baseline(config, out: str, archive: str | None = None) -> str:
    """Scores uniform random actions on exactly the evaluation episodes of `config`'s run
    (its task and seed, the levels of `experiments.evaluate`); writes and returns
    `OUT/random/<task>/seed<N>/results.json` (compare pools the seeds as for any method)."""
    from experiments.evaluate import evaluation_entry, protocol
    from experiments.learning_check import random_policy
    from mummi_jax.checkpoint import atomic_write
    from mummi_jax.runner import Runner

    d = run_dir(out, "random", config.env.task, config.seed)
    path = os.path.join(d, "results.json")
    for root in (out, archive) if archive else (out,):
        done = os.path.join(run_dir(root, "random", config.env.task, config.seed), "results.json")
        if os.path.exists(done):
            return done
    runner = Runner(config, os.path.dirname(d), [config.seed], progress=False)
    state, _ = runner.restore()
    name, levels = protocol(config)
    results = {"method": "random", "task": config.env.task, "seed": config.seed,
               "env_steps": 0, "protocol": name, "evaluations": {}}  # fmt: skip
    for level, rate, drop in levels:
        policy = random_policy(runner.agent.action_dim)
        run = runner.evaluate(
            state, config.train.test_episodes, rate=rate, drop=drop, policy=policy
        )
        results["evaluations"][level] = evaluation_entry(
            run[0], rate, drop, runner.agent.modalities
        )
    atomic_write(path, json.dumps(results, indent=2).encode())
    return path


# ----------------------------------------------------------------------------- reporting
def _interval(row: dict) -> tuple[float, float]:
    """A row's interval over seeds (compare.aggregate), or its mean where it has none."""
    if row.get("ci_lo") is None:
        return row["mean"], row["mean"]
    return row["ci_lo"], row["ci_hi"]


def _drops(by: dict, task: str, key: str) -> dict[str, float]:
    """Each main method's relative drop of `key` (our mean or the published one) from none
    to high missing data, where both levels have it and the none level is positive."""
    drops = {}
    for m in METHODS_MAIN:
        none, high = by.get((task, m, "none")), by.get((task, m, "high"))
        if none and high and none.get(key) is not None and high.get(key) is not None:
            if none[key] > 0:
                drops[m] = 1.0 - high[key] / none[key]
    return drops


def ordering(rows: list[dict]) -> list[str]:
    """Lines saying whether the published ordering holds in `rows` (compare.aggregate).

    A pair of methods counts as ordered only when their intervals over seeds do not overlap:
    with a few seeds, means that differ by less than the seeds' spread say nothing either
    way. Random's score is shown beside them (below it nothing has been learnt), and MuMMI's
    drop from none to high missing data is set beside the published table's, which does not
    have MuMMI's drop the smallest on every task either."""
    by = {(r["task"], r["method"], r["evaluation"]): r for r in rows}
    lines = []
    for task in sorted({r["task"] for r in rows}):
        rnd = by.get((task, "random", "none"))  # random scores the same at every level
        rnd_text = f"; random {rnd['mean']:.1f}" if rnd else ""
        for level in LEVELS:
            have = [m for m in METHODS_MAIN if (task, m, level) in by]  # published order
            if len(have) < 2:
                continue
            ranked = sorted(have, key=lambda m: -by[(task, m, level)]["mean"])
            reversed_, overlap = [], []
            for i, a in enumerate(have):
                for b in have[i + 1 :]:
                    (a_lo, a_hi), (b_lo, b_hi) = (_interval(by[(task, m, level)]) for m in (a, b))
                    if b_lo > a_hi:
                        reversed_.append(f"{b} > {a}")
                    elif not a_lo > b_hi:
                        overlap.append(f"{a}/{b}")
            if reversed_:
                verdict = f"does not hold ({', '.join(reversed_)} beyond the seeds' intervals)"
            elif overlap:
                verdict = f"not resolved (the intervals of {', '.join(overlap)} overlap)"
            else:
                verdict = "holds"
            values = []
            for m in have:
                r = by[(task, m, level)]
                lo, hi = _interval(r)
                span = f" [{lo:.1f}, {hi:.1f}]" if r.get("ci_lo") is not None else ""
                values.append(f"{m} {r['mean']:.1f}{span}")
            lines.append(
                f"- {task}, {level}: {' > '.join(ranked)} by mean ({', '.join(values)}"
                f"{rnd_text}): published order {verdict}"
            )
        ours, pub = _drops(by, task, "mean"), _drops(by, task, "published_mean")
        if "mummi" in ours and len(ours) > 1:
            low = [m for m in ours if rnd and by[(task, m, "none")]["mean"] <= rnd["mean"]]
            text = ", ".join(f"{m} {100 * d:.0f} %" for m, d in ours.items())
            line = (
                f"- {task}, drop from none to high missing data: ours {text} (MuMMI's the "
                f"smallest: {'yes' if min(ours, key=ours.get) == 'mummi' else 'no'})"
            )
            pub = {m: d for m, d in pub.items() if m in ours}
            if "mummi" in pub and len(pub) > 1:
                ptext = ", ".join(f"{m} {100 * d:.0f} %" for m, d in pub.items())
                smallest = "yes" if min(pub, key=pub.get) == "mummi" else "no"
                line += f"; published {ptext} (MuMMI's the smallest: {smallest})"
            if low:
                line += f"; {', '.join(low)} at or below random without missing data"
            lines.append(line)
    return lines or ["- not enough finished runs to compare methods yet"]


def _curves_line(out: str, results_path: str, budget_name: str) -> str:
    """Copies compare's learning curves next to `results_path` (docs/results/), so that the
    Markdown file shows them wherever the grid's run directory lives; returns the line."""
    png = os.path.join(out, "curves.png")
    if not os.path.exists(png):
        return "No learning curves yet (no `eval/return` logged)."
    rel = os.path.join("docs", "results", f"curves_{budget_name}.png")
    dest = os.path.join(os.path.dirname(os.path.abspath(results_path)), rel)
    from mummi_jax.checkpoint import atomic_write

    with open(png, "rb") as f:  # a unique temp name: grid processes may copy it at once
        atomic_write(dest, f.read())
    return (
        f"Learning curves (single-episode eval returns against env steps, EMA "
        f"{CURVE_SMOOTHING}): ![curves]({rel})"
    )


def _rel(path: str, results_path: str) -> str:
    return os.path.relpath(path, os.path.dirname(os.path.abspath(results_path)))


def report(budget_name: str, out: str, results_path: str, archive: str | None = None) -> str:
    """Archives OUT's finished runs, runs experiments.compare over the archive (writing
    OUT/compare.*) and rewrites this budget's block of `results_path`."""
    import io

    from experiments import compare

    budget = BUDGETS[budget_name]
    archive = archive or default_archive(results_path, budget_name)
    archive_runs(out, archive)
    os.makedirs(out, exist_ok=True)
    buf, err = io.StringIO(), io.StringIO()
    rows = []
    # Twelve evaluations per run: the paper's EMA 0.9 (Fig. 5, hundreds of points) would keep
    # a curve near its first, single-episode value; 0.5 follows the run.
    if os.path.isdir(archive):
        status_ = compare.run_compare(
            [archive], out, stdout=buf, stderr=err, smoothing=CURVE_SMOOTHING
        )
        # Only this call's rows: an older compare.json would describe other runs.
        if status_ == 0:
            with open(os.path.join(out, "compare.json")) as f:
                rows = json.load(f)["rows"]
    if err.getvalue():
        print(err.getvalue(), file=sys.stderr, end="")
    grid = []
    for k, stage in enumerate(stages(), 1):
        for m, t, s in stage:
            state, steps = status(out, m, t, s, archive, make_config(budget, m, t, s).train.steps)
            grid.append(f"| {k} | {m} | {t} | {s} | {state} | {steps} |")
    example = make_config(budget, "mummi", "walker_walk", 0)
    tr = example.train
    lines = [
        f"<!-- reproduce:{budget_name}:begin (written by experiments.reproduce; edit outside) -->",
        f"### Budget `{budget_name}` ({budget.where}), updated {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"`MUJOCO_GL=egl python -m experiments.reproduce --budget={budget_name} --out={out}`",
        "",
        f"Finished runs are read from the archive `{_rel(archive, results_path)}` (committed; "
        "results.json, metrics.jsonl and config.json of each run).",
        "",
        f"Size `{budget.size}`: {tr.steps} env steps per run, episodes of {example.env.time_limit} "
        f"env steps (action repeat {example.env.action_repeat}), {tr.train_steps} updates of "
        f"B={tr.batch} x T={tr.length} every {tr.train_every} env steps, images "
        f"{example.env.image_size} px, missing data `{example.env.missing}` (train p = "
        f"{example.env.missing_train}; test {list(example.env.missing_test)}), "
        f"{tr.test_episodes} test episodes per level{_sets_text(budget)}. Published "
        "figures are for 1000-step episodes after 2M env steps: compare orderings, not "
        "absolute returns.",
        "",
        "| stage | method | task | seed | status | env steps |",
        "|---|---|---|---|---|---|",
        *grid,
        "",
        buf.getvalue().split("compare: wrote")[0].strip() or "No finished run yet.",
        "",
        "Published ordering at this budget:",
        "",
        *ordering(rows),
        "",
        _curves_line(out, results_path, budget_name),
        f"<!-- reproduce:{budget_name}:end -->",
    ]
    block = "\n".join(lines) + "\n"
    text = open(results_path).read() if os.path.exists(results_path) else "# Results\n\n"
    begin = f"<!-- reproduce:{budget_name}:begin"
    end = f"<!-- reproduce:{budget_name}:end -->\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    from mummi_jax.checkpoint import atomic_write

    atomic_write(results_path, text.encode())
    return block


# ----------------------------------------------------------------------------- command
FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_enum("budget", "cpu", list(BUDGETS), "cpu: the small size; gpu: the paper's.")
    flags.DEFINE_string("out", None, "Grid directory (default runs/reproduce_<budget>).")
    flags.DEFINE_list("stages", ["1", "2", "3", "4"], "Stages to run, in order.")
    flags.DEFINE_list(
        "runs", [], "Only these runs of the stages, each method/task/seed (default: all)."
    )
    flags.DEFINE_float("max_minutes", 0.0, "Start no new run after this long (0: no limit).")
    flags.DEFINE_bool("dry_run", False, "Print the grid, statuses and wall-time estimates.")
    flags.DEFINE_bool("measure", False, "--dry_run: measure the loop here (benchmark loop).")
    flags.DEFINE_float("seconds_per_100k", 0.0, "--dry_run: wall s per 100k env steps.")
    flags.DEFINE_string("results", "RESULTS.md", "Markdown file whose budget block is rewritten.")
    flags.DEFINE_string(
        "archive",
        None,
        "Finished runs' records (default docs/results/runs_<budget> beside "
        "--results); a run archived there is done.",
    )
    flags.DEFINE_multi_string("set", [], "Extra config override for every run (changes the grid).")
    flags.DEFINE_bool("progress", True, "Progress bars.")


def _grid(selected):
    out = []
    all_stages = stages()
    for s in selected:
        if not s.strip().isdigit() or not 1 <= int(s) <= len(all_stages):
            raise ValueError(f"--stages: {s!r} is not a stage (1-{len(all_stages)})")
        out += all_stages[int(s) - 1]
    return out


def _select(grid, runs):
    """The runs of `grid` named in `runs` ("method/task/seed"), in grid order; all if none."""
    if not runs:
        return grid
    wanted = set()
    for item in runs:
        parts = item.strip().split("/")
        ok = len(parts) == 3 and parts[2].isdigit()
        run = (parts[0], parts[1], int(parts[2])) if ok else None
        if run is None or run not in grid:
            example = "/".join(map(str, grid[0])) if grid else "mummi/walker_walk/0"
            raise ValueError(
                f"--runs: {item!r} is not a run of the selected stages (method/task/seed, "
                f"for example {example}; `--dry_run` lists the grid)"
            )
        wanted.add(run)
    return [r for r in grid if r in wanted]


def _measure(budget: Budget) -> float:
    from types import SimpleNamespace

    from experiments.bench import loop

    ns = SimpleNamespace(
        tasks=("walker_walk",),
        method="mummi",
        size=budget.size,
        set=list(budget.overrides),
        repeats=0,
    )
    return float(next(loop.run(ns))["projected_seconds_per_100k_env_steps"])


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    budget = BUDGETS[FLAGS.budget]
    out = FLAGS.out or os.path.join("runs", f"reproduce_{FLAGS.budget}")
    archive = FLAGS.archive or default_archive(FLAGS.results, FLAGS.budget)
    try:
        grid = _select(_grid(FLAGS.stages), FLAGS.runs)
        configs = [make_config(budget, m, t, s, FLAGS.set) for m, t, s in grid]
        for cfg in configs:
            for root in (out, archive):
                C.check_logdir(run_dir(root, cfg.method, cfg.env.task, cfg.seed), cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if FLAGS.dry_run:
        per_100k = FLAGS.seconds_per_100k or (_measure(budget) if FLAGS.measure else 0.0)
        per_100k = per_100k or budget.seconds_per_100k
        total = 0.0
        for cfg in configs:
            state, steps = status(out, cfg.method, cfg.env.task, cfg.seed, archive, cfg.train.steps)
            left = 0.0 if state == "done" else (cfg.train.steps - steps) / 1e5 * per_100k
            total += left
            held = state != "done" and holder(out, cfg.method, cfg.env.task, cfg.seed)
            by = f"  (running: {held['host']} pid {held['pid']})" if held else ""
            print(
                f"{cfg.method:>8} {cfg.env.task:<12} seed{cfg.seed}  {state:<8} "
                f"{steps:>8} / {cfg.train.steps} env steps, ~{left / 3600:.1f} h left{by}"
            )
        print(
            f"total ~{total / 3600:.1f} h at {per_100k:.0f} s per 100k env steps "
            f"({'measured here' if FLAGS.measure else budget.where})"
        )
        return 0
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    for cfg in configs:
        state, _ = status(out, cfg.method, cfg.env.task, cfg.seed, archive, cfg.train.steps)
        if state == "done":
            continue
        if FLAGS.max_minutes and time.time() - t0 > 60 * FLAGS.max_minutes:
            print(f"--max_minutes={FLAGS.max_minutes} reached; re-run to continue the grid")
            break
        name = f"[{cfg.method} / {cfg.env.task} / seed {cfg.seed}]"
        key = (out, cfg.method, cfg.env.task, cfg.seed)
        lock = claim(*key)
        if lock is None:
            held = holder(*key) or {}
            print(f"{name} held by {held.get('host')} pid {held.get('pid')}; skipped", flush=True)
            continue
        try:
            # Another process may have finished it between our status and our claim.
            if status(*key, archive, cfg.train.steps)[0] == "done":
                continue
            print(f"{name} training", flush=True)
            random_baseline(cfg, out, archive)
            try:
                train_and_evaluate(cfg, out, FLAGS.progress)
            except FloatingPointError as e:
                print(f"error: {e}", file=sys.stderr)
                continue
        finally:
            lock.close()
        print(report(FLAGS.budget, out, FLAGS.results, archive), flush=True)
    print(report(FLAGS.budget, out, FLAGS.results, archive))
    return 0


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
