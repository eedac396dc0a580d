"""Our first update in float64: the yardstick for how far float32 rounding alone goes.

    python -m experiments.parity.float64 --inputs=IN.npz --out=OUT.npz

Takes the inputs `python -m experiments.parity` gave both implementations (its sizes, our
weights, the first batch and its noise; written by `__main__.run_float64`) and computes our
first update's terms and gradients with every array in float64:
`jax_enable_x64`, the parameters cast up, and `jnp.float32` standing for float64 while our
modules build their graph (they cast to float32 explicitly where the reference does). The
parity harness then reports, per tensor, how far our float32 result and the reference's
float32 result each are from this one: when both are at the same distance, a difference
between them is rounding, not a different computation.
"""

from __future__ import annotations

import os
import sys

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def first_update_float64(cfg: dict, weights: dict, batch: dict, noise: dict) -> dict:
    """`step1/term/*` and `step1/grad/*` (reference names) of our first update, in float64."""
    from experiments.parity import harness
    from mummi_jax import agent as _agent  # noqa: F401  (imported before the patch below:
    # libraries that read jnp.float32 at import, as TFP's JAX substrate does, must see it)

    float32 = jnp.float32
    jnp.float32 = jnp.float64  # our explicit casts keep float64 while the graph is built
    try:
        agent = harness.make_agent(cfg)
        up = lambda x: np.asarray(x, np.float64) if np.asarray(x).dtype.kind == "f" else x
        out = harness.run_ours(
            agent,
            {k: up(v) for k, v in weights.items()},
            [{k: up(v) for k, v in batch.items()}],
            [{k: up(v) for k, v in noise.items()}],
            dtype=np.float64,
        )
    finally:
        jnp.float32 = float32
    return {k: v for k, v in out.items() if k.startswith(("step1/term/", "step1/grad/"))}


def define_flags():
    flags.DEFINE_string("inputs", None, "Inputs written by experiments.parity (.npz).")
    flags.DEFINE_string("out", None, "Output .npz.")
    flags.mark_flags_as_required(["inputs", "out"])


def main(argv):
    del argv
    import json

    with np.load(FLAGS.inputs) as data:
        inputs = {k: data[k] for k in data.files}
    part = lambda prefix: {k[len(prefix) :]: v for k, v in inputs.items() if k.startswith(prefix)}
    cfg = json.loads(str(inputs["config"]))
    out = first_update_float64(cfg, part("weights/"), part("batch/"), part("noise/"))
    tmp = FLAGS.out + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, FLAGS.out)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
