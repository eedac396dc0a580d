"""`--what=reference`: the released code's update and ours, side by side, alternating.

    python -m experiments.benchmark --what=reference --reference=MuMMI --tf_python=tfenv/bin/python

Starts the released code in its TensorFlow environment (`experiments/parity/reference_timing.py`,
the user's checkout, nothing copied) twice, as released and without its dead conv decoders
(they run inside its model tape but feed nothing; XLA prunes ours), and our MuMMI train step
at the same size (`--size=paper`: B = T = 50, H = 15, walker shapes, float32, world model +
actor + value), then times one update of each in turn, `--repeats` rounds, so that the
machine's drift falls on all three alike. `--reference_policy=mixed_bfloat16` runs the
released code under that Keras policy (its `precision=16` in the form a CPU computes fast),
to set beside ours with `--set model.precision=bfloat16_matmul` (each record names both).
Prints a float32 GEMM's rate measured in the same process first, each side's median and
range, and the ratios; the CPU target is `ratio_vs_no_decoders` <= 1.0 (ours by default, no
preloaded allocator, no flags).

With `--reference_parts` (the default), a second phase, once the update processes have
ended (three TensorFlow processes and ours do not fit beside each other in 24 GB at the paper
size), times each side's two image encoders alone the same way, alternating: the released
`models.ConvEncoder`s (`reference_timing.py --part=encoders`) against our
`train_step.encoders_part`, the gradient of the sum of squares of both embeddings with respect
to their weights on the same B * T frames. Its record (`what: reference/encoders`) gives the
encoders' ratio and the rest of the update's (update minus encoders on each side), so that a
gap is placed with a measurement.

TensorFlow's oneDNN kernels are its fast CPU path, but TF 2.15 turns them on by default only
on CPUs with AVX-512-class features: on an AVX2 box the released code would run on Eigen's
convolutions, 1.6x slower (BENCHMARKS.md "Channel-major encoders"). The reference processes
therefore get `TF_ENABLE_ONEDNN_OPTS=1` unless the caller's environment sets it; the record
says which (`reference_onednn`).
"""

from __future__ import annotations

import os
import resource
import subprocess
import time

import jax
import numpy as np

from experiments.bench import train_step as ts
from mummi_jax import host_memory, prng

# The released code's best CPU path on any x86 box (module docstring).
ONEDNN_DEFAULT = "1"


