"""Our parameter tree and the released code's variables, mapped name by name.

Both sides name a tensor by a slash path: ours is the path in `TrainState.params` without
Flax's `params` level (`wm/enc_image/Conv_0/kernel`); the reference's is the attribute of
its agent (`CMDreamer`) holding the module, the name the module gives its layer through
`tools.Module.get`, and the Keras weight (`_encode_img/imageh1/kernel`). The GRU cell is
the RSSM's `_cell` attribute. Shapes and layouts agree without any transpose: both sides
store Dense kernels as (in, out), conv kernels as HWIO, and the GRU as Keras does
(`kernel` (in, 3H), `recurrent_kernel` (H, 3H), `bias` (2, 3H), gates z, r, h).

The released `mummi.py` fixes the image, depth and touch modalities, the touch encoder (3
hidden layers of 128), and the heads' depths (reward 2, value 3, actor 4 layers); the
world-model parts are the optimiser's "model" variables, the actor and value its own.
This module imports nothing but the standard library, so the TensorFlow side can use it.
"""

from __future__ import annotations

# (our module, reference agent attribute, reference layer prefix) per modality.
_ENCODERS = {
    "image": ("_encode_img", "image"),
    "depth": ("_encode_dep", "depth"),
}
_EXPERTS = {"image": "_embed2p_img", "depth": "_embed2p_dep", "touch": "_embed2p_touch"}
MODALITIES = ("image", "depth", "touch")
CONV_LAYERS = 4
TOUCH_LAYERS = 3  # hidden layers of the touch MLP (models.Dense(n=4, ...))
HEAD_LAYERS = {"reward": 2, "value": 3, "actor": 4}

# Which optimiser of the reference owns each of our top-level groups.
NETWORKS = {"wm": "model", "actor": "actor", "value": "value"}


def _dense(ours: str, ref: str) -> list[tuple[str, str]]:
    return [(f"{ours}/kernel", f"{ref}/kernel"), (f"{ours}/bias", f"{ref}/bias")]


def pairs() -> list[tuple[str, str]]:
    """`[(our name, reference name)]` for every trainable tensor of MuMMI's agent."""
    out = []
    for m, (attr, prefix) in _ENCODERS.items():
        for i in range(CONV_LAYERS):
            out += _dense(f"wm/enc_{m}/Conv_{i}", f"{attr}/{prefix}h{i + 1}")
    # models.Dense(n=4) names its hidden layers Dense0..Dense2 and its output Dense4.
    for i in range(TOUCH_LAYERS):
        out += _dense(f"wm/enc_touch/Dense_{i}", f"_encode_touch/touchDense{i}")
    out += _dense(
        f"wm/enc_touch/Dense_{TOUCH_LAYERS}", f"_encode_touch/touchDense{TOUCH_LAYERS + 1}"
    )
    for m, attr in _EXPERTS.items():
        out += _dense(f"wm/expert_{m}/Dense_0", f"{attr}/{m}e2z1")
        out += _dense(f"wm/expert_{m}/Dense_1", f"{attr}/{m}e2z2")
    for layer in ("img1", "img2", "img3", "obs1", "obs2"):
        out += _dense(f"wm/rssm/{layer}", f"_dynamics/{layer}")
    for w in ("kernel", "recurrent_kernel", "bias"):
        out.append((f"wm/rssm/gru/{w}", f"_dynamics/_cell/{w}"))
    out += _dense("wm/g/Dense_0", "_z2embed/Dense1")
    for head, layers in HEAD_LAYERS.items():
        group = "wm/reward" if head == "reward" else head
        for i in range(layers):
            out += _dense(f"{group}/Dense_{i}", f"_{head}/h{i}")
        out += _dense(f"{group}/Dense_{layers}", f"_{head}/hout")
    return out


def network_of(ours: str) -> str:
    """The reference optimiser ("model", "actor", "value") that trains one of our tensors."""
    return NETWORKS[ours.split("/")[0]]


def module_of(ours: str) -> str:
    """A readable module name for per-module rows: `wm/enc_image`, `actor`, ..."""
    parts = ours.split("/")
    return "/".join(parts[:2]) if parts[0] == "wm" else parts[0]
