"""One source of truth for every option: typed frozen dataclasses, presets and validation.

A method is a configuration of one model (STYLE.md "One model, many methods"):
fusion (`poe` | `concat`), a representation loss per modality, a behaviour learner and a
planner. Paper constants live in the presets below, never in model code.

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
from typing import Any

from mummi_jax.envs.tasks import IMAGE_MODALITIES, PARTIAL_PROPRIO, task_info, task_modalities
from mummi_jax.optim import ADAM_FORMS

METHODS = ("mummi", "mummi_b", "mssm_e", "cvrl", "dreamer", "coral_v", "coral_p")
FIDELITIES = ("reference", "paper")
SIZES = ("paper", "small", "tiny")
FUSIONS = ("poe", "concat")
POE_FORMS = ("reference", "gaussian")
LEARNERS = ("imagination", "sac", "none")
PLANNERS = ("none", "latent_mpc")
MISSING_PROCESSES = ("reference", "paper", "none")


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class EnvConfig:
    """Environment and missing-data options (MuMMI Sec. V; reference-code.md §4, §6)."""

    task: str = "walker_walk"
    # Empty means the task's default modalities (image, depth, touch for Natural MuJoCo).
    modalities: tuple[str, ...] = ()
    image_size: int = 64
    action_repeat: int = 2
    time_limit: int = 1000  # env steps; 500 agent steps with action repeat 2
    background: str = "default"  # "default" (offline bank) | "none" | a folder of videos/images
    # "red_threshold": the released code's key, red > 100 is foreground (0.2-1.1 % of the
    # pixels differ from "segmentation", the exact mask from a segmentation render).
    composite: str = "red_threshold"
    # Empty: the task's default site; walker "sole" (MuMMI-like) | "foot", cup "bottom" |
    # "interior" (envs/tasks.py lists each task's sites).
    touch_site: str = ""
    fast_render: bool = True  # render settings that change the picture by < 0.5/255
    # Missing data: "reference" = Bernoulli segment starts with probability p, length U{1..14};
    # "paper" = segments constrained to an exact missing fraction.
    missing: str = "reference"
    missing_train: float = 0.05  # reference: p; paper: fraction (0.375)
    missing_test: tuple[float, ...] = (0.0, 0.05, 0.10)  # paper: (0.0, 0.375, 0.75)
    missing_eval: float = 0.05  # periodic evaluation during training (released code: p = 0.05)
    max_missing_len: int = 14
    # Which proprioception a DMC task observes: "full" (every dm_control state observation,
    # flattened) or "partial" (CoRAL Table 1: only the robot's own joints, so that the rest of
    # the state must come from the image; envs/tasks.py PARTIAL_PROPRIO lists the slices).
    proprio: str = "full"
    # Extra pixels of rendered side length over env.image_size (CoRAL §3.5: 76 = 64 + 12).
    # 0: the env renders image_size. > 0: the agent trains on random image_size
    # crops of its contrastive image modalities (the same crop for a whole sequence) and sees
    # the centre crop everywhere else (acting, evaluation, reconstructed images).
    crop_margin: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """MSSM architecture (MuMMI appendix B; reference-code.md §2)."""

    fusion: str = "poe"
    poe: str = "reference"  # "reference": 1/sigma weights, +0.01, mean only; "gaussian": 1/sigma^2
    poe_prior_expert: bool = False  # gaussian PoE only: include an N(0, I) expert
    cnn_depth: int = 32
    cnn_layers: int = 4
    touch_hidden: int = 128
    touch_layers: int = 3
    proprio_hidden: int = 300
    proprio_layers: int = 3
    embed: int = 1024  # MLP encoder output width (touch, proprio)
    expert_hidden: int = 1024
    fused: int = 1024  # dim(s^f): 1024 Natural MuJoCo, 256 Table Wiping
    deter: int = 200
    stoch: int = 30
    hidden: int = 200
    units: int = 400  # reward / value / actor width
    reward_layers: int = 2
    value_layers: int = 3
    actor_layers: int = 4
    min_std: float = 0.1
    # Hidden layers (of `hidden` units, ELU) in each of the RSSM's three MLPs: before the GRU,
    # the prior after it and the posterior. MuMMI/Dreamer v1: 1; CoRAL App. B.1: 2.
    rssm_layers: int = 1
    # The released code's Gaussian sampler draws one noise vector per RSSM step and shares
    # it across every row of the batch (observe scan and imagination; reference-parity.md);
    # False draws independent noise per row (the paper's and CoRAL's reading).
    shared_noise: bool = True
    g_activation: str = "relu"  # g(z) of eq. 16: the released code ends in a ReLU
    # CVRL score head: "reference" = two ELU layers per side, dot product (released code);
    # "paper" = one FC per side and a bilinear z^T W s (CVRL Sec. 3.1).
    cvrl_head: str = "reference"
    cvrl_obs_hidden: int = 400
    cvrl_state_hidden: int = 200
    coral_proj: int = 50
    coral_state_hidden: int = 256
    touch_scale: str = "div200"  # "div200" (MuMMI) | "raw" (CVRL, Dreamer) | "log1p"
    depth_scale: float = 200.0
    decoder_touch_hidden: int = 96
    # "zscore": proprioception minus the mean, over the std, of the prefill (random-policy)
    # episodes, std < 1e-2 taken as 1 (CoRAL App. B; set once by the runner after the
    # prefill, kept in the checkpoint); "none": raw.
    proprio_norm: str = "none"
    precision: str = "float32"  # "bfloat16": conv and expert layers compute in bf16
    # Encoder convs and decoder transposed convs: "xla" (lax.conv*) or "matmul" (one matmul
    # per layer; same parameters and outputs); "auto" is resolve_conv_impl's choice
    # (matmul on CPU and where a device runs several seeds of a sweep, else xla).
    conv_impl: str = "auto"


@dataclass(frozen=True)
class LossConfig:
    """World-model objective (MuMMI eq. 10, 14-17; CVRL eq. 4; CoRAL eq. 3-4)."""

    # One loss for every modality, or a per-modality list "image=coral_v,touch=recon".
    representation: str = "mummi"
    # Per-modality weights lambda^m (eq. 17); modalities not named get 1.
    weights: str = "image=1,depth=1,touch=0.001"
    nce_mask: str = "reference"  # "reference": missing columns get -100; "exact": excluded
    nce_mean: str = "all_rows"  # "all_rows" (reference) | "present_rows"
    free_nats: float = 3.0
    kl_mode: str = "batch_mean"  # "batch_mean" (reference) | "per_step"
    kl_balance: float = 0.0  # 0 = off; DreamerV2/CoRAL use 0.8
    kl_scale: float = 1.0
    reward_scale: float = 1.0
    modality_drop: float = 0.0  # MSSM-e: probability of dropping each present modality
    coral_temp_init: float = 1.0
    coral_temp_lr: float = 2e-3
    # Features the reconstruction terms read: "posterior" [s_t, h_t] (MuMMI, Dreamer, V-CoRAL)
    # or "prior" [s_t ~ p(s_t | h_t), h_t] for t >= 1, the one-step-ahead likelihood of
    # P-CoRAL (CoRAL eq. 4).
    recon_latent: str = "posterior"


@dataclass(frozen=True)
class BehaviorConfig:
    """Actor-critic, SAC and latent-guided MPC (MuMMI app. A; CVRL Sec. 3.2-3.3)."""

    learner: str = "imagination"
    horizon: int = 15
    gamma: float = 0.99
    lam: float = 0.95
    actor_entropy: float = 0.0
    slow_value: bool = False
    slow_value_decay: float = 0.98
    # SAC: CVRL's hybrid term on real latent trajectories (weight > 0 enables it), or the
    # model-free learner when learner == "sac" (CoRAL).
    sac_weight: float = 0.0
    sac_pairing: str = "time"  # "time" (correct) | "batch" (released CVRL code)
    sac_actor_grad: bool = True  # the released CVRL code never applies it
    sac_tau: float = 0.005
    sac_hidden: int = 400
    sac_layers: int = 3
    sac_init_alpha: float = 1.0
    # CoRAL's model-free actor: pre-tanh std = softplus(raw + softplus^-1(init)) + min
    # (coral.md §4.1: e^-4 and 0.005); the defaults are Dreamer v1's (the CVRL hybrid term
    # uses the imagination actor, which always keeps them).
    sac_init_std: float = 5.0
    sac_min_std: float = 1e-4
    planner: str = "latent_mpc"
    mpc_iters: int = 1
    mpc_lr: float = 0.003
    mpc_horizon: int = 15
    mpc_first_action_only: bool = True  # released code: one step on a_0 only
    expl_noise: float = 0.3  # Gaussian noise added to training actions (0: none, CoRAL SAC)
    # "sample" (reference MuMMI) | "mode" (best of 100 samples, Dreamer v1) | "mean"
    # (tanh of the Gaussian mean, CoRAL's evaluation)
    eval_mode: str = "sample"


@dataclass(frozen=True)
class OptimConfig:
    """Three optax chains (reference-code.md §5.3): Adam + global-norm clip."""

    model_lr: float = 6e-4
    actor_lr: float = 8e-5
    value_lr: float = 8e-5
    sac_lr: float = 8e-5
    eps: float = 1e-7  # Keras' Adam epsilon; optax defaults to 1e-8
    # "keras": the released code's update, whose epsilon acts 1/sqrt(1 - b2^t) larger
    # (mummi_jax/optim.py); "optax": optax.adam (epsilon on the bias-corrected moments).
    adam: str = "keras"
    clip: float = 30.0  # MuMMI repo 30, CVRL repo 100
    # SAC critic's and alpha's own global-norm clips (CoRAL: 100 and 1). 0 keeps the older
    # behaviour: the critic clips at optim.clip, alpha is not clipped.
    sac_critic_clip: float = 0.0
    alpha_clip: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """Schedule, replay and logging (reference-code.md §7)."""

    steps: int = 2_000_000  # env steps
    batch: int = 50
    length: int = 50
    prefill_episodes: int = 5
    train_every: int = 1000  # env steps
    train_steps: int = 100  # updates per phase
    # What happens once the prefill is done (reference-code.md §7.1): "pretrain" runs one phase
    # of `pretrain` updates and then one phase per `train_every` env steps from there, as the
    # released code's `Every` does (it fires once at the end of the prefill, with its own
    # pretrain count); "catch_up" counts `train_every` from env step 0, so the prefill's env
    # steps are paid for at once (5 phases, 500 updates, at the paper's size).
    after_prefill: str = "pretrain"
    pretrain: int = 100  # updates of that first phase ("pretrain")
    updates_per_call: int = 10  # K updates scanned inside one jitted call
    eval_every: int = 10_000  # env steps
    eval_episodes: int = 1
    test_episodes: int = 10
    checkpoints_kept: int = 3
    replay_capacity: int = 2_000_000  # env steps kept in memory
    prefetch: int = 2  # batches sampled ahead on a thread (0: sample inline)
    envs: int = 1  # environments stepped together, each in a worker process when > 1
    video_every: int = 0  # env steps between eval videos (0: only experiments.evaluate's)


@dataclass(frozen=True)
class Config:
    method: str = "mummi"
    fidelity: str = "reference"
    size: str = "paper"
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
    hints = typing.get_type_hints(type(section))
    return {f.name: hints[f.name] for f in fields(section)}


def _coerce(value, typ, key):
    if isinstance(value, str):
        text = value.strip()
        try:
            if typ is bool:
                if text.lower() in ("true", "1", "yes"):
                    return True
                if text.lower() in ("false", "0", "no"):
                    return False
                raise ValueError("expected true or false")
            if typ is int:
                as_float = float(text)
                if as_float != int(as_float):
                    raise ValueError("expected an integer")
                return int(as_float)  # accepts "1e4", like the reference's flags
            if typ is float:
                return float(text)
            if typ is str:
                return text
            if typing.get_origin(typ) is tuple:
                (inner, *_rest) = typing.get_args(typ)
                parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
                return tuple(_coerce(p, inner, key) for p in parts)
        except ValueError as e:
            raise ValueError(
                f"override {key}={value!r}: wrong type, expected {_type_name(typ)} ({e})"
            ) from None
    # Non-string values (from Python callers) are type-checked, not converted silently.
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(typ) is tuple and isinstance(value, (list, tuple)):
        (inner, *_rest) = typing.get_args(typ)
        return tuple(_coerce(v, inner, key) for v in value)
    base = typing.get_origin(typ) or typ
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ValueError(
            f"override {key}={value!r}: wrong type {type(value).__name__}, "
            f"expected {_type_name(typ)}"
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


# ----------------------------------------------------------------------------- presets
def _mummi(c: Config) -> Config:
    return c


def _mummi_b(c: Config) -> Config:
    # One density ratio on the fused mean: a single loss term, weight 1 (MuMMI Sec. V).
    return override(c, {"loss.representation": "mummi_b", "loss.weights": "fused=1"})


def _mssm_e(c: Config) -> Config:
    # PoE + reconstruction ELBO + random modality drops (MuMMI Sec. VI, [3]).
    c = override(
        c,
        {
            "loss.representation": "recon",
            "loss.weights": "image=1,depth=1,touch=1",
            "loss.modality_drop": 0.2,
            "model.poe": "gaussian",
            "model.touch_scale": "raw",
        },
    )
    return c


def _cvrl(c: Config) -> Config:
    c = override(
        c,
        {
            "model.fusion": "concat",
            "loss.representation": "bilinear_nce",
            "loss.weights": "image=1,depth=1,touch=1",
            "model.touch_scale": "raw",
            "model.touch_hidden": 256,
        },
    )
    if c.fidelity == "paper":
        # CVRL's hybrid SAC term as the paper describes it (Sec. 3.3), correctly paired.
        c = override(
            c, {"behavior.sac_weight": 1.0, "model.cvrl_head": "paper", "optim.clip": 100.0}
        )
    else:
        # MuMMI's experiments ran CVRL with use_sac=False (reference-code.md §5.5).
        c = override(c, {"behavior.sac_weight": 0.0, "behavior.sac_actor_grad": False})
    return c


def _dreamer(c: Config) -> Config:
    c = override(
        c,
        {
            "model.fusion": "concat",
            "loss.representation": "recon",
            "loss.weights": "image=1,depth=1,touch=1",
            "model.touch_scale": "raw",
            "behavior.eval_mode": "mode",
        },
    )
    # The released dreamer.py has no MPC; the paper says every method used it.
    planner = "latent_mpc" if c.fidelity == "paper" else "none"
    return override(c, {"behavior.planner": planner})


# CoRAL's model-free action repeat per DMC task (coral.md §5.1, its DMC wrapper's defaults);
# every other task 2, which is also its model-based agent's for all tasks.
CORAL_ACTION_REPEAT = {
    "cup_catch": 4,
    "cartpole_balance": 8,
    "cartpole_swingup": 8,
    "cheetah_run": 4,
    "reacher_easy": 4,
}


def _coral(c: Config, variant: str) -> Config:
    """CoRAL's model-free agents (coral.md §2-§6, DMC): README.md "CoRAL" lists each value."""
    task = c.env.task
    info = task_info(task)
    # Image + proprioception, CoRAL's two sensors, where the task has both (DMC); other
    # suites keep their own modalities.
    dmc = info.suite == "dmc"
    c = override(
        c,
        {
            "model.fusion": "concat",
            "loss.representation": f"image={variant},depth=recon,touch=recon,proprio=recon",
            "loss.weights": "image=1,depth=1,touch=1,proprio=1",
            "model.touch_scale": "log1p",
            "model.shared_noise": False,  # CoRAL's PyTorch sampler: one draw per row
            "model.stoch": 64,
            "model.hidden": 400,
            "model.rssm_layers": 2,
            "model.proprio_norm": "zscore",
            "loss.kl_mode": "per_step",
            "loss.free_nats": 1.0,
            "optim.model_lr": 3e-4,
            "optim.eps": 1e-8,
            "optim.adam": "optax",  # CoRAL's PyTorch Adam corrects the moments
            "optim.clip": 10.0,  # the model's and the SAC actor's
            "optim.sac_critic_clip": 100.0,
            "optim.alpha_clip": 1.0,
            "behavior.planner": "none",
            "behavior.learner": "sac",
            "behavior.sac_hidden": 1024,
            "optim.sac_lr": 1e-3,
            "behavior.sac_init_alpha": 0.1,
            "behavior.sac_tau": 0.005,
            "behavior.sac_init_std": 0.01831563888873418,  # e^-4
            "behavior.sac_min_std": 0.005,
            "behavior.expl_noise": 0.0,  # the SAC policy's own samples explore
            "behavior.eval_mode": "mean",
            "env.missing": "none",  # CoRAL has no missing data
            "env.crop_margin": 12,  # render 76, train on random 64 crops
            "train.batch": 32,
            "train.length": 32,
        },
    )
    if dmc:
        c = override(
            c,
            {
                "env.modalities": ("image", "proprio"),
                "env.proprio": "partial" if task in PARTIAL_PROPRIO else "full",
                "env.action_repeat": CORAL_ACTION_REPEAT.get(task, 2),
            },
        )
    if variant == "coral_v":
        c = override(c, {"loss.kl_balance": 0.8, "loss.kl_scale": 1.0})
    else:
        # P-CoRAL: every observation term on the one-step prior, a small unbalanced KL.
        c = override(
            c, {"loss.kl_balance": 0.0, "loss.kl_scale": 0.001, "loss.recon_latent": "prior"}
        )
    return c


