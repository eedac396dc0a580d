"""The released MuMMI code's side of the parity check. Runs in a TensorFlow environment.

    <tf-python> experiments/parity/reference_side.py --checkout=PATH --inputs=IN.npz --out=OUT.npz

It imports the user's own checkout of clear-nus/MuMMI (nothing of it is copied here),
makes it import on TensorFlow 2.15 with run-time stand-ins for the APIs it uses that have
since been renamed (`compat()`, reference-parity.md), builds its agent (`mummi.CMDreamer`)
in float32 for the sizes in the inputs, optionally loads given weights into it, and runs K
updates of its own `_train` on the given batches, with every Gaussian draw of the RSSM and
the actor taken from the given noise instead of TensorFlow's generators. Each step's
intermediate values are read off its modules as they run (`_Recorder`), and written to
OUT.npz with the gradients and parameters (names from `mapping.py`).

Inputs (IN.npz): `config` (JSON: batch, length, cnn_depth, deter, stoch, units, horizon,
action_dim, touch_dim, steps, init: "given" | "reference"), `weights/<reference name>`
(with init "given"), and per step k: `batch/<k>/<key>` (raw `(B, T, ...)` arrays: image
uint8, depth and touch float32, `<m>_flag` `(B, T)`, action, reward, discount) and
`noise/<k>/<name>` in `Agent.draw_noise`'s layout.

The updates run eagerly (the RSSM's `tf.function`s unwrapped), so that the recorder sees
concrete values and the noise is consumed in call order; the arithmetic is the same ops.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import types

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_HERE = os.path.dirname(os.path.abspath(__file__))


def _mapping():
    # Imported by path: this environment has no mummi_jax, only this folder.
    sys.path.insert(0, _HERE)
    import mapping

    return mapping


def compat(tf):
    """Run-time stand-ins that let TF 2.1-era code import and run on TF 2.15 (Keras 2).

    1. `tensorflow.keras.mixed_precision.experimental` is gone: a namespace with the names
       the code uses (`global_policy`, `Policy`, `set_policy`, `LossScaleOptimizer` with
       its old positional 'dynamic').
    2. `Strategy.experimental_run_v2` was renamed `run`.
    3. `tf.optimizers.Adam` is the Keras-2 "legacy" Adam, the optimiser TF 2.1 had.
    4. The environment wrappers (which do not parse on Python 3) and `gym` are never used by
       the train step: empty stand-in modules.
    """
    mp = tf.keras.mixed_precision
    prec = types.SimpleNamespace(
        global_policy=mp.global_policy,
        Policy=mp.Policy,
        set_policy=mp.set_global_policy,
        LossScaleOptimizer=lambda opt, dynamic="dynamic": mp.LossScaleOptimizer(
            opt, dynamic=bool(dynamic)
        ),
    )
    sys.modules["tensorflow.keras.mixed_precision.experimental"] = prec
    mp.experimental = prec
    tf.distribute.MirroredStrategy.experimental_run_v2 = tf.distribute.MirroredStrategy.run
    tf.optimizers.Adam = tf.keras.optimizers.legacy.Adam
    sys.modules.setdefault("wrappers", types.ModuleType("wrappers"))
    gym = types.ModuleType("gym")
    gym.spaces = types.SimpleNamespace()
    sys.modules.setdefault("gym", gym)


def float32_casts(tf, models):
    """The InfoNCE modules cast their result to 'float16' whatever the policy; in float32
    that would round the loss to half precision and fail to add to the float32 terms. Their
    module gets a `tf` whose `cast` maps 'float16' to the policy's compute dtype."""

    class _TF(types.ModuleType):
        def __getattr__(self, name):
            return getattr(tf, name)

        def cast(self, x, dtype, name=None):
            if dtype in ("float16", tf.float16):
                dtype = tf.keras.mixed_precision.global_policy().compute_dtype
            return tf.cast(x, dtype, name=name)

    class _Linalg(types.ModuleType):
        """TensorFlow's CPU kernels have no bfloat16 `DiagPart` (the InfoNCE's positives
        under a `mixed_bfloat16` policy): the diagonal is read in float32 and cast back."""

        def __getattr__(self, name):
            return getattr(tf.linalg, name)

        def tensor_diag_part(self, x, name=None):
            if x.dtype != tf.bfloat16:
                return tf.linalg.tensor_diag_part(x, name=name)
            return tf.cast(tf.linalg.tensor_diag_part(tf.cast(x, tf.float32)), tf.bfloat16)

    models.tf = _TF("tf")
    models.tf.linalg = _Linalg("linalg")


