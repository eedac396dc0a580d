"""Compares our evaluation results with the published MuMMI / CVRL tables.

    python -m experiments.compare --logdirs=runs/mummi_walker_walk,runs/cvrl_walker_walk \
        [--out=DIR] [--table=auto|mummi_table1|mummi_table2|cvrl_table1_natural|...]

A logdir is one run (results.json and/or metrics.jsonl, config.json; docs/ARCHITECTURE.md
"Run directory") or any parent of runs (a sweep's `<dir>/seed<N>/`); runs are found
recursively. Runs are grouped by (method, task); each evaluation level is pooled over seeds
(mean, std over all episodes as the paper's "30 episodes", and a seeded 95% bootstrap interval
over per-seed means, see `mummi_jax.stats`) and printed beside the published mean +- std.

Writes into --out (default: the first logdir): `compare.md` (the printed table), `compare.json`
(rows + problems) and `curves.png` (eval/return vs env steps from metrics.jsonl, one panel per
task, one line per method with a +-1 std band over seeds, EMA smoothing 0.9 as MuMMI Fig. 5).

Problems with the input (missing directory, no runs, unreadable files, values without a
published figure) are reported on stderr; the exit status is non-zero only when no run gave
anything usable, or for a bad flag.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from absl import app, flags

from mummi_jax import stats

REFERENCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_numbers.json")
RUN_FILES = ("results.json", "metrics.jsonl")
# Big per-run folders that never hold nested runs; skipping them keeps discovery fast.
SKIP_DIRS = frozenset({"checkpoints", "episodes", "videos"})
# --table=auto: a run's results.json protocol picks the table; otherwise the first table here
# that lists the task.
AUTO_TABLES = {"table1": "mummi_table1", "table2": "mummi_table2"}
AUTO_ORDER = ("mummi_table1", "mummi_table2", "cvrl_table1_natural")
CURVE_KEY = "eval/return"


def define_flags():
    """Defined when run as a script, not on import: tests import several entry points'
    functions into one process, where flags of one name from two modules clash."""
    flags.DEFINE_list("logdirs", [], "Run directories or parents of seed runs, comma separated.")
    flags.DEFINE_string("out", "", "Output directory (default: the first logdir).")
    flags.DEFINE_string("table", "auto", "Published table to compare with, or 'auto'.")
    flags.DEFINE_string("reference", REFERENCE_PATH, "reference_numbers.json to read.")
    flags.DEFINE_integer("resamples", stats.DEFAULT_RESAMPLES, "Bootstrap resamples.")
    flags.DEFINE_integer("bootstrap_seed", 0, "Seed of the bootstrap resampling.")
    flags.DEFINE_float("smoothing", 0.9, "EMA weight for the learning curves (paper: 0.9).")


@dataclasses.dataclass
class Run:
    """One run directory.

    results: parsed results.json or None. curve: (steps (T,), eval returns (T,)) from
    metrics.jsonl, or None when it logged no `eval/return`.
    """

    path: str
    method: str | None = None
    task: str | None = None
    seed: int | None = None
    protocol: str | None = None
    results: dict[str, Any] | None = None
    curve: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def usable(self) -> bool:
        return (
            self.method is not None
            and self.task is not None
            and (self.results is not None or self.curve is not None)
        )


# -- discovery and loading -----------------------------------------------------------------
def discover_runs(logdir: str) -> tuple[list[str], list[str]]:
    """Run directories at or below `logdir` (sorted) and problems found on the way."""
    expected = (
        "expected a run directory holding results.json and/or metrics.jsonl, "
        "or a parent of such runs (e.g. <dir>/seed<N>/)"
    )
    if not os.path.exists(logdir):
        return [], [f"logdir {logdir!r} does not exist ({expected})"]
    if not os.path.isdir(logdir):
        return [], [f"logdir {logdir!r} is not a directory ({expected})"]
    found = []
    for root, dirs, files in os.walk(logdir):
        if any(name in files for name in RUN_FILES):
            found.append(root)
            dirs[:] = []  # a run's own subfolders are checkpoints/episodes/videos
        else:
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
    if not found:
        return [], [f"no runs under {logdir!r}: no results.json or metrics.jsonl ({expected})"]
    return sorted(found), []


def _read_json(path: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        problems.append(f"cannot read {path}: {e}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a JSON object, got {type(data).__name__}")
        return None
    return data


def _check_results(path: str, data: dict[str, Any], problems: list[str]) -> bool:
    """Validates the results.json shape of docs/ARCHITECTURE.md; reports what is wrong."""
    evals = data.get("evaluations")
    if not isinstance(evals, dict) or not evals:
        problems.append(
            f"{path}: no 'evaluations' object (expected {{'none': {{'returns': [...], "
            "'mean': ..., 'std': ...}}, ...}})"
        )
        return False
    for name, ev in evals.items():
        returns = ev.get("returns") if isinstance(ev, dict) else None
        has_returns = isinstance(returns, list) and len(returns) > 0
        if not isinstance(ev, dict) or not (has_returns or isinstance(ev.get("mean"), int | float)):
            problems.append(f"{path}: evaluation {name!r} has neither 'returns' nor a 'mean'")
            return False
        if has_returns and not all(isinstance(r, int | float) for r in returns):
            problems.append(f"{path}: evaluation {name!r} has non-numeric 'returns'")
            return False
    return True


def _read_curve(path: str, problems: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values) of `eval/return` in a metrics.jsonl; values at one step are averaged."""
    by_step: dict[float, list[float]] = collections.defaultdict(list)
    bad = 0
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1  # e.g. a line cut short by a crash mid-write
                    continue
                if isinstance(row, dict) and CURVE_KEY in row and "step" in row:
                    by_step[float(row["step"])].append(float(row[CURVE_KEY]))
    except OSError as e:
        problems.append(f"cannot read {path}: {e}")
        return None
    if bad:
        problems.append(f"{path}: skipped {bad} line(s) that are not JSON")
    if not by_step:
        return None
    steps = np.array(sorted(by_step))
    return steps, np.array([np.mean(by_step[s]) for s in steps])


