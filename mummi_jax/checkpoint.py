"""Atomic files and checkpoints in Flax's msgpack format (no pickle).

A checkpoint is `<dir>/ckpt-<env_steps>.msgpack`: a msgpack map

    {"format": "mummi_jax-checkpoint-1", "sha256": hex digest of "body", "body": bytes}

whose body is `flax.serialization.msgpack_serialize` of

    {"state": to_state_dict(state), "meta": JSON text}

with every PRNG key stored as its raw uint32 key data. NumPy arrays keep their dtype and
bytes, so a restored state is bit-identical to the saved one (resume is exact on CPU); `meta`
carries the host-side counters and the replay RNG, whose 128-bit PCG64 state does not fit a
msgpack integer. The digest turns any corruption into an error rather than wrong numbers. A saved
`agent.TrainState` of the first layout (`params, opt_state, key, step`, target networks in
`params`, optimiser states by name) is moved into the current one when read (`upgrade`),
so runs saved before it resume.
Files are written to a temporary file in the same folder, fsynced and renamed
(`atomic_write`), so a kill never leaves a half-written checkpoint; the newest `keep` stay.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile

import jax
import numpy as np
from flax import serialization

FORMAT = "mummi_jax-checkpoint-1"
PATTERN = "ckpt-*.msgpack"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def atomic_write(path: str, data: bytes) -> None:
    """Writes via a temp file in the same folder, fsync, then rename: never half-written."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def path_for(directory: str, step: int) -> str:
    return os.path.join(directory, f"ckpt-{int(step):09d}.msgpack")


def _step_of(path: str) -> int:
    return int(os.path.basename(path)[5:14])


def paths(directory: str) -> list[str]:
    """Checkpoint files in `directory`, oldest first."""
    return sorted(glob.glob(os.path.join(directory, PATTERN)))


def steps(directory: str) -> list[int]:
    """Env steps of the checkpoints in `directory`, oldest first."""
    return [_step_of(p) for p in paths(directory)]


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _host(state):
    """Every leaf as a NumPy array; typed PRNG keys as their raw uint32 key data."""
    return jax.tree.map(
        lambda x: np.asarray(jax.device_get(jax.random.key_data(x) if _is_key(x) else x)), state
    )


def encode(state, meta: dict) -> bytes:
    """The bytes of a checkpoint of `state` (a pytree) and `meta` (JSON-serialisable)."""
    body = serialization.msgpack_serialize(
        {"state": serialization.to_state_dict(_host(state)), "meta": json.dumps(meta)}
    )
    digest = hashlib.sha256(body).hexdigest()
    return serialization.msgpack_serialize({"format": FORMAT, "sha256": digest, "body": body})


def save(directory: str, step: int, state, meta: dict, keep: int) -> str:
    """Writes `ckpt-<step>.msgpack` atomically, then deletes all but the newest `keep`."""
    path = path_for(directory, step)
    atomic_write(path, encode(state, meta))
    for old in paths(directory)[:-keep]:
        os.remove(old)
    return path


def read(path: str) -> tuple[dict, dict]:
    """The checkpoint file `path` -> (saved state as a state dict of NumPy arrays, meta),
    checked against its digest. Needs no model, so a corrupt file is found before anything
    is built or compiled. Raises CheckpointError."""
    try:
        with open(path, "rb") as f:
            outer = serialization.msgpack_restore(f.read())
        if outer.get("format") != FORMAT:
            raise ValueError(f"format {outer.get('format')!r}, expected {FORMAT!r}")
        body = outer["body"]
        if hashlib.sha256(body).hexdigest() != outer["sha256"]:
            raise ValueError("checksum mismatch")
        content = serialization.msgpack_restore(body)
        return upgrade(content["state"]), json.loads(content["meta"])
    except Exception as e:  # noqa: BLE001 - any unreadable file is a corrupt checkpoint
        raise CheckpointError(
            f"corrupt checkpoint {path} ({_why(e)}); delete it to resume from the previous one"
        ) from None


# The first TrainState layout's optimiser names -> their parameters' paths in the current one.
_OLD_OPTIMIZERS = {
    "sac_critic": ("sac", "critic"),
    "sac_actor": ("sac", "actor"),
    "alpha": ("sac", "log_alpha"),
}


