"""`--what=dots`: where the update's matrix products run on XLA:CPU, by FLOPs.

Compiles one update (`agent.train`, the `train_step` benchmark's shapes; nothing is run) and
reads its optimised HLO: every `dot`, its FLOPs (2 x output size x contracted size) times the
trip count of the loops around it, and whether XLA handed it to YNNPACK (a `__ynn_fusion`) or
left it to Eigen; oneDNN's convolutions (`mummi_jax.kernels`) count as backend "onednn".
XLA:CPU takes a dot to YNNPACK only when it contracts its left operand's last axis; weight
gradients `x^T dY` contract the first (BENCHMARKS.md "Channel-major encoders"). Prints one
total record and the `--repeats` (default 10) largest Eigen dots.
"""

from __future__ import annotations

import collections
import math
import re

_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) ")
_VALUE = re.compile(r"\s*(?:ROOT )?%(\S+) = \w+\[([\d,]*)\]")
_DOT = re.compile(r"\s*(?:ROOT )?%(\S+) = \w+\[([\d,]*)\]\S* dot\(%(\S+?), %(\S+?)\)")
# mummi_jax.kernels.onednn's convolutions: products XLA does not see as dots.
_CONV = re.compile(
    r"\s*(?:ROOT )?%(\S+) = \w+\[([\d,]*)\]\S* custom-call\(%(\S+?), %(\S+?)\).*"
    r'custom_call_target="mummi_conv_(\w+)"'
)
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CALLEE = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")


def _dims(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def dot_table(hlo: str) -> list[dict]:
    """One row per dot of an optimised HLO module's text: flops (times its loops' trip
    counts), backend ("ynnpack" | "eigen"), output and lhs shapes, lhs contracting dims; and
    one per oneDNN convolution custom call (backend "onednn": 2 x the products' multiply-adds,
    the same count as the patch products it replaces)."""
    bodies: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            m = _COMPUTATION.match(line)
            name = m.group(1) if m else None
            if name:
                bodies[name] = []
        elif name and line.strip():
            bodies[name].append(line)
    entry = re.search(r"^ENTRY %(\S+) ", hlo, re.M)
    if entry is None:
        raise ValueError("dot_table: no ENTRY computation in this HLO text")
    callees = collections.defaultdict(list)
    ynn = set()
    for comp, lines in bodies.items():
        for line in lines:
            trip = _TRIP.search(line)
            times = int(trip.group(1)) if trip and " while(" in line else 1
            for callee in _CALLEE.findall(line):
                callees[comp].append((callee, times))
                if '"__ynn_fusion"' in line:
                    ynn.add(callee)
    weight: dict[str, float] = collections.defaultdict(float)

    def visit(comp, times):
        weight[comp] += times
        for callee, n in callees.get(comp, []):
            visit(callee, times * n)

    visit(entry.group(1), 1)
    rows = []
    for comp, lines in bodies.items():
        shapes = {m.group(1): _dims(m.group(2)) for m in map(_VALUE.match, lines) if m}
        for line in lines:
            conv = _CONV.match(line)
            if conv:
                rows.append(_conv_row(conv, shapes, weight[comp]))
                continue
            m = _DOT.match(line)
            if not m:
                continue
            contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
            lc = _dims(contracting.group(1)) if contracting else []
            lhs = shapes.get(m.group(3), [])
            k = math.prod(lhs[i] for i in lc) if lhs else 0
            op = re.search(r'op_name="([^"]+)"', line)
            rows.append({
                "gflop": 2 * math.prod(_dims(m.group(2))) * k * weight[comp] / 1e9,
                "backend": "ynnpack" if comp in ynn else "eigen",
                "out": _dims(m.group(2)),
                "lhs": lhs,
                "lhs_contracting": lc,
                "op": op.group(1).split("/")[-2:] if op else [],
            })  # fmt: skip
    return sorted(rows, key=lambda r: -r["gflop"])


def _conv_row(m, shapes, times) -> dict:
    out, a, b = _dims(m.group(2)), shapes.get(m.group(3), []), shapes.get(m.group(4), [])
    kind = m.group(5)
    # forward (x, w) -> y; input_gradient (dy, w) -> dx; kernel_gradient (x, dy) -> dw.
    dy = out if kind == "forward" else (a if kind == "input_gradient" else b)
    w = out if kind == "kernel_gradient" else b
    macs = math.prod(dy) * math.prod(w[:3]) if dy and len(w) == 4 else 0
    return {
        "gflop": 2 * macs * times / 1e9,
        "backend": "onednn",
        "out": out,
        "lhs": a,
        "lhs_contracting": [],
        "op": [f"conv_{kind}"],
    }


def run(flags):
    import jax
    import numpy as np
    from dm_env import specs

    from experiments.bench.train_step import _batch, _spec
    from mummi_jax import presets
    from mummi_jax.agent import Agent

    overrides = list(flags.set)
    if flags.size == "paper":
        overrides.append("train.updates_per_call=1")
    cfg = presets.make_config(flags.method, "walker_walk", flags.size, overrides=overrides)
    spec = _spec(cfg.env.image_size, cfg)
    agent = Agent(cfg, spec, specs.BoundedArray((6,), np.float32, -1, 1))
    batch = _batch(agent, spec, cfg.train.updates_per_call, cfg.train.batch, cfg.train.length)
    state = agent.init(jax.random.key(0))
    rows = dot_table(agent._train_jit.lower(state, batch).compile().as_text())
    totals = collections.Counter()
    for r in rows:
        totals[r["backend"]] += r["gflop"]
    yield {
        "what": "dots",
        "size": flags.size,
        "method": flags.method,
        "gflop": round(sum(totals.values()), 1),
        "gflop_ynnpack": round(totals["ynnpack"], 1),
        "gflop_eigen": round(totals["eigen"], 1),
        "gflop_onednn": round(totals["onednn"], 1),
        "dots": len(rows),
    }
    for r in [r for r in rows if r["backend"] == "eigen"][: flags.repeats or 10]:
        yield {"what": "dots/eigen", **r, "gflop": round(r["gflop"], 2)}
