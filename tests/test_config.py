"""Config presets, overrides and validation: clear errors before anything is built."""

import json
import re
import typing

import pytest

from mummi_jax import config as C
from mummi_jax import presets


@pytest.mark.parametrize("method", C.METHODS)
@pytest.mark.parametrize("fidelity", C.FIDELITIES)
def test_every_preset_resolves_on_every_suite(method, fidelity):
    for task in ("walker_walk", "cup_catch", "cartpole_swingup", "toy_position_camera", "wipe"):
        for size in C.SIZES:
            cfg = presets.make_config(method, task, size, fidelity)
            assert cfg.method == method and cfg.env.task == task
            C.validate(cfg)


def test_preset_values_follow_the_reference_code():
    mummi = presets.make_config("mummi", "walker_walk")
    assert (mummi.model.fusion, mummi.model.poe, mummi.loss.representation) == (
        "poe",
        "reference",
        "mummi",
    )
    assert mummi.loss_weights(("image", "depth", "touch")) == {
        "image": 1.0,
        "depth": 1.0,
        "touch": 0.001,
    }
    assert mummi.optim.clip == 30.0 and mummi.optim.eps == 1e-7
    assert mummi.behavior.planner == "latent_mpc" and mummi.env.missing_train == 0.05
    cvrl = presets.make_config("cvrl", "walker_walk")
    assert cvrl.model.fusion == "concat" and cvrl.behavior.sac_weight == 0.0
    assert presets.make_config("cvrl", "walker_walk", fidelity="paper").behavior.sac_weight > 0
    dreamer = presets.make_config("dreamer", "walker_walk")
    assert dreamer.behavior.planner == "none"
    assert (
        presets.make_config("dreamer", "walker_walk", fidelity="paper").behavior.planner
        == "latent_mpc"
    )
    paper = presets.make_config("mummi", "walker_walk", fidelity="paper")
    assert paper.env.missing == "paper" and paper.env.missing_test == (0.0, 0.375, 0.75)
    assert presets.make_config("mummi", "wipe").model.fused == 256
    coral = presets.make_config("coral_p", "cartpole_swingup")
    assert coral.rep_losses(("image", "proprio")) == {"image": "coral_p", "proprio": "recon"}
    coral = presets.make_config(
        "coral_p", "cartpole_swingup", overrides=["env.modalities=image,depth"]
    )
    assert coral.rep_losses(("image", "depth")) == {"image": "coral_p", "depth": "recon"}