def load_run(path: str) -> tuple[Run, list[str]]:
    """Reads one run directory; method/task/seed from results.json, else config.json."""
    problems: list[str] = []
    run = Run(path=path)
    results_path = os.path.join(path, "results.json")
    if os.path.exists(results_path):
        data = _read_json(results_path, problems)
        if data is not None and _check_results(results_path, data, problems):
            run.results = data
    metrics_path = os.path.join(path, "metrics.jsonl")
    if os.path.exists(metrics_path):
        run.curve = _read_curve(metrics_path, problems)
        if run.curve is None and run.results is None:
            problems.append(f"{metrics_path}: no {CURVE_KEY!r} rows and no results.json")
    config: dict[str, Any] = {}
    config_path = os.path.join(path, "config.json")
    if os.path.exists(config_path):
        config = _read_json(config_path, problems) or {}
    env = config.get("env") if isinstance(config.get("env"), dict) else {}
    res = run.results or {}
    run.method = res.get("method") or config.get("method")
    run.task = res.get("task") or env.get("task") or config.get("task")
    seed = res.get("seed", config.get("seed"))
    run.seed = int(seed) if isinstance(seed, int | float) else None
    run.protocol = res.get("protocol")
    if run.method is None or run.task is None:
        missing = [k for k, v in (("method", run.method), ("task", run.task)) if v is None]
        problems.append(
            f"{path}: cannot tell the run's {' and '.join(missing)} (expected them in "
            "results.json, or 'method' and 'env.task' in config.json); run skipped"
        )
    elif config and res:
        cfg_method, cfg_task = config.get("method"), env.get("task")
        # A random baseline (experiments.reproduce) is scored on the episodes of the run whose
        # config.json sits beside it: that method differs by design.
        other_method = cfg_method and cfg_method != run.method and run.method != "random"
        if other_method or (cfg_task and cfg_task != run.task):
            problems.append(
                f"{path}: results.json says {run.method}/{run.task} but config.json says "
                f"{cfg_method}/{cfg_task}; using results.json"
            )
    return run, problems