def import_reference(checkout: str):
    """`(tf, tfd, tools, models, mummi)` from the user's checkout, made importable."""
    if not os.path.isfile(os.path.join(checkout, "mummi.py")):
        raise SystemExit(
            f"{checkout} is not a checkout of clear-nus/MuMMI (no mummi.py); clone it with "
            "`git clone https://github.com/clear-nus/MuMMI` and pass its folder"
        )
    import tensorflow as tf
    from tensorflow_probability import distributions as tfd

    compat(tf)
    sys.path.insert(0, checkout)
    import models
    import tools

    float32_casts(tf, models)
    import mummi

    return tf, tfd, tools, models, mummi


class _Queue:
    """Standard-normal draws handed out in call order; `done()` checks all were used."""

    def __init__(self, name):
        self.name, self.items, self.used = name, [], 0

    def fill(self, arrays):
        self.items, self.used = list(arrays), 0

    def pop(self):
        if self.used >= len(self.items):
            raise RuntimeError(f"the reference drew more {self.name} samples than provided")
        self.used += 1
        return self.items[self.used - 1]

    def done(self):
        if self.used != len(self.items):
            raise RuntimeError(
                f"the reference drew {self.used} {self.name} samples, {len(self.items)} provided"
            )


class _Recorder:
    """Wraps one of the agent's modules: records what its calls return (and take)."""

    def __init__(self, module, log, name, record_inputs=False):
        self._module, self._log, self._name, self._inputs = module, log, name, record_inputs

    def __getattr__(self, attr):
        return getattr(self._module, attr)

    def __call__(self, *args, **kwargs):
        out = self._module(*args, **kwargs)
        self._log.setdefault(self._name, []).append(out)
        return out


class _DynamicsRecorder(_Recorder):
    """The RSSM: records the fused input and the output of `observe`."""

    def observe(self, embed, action, state=None):
        post, prior = self._module.observe(embed, action, state)
        self._log["observe"] = (embed, post, prior)
        return post, prior


class _NoDecoder:
    """Stands in for a conv decoder whose output the update never uses: its `mode()` is only
    traced, in the image-summary branch that autograph builds but never runs."""

    def __init__(self, tf, *args, shape=(64, 64, 3), **kwargs):
        self._tf, self._shape = tf, tuple(shape)

    def __call__(self, feat):
        tf, shape = self._tf, self._shape
        zeros = lambda: tf.zeros(tf.concat([tf.shape(feat)[:-1], shape], 0), feat.dtype)
        return types.SimpleNamespace(mode=zeros)


def build(args, cfg, eager_rssm=True, dead_decoders=True, policy="float32"):
    """The reference agent at `cfg`'s sizes, float32 (or under the Keras mixed-precision
    `policy`, e.g. "mixed_bfloat16": every layer computes in it, variables stay float32, as
    the released `precision=16` does with float16), its variables built on
    `cfg["first_batch"]`. `eager_rssm` unwraps the RSSM's `tf.function`s (so that the parity
    recorder sees values; timing keeps them); `dead_decoders=False` builds it with its two
    conv decoders replaced by no-ops: they run inside the model tape but feed nothing of the
    update (reference-parity.md), and XLA would prune them."""
    tf, tfd, tools, models, mummi = import_reference(args.checkout)
    if eager_rssm:
        for name in ("observe", "imagine", "obs_step", "img_step"):
            fn = getattr(models.RSSM, name)
            setattr(models.RSSM, name, getattr(fn, "python_function", fn))
    if not dead_decoders:
        models.ConvDecoder = functools.partial(_NoDecoder, tf)

    config = mummi.define_config()
    config.precision = 32
    tf.keras.mixed_precision.set_global_policy(policy)
    config.batch_size, config.batch_length = cfg["batch"], cfg["length"]
    config.cnn_depth, config.deter_size, config.stoch_size = (
        cfg["cnn_depth"],
        cfg["deter"],
        cfg["stoch"],
    )
    config.num_units, config.horizon = cfg["units"], cfg["horizon"]
    config.logdir = __import__("pathlib").Path(tempfile.mkdtemp(prefix="mummi_parity_"))
    first = cfg["first_batch"]

    def load_dataset(directory, config):
        data = {k: tf.constant(v) for k, v in first.items()}
        if policy != "float32":  # the released `Collect` stores floats in the compute dtype
            dtype = tf.keras.mixed_precision.global_policy().compute_dtype
            data = {k: tf.cast(v, dtype) if v.dtype.is_floating else v for k, v in data.items()}
        dataset = tf.data.Dataset.from_tensors(data).repeat()
        return dataset.map(functools.partial(mummi.preprocess, config=config))

    mummi.load_dataset = load_dataset  # the agent builds its variables on one batch
    space = types.SimpleNamespace(shape=(cfg["action_dim"],))
    agent = mummi.CMDreamer(config, config.logdir / "episodes", space, None)
    return tf, tfd, tools, mummi, agent, config