PRESETS = {
    "mummi": _mummi,
    "mummi_b": _mummi_b,
    "mssm_e": _mssm_e,
    "cvrl": _cvrl,
    "dreamer": _dreamer,
    "coral_v": lambda c: _coral(c, "coral_v"),
    "coral_p": lambda c: _coral(c, "coral_p"),
}


def _paper_fidelity(c: Config) -> Config:
    """Options where the MuMMI paper's text differs from the released code."""
    over = {
        "model.shared_noise": False,
        "optim.adam": "optax",  # Adam as Kingma & Ba write it: epsilon on the corrected moment
        "env.composite": "segmentation",
        "env.missing": "paper",
        "env.missing_train": 0.375,
        "env.missing_test": (0.0, 0.375, 0.75),
        "env.missing_eval": 0.0,
        "loss.nce_mask": "exact",
        "loss.nce_mean": "present_rows",
    }
    if c.model.fusion == "poe":
        over["model.poe"] = "gaussian"
    return override(c, over)


def _tiny(c: Config) -> Config:
    """Small networks and images: a run finishes in minutes on a 2-core CPU."""
    return override(
        c,
        {
            "env.image_size": 32,
            "env.time_limit": 200,
            "model.cnn_depth": 8,
            "model.cnn_layers": 3,
            "model.touch_hidden": 16,
            "model.touch_layers": 1,
            "model.proprio_hidden": 32,
            "model.proprio_layers": 2,
            "model.embed": 64,
            "model.expert_hidden": 64,
            "model.fused": 64,
            # 64/16/64/64 rather than 32/8/32/32: the smaller model reached only ~70 on the
            # toy robot in 20k steps, this one ~150 (BENCHMARKS.md, "Learning check").
            "model.deter": 64,
            "model.stoch": 16,
            "model.hidden": 64,
            "model.units": 64,
            "model.cvrl_obs_hidden": 32,
            "model.cvrl_state_hidden": 32,
            "model.coral_proj": 16,
            "model.coral_state_hidden": 32,
            "model.decoder_touch_hidden": 16,
            "behavior.horizon": 15,
            "behavior.mpc_horizon": 5,
            "behavior.sac_hidden": 32,
            # Small nets take larger steps; with the paper's 8e-5 the tiny agent barely moved.
            "optim.actor_lr": 3e-4,
            "optim.value_lr": 3e-4,
            "train.steps": 20_000,
            "train.batch": 8,
            "train.length": 10,
            "train.prefill_episodes": 2,
            "train.train_every": 400,
            "train.train_steps": 100,
            "train.updates_per_call": 5,
            "train.eval_every": 2000,
            "train.replay_capacity": 100_000,
        },
    )