class ReferenceProcess:
    """The released code's update in a TensorFlow process, one update per `step()`."""

    def __init__(self, checkout, tf_python, size, decoders: bool, part="update", policy="float32"):
        script = os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            "parity",
            "reference_timing.py",
        )
        cmd = [tf_python, script, f"--checkout={checkout}", f"--size={size}"]
        if not decoders:
            cmd.append("--no_decoders")
        if part != "update":
            cmd.append(f"--part={part}")
        if policy != "float32":
            cmd.append(f"--policy={policy}")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.setdefault("TF_ENABLE_ONEDNN_OPTS", ONEDNN_DEFAULT)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        line = self._read()
        if not line.startswith("ready"):
            raise RuntimeError(f"the reference did not start: {line!r}")
        _, self.build_seconds, self.second_call_seconds = line.split()

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(
                f"the reference timing process ended (exit {code}); its error is above"
            )
        return line.strip()

    def step(self) -> float:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        line = self._read()
        return float(line.split()[1])

    def close(self, grace: float = 10.0):
        """Asks the process to quit; kills it if it has not within `grace` seconds (at the
        paper size TensorFlow can take over a minute to exit after its last update, and every
        figure is read by then)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=grace)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def _summary(times):
    return {
        "median": float(np.median(times)),
        "min": float(np.min(times)),
        "max": float(np.max(times)),
        "all": [round(t, 4) for t in times],
    }


def run(flags):
    from experiments.parity import harness
    from experiments.parity.__main__ import check_reference, reference_version
    from mummi_jax import config as C

    problem = check_reference(flags.reference, flags.tf_python)
    if problem:
        raise RuntimeError(problem)
    # Both sides at the parity harness's sizes: `tiny` times its `small` (B 4, T 8, small nets).
    size = "paper" if flags.size == "paper" else "small"
    repeats = flags.repeats or 5
    gemm = ts.gemm_gflops()
    yield {"what": "reference/gemm", "n": 2048, "gflops": gemm}

    sides = {}
    policy = flags.reference_policy
    sides["reference_no_decoders"] = ReferenceProcess(
        flags.reference, flags.tf_python, size, decoders=False, policy=policy
    )
    if flags.reference_decoders:
        sides["reference"] = ReferenceProcess(
            flags.reference, flags.tf_python, size, decoders=True, policy=policy
        )
    try:
        agent = harness.make_agent(harness.make_config(size, 1), flags.set)
        cfg, spec = agent.config, ts._spec(64)
        batch = jax.device_put(ts._batch(agent, spec, 1, cfg.train.batch, cfg.train.length))
        state = agent.init(jax.random.key(0))
        t0 = time.perf_counter()
        with host_memory.settling():  # as the runner does between updates (host_memory)
            state, metrics = agent.train(state, batch)
            jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t0

        def ours():
            nonlocal state
            t = time.perf_counter()
            with host_memory.settling():
                state, m = agent.train(state, batch)
                jax.block_until_ready(m)
            return time.perf_counter() - t

        ours()  # one more untimed call on each side: page faults of first use, caches
        for side in sides.values():
            side.step()
        times = {name: [] for name in (*sides, "ours")}
        for _ in range(repeats):
            for name, side in sides.items():
                times[name].append(side.step())
                if name == "reference_no_decoders":
                    times["ours"].append(ours())
        record = {
            "what": "reference",
            "size": size,
            "B": cfg.train.batch,
            "T": cfg.train.length,
            "H": cfg.behavior.horizon,
            "repeats": repeats,
            "reference_commit": reference_version(flags.reference),
            "allocator": ts.allocator(),
            "conv_form": C.resolve_config_conv(cfg),
            "head_layout": C.resolve_head_layout(cfg),
            "precision": cfg.model.precision,
            "reference_policy": policy,
            "reference_onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", ONEDNN_DEFAULT),
            "ours_compile_seconds": compile_s,
            "ours_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        for name, values in times.items():
            record[f"{name}_seconds"] = _summary(values)
        ref = record["reference_no_decoders_seconds"]["median"]
        record["ratio_vs_no_decoders"] = record["ours_seconds"]["median"] / ref
        if "reference" in times:
            full = record["reference_seconds"]["median"]
            record["ratio_vs_released"] = record["ours_seconds"]["median"] / full
    finally:
        for side in sides.values():
            side.close()
    yield record
    if flags.reference_parts:
        yield _encoders_phase(flags, size, repeats, agent, state, batch, record, gemm)


def _encoders_phase(flags, size, repeats, agent, state, batch, update, gemm):
    """Both sides' image encoders alone, alternating (module docstring); `update` is the
    first phase's record, whose medians give the rest of each update; `gemm` the GFLOP/s of
    a GEMM in this process, against which each side's encoder rate is given. Both sides
    compute the same products, so our compiled encoders' dot FLOPs serve for both."""
    one = jax.tree.map(lambda x: x[0], batch)
    fn, params, image_obs = ts.encoders_part(agent, state.params, jax.jit(agent.preprocess)(one))
    compiled = prng.jit(fn).lower(params, image_obs).compile()

    def ours():
        t = time.perf_counter()
        with host_memory.settling():
            jax.block_until_ready(compiled(params, image_obs))
        return time.perf_counter() - t

    reference = ReferenceProcess(
        flags.reference,
        flags.tf_python,
        size,
        decoders=False,
        part="encoders",
        policy=flags.reference_policy,
    )
    try:
        ours()
        reference.step()
        times = {"reference_encoders": [], "ours_encoders": []}
        for _ in range(repeats):
            times["reference_encoders"].append(reference.step())
            times["ours_encoders"].append(ours())
    finally:
        reference.close()
    record = {
        "what": "reference/encoders",
        "size": size,
        "repeats": repeats,
        "precision": agent.config.model.precision,
        "reference_policy": flags.reference_policy,
    }
    for name, values in times.items():
        record[f"{name}_seconds"] = _summary(values)
    ref_enc = record["reference_encoders_seconds"]["median"]
    ours_enc = record["ours_encoders_seconds"]["median"]
    record["encoders_ratio"] = ours_enc / ref_enc
    flop = ts.dot_gflop(compiled)
    record["encoders_dot_gflop"] = flop
    for side, seconds in (("reference", ref_enc), ("ours", ours_enc)):
        record[f"{side}_encoders_gflops"] = flop / seconds
        record[f"{side}_encoders_of_gemm"] = flop / seconds / gemm
    # The rest of the update: each side's update median (first phase) minus its encoders.
    ref_update = update["reference_no_decoders_seconds"]["median"]
    ours_update = update["ours_seconds"]["median"]
    record.update(
        reference_rest_seconds=ref_update - ref_enc,
        ours_rest_seconds=ours_update - ours_enc,
        rest_ratio=(ours_update - ours_enc) / (ref_update - ref_enc),
        # The share of the update's gap that the encoders account for.
        encoders_share_of_gap=(ours_enc - ref_enc) / (ours_update - ref_update),
    )
    return record