def collect_runs(logdirs: Sequence[str]) -> tuple[list[Run], list[str]]:
    """All usable runs under `logdirs` (each directory once) and every problem met."""
    runs, problems, seen = [], [], set()
    for logdir in logdirs:
        paths, found_problems = discover_runs(logdir)
        problems += found_problems
        for path in paths:
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            run, run_problems = load_run(path)
            problems += run_problems
            if run.usable:
                runs.append(run)
    return runs, problems


# -- published figures ---------------------------------------------------------------------
def load_reference(path: str = REFERENCE_PATH) -> dict[str, Any]:
    """The `tables` object of reference_numbers.json (see its "schema" entry)."""
    with open(path) as f:
        return json.load(f)["tables"]


def pick_table(run_protocol: str | None, task: str, method: str, tables: dict, wanted: str) -> str:
    """The table to compare a (method, task) with: `wanted` unless it is 'auto'."""
    if wanted != "auto":
        return wanted
    if run_protocol in AUTO_TABLES:
        return AUTO_TABLES[run_protocol]
    for name in AUTO_ORDER:
        if method in tables[name]["results"].get(task, {}):
            return name
    for name in AUTO_ORDER:
        if task in tables[name]["results"]:
            return name
    return AUTO_ORDER[0]


def published(
    tables: dict, table: str, task: str, method: str, evaluation: str
) -> tuple[dict | None, str]:
    """({mean, std} or None, note): the note says why there is no published figure."""
    t = tables[table]
    by_task = t["results"]
    if task not in by_task:
        return None, (
            f"no published figure: task {task!r} is not in {table} "
            f"(its tasks: {', '.join(sorted(by_task))})"
        )
    if method not in by_task[task]:
        return None, (
            f"no published figure: method {method!r} has no {table} entry for {task} "
            f"(published: {', '.join(sorted(by_task[task]))})"
        )
    entry = by_task[task][method].get(evaluation)
    if entry is None:
        return None, (
            f"no published figure: evaluation {evaluation!r} is not in {table} "
            f"(expected one of {', '.join(t['evaluations'])})"
        )
    return entry, ""


# -- aggregation -----------------------------------------------------------------------------
def _seed_eval(ev: dict[str, Any]) -> stats.SeedEval:
    """A level of results.json as one seed: its returns, else its summary over `episodes`
    episodes (one when it does not say: `aggregate` reports that)."""
    returns = ev.get("returns")
    if isinstance(returns, list) and returns:
        return stats.SeedEval.from_returns(returns)
    return stats.SeedEval.from_summary(ev["mean"], ev.get("std") or 0.0, ev.get("episodes", 1))