def variables_by_name(agent, mapping):
    out = {}
    for _, ref in mapping.pairs():
        attr, *rest = ref.split("/")
        module = getattr(agent, attr)
        if rest[0] == "_cell":
            layer = module._cell
        else:
            layer = module._modules[rest[0]]
        out[ref] = getattr(layer, rest[-1])
    return out


def reset_optimizers(agent):
    """The constructor already ran one update (to create variables): start the optimisers
    afresh, as ours start (zero moments, step 0, the initial loss scale)."""
    for opt in (agent._model_opt, agent._actor_opt, agent._value_opt):
        for var in opt._opt.variables():
            name = var.name
            if "current_loss_scale" in name:
                var.assign(2.0**15)
            else:
                var.assign(np.zeros(var.shape, var.dtype.as_numpy_dtype))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkout", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    mapping = _mapping()
    with np.load(args.inputs) as data:
        inputs = {k: data[k] for k in data.files}
    cfg = json.loads(str(inputs["config"]))
    steps = cfg["steps"]
    batches = [_prefixed(inputs, f"batch/{k}/") for k in range(steps)]
    noises = [_prefixed(inputs, f"noise/{k}/") for k in range(steps)]
    cfg["first_batch"] = _reference_batch(batches[0])

    tf, tfd, tools, mummi, agent, config = build(args, cfg)
    variables = variables_by_name(agent, mapping)
    out = {}
    if cfg["init"] == "given":
        for ref, var in variables.items():
            var.assign(inputs[f"weights/{ref}"])
    for ref, var in variables.items():
        out[f"init/{ref}"] = var.numpy()
    reset_optimizers(agent)

    # Every Gaussian draw comes from the given noise: the RSSM's (tools._mnd_sample's
    # replacement, batch-shared as the original) and the actor's (tanh of a Normal).
    mvn, actor = _Queue("RSSM"), _Queue("actor")

    def mvn_sample(self, sample_shape=(), seed=None, name="sample"):
        return self.mean() + self.stddev() * tf.constant(mvn.pop())

    def actor_sample(self, sample_shape=(), seed=None):
        normal = self._dist.distribution.distribution
        return tf.tanh(normal.loc + normal.scale * tf.constant(actor.pop()))

    tfd.MultivariateNormalDiag.sample = mvn_sample
    tools.SampleDist.sample = actor_sample

    log: dict = {}
    for attr in ("_embed2p_img", "_embed2p_dep", "_embed2p_touch", "_z2embed"):
        setattr(agent, attr, _Recorder(getattr(agent, attr), log, attr))
    agent._dynamics = _DynamicsRecorder(agent._dynamics, log, "_dynamics")
    imagine = agent._imagine_ahead
    agent._imagine_ahead = lambda post: log.setdefault("imag_feat", imagine(post))
    lambda_return = tools.lambda_return

    def record_returns(*a, **kw):
        log["returns"] = lambda_return(*a, **kw)
        return log["returns"]

    tools.lambda_return = record_returns
    grads = {}
    ref_name = {id(v): ref for ref, v in variables.items()}
    for opt in (agent._model_opt, agent._actor_opt, agent._value_opt):
        unscale = opt._opt.get_unscaled_gradients

        def record(g, unscale=unscale, opt=opt):
            g = unscale(g)
            for var, grad in zip(opt._variables, g, strict=True):
                if id(var) in ref_name:
                    grads[ref_name[id(var)]] = grad
            return g

        opt._opt.get_unscaled_gradients = record

    for k in range(steps):
        log.clear()
        grads.clear()
        mvn.fill(_rssm_draws(noises[k]))
        actor.fill(list(noises[k]["imagine_action"]))
        for metric in agent._metrics.values():
            metric.reset_states()
        data = mummi.preprocess(
            {key: tf.constant(v) for key, v in _reference_batch(batches[k]).items()}, config
        )
        agent._strategy.run(agent._train, args=(data, False))
        mvn.done()
        actor.done()
        metrics = {name: float(m.result()) for name, m in agent._metrics.items()}
        for name in ("model_loss", "div", "reward_loss", "image_loss", "depth_loss"):
            out[f"step{k + 1}/term/{name}"] = np.float64(metrics[name])
        for name in ("touch_loss", "actor_loss", "value_loss"):
            out[f"step{k + 1}/term/{name}"] = np.float64(metrics[name])
        for name in ("model_grad_norm", "actor_grad_norm", "value_grad_norm"):
            out[f"step{k + 1}/term/{name}"] = np.float64(metrics[name])
        if k == 0:
            out.update(_first_step_terms(log, grads, tfd))
        elif os.environ.get("PARITY_ALL_GRADS"):
            out.update({f"step{k + 1}/grad/{ref}": g.numpy() for ref, g in grads.items()})
            out.update({f"step{k + 1}/param/{ref}": v.numpy() for ref, v in variables.items()})
        for ref, var in variables.items():
            if k == 0 or k == steps - 1:
                out[f"step{k + 1}/param/{ref}"] = var.numpy()
    tmp = args.out + ".tmp.npz"
    np.savez_compressed(tmp, **out)
    os.replace(tmp, args.out)