def _small(c: Config) -> Config:
    """The CPU budget of `experiments.reproduce --budget=cpu`: about 45 minutes per run on a
    2-core CPU (RESULTS.md says what it learns). The paper's RSSM and schedule shape, smaller
    images, encoders and batches (issue 14's measurements, RESULTS.md "Why tiny does not
    learn walker")."""
    return override(
        c,
        {
            "env.image_size": 32,
            "env.time_limit": 500,
            "model.cnn_depth": 32,
            "model.cnn_layers": 3,
            "model.touch_hidden": 64,
            "model.touch_layers": 2,
            "model.proprio_hidden": 128,
            "model.proprio_layers": 2,
            "model.embed": 256,
            "model.expert_hidden": 256,
            "model.fused": 256,
            "model.deter": 200,
            "model.stoch": 30,
            "model.hidden": 200,
            "model.units": 200,
            "model.cvrl_obs_hidden": 128,
            "model.cvrl_state_hidden": 128,
            "model.coral_proj": 32,
            "model.coral_state_hidden": 128,
            "model.decoder_touch_hidden": 64,
            "behavior.mpc_horizon": 5,
            "behavior.sac_hidden": 128,
            "optim.actor_lr": 2e-4,
            "optim.value_lr": 2e-4,
            # 60k env steps (120 walker episodes) and 50 updates per 1000: about 3,100 updates
            # of 0.5-0.6 s, the 45 minutes' compute with the environment and evaluations.
            "train.steps": 60_000,
            "train.batch": 16,
            "train.length": 32,
            "train.prefill_episodes": 5,
            "train.train_every": 1000,
            "train.train_steps": 50,
            "train.updates_per_call": 10,
            "train.eval_every": 5000,
            "train.replay_capacity": 200_000,
        },
    )


