"""Presets: what each method, fidelity, size and task sets, and `make_config`, which applies them.

A method is a configuration of one model (STYLE.md "One model, many methods"); this module holds
every such configuration and the paper constants, `config.py` the schema they fill in (each
option's type, its valid values and the checks). A preset is a function `Config -> Config`
made of `override`s, so it cannot set a key the schema lacks or a value outside its type.

`make_config` resolves, in order: base -> method preset -> fidelity -> task defaults -> size ->
the user's overrides, then validates the result once.
"""

from __future__ import annotations

import typing
from typing import Any

from mummi_jax.config import (
    FIDELITIES,
    METHODS,
    SIZES,
    Config,
    check_choice,
    override,
    resolve_touch_site,
    validate,
)
from mummi_jax.envs.tasks import (
    IMAGE_MODALITIES,
    PARTIAL_PROPRIO,
    task_info,
    task_modalities,
)


# ----------------------------------------------------------------------------- methods
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
        # CVRL's hybrid SAC term as the paper describes it (Sec. 3.3), correctly paired; the
        # CVRL repository's global-norm clip (100; MuMMI's is 30, reference-code.md §20).
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


PRESETS: dict[str, typing.Callable[[Config], Config]] = {
    "mummi": _mummi,
    "mummi_b": _mummi_b,
    "mssm_e": _mssm_e,
    "cvrl": _cvrl,
    "dreamer": _dreamer,
    "coral_v": lambda c: _coral(c, "coral_v"),
    "coral_p": lambda c: _coral(c, "coral_p"),
}


assert tuple(PRESETS) == METHODS, "every config.Method has one preset, in the same order"


# ----------------------------------------------------------------------------- fidelity, sizes
def _paper_fidelity(c: Config) -> Config:
    """Options where the MuMMI paper's text differs from the released code."""
    over = {
        "model.shared_noise": False,
        # Adam in Kingma & Ba's form (epsilon on the corrected moment); epsilon stays 1e-7.
        "optim.adam": "optax",
        "env.composite": "segmentation",
        "env.missing": "paper",
        "env.missing_train": 0.375,
        "env.missing_test": (0.0, 0.375, 0.75),
        "env.missing_eval": 0.0,
        "loss.nce_mask": "exact",
        "loss.nce_mean": "present_rows",
        "behavior.actor_objective": "sum",  # MuMMI eq. 18
        "behavior.mpc_objective": "start",  # CVRL app. A.3
        "optim.sac_actor_optimizer": "separate",  # CVRL app. B (used where sac_weight > 0)
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
            # Every acting step rolls the model out mpc_horizon steps and back (latent MPC):
            # 5, not the paper's 15, keeps acting cheap (15 not measured at this size).
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
    """The size of the CPU budget (`experiments.reproduce --budget=cpu`, which sets the
    released code's shared noise back for its grid; `experiments.learning_check`'s default
    for the paper's tasks): about 45 minutes per run on a 2-core CPU (RESULTS.md says what it
    learns). The paper's RSSM and schedule shape, smaller images, encoders and batches, a
    shorter MPC horizon (issue 14's measurements, RESULTS.md "Why tiny does not learn
    walker"), and one RSSM noise draw per row at either fidelity (RESULTS.md "Batch-shared
    sampling noise")."""
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
            # MPC plans 5 steps ahead, not 15: its rollout and gradient run at every agent
            # step, and acting is already about a fifth of a run's wall time (140.8 env steps/s:
            # 7 of the 36 min a walker check took, BENCHMARKS.md "Wall time of the walker
            # check"); 15 not measured at this size.
            "behavior.mpc_horizon": 5,
            "behavior.sac_hidden": 128,
            # One noise draw per row, not the released sampler's one per batch: with the
            # batch sharing each imagined step's noise, the actor's gradient on a trained
            # walker has a signal-to-noise ratio of 0.24-0.48 against 1.7-4.8 per row, the
            # value's 0.02-0.44 (noise, as far as 8 draws tell) against 43-182 (RESULTS.md
            # "Batch-shared sampling noise"). A bigger batch cannot average a shared draw,
            # and this budget has 2,950 updates.
            "model.shared_noise": False,
            "optim.actor_lr": 2e-4,
            "optim.value_lr": 2e-4,
            # 60k env steps (120 walker episodes) and 50 updates per 1000: about 3,000 updates
            # of 0.46-0.6 s, the 45 minutes' compute with the environment and evaluations.
            # 60 per 1000 took 42.6 minutes for the walker check alone on a 2-core Zen 3, 5 %
            # inside the 45, and passed 2 seeds of 3 (2026-12-06, RESULTS.md): 50 stays.
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


SIZE_PRESETS: dict[str, typing.Callable[[Config], Config]] = {
    "paper": lambda c: c,
    "small": _small,
    "tiny": _tiny,
}
assert tuple(SIZE_PRESETS) == SIZES, "every config.Size has one preset, in the same order"


# ----------------------------------------------------------------------------- tasks
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
    check_choice("method", method, METHODS)
    check_choice("fidelity", fidelity, FIDELITIES)
    check_choice("size", size, SIZES)
    config = Config(method=method, fidelity=fidelity, size=size, seed=seed)
    config = override(config, {"env.task": task})
    task_modalities(task)  # an unknown task fails here, naming the known ones
    config = PRESETS[method](config)
    if fidelity == "paper":
        config = _paper_fidelity(config)
    for key, value in TASK_DEFAULTS.get(task, {}).items():
        config = override(config, {key: value})
    config = SIZE_PRESETS[size](config)
    # Preset weights name every modality a suite can have; keep the ones this run has, which
    # an override of env.modalities decides (weights the user sets are checked, not trimmed).
    overrides = overrides if isinstance(overrides, dict) else list(overrides)
    modalities = task_modalities(task, override(config, overrides).env.modalities)
    config = _restrict_weights(config, modalities)
    config = override(config, overrides)
    modalities = task_modalities(task, config.env.modalities)
    config = _restrict_rep(config, modalities)
    config = resolve_touch_site(config)
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