def _first_step_terms(log, grads, tfd):
    out = {}
    names = {"_embed2p_img": "image", "_embed2p_dep": "depth", "_embed2p_touch": "touch"}
    for attr, m in names.items():
        (prob,) = log[attr]
        out[f"step1/term/experts/{m}/mean"] = prob["mean"].numpy()
        out[f"step1/term/experts/{m}/std"] = prob["std"].numpy()
    embed, post, prior = log["observe"]
    out["step1/term/fused"] = embed.numpy()
    for key in ("mean", "std", "stoch", "deter"):
        out[f"step1/term/post/{key}"] = post[key].numpy()
        out[f"step1/term/prior/{key}"] = prior[key].numpy()
    kl = tfd.kl_divergence(
        tfd.MultivariateNormalDiag(post["mean"], post["std"]),
        tfd.MultivariateNormalDiag(prior["mean"], prior["std"]),
    )
    out["step1/term/kl"] = np.float64(np.mean(kl.numpy()))
    out["step1/term/g"] = log["_z2embed"][0].numpy()
    out["step1/term/imagine/feat"] = log["imag_feat"].numpy()
    out["step1/term/returns"] = log["returns"].numpy()
    for ref, g in grads.items():
        out[f"step1/grad/{ref}"] = g.numpy()
    return out


def _prefixed(data, prefix):
    return {k[len(prefix) :]: v for k, v in data.items() if k.startswith(prefix)}


def _reference_batch(batch):
    """Our `(B, T)` flags -> the reference's `(B, T, 1)`; the keys its train step reads."""
    out = {}
    for key in ("image", "depth", "touch", "action", "reward", "discount"):
        out[key] = batch[key]
    for m in ("image", "depth", "touch"):
        out[f"{m}_flag"] = batch[f"{m}_flag"].astype(np.float32)[..., None]
    return out


def _rssm_draws(noise):
    """`Agent.draw_noise`'s arrays in the order the reference samples: for each step of the
    observe scan its prior then its posterior, then each imagination step."""
    draws = []
    for t in range(noise["observe"].shape[0]):
        draws += [noise["observe"][t, 0], noise["observe"][t, 1]]
    draws += list(noise["imagine_state"])
    return draws


if __name__ == "__main__":
    main()