# Per-task environment defaults that the presets do not decide.
TASK_DEFAULTS = {
    "wipe": {
        "model.fused": 256,
        "loss.weights": "workspace=1,eye_in_hand=1",
        "env.time_limit": 500,
    },
}


def make_config(
    method: str = "mummi",
    task: str = "walker_walk",
    size: str = "paper",
    fidelity: str = "reference",
    seed: int = 0,
    overrides: dict[str, Any] | typing.Iterable[str] = (),
) -> Config:
    """Builds a resolved config: base -> method preset -> fidelity -> size -> overrides."""
    _check_choice("method", method, METHODS)
    _check_choice("fidelity", fidelity, FIDELITIES)
    _check_choice("size", size, SIZES)
    config = Config(method=method, fidelity=fidelity, size=size, seed=seed)
    config = override(config, {"env.task": task})
    modalities = task_modalities(task)
    config = PRESETS[method](config)
    if fidelity == "paper":
        config = _paper_fidelity(config)
    for key, value in TASK_DEFAULTS.get(task, {}).items():
        config = override(config, {key: value})
    if size == "tiny":
        config = _tiny(config)
    elif size == "small":
        config = _small(config)
    # Preset weights name every modality a suite can have; keep the ones this run has, which
    # an override of env.modalities decides (weights the user sets are checked, not trimmed).
    overrides = overrides if isinstance(overrides, dict) else list(overrides)
    modalities = task_modalities(task, override(config, overrides).env.modalities)
    config = _restrict_weights(config, modalities)
    config = override(config, overrides)
    modalities = task_modalities(task, config.env.modalities)
    config = _restrict_rep(config, modalities)
    validate(config, modalities)
    return config


