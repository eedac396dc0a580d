"""Term-by-term parity with the released MuMMI code on identical inputs.

    python -m experiments.parity --reference=PATH/TO/MuMMI --tf_python=PATH/TO/tfenv/bin/python \
        --size=small --out=runs/parity/small

Both implementations get the same weights (`--weights`: `procedural`, seeded NumPy values
neither side chose; `reference`, the released code's own Keras initialisation; `ours`, our
initialisation), the same raw batches (`--batch`: `synthetic`, or `walker`, real
walker_walk frames over natural backgrounds with the reference's missing data) and the same
sampling noise, and run `--steps` updates. Writes `<out>/parity.json` (one row per term:
ours, reference, relative error, tolerance) and `<out>/parity.md`, and prints the
failures; exits 1 if any term is outside its tolerance.

`--fixture=tests/data/parity_small.npz` also stores the reference's outputs (digests, see
`harness.digest`) with the inputs' recipe, for `tests/test_parity.py` to check our side
against in CI without TensorFlow.

The reference needs its own Python (it cannot share ours: TF 2.15 wants numpy < 2):

    python -m venv tfenv && tfenv/bin/pip install tensorflow-cpu==2.15.1 keras==2.15.0 \
        tensorflow-probability==0.23.0 numpy==1.26.4
    git clone https://github.com/clear-nus/MuMMI
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


INSTALL = (
    "a Python with tensorflow-cpu==2.15.1 keras==2.15.0 tensorflow-probability==0.23.0 "
    "numpy==1.26.4 (python -m venv tfenv && tfenv/bin/pip install ...), passed as --tf_python"
)


def define_flags():
    flags.DEFINE_string("reference", None, "A checkout of clear-nus/MuMMI (git clone ...).")
    flags.DEFINE_string("tf_python", None, "Python of an environment with TensorFlow 2.15.")
    flags.DEFINE_enum("size", "small", ["small", "paper"], "Sizes (harness.SIZES).")
    flags.DEFINE_integer("steps", 10, "Updates to run on both sides.")
    flags.DEFINE_enum("weights", "procedural", ["procedural", "reference", "ours"], "Weights.")
    flags.DEFINE_enum("batch", "synthetic", ["synthetic", "walker"], "Batches.")
    flags.DEFINE_integer("seed", 0, "Seed of the weights, batches and noise.")
    flags.DEFINE_string("out", "runs/parity", "Output folder.")
    flags.DEFINE_string("fixture", None, "Also write the CI fixture here (.npz).")
    flags.DEFINE_bool(
        "float64", True, "Also compute our first update in float64 (rounding yardstick)."
    )
    flags.DEFINE_multi_string(
        "set", [], "Override on our side only (section.key=value), to measure an option."
    )
    flags.DEFINE_bool(
        "reuse_reference", False, "Reuse <out>/reference.npz when it was made from the same inputs."
    )


def check_reference(checkout, tf_python):
    """One line naming what is missing and how to get it, or None."""
    if not checkout:
        return "no --reference: pass a checkout of clear-nus/MuMMI (git clone it)"
    if not os.path.isfile(os.path.join(checkout, "mummi.py")):
        return f"--reference={checkout} is not a clear-nus/MuMMI checkout (no mummi.py)"
    if not tf_python:
        return f"no --tf_python: the reference runs in {INSTALL}"
    probe = [tf_python, "-c", "import tensorflow, tensorflow_probability"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=300)
    except OSError as e:
        return f"--tf_python={tf_python} cannot run ({e}); it must be {INSTALL}"
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"--tf_python={tf_python} cannot import TensorFlow ({last}); it must be {INSTALL}"
    return None


def run_reference(checkout, tf_python, cfg, weights, batches, noise, workdir):
    from experiments.parity import mapping

    inputs = {"config": np.array(json.dumps(cfg))}
    if weights is not None:
        to_ref = dict(mapping.pairs())
        inputs.update({f"weights/{to_ref[k]}": v for k, v in weights.items()})
    for k, batch in enumerate(batches):
        inputs.update({f"batch/{k}/{key}": np.asarray(v) for key, v in batch.items()})
        inputs.update({f"noise/{k}/{key}": np.asarray(v) for key, v in noise[k].items()})
    path_in, path_out = os.path.join(workdir, "in.npz"), os.path.join(workdir, "ref.npz")
    np.savez(path_in, **inputs)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_side.py")
    cmd = [tf_python, script, f"--checkout={checkout}", f"--inputs={path_in}", f"--out={path_out}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"the reference side failed (exit {done.returncode}); output above")
    with np.load(path_out) as data:
        return {k: data[k] for k in data.files}


def run_float64(out, cfg, weights, batches, noises):
    """Our updates in float64, in a process of its own (x64 is set at start-up), on
    exactly the inputs both implementations were given."""
    from experiments.parity import harness

    path_in, path = os.path.join(out, "float64_in.npz"), os.path.join(out, "float64.npz")
    inputs = {"config": np.array(json.dumps(cfg))}
    inputs.update({f"weights/{k}": v for k, v in weights.items()})
    for k, (batch, noise) in enumerate(zip(batches, noises, strict=True)):
        inputs.update({f"batch/{k}/{key}": np.asarray(v) for key, v in batch.items()})
        inputs.update({f"noise/{k}/{key}": np.asarray(v) for key, v in noise.items()})
    np.savez(path_in, **inputs)
    cmd = [sys.executable, "-m", "experiments.parity.float64", f"--inputs={path_in}"]
    done = subprocess.run(cmd + [f"--out={path}"], capture_output=True, text=True)
    os.remove(path_in)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"the float64 run failed (exit {done.returncode}); output above")
    with np.load(path) as data:
        result = {k: data[k] for k in data.files}
    result.update(harness.module_grad_norms(result))
    return result


def _inputs_key(cfg, weights, batches, noise) -> str:
    import hashlib

    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for tree in ([weights or {}], batches, noise):
        for item in tree:
            for k in sorted(item):
                h.update(k.encode())
                h.update(np.ascontiguousarray(item[k]).tobytes())
    return h.hexdigest()


def _load_cached(path, key):
    if not os.path.exists(path):
        return None
    with np.load(path) as data:
        if str(data["inputs_key"]) != key:
            return None
        return {k: data[k] for k in data.files}


def reference_version(checkout):
    try:
        return subprocess.run(
            ["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def main(argv):
    del argv
    from experiments.parity import harness, mapping

    problem = check_reference(FLAGS.reference, FLAGS.tf_python)
    if problem:
        print(f"parity: {problem}", file=sys.stderr)
        return 2
    os.makedirs(FLAGS.out, exist_ok=True)
    t0 = time.time()
    cfg, agent, weights, batches, noise = harness.make_inputs(
        FLAGS.size, FLAGS.steps, FLAGS.weights, FLAGS.batch, FLAGS.seed, FLAGS.set
    )
    cached = os.path.join(FLAGS.out, "reference.npz")
    key = _inputs_key(cfg, weights, batches, noise)
    ref = _load_cached(cached, key) if FLAGS.reuse_reference else None
    if ref is None:
        with tempfile.TemporaryDirectory(prefix="mummi_parity_") as work:
            ref = run_reference(
                FLAGS.reference, FLAGS.tf_python, cfg, weights, batches, noise, work
            )
        np.savez_compressed(cached, inputs_key=np.array(key), **ref)
    ref.pop("inputs_key", None)
    t_ref = time.time() - t0
    init_check = None
    if weights is None:  # the reference's own initialisation, in our names
        weights = {ours: ref[f"init/{r}"] for ours, r in mapping.pairs()}
        init_check = harness.compare_initialisers(agent, weights, FLAGS.seed)
    # float64 first, in its own process, while this one holds little device memory.
    f64 = run_float64(FLAGS.out, cfg, weights, batches, noise) if FLAGS.float64 else None
    ours = harness.run_ours(agent, weights, batches, noise)
    ours.update(harness.module_grad_norms(ours))
    ref.update(harness.module_grad_norms(ref))
    rows = harness.compare(ours, ref, f64=f64)
    failed = [r for r in rows if not r["ok"]]
    commit = reference_version(FLAGS.reference)
    meta = {
        "size": FLAGS.size,
        "sizes": cfg,
        "steps": FLAGS.steps,
        "weights": FLAGS.weights,
        "batch": FLAGS.batch,
        "seed": FLAGS.seed,
        "ours_overrides": list(FLAGS.set),
        "reference_commit": commit,
        "versions": _versions(FLAGS.tf_python),
        "failed": len(failed),
        "rows": len(rows),
        "seconds": round(time.time() - t0, 1),
        "reference_seconds": round(t_ref, 1),
    }
    if init_check is not None:
        meta["initialisers"] = init_check
    with open(os.path.join(FLAGS.out, "parity.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    title = (
        f"{FLAGS.size}: weights {FLAGS.weights}, batch {FLAGS.batch}, seed {FLAGS.seed}, "
        f"{FLAGS.steps} steps ({len(rows)} rows, {len(failed)} outside tolerance)"
    )
    with open(os.path.join(FLAGS.out, "parity.md"), "w") as f:
        f.write(harness.table_markdown(rows, title))
    if FLAGS.fixture:
        write_fixture(FLAGS.fixture, meta, ref)
    worst = sorted(rows, key=lambda r: -r["rel_error"])[:8]
    print(json.dumps(meta))
    for r in failed or worst:
        print(
            f"{'ok  ' if r['ok'] else 'FAIL'} {r['term']}: largest-entry {r['rel_error']:.3g}, "
            f"norm {r['rel_norm']:.3g} (held to {r['criterion']} <= {r['tol']:.0e})"
        )
    return 1 if failed else 0


def write_fixture(path, meta, ref):
    from experiments.parity import harness

    small = harness.digest(ref)
    small = {f"ref/{k}": v for k, v in small.items()}
    small["meta"] = np.array(json.dumps(meta))
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **small)
    os.replace(tmp, path)


def _versions(tf_python):
    import jax

    code = (
        "import tensorflow as t, tensorflow_probability as p; print(t.__version__, p.__version__)"
    )
    tf = subprocess.run([tf_python, "-c", code], capture_output=True, text=True).stdout.split()
    return {"jax": jax.__version__, "tensorflow": tf[:1], "tfp": tf[1:2]}


if __name__ == "__main__":
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