def test_overrides_are_typed_and_unknown_keys_fail():
    cfg = presets.make_config(
        "mummi", "walker_walk", overrides=["model.deter=64", "train.steps=1e4"]
    )
    assert cfg.model.deter == 64 and cfg.train.steps == 10_000
    cfg = presets.make_config("mummi", "walker_walk", overrides={"env.missing_test": "0,0.1,0.3"})
    assert cfg.env.missing_test == (0.0, 0.1, 0.3)
    with pytest.raises(ValueError, match="model.deterr"):
        presets.make_config("mummi", "walker_walk", overrides=["model.deterr=3"])
    with pytest.raises(ValueError, match="expected int"):
        presets.make_config("mummi", "walker_walk", overrides=["model.deter=abc"])
    with pytest.raises(ValueError, match="expected int"):
        presets.make_config("mummi", "walker_walk", overrides=["model.deter=2.5"])
    with pytest.raises(ValueError, match="unknown config section"):
        presets.make_config("mummi", "walker_walk", overrides=["modle.deter=3"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "mumi"}, "unknown method 'mumi'.*mummi_b"),
        ({"fidelity": "exact"}, "unknown fidelity"),
        ({"size": "huge"}, "unknown size"),
        ({"task": "walker_fly"}, "unknown task 'walker_fly'.*walker_walk"),
        ({"overrides": ["model.fusion=concat"]}, "needs model.fusion='poe'"),
        ({"overrides": ["model.poe_prior_expert=true"]}, "has no prior expert.*model.poe=gaussian"),
        ({"overrides": ["model.fusion=sum"]}, "unknown model.fusion 'sum'.*poe, concat"),
        ({"overrides": ["loss.representation=mse"]}, "unknown loss.representation"),
        ({"task": "cartpole_swingup", "overrides": ["loss.weights=touch=2"]}, "lacks"),
        ({"overrides": ["env.modalities=image,sonar"]}, "no modality 'sonar'"),
        ({"overrides": ["env.missing_test=0,0.1"]}, "env.missing_test=0.0,0.1 must give three"),
    ],
)
def test_nonsense_is_rejected_with_the_valid_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        presets.make_config(**kwargs)


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_images_too_small_for_the_encoder_are_refused_at_the_exact_limit(layers):
    import jax
    import jax.numpy as jnp

    from mummi_jax.networks import ConvEncoder

    limit = C.min_image_size(layers)
    over = [f"model.cnn_layers={layers}"]
    with pytest.raises(ValueError, match=f"env.image_size>={limit} or fewer layers"):
        presets.make_config(
            "mummi", "walker_walk", "tiny", overrides=[*over, f"env.image_size={limit - 1}"]
        )
    presets.make_config(
        "mummi", "walker_walk", "tiny", overrides=[*over, f"env.image_size={limit}"]
    )
    # At the limit the last conv still has a 1x1 output; one pixel less and it has none.
    enc = ConvEncoder(2, layers)
    shape = lambda size: (
        jax.eval_shape(
            lambda x: enc.init_with_output(jax.random.key(0), x)[0], jnp.zeros((1, size, size, 1))
        ).shape
    )
    assert shape(limit) == (1, 2 * 2 ** (layers - 1)) and shape(limit - 1) == (1, 0)


def test_config_round_trips_through_json():
    cfg = presets.make_config("coral_v", "walker_walk", "tiny", "paper", seed=3)
    again = C.from_dict(json.loads(cfg.to_json()))
    assert again == cfg


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.batch=0", "train.batch=0 must be >= 1"),
        ("train.batch=-3", "train.batch=-3 must be >= 1"),
        ("train.length=0", "train.length=0 must be >= 1"),
        ("train.steps=0", "train.steps=0 must be >= 1"),
        ("train.train_every=0", "train.train_every=0"),
        ("train.train_steps=0", "train.train_steps=0"),
        ("train.updates_per_call=0", "train.updates_per_call=0"),
        ("train.train_steps=7", "not a multiple of train.updates_per_call=5.*train_steps=5"),
        ("train.envs=0", "train.envs=0"),
        ("train.checkpoints_kept=0", "train.checkpoints_kept=0"),
        ("train.prefill_episodes=-1", "train.prefill_episodes=-1"),
        ("model.deter=0", "model.deter=0"),
        ("model.cnn_depth=-1", "model.cnn_depth=-1"),
        ("behavior.horizon=1", "behavior.horizon=1 must be >= 2"),
        ("behavior.mpc_horizon=1", "behavior.mpc_horizon=1 must be >= 2"),
        ("optim.model_lr=0", "optim.model_lr=0.0 must be > 0"),
        ("behavior.gamma=1.5", r"behavior.gamma=1.5 must be in \[0, 1\]"),
        ("env.missing_test=0,2", "env.missing_test"),
        (
            "env.touch_site=toe",
            "not a touch site of task 'walker_walk' \\(valid: sole, sole_box, foot\\)",
        ),
        ("env.background=/no/such/folder", "env.background='/no/such/folder' is not a folder"),
    ],
)
def test_every_count_size_rate_and_site_is_checked_before_anything_runs(override, match):
    with pytest.raises(ValueError, match=match):
        presets.make_config("mummi", "walker_walk", "tiny", overrides=[override])


