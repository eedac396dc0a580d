"""The released code's update, timed on request: the reference side of
`python -m experiments.benchmark --what=reference`.

    TFPYTHON -m experiments.parity.reference_timing --checkout=MuMMI --size=paper [--no_decoders]
        [--part=update|encoders] [--policy=float32|mixed_bfloat16]

Runs in the TensorFlow environment (`experiments/parity/__main__.py` says how to make one).
Builds the released agent as released (float32; its `train` a `tf.function` under its
`MirroredStrategy`, the RSSM's own `tf.function`s kept) on a synthetic walker batch (64x64
RGB, depth, touch, 28 % missing flags), with or without its dead conv decoders, runs the
update once more, then answers each line `step` on stdin with one update's wall seconds on
stdout (`seconds <s>`), so that the caller can alternate it with ours. `quit` ends it.

`--part=encoders` times the released code's two image encoders alone instead (its
`models.ConvEncoder` for RGB and depth, the gradient of the sum of squares of both embeddings
with respect to their weights, on the batch's B * T frames): the part our
`--what=train_step` calls "encoders", computed the same way, so that the two sides' gap can be
split between the convolutions and the rest.

`--policy=mixed_bfloat16` runs either under that Keras policy: every layer computes in
bfloat16, variables stay float32, the batch's floats are stored in bfloat16 — the released
`precision=16` (`mixed_float16`, its default, run on GPUs) in the form a CPU with AVX512-BF16
computes fast; float16 has no fast CPU path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.parity import reference_side  # noqa: E402

SIZES = {  # the parity harness's sizes (harness.SIZES; that module needs JAX's numpy side)
    "small": dict(batch=4, length=8, cnn_depth=8, deter=32, stoch=8, units=32, horizon=5),
    "paper": dict(batch=50, length=50, cnn_depth=32, deter=200, stoch=30, units=400, horizon=15),
}


def raw_batch(B, T, seed=0) -> dict:
    """The reference's raw batch layout (`reference_side._reference_batch`): walker shapes."""
    rng = np.random.default_rng(seed)
    out = {
        "image": rng.integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8),
        "depth": rng.uniform(0, 5, (B, T, 64, 64, 1)).astype(np.float32),
        "touch": rng.uniform(0, 5, (B, T, 2)).astype(np.float32),
        "action": rng.uniform(-1, 1, (B, T, 6)).astype(np.float32),
        "reward": rng.uniform(0, 1, (B, T)).astype(np.float32),
        "discount": np.ones((B, T), np.float32),
    }
    for m in ("image", "depth", "touch"):
        out[f"{m}_flag"] = (rng.uniform(size=(B, T, 1)) > 0.28).astype(np.float32)
    return out


def encoders_step(args, cfg):
    """A function that runs the released encoders' forward + backward once (module
    docstring); traced and run twice before it returns."""
    tf, _, _, models, _ = reference_side.import_reference(args.checkout)
    tf.keras.mixed_precision.set_global_policy(args.policy)  # Keras layers cast their inputs
    batch = cfg["first_batch"]
    obs = {
        "image": tf.constant(batch["image"].astype(np.float32) / 255.0 - 0.5),
        "depth": tf.constant(batch["depth"]),
    }
    encoders = [
        models.ConvEncoder(cfg["cnn_depth"], tf.nn.relu, modality=m) for m in ("image", "depth")
    ]
    for enc in encoders:
        enc(obs)  # creates the variables
    variables = [v for enc in encoders for v in enc.variables]

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            loss = sum(tf.reduce_sum(tf.square(enc(obs))) for enc in encoders)
        return tape.gradient(loss, variables)

    def step():
        for g in grads():
            g.numpy()  # waits for the values, as ours waits with block_until_ready

    step()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkout", required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="paper")
    parser.add_argument("--no_decoders", action="store_true", help="Drop the dead decoders.")
    parser.add_argument("--part", choices=("update", "encoders"), default="update")
    parser.add_argument(
        "--policy",
        choices=("float32", "mixed_bfloat16"),
        default="float32",
        help="Keras precision policy: mixed_bfloat16 is the released precision=16's CPU form.",
    )
    args = parser.parse_args()
    # The reference prints as it builds and trains; our answers go to the real stdout alone.
    answer = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    cfg = dict(SIZES[args.size], action_dim=6)
    cfg["first_batch"] = raw_batch(cfg["batch"], cfg["length"])
    t = time.perf_counter()
    if args.part == "encoders":
        step = encoders_step(args, cfg)
    else:
        *_, agent, _ = reference_side.build(
            args, cfg, eager_rssm=False, dead_decoders=not args.no_decoders, policy=args.policy
        )

        def step():
            with agent._strategy.scope():
                agent.train(next(agent._dataset))

    build_s = time.perf_counter() - t
    t = time.perf_counter()
    step()  # the steady trace (the build traced the first)
    print(f"ready {build_s:.3f} {time.perf_counter() - t:.3f}", file=answer)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t = time.perf_counter()
        step()
        print(f"seconds {time.perf_counter() - t:.6f}", file=answer)


if __name__ == "__main__":
    main()