def _restrict_weights(config: Config, modalities) -> Config:
    spec = config.loss.weights
    if "=" not in spec:
        return config
    keep = [p for p in spec.split(",") if p.partition("=")[0].strip() in (*modalities, "fused")]
    return override(config, {"loss.weights": ",".join(keep)})


def _restrict_rep(config: Config, modalities) -> Config:
    """Per-modality representation presets (CoRAL) name modalities the task may lack."""
    spec = config.loss.representation
    if "=" not in spec:
        return config
    parts = {p.partition("=")[0].strip(): p.partition("=")[2].strip() for p in spec.split(",")}
    missing = [m for m in modalities if m not in parts]
    # A CoRAL preset's image-like modalities take the contrastive loss, the rest recon.
    contrastive = next((v for v in parts.values() if v.startswith("coral")), "recon")
    for m in missing:
        parts[m] = contrastive if m in IMAGE_MODALITIES else "recon"
    spec = ",".join(f"{m}={parts[m]}" for m in modalities)
    return override(config, {"loss.representation": spec})


CONV_IMPLS = ("auto", "xla", "matmul")
EVAL_MODES = ("sample", "mode", "mean")
PROPRIO_NORMS = ("none", "zscore")
RECON_LATENTS = ("posterior", "prior")
PROPRIO_SETS = ("full", "partial")
AFTER_PREFILL = ("pretrain", "catch_up")