def aggregate(
    runs: Iterable[Run],
    tables: dict,
    table: str = "auto",
    *,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per (task, method, evaluation) with results.json data, and problems.

    Row keys: task, method, evaluation, table, n_seeds, n_episodes, seeds, mean, std, seed_std,
    ci_lo, ci_hi, ci_unit, published_mean, published_std, diff (ours - published), inside
    (published mean within our interval; None without both), note.
    """
    groups: dict[tuple[str, str], list[Run]] = collections.defaultdict(list)
    problems = []
    for run in runs:
        if run.results is not None:
            groups[(run.task, run.method)].append(run)
        else:  # a seed missing from the table must say so, not just shrink its seed count
            problems.append(
                f"{run.path}: no results.json, so only its learning curve is used (score it "
                f"with `python -m experiments.evaluate --logdir={run.path}`)"
            )
    rows = []
    for (task, method), group in sorted(groups.items()):
        seeds = [r.seed for r in group if r.seed is not None]
        dupes = sorted({s for s in seeds if seeds.count(s) > 1})
        if dupes:
            problems.append(
                f"{method}/{task}: seed(s) {dupes} appear in more than one run; all are pooled"
            )
        protocols = {r.protocol for r in group}
        name = pick_table(
            next(iter(protocols)) if len(protocols) == 1 else None, task, method, tables, table
        )
        order = list(tables[name]["evaluations"])
        names = {n for r in group for n in r.results["evaluations"]}
        group_notes: set[str] = set()
        for evaluation in sorted(names, key=lambda n: (order.index(n) if n in order else 99, n)):
            members = [r for r in group if evaluation in r.results["evaluations"]]
            for r in members:
                ev = r.results["evaluations"][evaluation]
                if not ev.get("returns") and "episodes" not in ev:
                    problems.append(
                        f"{r.path}: evaluation {evaluation!r} kept only its mean and no "
                        "'returns' or 'episodes': pooled as one episode"
                    )
            summary = stats.summarize(
                [_seed_eval(r.results["evaluations"][evaluation]) for r in members],
                n_resamples=n_resamples,
                seed=seed,
            )
            pub, note = published(tables, name, task, method, evaluation)
            ci = summary.ci
            pub_mean = pub["mean"] if pub else None
            rows.append(
                {
                    "task": task,
                    "method": method,
                    "evaluation": evaluation,
                    "table": name,
                    "n_seeds": summary.n_seeds,
                    "n_episodes": summary.n_episodes,
                    "seeds": [r.seed for r in members],
                    "runs": [r.path for r in members],
                    "mean": summary.mean,
                    "std": summary.std,
                    "seed_std": summary.seed_std,
                    "ci_lo": ci[0] if ci else None,
                    "ci_hi": ci[1] if ci else None,
                    "ci_unit": summary.ci_unit,
                    "published_mean": pub_mean,
                    "published_std": pub["std"] if pub else None,
                    "diff": summary.mean - pub_mean if pub else None,
                    "inside": summary.contains(pub_mean) if pub else None,
                    "note": note,
                }
            )
            # Once per reason, not per level; a random baseline is never published.
            if note and note not in group_notes and method != "random":
                group_notes.add(note)
                problems.append(f"{method}/{task}: {note}; our numbers still shown")
    return rows, problems


# -- output ----------------------------------------------------------------------------------
def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (one line per row of `aggregate`)."""
    head = (
        "| task | method | eval | seeds | episodes | ours mean ± std | interval (95% bootstrap "
        "over seeds; 2-3 seeds: their range) | published mean ± std | ours − published | "
        "published in interval |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        ci = "-" if r["ci_lo"] is None else f"[{r['ci_lo']:.1f}, {r['ci_hi']:.1f}] ({r['ci_unit']})"
        if r["published_mean"] is None:
            pub, diff, inside = "no published figure", "-", "-"
        else:
            pub = f"{r['published_mean']:.1f} ± {_num(r['published_std'])} ({r['table']})"
            diff = f"{r['diff']:+.1f}"
            inside = "-" if r["inside"] is None else ("yes" if r["inside"] else "no")
        lines.append(
            f"| {r['task']} | {r['method']} | {r['evaluation']} | {r['n_seeds']} | "
            f"{r['n_episodes']} | {r['mean']:.1f} ± {r['std']:.1f} | {ci} | {pub} | {diff} | "
            f"{inside} |"
        )
    return "\n".join(lines) + "\n"


def _mean_curve(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], weight: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooths each seed on its own steps, then averages on a shared step grid.

    Returns (steps (G,), mean (G,), std over seeds (G,)). The grid is the union of the seeds'
    steps where every seed has data, so the band never extrapolates a shorter seed.
    """
    smoothed = [(s, stats.ema_smooth(v, weight)) for s, v in curves]
    lo = max(s[0] for s, _ in smoothed)
    hi = min(s[-1] for s, _ in smoothed)
    grid = np.unique(np.concatenate([s for s, _ in smoothed]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if grid.size == 0:  # seeds with disjoint step ranges: show the longest alone
        steps, values = max(smoothed, key=lambda c: c[0][-1])
        return steps, values, np.zeros_like(values)
    ys = np.stack([np.interp(grid, s, v) for s, v in smoothed])
    return grid, ys.mean(axis=0), ys.std(axis=0)


def plot_curves(runs: Sequence[Run], path: str, weight: float = 0.9) -> bool:
    """Writes a Fig.-5-style PNG to `path`; False (nothing written) without any curve."""
    by_task: dict[str, dict[str, list]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for run in runs:
        if run.curve is not None:
            by_task[run.task][run.method].append(run.curve)
    if not by_task:
        return False
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on the training machines
    import matplotlib.pyplot as plt

    tasks = sorted(by_task)
    cols = min(len(tasks), 3)
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    methods = sorted({m for t in by_task.values() for m in t})
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for ax, task in zip(axes.flat, tasks, strict=False):
        for method, curves in sorted(by_task[task].items()):
            x, y, sd = _mean_curve(curves, weight)
            ax.plot(x, y, color=colors[method], label=f"{method} ({len(curves)} seeds)")
            if len(curves) > 1:
                ax.fill_between(x, y - sd, y + sd, color=colors[method], alpha=0.2, lw=0)
        ax.set_title(task)
        ax.set_xlabel("env steps")
        ax.set_ylabel(CURVE_KEY)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    fig.suptitle(f"{CURVE_KEY}, EMA smoothing {weight}, band: ±1 std over seeds", fontsize=9)
    fig.tight_layout()
    from mummi_jax.checkpoint import atomic_write  # here: importing compare needs no JAX

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, png.getvalue())  # a reader (experiments.reproduce) never sees half
    return True


def run_compare(
    logdirs: Sequence[str],
    out: str | None = None,
    table: str = "auto",
    *,
    reference: str = REFERENCE_PATH,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
    smoothing: float = 0.9,
    stdout=None,
    stderr=None,
) -> int:
    """The whole command; returns the exit status (0 when any run was usable)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr

    def report(msg: str) -> None:
        print(f"compare: {msg}", file=stderr)

    if not logdirs:
        report("--logdirs is empty (expected one or more run directories, comma separated)")
        return 2
    tables = load_reference(reference)
    if table != "auto" and table not in tables:
        report(f"unknown --table {table!r} (expected 'auto' or one of {', '.join(tables)})")
        return 2
    runs, problems = collect_runs(logdirs)
    for p in problems:
        report(p)
    if not runs:
        report("nothing usable found in " + ", ".join(repr(d) for d in logdirs))
        return 1
    rows, row_problems = aggregate(runs, tables, table, n_resamples=n_resamples, seed=seed)
    for p in row_problems:
        report(p)
    problems += row_problems
    md = markdown_table(rows) if rows else "No results.json found: no table, curves only.\n"
    print(md, file=stdout, end="")

    out = out or next((d for d in logdirs if os.path.isdir(d)), ".")
    os.makedirs(out, exist_ok=True)
    from mummi_jax.checkpoint import atomic_write

    # Written whole or not at all: several grid processes may read them while one writes.
    atomic_write(
        os.path.join(out, "compare.md"),
        f"# Comparison with published figures (--table={table})\n\n{md}".encode(),
    )
    record = {"table": table, "rows": rows, "problems": problems, "runs": [r.path for r in runs]}
    atomic_write(os.path.join(out, "compare.json"), json.dumps(record, indent=1).encode())
    png = os.path.join(out, "curves.png")
    plotted = plot_curves(runs, png, smoothing)
    if not plotted:
        report(f"no {CURVE_KEY!r} in any metrics.jsonl; {png} not written")
    written = "compare.md, compare.json" + (", curves.png" if plotted else "")
    print(f"compare: wrote {written} in {out}", file=stdout)
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    return run_compare(
        f.logdirs,
        f.out or None,
        f.table,
        reference=f.reference,
        n_resamples=f.resamples,
        seed=f.bootstrap_seed,
        smoothing=f.smoothing,
    )


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