def test_modality_drops_need_a_product_of_experts():
    # Concatenation ignores the flags: a dropped modality would still be fed, its loss masked.
    for method in ("dreamer", "cvrl"):
        with pytest.raises(ValueError, match="loss.modality_drop=0.2 drops experts.*concat"):
            presets.make_config(method, "walker_walk", "tiny", overrides=["loss.modality_drop=0.2"])
    assert presets.make_config("mssm_e", "walker_walk", "tiny").loss.modality_drop == 0.2


def _fields():
    """(dotted key, annotated type) of every option of the schema."""
    top = C._section_types(C.Config())
    yield from ((k, top[k]) for k in C.TOP_LEVEL)
    for section in C.SECTIONS:
        yield from (
            (f"{section}.{k}", t)
            for k, t in C._section_types(C.Config().__getattribute__(section)).items()
        )


def test_each_option_s_valid_values_are_its_field_type_and_every_one_is_checked():
    """A `Literal` field refuses a value outside its choices, naming all of them, and an
    `Annotated` number one step past its bound, naming the bound: nothing is checked by a list
    kept apart from the schema, so a new option is checked the moment it has a type."""
    base = presets.make_config("mummi", "walker_walk", "tiny")
    literals = ranged = 0
    for key, typ in _fields():
        origin = typing.get_origin(typ)
        if key in ("method", "fidelity", "size"):
            continue  # make_config's own arguments (checked in test_nonsense_...)
        section, _, name = key.partition(".")
        if origin is typing.Literal:
            choices = typing.get_args(typ)
            with pytest.raises(
                ValueError,
                match=f"unknown {key} 'bogus'; valid choices: " + ", ".join(choices) + "$",
            ):
                C.validate(C.override(base, {key: "bogus"}))
            literals += 1
        elif origin is typing.Annotated:
            inner, rule = typing.get_args(typ)
            step = 1 if inner is int else 1e-3
            bad = rule.low - step if not isinstance(rule, C.Within) else rule.high + step
            with pytest.raises(ValueError, match=f"^{re.escape(key)}=.* must be "):
                C.validate(C.override(base, {key: inner(bad)}))
            ranged += 1
    assert literals >= 20 and ranged >= 70, (literals, ranged)
    # The module-level tuples are read from the types, not kept beside them.
    assert C.METHODS == typing.get_args(C.Method) == tuple(presets.PRESETS)
    assert C.SIZES == tuple(presets.SIZE_PRESETS)
    # optim takes its forms from the schema; each one must build an optimiser there.
    import jax.numpy as jnp

    from mummi_jax import optim

    for form in typing.get_args(C.AdamForm):
        opt = optim.adam(1e-3, 1e-7, form)
        updates, _ = opt.update({"w": jnp.ones(2)}, opt.init({"w": jnp.zeros(2)}))
        assert updates["w"].shape == (2,), form


def test_touch_site_reaches_the_environment_for_every_task_with_a_choice(tmp_path):
    from mummi_jax.episodes import env_kwargs_from_config

    kwargs = lambda task, *o: env_kwargs_from_config(
        presets.make_config("mummi", task, overrides=o)
    )
    assert kwargs("cup_catch", "env.touch_site=interior")["touch_site"] == "interior"
    assert kwargs("walker_walk", "env.touch_site=foot")["touch_site"] == "foot"
    assert kwargs("cup_catch")["touch_site"] == "bottom"  # the task's default, written out
    assert kwargs("cheetah_run", "env.touch_site=foot_capsule")["touch_site"] == "foot_capsule"
    with pytest.raises(ValueError, match="cartpole_swingup.*it has none"):
        presets.make_config("mummi", "cartpole_swingup", overrides=["env.touch_site=sole"])
    # A background folder that exists is accepted; a toy task ignores the option.
    presets.make_config("mummi", "walker_walk", overrides=[f"env.background={tmp_path}"])
    presets.make_config("mummi", "toy_xy", overrides=["env.background=/no/such/folder"])