def resolve_conv_impl(impl: str, seeds_per_device: int = 1, backend: str | None = None) -> str:
    """`model.conv_impl` -> ``"xla"`` (`lax.conv`, `lax.conv_transpose`) or ``"matmul"``
    (`networks.conv_stride2_matmul`, `networks.conv_transpose_stride2_matmul`), for encoders
    and decoders alike; `networks` takes only the resolved form.

    ``auto`` picks the matmul form on a CPU, where XLA:CPU's convolution inside the scanned
    update is 25x slower, and wherever one device runs several seeds of a sweep
    (`seeds_per_device` > 1): `vmap` over seeds gives each convolution's kernel a seed axis and
    XLA lowers it to a grouped convolution (``feature_group_count`` = seeds), which lost half
    the throughput at 8 seeds on CPU and made an H100 sweep slower than running the seeds one
    after another (BENCHMARKS.md, "Seed sweeps"), while the matmul form becomes a batched matmul.
    Elsewhere (one seed on a GPU) cuDNN's convolution is the fast path. `backend` defaults to
    `jax.default_backend()`.
    """
    _check_choice("model.conv_impl", impl, CONV_IMPLS)
    if impl != "auto":
        return impl
    if backend is None:
        import jax  # only here: the config module otherwise imports no JAX

        backend = jax.default_backend()
    return "matmul" if backend == "cpu" or seeds_per_device > 1 else "xla"


