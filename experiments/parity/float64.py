"""Our first update in float64: the yardstick for how far float32 rounding alone goes.

    python -m experiments.parity.float64 --inputs=IN.npz --out=OUT.npz

Takes the inputs `python -m experiments.parity` gave both implementations (its sizes, our
weights, the batches and their noise; written by `__main__.run_float64`) and runs our
updates with every array in float64:
`jax_enable_x64`, the parameters cast up, and `jnp.float32` standing for float64 while our
modules build their graph (they cast to float32 explicitly where the reference does). The
parity harness then reports, per row, how far our float32 result and the reference's
float32 result each are from this one: when both are at the same distance, a difference
between them is rounding (and what rounding grows into over several Adam steps), not a
different computation.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def updates_float64(cfg: dict, weights: dict, batches: list, noises: list) -> dict:
    """Our K updates' outputs (reference names, `harness.run_ours`), in float64."""
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
            [{k: up(v) for k, v in batch.items()} for batch in batches],
            [{k: up(v) for k, v in noise.items()} for noise in noises],
            dtype=np.float64,
        )
    finally:
        jnp.float32 = float32
    return {k: v for k, v in out.items() if not k.startswith("init/")}


def define_flags():
    flags.DEFINE_string("inputs", None, "Inputs written by experiments.parity (.npz).")
    flags.DEFINE_string("out", None, "Output .npz.")
    flags.mark_flags_as_required(["inputs", "out"])


def main(argv):
    del argv
    import json

    # Here, not at import: a process that only imports this module (the test that imports
    # every entry point together) must keep float32 defaults for everything else it runs.
    jax.config.update("jax_enable_x64", True)

    with np.load(FLAGS.inputs) as data:
        inputs = {k: data[k] for k in data.files}
    part = lambda prefix: {k[len(prefix) :]: v for k, v in inputs.items() if k.startswith(prefix)}
    cfg = json.loads(str(inputs["config"]))
    steps = cfg["steps"]
    batches = [part(f"batch/{k}/") for k in range(steps)]
    noises = [part(f"noise/{k}/") for k in range(steps)]
    out = updates_float64(cfg, part("weights/"), batches, noises)
    tmp = FLAGS.out + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, FLAGS.out)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