def test_env_modalities_override_trims_the_presets_weights_but_checks_the_users():
    # The preset's loss weights name image, depth and touch; a run on proprio alone keeps none
    # of them instead of failing on a modality it does not have.
    c = presets.make_config("mummi", "walker_walk", "tiny", overrides=["env.modalities=proprio"])
    assert c.env.modalities == "proprio" or tuple(c.env.modalities) == ("proprio",)
    assert "image" not in c.loss.weights
    with pytest.raises(ValueError, match="image"):
        presets.make_config(
            "mummi",
            "walker_walk",
            "tiny",
            overrides=["env.modalities=proprio", "loss.weights=image=1"],
        )


def test_mummi_b_weighs_its_one_term_by_fused_or_by_a_bare_weight():
    """A bare `loss.weights` scales every term of the other methods; MuMMI-b's one term must
    not ignore it (it read only `fused=` before)."""
    make = lambda *o: presets.make_config("mummi_b", "walker_walk", "tiny", overrides=list(o))
    assert make().fused_weight() == 1.0
    assert make("loss.weights=0.5").fused_weight() == 0.5
    assert make("loss.weights=fused=2").fused_weight() == 2.0


def test_a_run_saved_before_an_option_existed_resumes_at_its_default(tmp_path):
    config = presets.make_config("mummi", "walker_walk", "tiny")
    saved = json.loads(config.to_json())
    del saved["model"]["shared_noise"]  # as written by code that predates the option
    (tmp_path / "config.json").write_text(json.dumps(saved))
    C.check_logdir(str(tmp_path), config)  # the option at its default: the same run
    changed = C.override(config, {"model.shared_noise": not config.model.shared_noise})
    with pytest.raises(ValueError, match="model.shared_noise"):
        C.check_logdir(str(tmp_path), changed)


def test_a_run_resumes_with_another_length_but_not_another_model(tmp_path):
    config = presets.make_config("mummi", "walker_walk", "tiny")
    (tmp_path / "config.json").write_text(config.to_json())
    C.check_logdir(str(tmp_path), C.override(config, {"train.steps": 3 * config.train.steps}))
    with pytest.raises(ValueError, match=r"differs in train.batch\)"):
        C.check_logdir(str(tmp_path), C.override(config, {"train.steps": 1, "train.batch": 3}))


def test_a_run_saved_with_an_empty_touch_site_keeps_the_site_it_sensed(tmp_path):
    """Before 2026-12-06 "" meant the walker's box (now `sole_box`), not today's default."""
    from experiments.evaluate import load_config

    old = presets.make_config("mummi", "walker_walk", size="tiny").to_dict()
    old["env"]["touch_site"] = ""
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert load_config(str(tmp_path)).env.touch_site == "sole_box"
    # Resuming with today's default is refused (the sensor would change under the replay);
    # with the site it sensed, it resumes.
    with pytest.raises(ValueError, match="differs in env.touch_site"):
        C.check_logdir(str(tmp_path), presets.make_config("mummi", "walker_walk", size="tiny"))
    same = presets.make_config(
        "mummi", "walker_walk", "tiny", overrides=["env.touch_site=sole_box"]
    )
    C.check_logdir(str(tmp_path), same)
    # A task whose first site did not change reads "" as that site, and resumes.
    cup = presets.make_config("mummi", "cup_catch", size="tiny")
    saved = cup.to_dict()
    saved["env"]["touch_site"] = ""
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert C.read_saved(str(tmp_path / "config.json"))["env"]["touch_site"] == "bottom"
    C.check_logdir(str(tmp_path), cup)
    # A run without touch keeps "", as presets leave it.
    sets = ["env.modalities=image,depth"]
    no_touch = presets.make_config("mummi", "walker_walk", "tiny", overrides=sets)
    assert no_touch.env.touch_site == ""
    (tmp_path / "config.json").write_text(no_touch.to_json())
    C.check_logdir(str(tmp_path), no_touch)