def _check_choice(key, value, choices):
    if value not in choices:
        raise ValueError(f"unknown {key} {value!r}; valid choices: {', '.join(choices)}")


def min_image_size(cnn_layers: int) -> int:
    """Smallest image the encoder takes: each 4x4 VALID stride-2 conv maps s to (s - 4)//2 + 1,
    so the input to the last layer needs 4 pixels, the one before 10, then 22, 46, ..."""
    size = 1
    for _ in range(cnn_layers):
        size = 2 * size + 2
    return size


# Integer options that count something: (key, smallest valid value). Checked before anything
# is built, so that e.g. train.batch=-3 fails at once rather than after the prefill.
_MODEL_SIZES = """cnn_depth cnn_layers touch_hidden touch_layers proprio_hidden proprio_layers embed
    expert_hidden fused deter stoch hidden units reward_layers value_layers actor_layers
    cvrl_obs_hidden cvrl_state_hidden coral_proj coral_state_hidden decoder_touch_hidden
    rssm_layers"""
_AT_LEAST = (
    ("env.image_size", 1),
    ("env.action_repeat", 1),
    ("env.time_limit", 1),
    ("env.max_missing_len", 1),
    ("env.crop_margin", 0),  # 0: no crop
    *((f"model.{k}", 1) for k in _MODEL_SIZES.split()),
    ("behavior.horizon", 2),  # lambda-returns bootstrap from the last of >= 2 imagined states
    ("behavior.mpc_iters", 0),  # 0: act with the actor's sample
    ("behavior.mpc_horizon", 1),
    ("behavior.sac_hidden", 1),
    ("behavior.sac_layers", 1),
    ("train.steps", 1),
    ("train.batch", 1),
    ("train.length", 1),
    ("train.prefill_episodes", 0),
    ("train.train_every", 1),
    ("train.train_steps", 1),
    ("train.updates_per_call", 1),
    ("train.eval_every", 0),  # 0: no periodic evaluation
    ("train.eval_episodes", 1),
    ("train.test_episodes", 1),
    ("train.checkpoints_kept", 1),
    ("train.replay_capacity", 1),
    ("train.prefetch", 0),  # 0: sample inline
    ("train.envs", 1),
    ("train.video_every", 0),  # 0: only experiments.evaluate's videos
)
# Float options that must be > 0, and ones that must lie in [0, 1] (rates, probabilities).
_POSITIVE = """model.min_std model.depth_scale optim.model_lr optim.actor_lr optim.value_lr
    optim.sac_lr optim.eps optim.clip behavior.sac_init_alpha behavior.mpc_lr
    loss.coral_temp_init behavior.sac_init_std behavior.sac_min_std""".split()
_UNIT = """env.missing_train env.missing_eval behavior.gamma behavior.lam behavior.slow_value_decay
    behavior.sac_tau""".split()
BACKGROUNDS = ("default", "none", "procedural")  # or a folder of videos/images


def _get(config: Config, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)


def _check_ranges(config: Config) -> None:
    """Counts, sizes, rates and learning rates in range; the message names the key and fix."""
    for key, low in _AT_LEAST:
        value = _get(config, key)
        if value < low:
            raise ValueError(f"{key}={value} must be >= {low}; set --set {key}=<n> with n >= {low}")
    for key in _POSITIVE:
        value = _get(config, key)
        if not value > 0:
            raise ValueError(f"{key}={value} must be > 0; set --set {key}=<a positive number>")
    for key in _UNIT:
        value = _get(config, key)
        if not 0 <= value <= 1:
            raise ValueError(f"{key}={value} must be in [0, 1]")
    for rate in config.env.missing_test:
        if not 0 <= rate <= 1:
            raise ValueError(f"env.missing_test={config.env.missing_test}: each rate in [0, 1]")
    t = config.train
    _check_choice("train.after_prefill", t.after_prefill, AFTER_PREFILL)
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
    e = config.env
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