def upgrade(saved: dict) -> dict:
    """A saved state dict in the current `agent.TrainState` layout; others pass unchanged.

    The first layout, `{"params", "opt_state", "key", "step"}`, kept the target networks in
    `params` (`params["slow_value"]`, `params["sac"]["target_critic"]`) and named the SAC
    optimiser states `"sac_critic"`, `"sac_actor"` and `"alpha"`. They move to `targets["value"]`,
    `targets["sac"]["critic"]` and `opt_state["sac"]["critic" | "actor" | "log_alpha"]`; the
    arrays themselves are untouched."""
    if not isinstance(saved, dict) or set(saved) != {"params", "opt_state", "key", "step"}:
        return saved
    params, opt_state, targets = dict(saved["params"]), {}, {}
    if "slow_value" in params:
        targets["value"] = params.pop("slow_value")
    if isinstance(params.get("sac"), dict) and "target_critic" in params["sac"]:
        params["sac"] = dict(params["sac"])
        targets["sac"] = {"critic": params["sac"].pop("target_critic")}
    for name, value in saved["opt_state"].items():
        if name in _OLD_OPTIMIZERS:
            group, key = _OLD_OPTIMIZERS[name]
            opt_state.setdefault(group, {})[key] = value
        else:
            opt_state[name] = value
    return {
        "params": params,
        "targets": targets,
        "opt_state": opt_state,
        "key": saved["key"],
        "step": saved["step"],
    }


def fill(path: str, saved: dict, template):
    """A state dict from `read` -> a state shaped and typed as `template` (NumPy leaves, typed
    PRNG keys as keys). Raises CheckpointError when it was written for another model."""
    leaves_t, treedef = jax.tree.flatten(template)
    try:
        want, got = _leaf_paths(serialization.to_state_dict(template)), _leaf_paths(saved)
        if want != got:
            extra, lack = sorted(got - want), sorted(want - got)
            raise ValueError(f"it has {extra[:2]} and lacks {lack[:2]}")
        leaves = treedef.flatten_up_to(serialization.from_state_dict(template, saved))
    except Exception as e:  # noqa: BLE001 - a tree that does not match this model
        raise CheckpointError(
            f"checkpoint {path} does not fit this model ({_why(e)}); it was written with another "
            "config: use the config of the run that wrote it, or a new --logdir"
        ) from None
    state = [_retype(path, t, x) for t, x in zip(leaves_t, leaves, strict=True)]
    return treedef.unflatten(state)


def _leaf_paths(state_dict) -> set[str]:
    """ "a/b/c" paths of a state dict's leaves (an empty dict, e.g. optax's EmptyState, is one)."""
    if isinstance(state_dict, dict) and state_dict:
        return {f"{k}/{p}" for k, v in state_dict.items() for p in _leaf_paths(v)}
    return {""}


def _why(e: Exception) -> str:
    text = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _retype(path, t, x):
    """One loaded leaf `x` in the dtype of template leaf `t` (a typed key re-wrapped)."""
    x = np.asarray(x)
    want = np.shape(jax.random.key_data(t)) if _is_key(t) else np.shape(t)
    if x.shape != want:
        raise CheckpointError(
            f"checkpoint {path} holds an array of shape {x.shape} where this model has {want}; "
            "it was written with another config: use the config of the run that wrote it, or "
            "a new --logdir"
        )
    if _is_key(t):
        return jax.random.wrap_key_data(x.astype(np.uint32), impl=jax.random.key_impl(t))
    return x.astype(t.dtype, copy=False)


def latest(directory: str, max_step: int | None = None) -> str | None:
    """The newest checkpoint file in `directory` (at most `max_step` env steps, if given), or
    None. Raises CheckpointError when the folder holds pickle checkpoints of an old version."""
    if glob.glob(os.path.join(directory, "ckpt-*.pkl")):
        raise CheckpointError(
            f"{directory} holds pickle checkpoints (ckpt-*.pkl) from an older mummi_jax, which "
            "this version does not read; resume them with the version that wrote them, or "
            "start a new --logdir"
        )
    fitting = [p for p in paths(directory) if max_step is None or _step_of(p) <= max_step]
    return fitting[-1] if fitting else None


def load(directory: str, template, max_step: int | None = None):
    """`latest`, `read` and `fill` in one: (state, meta), or None when there is no checkpoint."""
    path = latest(directory, max_step)
    if path is None:
        return None
    saved, meta = read(path)
    return fill(path, saved, template), meta
