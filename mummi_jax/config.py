"""The schema of every option: typed frozen dataclasses, parsing and validation.

A method is a configuration of one model (STYLE.md "One model, many methods"):
fusion (`poe` | `concat`), a representation loss per modality, a behaviour learner and a
planner. The presets that set them (methods, fidelity, sizes) are in `presets.py`; paper
constants live there, never in model code.

Each option's valid values are its field type, and only there: a `Literal[...]` lists the
choices, an `Annotated[int | float, AtLeast(n) | Above(x) | Within(a, b)]` the range.
`validate` walks the fields and checks every value against its type before anything is built,
so a new option needs no validation code.

Where the MuMMI/CVRL papers and the released TensorFlow code disagree, the option takes
the value named by `fidelity`: `reference` (what produced the published numbers, the
default) or `paper`. README.md has the full table of such differences.

Overrides use dotted keys (`model.deter=100`, `loss.free_nats=1.0`); unknown keys and
values of the wrong type raise `ValueError` naming the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Annotated, Any, Literal

from mummi_jax.envs.tasks import (
    PARTIAL_PROPRIO,
    default_touch_site,
    task_info,
    task_modalities,
)


# ----------------------------------------------------------------------------- value types
@dataclass(frozen=True)
class AtLeast:
    """Range of a number option: value >= low."""

    low: float

    def ok(self, value) -> bool:
        return value >= self.low

    def text(self) -> str:
        return f">= {self.low:g}"


@dataclass(frozen=True)
class Above:
    """Range of a number option: value > low."""

    low: float

    def ok(self, value) -> bool:
        return value > self.low

    def text(self) -> str:
        return f"> {self.low:g}"


@dataclass(frozen=True)
class Within:
    """Range of a number option: low <= value <= high (< high when `open_high`)."""

    low: float
    high: float
    open_high: bool = False

    def ok(self, value) -> bool:
        return self.low <= value and (value < self.high if self.open_high else value <= self.high)

    def text(self) -> str:
        return f"in [{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


Count = Annotated[int, AtLeast(1)]  # sizes, layers, steps: something to count
Count0 = Annotated[int, AtLeast(0)]  # where 0 means "off" / "none"
Positive = Annotated[float, Above(0.0)]  # learning rates, scales, epsilons
NonNegative = Annotated[float, AtLeast(0.0)]  # where 0 means "off"
Rate = Annotated[float, Within(0.0, 1.0)]  # probabilities, discounts, decays
Fraction = Annotated[float, Within(0.0, 1.0, open_high=True)]  # a share that cannot be all

Method = Literal["mummi", "mummi_b", "mssm_e", "cvrl", "dreamer", "coral_v", "coral_p"]
Fidelity = Literal["reference", "paper"]
Size = Literal["paper", "small", "tiny"]
Fusion = Literal["poe", "concat"]
PoeForm = Literal["reference", "gaussian"]
Learner = Literal["imagination", "sac", "none"]
Planner = Literal["none", "latent_mpc"]
MissingProcess = Literal["reference", "paper", "none"]
ConvImpl = Literal["auto", "xla", "matmul", "matmul_cm", "onednn"]
EvalMode = Literal["sample", "mode", "mean"]
AdamForm = Literal["keras", "optax"]
AfterPrefill = Literal["pretrain", "catch_up"]

METHODS = typing.get_args(Method)
FIDELITIES = typing.get_args(Fidelity)
SIZES = typing.get_args(Size)
CONV_IMPLS = typing.get_args(ConvImpl)
BACKGROUNDS = ("default", "none", "procedural")  # or a folder of videos/images


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class EnvConfig:
    """Environment and missing-data options (MuMMI Sec. V; reference-code.md §4, §6)."""

    task: str = "walker_walk"
    # Empty means the task's default modalities (image, depth, touch for Natural MuJoCo).
    modalities: tuple[str, ...] = ()
    image_size: Count = 64
    action_repeat: Count = 2
    time_limit: Count = 1000  # env steps; 500 agent steps with action repeat 2
    background: str = "default"  # "default" (offline bank) | "none" | a folder of videos/images
    # "red_threshold": the released code's key, red > 100 is foreground (0.2-1.1 % of the
    # pixels differ from "segmentation", the exact mask from a segmentation render).
    composite: Literal["red_threshold", "segmentation"] = "red_threshold"
    # Empty: the task's first site (the presets write it out; a saved "" is read as
    # LEGACY_TOUCH_SITES); walker "sole" (the released code's) | "sole_box" | "foot", cup
    # "bottom" | "interior", cheetah "foot" | "foot_capsule" (envs/tasks.py lists them).
    touch_site: str = ""
    fast_render: bool = True  # render settings that change the picture by < 0.5/255
    # Missing data: "reference" = Bernoulli segment starts with probability p, length U{1..14};
    # "paper" = segments constrained to an exact missing fraction.
    missing: MissingProcess = "reference"
    missing_train: Rate = 0.05  # reference: p; paper: fraction (0.375)
    # none / medium / high at test (exactly three; Table II uses the first two)
    missing_test: tuple[Rate, ...] = (0.0, 0.05, 0.10)  # paper: (0.0, 0.375, 0.75)
    missing_eval: Rate = 0.05  # periodic evaluation during training (released code: p = 0.05)
    max_missing_len: Count = 14
    # Which proprioception a DMC task observes: "full" (every dm_control state observation,
    # flattened) or "partial" (CoRAL Table 1: only the robot's own joints, so that the rest of
    # the state must come from the image; envs/tasks.py PARTIAL_PROPRIO lists the slices).
    proprio: Literal["full", "partial"] = "full"
    # Extra pixels of rendered side length over env.image_size (CoRAL §3.5: 76 = 64 + 12).
    # 0: the env renders image_size. > 0: the agent trains on random image_size
    # crops of its contrastive image modalities (the same crop for a whole sequence) and sees
    # the centre crop everywhere else (acting, evaluation, reconstructed images).
    crop_margin: Count0 = 0


@dataclass(frozen=True)
class ModelConfig:
    """MSSM architecture (MuMMI appendix B; reference-code.md §2)."""

    fusion: Fusion = "poe"
    # "reference": 1/sigma weights, +0.01, mean only; "gaussian": 1/sigma^2
    poe: PoeForm = "reference"
    poe_prior_expert: bool = False  # gaussian PoE only: include an N(0, I) expert
    cnn_depth: Count = 32
    cnn_layers: Count = 4
    touch_hidden: Count = 128
    touch_layers: Count = 3
    proprio_hidden: Count = 300
    proprio_layers: Count = 3
    embed: Count = 1024  # MLP encoder output width (touch, proprio)
    expert_hidden: Count = 1024
    fused: Count = 1024  # dim(s^f): 1024 Natural MuJoCo, 256 Table Wiping
    deter: Count = 200
    stoch: Count = 30
    hidden: Count = 200
    units: Count = 400  # reward / value / actor width
    reward_layers: Count = 2
    value_layers: Count = 3
    actor_layers: Count = 4
    min_std: Positive = 0.1
    # Hidden layers (of `hidden` units, ELU) in each of the RSSM's three MLPs: before the GRU,
    # the prior after it and the posterior. MuMMI/Dreamer v1: 1; CoRAL App. B.1: 2.
    rssm_layers: Count = 1
    # The released code's Gaussian sampler draws one noise vector per RSSM step and shares
    # it across every row of the batch (observe scan and imagination; reference-parity.md);
    # False draws independent noise per row (the paper's and CoRAL's reading).
    shared_noise: bool = True
    # g(z) of eq. 16: the released code ends in a ReLU
    g_activation: Literal["relu", "none"] = "relu"
    # CVRL score head: "reference" = two ELU layers per side, dot product (released code);
    # "paper" = one FC per side and a bilinear z^T W s (CVRL Sec. 3.1).
    cvrl_head: Literal["reference", "paper"] = "reference"
    cvrl_obs_hidden: Count = 400
    cvrl_state_hidden: Count = 200
    coral_proj: Count = 50
    coral_state_hidden: Count = 256
    # "div200" (MuMMI) | "raw" (CVRL, Dreamer) | "log1p" (CoRAL)
    touch_scale: Literal["div200", "raw", "log1p"] = "div200"
    depth_scale: Positive = 200.0
    # Depth enters as depth / depth_scale - 0.5 (metres; the released code's 1/200). With
    # depth_clip the ratio is clipped to [0, 1] first, so a scale of a few metres spends the
    # range on the robot instead of the sky (environments.md 2.1: at 1/200 the walker and the
    # floor differ by about 0.002, the sky sits 64-90 m away).
    depth_clip: bool = False
    decoder_touch_hidden: Count = 96
    # "zscore": proprioception minus the mean, over the std, of the prefill (random-policy)
    # episodes, std < 1e-2 taken as 1 (CoRAL App. B; set once by the runner after the
    # prefill, kept in the checkpoint); "none": raw.
    proprio_norm: Literal["none", "zscore"] = "none"
    # "bfloat16": image encoders, decoders and expert heads compute in bf16 (activations too;
    # the GPU form); "bfloat16_matmul": every network's product operands are rounded to bf16,
    # accumulation and the rest stay f32 (the CPU form; networks.precision_dtypes)
    precision: Literal["float32", "bfloat16", "bfloat16_matmul"] = "float32"
    # Encoder convs and decoder transposed convs: "xla" (lax.conv*), "matmul" (one matmul
    # per layer; same parameters and outputs), "matmul_cm" (matmul, channel-major encoders) or
    # "onednn" (oneDNN's convolutions in the encoders, CPU, float32; decoders as matmul);
    # "auto" is resolve_config_conv's choice (onednn on one CPU device for large encoder
    # batches where its kernel is built, else matmul_cm; matmul where a GPU runs several
    # seeds of a sweep; else xla).
    conv_impl: ConvImpl = "auto"
    # The reward, actor and value heads' activations: "rows" ((rows, features), nn.Dense) or
    # "features" ((features, rows): the products XLA:CPU leaves to Eigen, faster than
    # YNNPACK for these shapes; same parameters and outputs); "auto" is
    # resolve_head_layout's choice (features on a CPU unless bfloat16_matmul, else rows).
    head_layout: Literal["auto", "rows", "features"] = "auto"


@dataclass(frozen=True)
class LossConfig:
    """World-model objective (MuMMI eq. 10, 14-17; CVRL eq. 4; CoRAL eq. 3-4)."""

    # One loss for every modality, or a per-modality list "image=coral_v,touch=recon".
    representation: str = "mummi"
    # Per-modality weights lambda^m (eq. 17); modalities not named get 1.
    weights: str = "image=1,depth=1,touch=0.001"
    # "reference": each method's released code (MuMMI: missing columns get -100; CVRL: no
    # mask at all, with nce_mean="all_rows"); "exact": missing columns excluded
    nce_mask: Literal["reference", "exact"] = "reference"
    nce_mean: Literal["all_rows", "present_rows"] = "all_rows"  # all_rows: the reference's
    free_nats: NonNegative = 3.0
    kl_mode: Literal["batch_mean", "per_step"] = "batch_mean"  # batch_mean: the reference's
    kl_balance: Fraction = 0.0  # 0 = off; DreamerV2/CoRAL use 0.8
    kl_scale: NonNegative = 1.0
    reward_scale: NonNegative = 1.0
    modality_drop: Fraction = 0.0  # MSSM-e: probability of dropping each present modality
    coral_temp_init: Positive = 1.0
    coral_temp_lr: NonNegative = 2e-3
    # Features the reconstruction terms read: "posterior" [s_t, h_t] (MuMMI, Dreamer, V-CoRAL)
    # or "prior" [s_t ~ p(s_t | h_t), h_t] for t >= 1, the one-step-ahead likelihood of
    # P-CoRAL (CoRAL eq. 4).
    recon_latent: Literal["posterior", "prior"] = "posterior"


@dataclass(frozen=True)
class BehaviorConfig:
    """Actor-critic, SAC and latent-guided MPC (MuMMI app. A; CVRL Sec. 3.2-3.3)."""

    learner: Learner = "imagination"
    # lambda-returns bootstrap from the last of >= 2 imagined states
    horizon: Annotated[int, AtLeast(2)] = 15
    gamma: Rate = 0.99
    lam: Rate = 0.95
    actor_entropy: NonNegative = 0.0
    slow_value: bool = False
    slow_value_decay: Rate = 0.98
    # "discounted" (released): returns of s_1 .. s_{H-1} weighted by gamma^(k-1), the start
    # state excluded; "sum" (MuMMI eq. 18): the unweighted mean of V_lambda over s_0 .. s_H,
    # start included (V_lambda(s_H) = v(s_H)). The value loss follows the same choice.
    actor_objective: Literal["discounted", "sum"] = "discounted"
    # SAC: CVRL's hybrid term on real latent trajectories (weight > 0 enables it), or the
    # model-free learner when learner == "sac" (CoRAL).
    sac_weight: NonNegative = 0.0
    sac_pairing: Literal["time", "batch"] = "time"  # time: correct; batch: released CVRL
    sac_actor_grad: bool = True  # the released CVRL code never applies it
    sac_tau: Rate = 0.005
    sac_hidden: Count = 400
    sac_layers: Count = 3
    sac_init_alpha: Positive = 1.0
    # CoRAL's model-free actor: pre-tanh std = softplus(raw + softplus^-1(init)) + min
    # (coral.md §4.1: e^-4 and 0.005); the defaults are Dreamer v1's (the CVRL hybrid term
    # uses the imagination actor, which always keeps them).
    sac_init_std: Positive = 5.0
    sac_min_std: Positive = 1e-4
    planner: Planner = "latent_mpc"
    mpc_iters: Count0 = 1  # 0: act with the actor's sample
    mpc_lr: Positive = 0.003
    mpc_horizon: Annotated[int, AtLeast(2)] = 15  # R_1 needs a state to bootstrap from
    mpc_first_action_only: bool = True  # released code: one step on a_0 only
    # What MPC ascends: "first_imagined" (released: R_1, the lambda-return of s_1) or
    # "start" (CVRL app. A.3: V_lambda(s_t) of the filtered state itself).
    mpc_objective: Literal["first_imagined", "start"] = "first_imagined"
    expl_noise: NonNegative = 0.3  # Gaussian noise added to training actions (0: none, CoRAL SAC)
    # "sample" (reference MuMMI) | "mode" (best of 100 samples, Dreamer v1) | "mean"
    # (tanh of the Gaussian mean, CoRAL's evaluation)
    eval_mode: EvalMode = "sample"


@dataclass(frozen=True)
class OptimConfig:
    """Three optax chains (reference-code.md §5.3): Adam + global-norm clip."""

    model_lr: Positive = 6e-4
    actor_lr: Positive = 8e-5
    value_lr: Positive = 8e-5
    sac_lr: Positive = 8e-5
    # CVRL's hybrid SAC actor gradient: "shared" adds it to the imagination actor's gradient
    # under the actor's Adam (one loss, eq. 8); "separate" steps the same actor with its own
    # Adam at sac_lr (CVRL app. B: a fourth, SAC optimizer). Adam normalises that gradient,
    # so under "separate" behavior.sac_weight acts as an on/off switch, not a scale.
    sac_actor_optimizer: Literal["shared", "separate"] = "shared"
    eps: Positive = 1e-7  # Keras' Adam epsilon; optax defaults to 1e-8
    # "keras": the released code's update, whose epsilon acts 1/sqrt(1 - b2^t) larger
    # (mummi_jax/optim.py); "optax": optax.adam (epsilon on the bias-corrected moments).
    adam: AdamForm = "keras"
    clip: Positive = 30.0  # MuMMI repo 30, CVRL repo 100
    # SAC critic's and alpha's own global-norm clips (CoRAL: 100 and 1). 0 keeps the older
    # behaviour: the critic clips at optim.clip, alpha is not clipped.
    sac_critic_clip: NonNegative = 0.0
    alpha_clip: NonNegative = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """Schedule, replay and logging (reference-code.md §7)."""

    steps: Count = 2_000_000  # env steps
    batch: Count = 50
    length: Count = 50
    prefill_episodes: Count0 = 5
    train_every: Count = 1000  # env steps
    train_steps: Count = 100  # updates per phase
    # What happens once the prefill is done (reference-code.md §7.1): "pretrain" runs one phase
    # of `pretrain` updates and then one phase per `train_every` env steps from there, as the
    # released code's `Every` does (it fires once at the end of the prefill, with its own
    # pretrain count); "catch_up" counts `train_every` from env step 0, so the prefill's env
    # steps are paid for at once (5 phases, 500 updates, at the paper's size).
    after_prefill: AfterPrefill = "pretrain"
    pretrain: Count0 = 100  # updates of that first phase ("pretrain")
    updates_per_call: Count = 10  # K updates scanned inside one jitted call
    eval_every: Count0 = 10_000  # env steps
    eval_episodes: Count = 1
    test_episodes: Count = 10
    checkpoints_kept: Count = 3
    replay_capacity: Count = 2_000_000  # env steps kept in memory
    prefetch: Count0 = 2  # batches sampled ahead on a thread (0: sample inline)
    envs: Count = 1  # environments stepped together, each in a worker process when > 1
    video_every: Count0 = 0  # env steps between eval videos (0: only experiments.evaluate's)


@dataclass(frozen=True)
class Config:
    method: Method = "mummi"
    fidelity: Fidelity = "reference"
    size: Size = "paper"
    seed: int = 0
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    behavior: BehaviorConfig = field(default_factory=BehaviorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # -- helpers ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def rep_losses(self, modalities: typing.Sequence[str]) -> dict[str, str]:
        """Representation loss for each modality, parsed from `loss.representation`."""
        return parse_per_modality(self.loss.representation, modalities, str, "loss.representation")

    def loss_weights(self, modalities: typing.Sequence[str]) -> dict[str, float]:
        weights = parse_per_modality(
            self.loss.weights, modalities, float, "loss.weights", default=1.0, allow_extra=True
        )
        return {m: weights[m] for m in modalities}

    def fused_weight(self) -> float:
        """The weight of MuMMI-b's one term: `loss.weights`' `fused=`, or its bare value (as
        a bare value weights every modality's term of the other methods)."""
        weights = parse_per_modality(
            self.loss.weights, ("fused",), float, "loss.weights", default=1.0, allow_extra=True
        )
        return weights["fused"]


# ----------------------------------------------------------------------------- parsing
def parse_per_modality(spec, modalities, cast, key, default=None, allow_extra=False):
    """Parses "name" (one value for all) or "m1=v1,m2=v2" into {modality: value}."""
    spec = str(spec).strip()
    if not spec and default is not None:
        return {m: default for m in modalities}
    if "=" not in spec:
        return {m: cast(spec) for m in modalities}
    out = {m: default for m in modalities}
    for item in spec.split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in modalities and not allow_extra:
            raise ValueError(
                f"{key}: modality {name!r} is not one of this task's modalities "
                f"{tuple(modalities)}; remove it or pick a task that has it."
            )
        try:
            out[name] = cast(value.strip())
        except ValueError as e:
            raise ValueError(f"{key}: cannot read {value!r} for {name!r}: {e}") from None
    missing = [m for m, v in out.items() if v is None]
    if missing:
        raise ValueError(f"{key}: no value for modalities {missing}; spec was {spec!r}")
    return out


def _section_types(section) -> dict[str, Any]:
    """{field: its annotated type} (the `Literal` / `Annotated` that says its valid values)."""
    hints = typing.get_type_hints(type(section), include_extras=True)
    return {f.name: hints[f.name] for f in fields(section)}


def _base(typ):
    """The Python type a value of `typ` has: `Annotated[int, ...]` -> int, `Literal["a"]` -> str."""
    if typing.get_origin(typ) is Annotated:
        return _base(typing.get_args(typ)[0])
    if typing.get_origin(typ) is Literal:
        return type(typing.get_args(typ)[0])
    return typ


def _coerce(value, typ, key):
    """`value` (a string from the command line, or a Python value) as a `typ`; the range and
    choices are `validate`'s."""
    base = _base(typ)
    if isinstance(value, str):
        text = value.strip()
        try:
            if base is bool:
                if text.lower() in ("true", "1", "yes"):
                    return True
                if text.lower() in ("false", "0", "no"):
                    return False
                raise ValueError("expected true or false")
            if base is int:
                as_float = float(text)
                if as_float != int(as_float):
                    raise ValueError("expected an integer")
                return int(as_float)  # accepts "1e4", like the reference's flags
            if base is float:
                return float(text)
            if base is str:
                return text
            if typing.get_origin(base) is tuple:
                (inner, *_rest) = typing.get_args(base)
                parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
                return tuple(_coerce(p, inner, key) for p in parts)
        except ValueError as e:
            raise ValueError(
                f"override {key}={value!r}: wrong type, expected {_type_name(base)} ({e})"
            ) from None
    # Non-string values (from Python callers) are type-checked, not converted silently.
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(base) is tuple and isinstance(value, (list, tuple)):
        (inner, *_rest) = typing.get_args(base)
        return tuple(_coerce(v, inner, key) for v in value)
    origin = typing.get_origin(base) or base
    if not isinstance(value, origin) or (origin is int and isinstance(value, bool)):
        raise ValueError(
            f"override {key}={value!r}: wrong type {type(value).__name__}, "
            f"expected {_type_name(base)}"
        )
    return value


def _type_name(typ):
    return getattr(typ, "__name__", str(typ))


SECTIONS = ("env", "model", "loss", "behavior", "optim", "train")
TOP_LEVEL = ("method", "fidelity", "size", "seed")


def override(config: Config, overrides: dict[str, Any] | typing.Iterable[str]) -> Config:
    """Returns a copy with dotted-key overrides applied ("model.deter=100" or a dict)."""
    if not isinstance(overrides, dict):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like section.key=value")
            key, _, value = item.partition("=")
            pairs[key.strip()] = value
        overrides = pairs
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if not name:
            if key not in ("seed",):
                raise ValueError(
                    f"unknown override key {key!r}; top-level keys that can be overridden: "
                    "seed (use --method/--task/--size/--fidelity for the others)"
                )
            config = replace(config, seed=_coerce(value, int, key))
            continue
        if section not in SECTIONS:
            raise ValueError(f"unknown config section {section!r} in {key!r}; valid: {SECTIONS}")
        sub = getattr(config, section)
        types = _section_types(sub)
        if name not in types:
            close = [k for k in types if name[:3] in k]
            raise ValueError(
                f"unknown config key {key!r}; {section} has {sorted(types)}"
                + (f" (did you mean {section}.{close[0]}?)" if close else "")
            )
        sub = replace(sub, **{name: _coerce(value, types[name], key)})
        config = replace(config, **{section: sub})
    return config


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuilds a Config from `to_dict()` output (e.g. a run's saved config.json)."""
    config = Config()
    flat = {}
    for key in TOP_LEVEL:
        if key in data:
            flat[key] = data[key]
    config = replace(config, **{k: v for k, v in flat.items()})
    for section in SECTIONS:
        values = data.get(section, {})
        sub = getattr(config, section)
        types = _section_types(sub)
        unknown = set(values) - set(types)
        if unknown:
            raise ValueError(f"config section {section!r} has unknown keys {sorted(unknown)}")
        sub = replace(sub, **{k: _coerce(v, types[k], f"{section}.{k}") for k, v in values.items()})
        config = replace(config, **{section: sub})
    return config


# `auto` takes oneDNN's encoders from this many input pixels per encoder and update (B x T x
# S^2) up: below it the per-call cost of 24 custom calls an update outweighs their faster
# kernels. Measured on the 2-core Zen 4 box (BENCHMARKS.md, "oneDNN's convolutions inside the
# jitted update"): 14 % slower at `tiny` (80 frames of 32^2, 0.08 M pixels), even at `small`
# (512 frames, 0.52 M), 10 % faster at the paper's size (2,500 frames of 64^2, 10.2 M); the
# threshold sits between the last two, not at a measured crossover.
ONEDNN_MIN_PIXELS = 2**22


def encoder_pixels(config: Config) -> int:
    """Input pixels one image encoder takes per update: B x T x S^2."""
    return config.train.batch * config.train.length * config.env.image_size**2


def resolve_config_conv(
    config: Config, seeds_per_device: int = 1, devices: int = 1, backend: str | None = None
) -> str:
    """`resolve_conv_impl` for `config`'s conv_impl, precision and encoder workload."""
    m = config.model
    return resolve_conv_impl(
        m.conv_impl, seeds_per_device, backend, m.precision, devices, encoder_pixels(config)
    )


def resolve_head_layout(config: Config, backend: str | None = None) -> str:
    """`model.head_layout` -> ``"rows"`` or ``"features"`` (`networks.DenseHead`).

    ``auto`` picks ``features`` on a CPU where the heads' products are float32 (every
    precision but ``bfloat16_matmul``): XLA:CPU hands a `(rows, K) @ (K, N)`
    product to YNNPACK, which at the heads' shapes (K, N of 200-400, 2,500-37,500 rows)
    runs slower than Eigen, which takes the same product written `w^T h` on activations
    stored feature-major; a paper-size update drops 2.8 % (BENCHMARKS.md, "Feature-major
    heads"). Elsewhere ``rows``: GPUs' GEMMs take either form, and the mixed-precision
    products (`mixed_matmul`) are written for rows. `backend` defaults to
    `jax.default_backend()`."""
    m = config.model
    if m.head_layout != "auto":
        return m.head_layout
    if backend is None:
        import jax  # only here: the config module otherwise imports no JAX

        backend = jax.default_backend()
    return "features" if backend == "cpu" and m.precision != "bfloat16_matmul" else "rows"


def resolve_conv_impl(
    impl: str,
    seeds_per_device: int = 1,
    backend: str | None = None,
    precision: str = "float32",
    devices: int = 1,
    pixels: int | None = None,
) -> str:
    """`model.conv_impl` -> ``"xla"`` (`lax.conv`, `lax.conv_transpose`), ``"matmul"``
    (`networks.conv_stride2_matmul`, `networks.conv_transpose_stride2_matmul`),
    ``"matmul_cm"`` (the matmul form with channel-major encoders,
    `networks.conv_stride2_matmul_cm`; decoders as ``"matmul"``) or ``"onednn"`` (oneDNN's
    convolutions in the encoders, `mummi_jax.kernels.onednn`; decoders as ``"matmul"``);
    `networks` takes only the resolved form.

    On a CPU ``auto`` picks ``onednn`` where its kernel is built, the encoders compute in
    float32 (`precision`), the program runs on one device (`devices`, the devices a sweep
    shards its seeds over: a custom call has no partitioning rule, so XLA would gather its
    operands onto every device) and each encoder takes at least ONEDNN_MIN_PIXELS per update
    (`pixels`, `encoder_pixels`; None counts as enough): XLA:CPU lowers these convolutions
    to patch matrices and GEMMs, oneDNN computes them directly, and the encoders' forward +
    backward drop from 3.9 s to 2.8 s at the paper's size (BENCHMARKS.md, "oneDNN's
    convolutions inside the jitted update"). Otherwise it picks the channel-major matmul
    form, where XLA:CPU's own convolution inside the scanned update is 25x slower and where,
    of the matmul forms, only the channel-major one puts the encoders' weight gradients on
    YNNPACK (BENCHMARKS.md, "Channel-major encoders"). It picks the NHWC matmul form
    wherever one device (not a CPU) runs several seeds of a sweep (`seeds_per_device` > 1):
    `vmap` over seeds gives each convolution's kernel a seed axis and XLA lowers it to a
    grouped convolution (``feature_group_count`` = seeds), which made an H100 sweep slower
    than running the seeds one after another (BENCHMARKS.md, "Seed sweeps"), while the
    matmul form becomes a batched matmul. Elsewhere (one seed on a GPU) cuDNN's convolution
    is the fast path. `backend` defaults to `jax.default_backend()`.
    """
    check_choice("model.conv_impl", impl, CONV_IMPLS)
    if impl != "auto":
        return impl
    if backend is None:
        import jax  # only here: the config module otherwise imports no JAX

        backend = jax.default_backend()
    if backend == "cpu":
        from mummi_jax.kernels import onednn  # imports JAX, as above

        large = pixels is None or pixels >= ONEDNN_MIN_PIXELS
        fits = precision == "float32" and devices == 1 and large
        return "onednn" if fits and onednn.available() else "matmul_cm"
    return "matmul" if seeds_per_device > 1 else "xla"


def check_choice(key, value, choices):
    if value not in choices:
        raise ValueError(f"unknown {key} {value!r}; valid choices: {', '.join(choices)}")


def min_image_size(cnn_layers: int) -> int:
    """Smallest image the encoder takes: each 4x4 VALID stride-2 conv maps s to (s - 4)//2 + 1,
    so the input to the last layer needs 4 pixels, the one before 10, then 22, 46, ..."""
    size = 1
    for _ in range(cnn_layers):
        size = 2 * size + 2
    return size


def _check_value(key: str, value, typ) -> None:
    """`value` against the choices (`Literal`) or range (`Annotated`) its field type states."""
    if typing.get_origin(typ) is Literal:
        check_choice(key, value, typing.get_args(typ))
    elif typing.get_origin(typ) is Annotated:
        base, *rules = typing.get_args(typ)
        for rule in rules:
            if not rule.ok(value):
                fix = f"<n> with n {rule.text()}" if _base(base) is int else f"<x> {rule.text()}"
                raise ValueError(f"{key}={value} must be {rule.text()}; set --set {key}={fix}")
    elif typing.get_origin(typ) is tuple:
        (inner, *_rest) = typing.get_args(typ)
        for item in value:
            _check_value(key, item, inner)


def _check_fields(config: Config) -> None:
    """Every option against its field type: choices, sizes > 0, rates in [0, 1], ..."""
    top = _section_types(config)
    for name in TOP_LEVEL:
        _check_value(name, getattr(config, name), top[name])
    for section in SECTIONS:
        sub = getattr(config, section)
        for name, typ in _section_types(sub).items():
            _check_value(f"{section}.{name}", getattr(sub, name), typ)


def _check_combinations(config: Config) -> None:
    """Values that are each valid but not together; the message names the key and the fix."""
    t = config.train
    if t.after_prefill == "pretrain" and (t.pretrain < 1 or t.pretrain % t.updates_per_call):
        raise ValueError(
            f"train.pretrain={t.pretrain} must be a positive multiple of train.updates_per_call="
            f"{t.updates_per_call}; e.g. train.pretrain={t.train_steps}"
        )
    if t.train_steps % t.updates_per_call:
        raise ValueError(
            f"train.train_steps={t.train_steps} is not a multiple of train.updates_per_call="
            f"{t.updates_per_call} (the updates of one jitted call); make it one, e.g. "
            f"train.train_steps={max(1, t.train_steps // t.updates_per_call) * t.updates_per_call}"
        )
    m = config.model
    if m.head_layout == "features" and m.precision == "bfloat16_matmul":
        raise ValueError(
            "model.head_layout='features' computes the heads' products in float32; with "
            "model.precision='bfloat16_matmul' set model.head_layout=rows or auto"
        )
    if m.poe_prior_expert and m.poe != "gaussian":
        raise ValueError(
            f"model.poe_prior_expert=true adds an N(0, I) expert to the product of Gaussians; "
            f"model.poe={m.poe!r} (the released code's weights) has no prior expert: set "
            "model.poe=gaussian or model.poe_prior_expert=false"
        )
    if config.loss.modality_drop > 0 and m.fusion != "poe":
        raise ValueError(
            f"loss.modality_drop={config.loss.modality_drop} drops experts from a product of "
            f"experts; under model.fusion={m.fusion!r} a dropped modality would still enter "
            "the concatenation and only its loss term would go: set loss.modality_drop=0 or "
            "model.fusion=poe"
        )
    if m.conv_impl == "onednn" and m.precision != "float32":
        raise ValueError(
            f"model.conv_impl='onednn' computes in float32; with model.precision="
            f"{m.precision!r} set model.conv_impl=matmul_cm (CPU) or auto"
        )
    e = config.env
    if len(e.missing_test) != 3:
        raise ValueError(
            f"env.missing_test={','.join(map(str, e.missing_test))} must give three rates, "
            "none / medium / high (Table I; Table II reads the first two): e.g. --set "
            "env.missing_test=0,0.05,0.1"
        )
    sites = task_info(e.task).touch_sites
    if e.touch_site and e.touch_site not in sites:
        where = f"valid: {', '.join(sites)}" if sites else "it has none; leave it empty"
        raise ValueError(
            f"env.touch_site={e.touch_site!r} is not a touch site of task {e.task!r} ({where})"
        )
    folder = e.background not in BACKGROUNDS and task_info(e.task).suite == "dmc"
    if folder and not os.path.isdir(os.path.expanduser(e.background)):
        raise ValueError(
            f"env.background={e.background!r} is not a folder (nor one of "
            f"{', '.join(BACKGROUNDS)}); pass an existing folder of videos or images, or "
            "--set env.background=default"
        )
    if e.proprio == "partial" and e.task not in PARTIAL_PROPRIO:
        raise ValueError(
            f"env.proprio='partial' has no split for task {e.task!r} (CoRAL Table 1 covers "
            f"{', '.join(sorted(PARTIAL_PROPRIO))}); use --set env.proprio=full"
        )
    m = config.model
    if e.image_size < min_image_size(m.cnn_layers):
        raise ValueError(
            f"env.image_size={e.image_size} is too small for model.cnn_layers={m.cnn_layers} "
            f"VALID stride-2 4x4 convs (the last one would see less than its kernel); use "
            f"env.image_size>={min_image_size(m.cnn_layers)} or fewer layers"
        )
    b = config.behavior
    if b.learner == "sac" and b.planner != "none":
        raise ValueError(
            "behavior.planner=latent_mpc needs a value function: use learner=imagination"
        )


def validate(config: Config, modalities: typing.Sequence[str] | None = None) -> None:
    """Rejects any value outside its field type's choices or range, and combinations that make
    no sense, before anything is built or compiled; the message names the key and the fix.

    `modalities` (the task's observation modalities) enables per-modality checks.
    """
    _check_fields(config)
    _check_combinations(config)
    m, loss, e = config.model, config.loss, config.env
    rep = str(loss.representation)
    names = [rep] if "=" not in rep else [p.partition("=")[2].strip() for p in rep.split(",")]
    # The registry is the one list of representation objectives (a test may add one); it
    # holds JAX heads, so it is imported only here, when a config is checked.
    from mummi_jax.objectives import OBJECTIVES

    for name in names:
        check_choice("loss.representation", name, tuple(OBJECTIVES))
    needs_poe = [name for name in dict.fromkeys(names) if OBJECTIVES[name].needs_poe]
    if needs_poe and m.fusion != "poe":
        raise ValueError(
            f"loss.representation={rep!r} needs model.fusion='poe' ({needs_poe[0]} compares "
            f"per-modality expert means, which only PoE fusion has); got fusion={m.fusion!r}. "
            "Use method mummi or set model.fusion=poe."
        )
    alone = [name for name in dict.fromkeys(names) if OBJECTIVES[name].alone]
    if alone and len(set(names)) > 1:
        raise ValueError(
            f"{alone[0]} is a single loss over all modalities; it cannot be mixed per modality"
        )
    if modalities is not None:
        config.rep_losses(modalities)
        names_w = parse_per_modality(
            loss.weights, modalities, float, "loss.weights", default=1.0, allow_extra=True
        )
        extra = sorted(set(names_w) - set(modalities) - {"fused"})
        if extra:
            raise ValueError(
                f"loss.weights names modality {extra[0]!r}, which task {e.task!r} lacks; "
                f"its modalities are {tuple(modalities)}"
            )


# Options that only say when to stop: a run resumed with another value trains the same model
# to a different length (extending a finished run to more env steps is a resume).
STOPPING_KEYS = ("train.steps",)


# A run saved with `env.touch_site` "" sensed the task's first site of its day. On 2026-12-06
# the walker's and the cheetah's first site became the released code's; runs saved before
# then sensed these (since then presets and the Runner write the site out: resolve_touch_site).
LEGACY_TOUCH_SITES = {
    "walker_walk": "sole_box",
    "walker_run": "sole_box",
    "walker_stand": "sole_box",
    "cheetah_run": "foot_capsule",
}


def _senses_touch(task, modalities) -> bool:
    try:
        return "touch" in task_modalities(task, tuple(modalities or ()))
    except ValueError:  # an unknown task or modality: left for validation to report
        return False


def resolve_touch_site(config: Config) -> Config:
    """`config` with an empty `env.touch_site` replaced by the site its run will sense (the
    task's default), when the run has touch; so config.json names the sensor even when a
    task's default changes (LEGACY_TOUCH_SITES). Presets and the Runner both apply it."""
    if config.env.touch_site or not _senses_touch(config.env.task, config.env.modalities):
        return config
    return override(config, {"env.touch_site": default_touch_site(config.env.task)})


def read_saved(path: str) -> dict:
    """A run's saved config.json as a dict, an empty touch site resolved to the one the run
    sensed (LEGACY_TOUCH_SITES, else the task's first, as `resolve_touch_site` writes it). Raises
    json.JSONDecodeError on a corrupt file."""
    with open(path) as f:
        data = json.load(f)
    env = data.get("env")
    if isinstance(env, dict) and env.get("touch_site") == "":
        task = env.get("task")
        if _senses_touch(task, env.get("modalities")):  # as resolve_touch_site writes it
            env["touch_site"] = LEGACY_TOUCH_SITES.get(task, default_touch_site(task))
    return data


def check_logdir(logdir: str, config) -> None:
    """A logdir holding a run with a different config is an error (nothing is touched);
    `STOPPING_KEYS` may differ."""
    path = os.path.join(logdir, "config.json")
    if not os.path.exists(path):
        return
    saved = read_saved(path)
    try:
        # A run saved before an option existed ran with the option's default (new options
        # default to the old behaviour), so it resumes under the code that added it.
        saved = json.loads(from_dict(saved).to_json())
    except (ValueError, TypeError):
        pass  # a key this code no longer knows: compared as saved, reported below
    new = json.loads(config.to_json())
    diffs = []
    for key in sorted(set(saved) | set(new)):
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            diffs = [d for d in diffs if d not in STOPPING_KEYS]
        elif a != b:
            diffs.append(key)
    if diffs:
        raise ValueError(
            f"{logdir} holds a run with a different config (differs in {', '.join(diffs[:6])}); "
            "use a new --logdir, or the flags that run was started with"
        )