def validate(config: Config, modalities: typing.Sequence[str] | None = None) -> None:
    """Rejects combinations that make no sense, before anything is built or compiled.

    `modalities` (the task's observation modalities) enables per-modality checks.
    """
    m, loss, b, e = config.model, config.loss, config.behavior, config.env
    _check_choice("method", config.method, METHODS)
    _check_choice("fidelity", config.fidelity, FIDELITIES)
    _check_choice("size", config.size, SIZES)
    _check_ranges(config)
    _check_choice("model.fusion", m.fusion, FUSIONS)
    _check_choice("model.poe", m.poe, POE_FORMS)
    _check_choice("model.cvrl_head", m.cvrl_head, ("reference", "paper"))
    _check_choice("model.touch_scale", m.touch_scale, ("div200", "raw", "log1p"))
    _check_choice("model.g_activation", m.g_activation, ("relu", "none"))
    _check_choice("model.precision", m.precision, ("float32", "bfloat16"))
    _check_choice("model.conv_impl", m.conv_impl, CONV_IMPLS)
    _check_choice("optim.adam", config.optim.adam, ADAM_FORMS)
    _check_choice("loss.nce_mask", loss.nce_mask, ("reference", "exact"))
    _check_choice("loss.nce_mean", loss.nce_mean, ("all_rows", "present_rows"))
    _check_choice("loss.kl_mode", loss.kl_mode, ("batch_mean", "per_step"))
    _check_choice("behavior.learner", b.learner, LEARNERS)
    _check_choice("behavior.planner", b.planner, PLANNERS)
    _check_choice("behavior.sac_pairing", b.sac_pairing, ("time", "batch"))
    _check_choice("behavior.eval_mode", b.eval_mode, EVAL_MODES)
    _check_choice("model.proprio_norm", m.proprio_norm, PROPRIO_NORMS)
    _check_choice("loss.recon_latent", loss.recon_latent, RECON_LATENTS)
    _check_choice("env.proprio", e.proprio, PROPRIO_SETS)
    if e.proprio == "partial" and e.task not in PARTIAL_PROPRIO:
        raise ValueError(
            f"env.proprio='partial' has no split for task {e.task!r} (CoRAL Table 1 covers "
            f"{', '.join(sorted(PARTIAL_PROPRIO))}); use --set env.proprio=full"
        )
    for key in ("behavior.expl_noise", "optim.sac_critic_clip", "optim.alpha_clip"):
        if not _get(config, key) >= 0:
            raise ValueError(
                f"{key}={_get(config, key)} must be >= 0 (0: off); set --set {key}=<n> with n >= 0"
            )
    _check_choice("env.missing", e.missing, MISSING_PROCESSES)
    _check_choice("env.composite", e.composite, ("segmentation", "red_threshold"))
    if not 0 <= loss.kl_balance < 1:
        raise ValueError(f"loss.kl_balance={loss.kl_balance} must be in [0, 1)")
    if not 0 <= loss.modality_drop < 1:
        raise ValueError(f"loss.modality_drop={loss.modality_drop} must be in [0, 1)")
    if e.image_size < min_image_size(m.cnn_layers):
        raise ValueError(
            f"env.image_size={e.image_size} is too small for model.cnn_layers={m.cnn_layers} "
            f"VALID stride-2 4x4 convs (the last one would see less than its kernel); use "
            f"env.image_size>={min_image_size(m.cnn_layers)} or fewer layers"
        )
    rep = str(loss.representation)
    names = [rep] if "=" not in rep else [p.partition("=")[2].strip() for p in rep.split(",")]
    # The registry is the one list of representation objectives (a test may add one); it
    # holds JAX heads, so it is imported only here, when a config is checked.
    from mummi_jax.objectives import OBJECTIVES

    for name in names:
        _check_choice("loss.representation", name, tuple(OBJECTIVES))
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
    if b.learner == "sac" and b.planner != "none":
        raise ValueError(
            "behavior.planner=latent_mpc needs a value function: use learner=imagination"
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


def check_logdir(logdir: str, config) -> None:
    """A logdir holding a run with a different config is an error (nothing is touched)."""
    path = os.path.join(logdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
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
        elif a != b:
            diffs.append(key)
    if diffs:
        raise ValueError(
            f"{logdir} holds a run with a different config (differs in {', '.join(diffs[:6])}); "
            "use a new --logdir, or the flags that run was started with"
        )
