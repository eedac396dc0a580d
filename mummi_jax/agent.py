"""The agent: networks, train state, the one jitted train step and the jitted acting step.

Only this module and `config.py` know method names: a method is a configuration (fusion,
representation loss per modality, behaviour learner, planner), dispatched here in Python
at build time; the jitted code calls plain functions from the model core.

One update (`train_fn`, scanned K times per call):
  1. world model (MuMMI eq. 17 / eq. 10 / CVRL eq. 4 / CoRAL eq. 3-4): encoders ->
     experts -> fusion -> `mssm.observe` (lax.scan over T) -> KL + reward + the chosen
     representation objectives' terms (`objectives.OBJECTIVES`, one per modality);
  2. behaviour from the same pre-update parameters (reference-code.md §5.3): imagination
     actor-critic (MuMMI app. A, eq. 18-19) from every posterior state, and/or latent SAC
     (CVRL's hybrid term, CoRAL's model-free agent);
  3. one optax chain per network (Adam + global-norm clip), applied together; then the
     target networks (slow value, SAC target critic) move towards their online networks.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mummi_jax import behavior, inputs, losses, mpc, objectives, optim, prng, sac
from mummi_jax import distributions as dist
from mummi_jax import world_model as mssm
from mummi_jax.config import Config, validate
from mummi_jax.device_memory import explain_out_of_memory
from mummi_jax.envs.tasks import task_modalities

Pytree = Any

# Imagination starts the actor metrics read (`Agent._actor_spread`): every start of `small`'s
# 16 x 32 batch; at paper size a forward pass of 0.6 GFLOP, 0.07 % of the update's products.
ACTOR_PROBE_ROWS = 512


@flax.struct.dataclass
class TrainState:
    """Everything an update changes. Every tree is keyed by the same paths, so a network's
    parameters, optimiser state and target network sit at one path (`get_path`) in each.

    Attributes:
      params: the networks and the input statistics. `"wm"`: the world model (encoders,
        experts, RSSM, heads; `networks.WorldModel`); `"actor"`, `"value"`: the imagination
        actor-critic (behavior.learner=imagination, or a planner); `"sac"`: latent SAC
        (learner=sac, or behavior.sac_weight > 0) holding `"critic"` (twin Q), `"log_alpha"`
        (a `()` float32) and, for CoRAL's model-free learner only, `"actor"` (CVRL's hybrid
        term trains `params["actor"]`); `"obs_norm"` (model.proprio_norm=zscore only):
        `{m: {"mean", "std"}}` of the modality's shape, set by `Agent.with_input_stats` and
        never trained.
      targets: target networks keyed like the parameters they track, moved after each update
        and never trained: `"value"` (behavior.slow_value: the EMA of `params["value"]`) and
        `"sac"` `{"critic"}` (the Polyak copy of `params["sac"]["critic"]`); `{}` when the
        method has none.
      opt_state: one optax state per trained subtree, at that subtree's path in `params`:
        `"wm"`, `"actor"`, `"value"`, `"sac"` `{"critic", "log_alpha", "actor"}` as present
        (`Agent.optimizers` has the same layout).
      key: the typed PRNG key the next update splits.
      step: `()` int32, updates made.
    """

    params: dict
    targets: dict
    opt_state: dict
    key: jax.Array
    step: jax.Array


def get_path(tree: dict, path: tuple[str, ...]):
    """`tree[path[0]][path[1]]...`."""
    for k in path:
        tree = tree[k]
    return tree


def has_path(tree: dict, path: tuple[str, ...]) -> bool:
    """Whether `get_path(tree, path)` exists."""
    for k in path:
        if not isinstance(tree, dict) or k not in tree:
            return False
        tree = tree[k]
    return True


def set_path(tree: dict, path: tuple[str, ...], value) -> dict:
    """A copy of the nested dict `tree` with `value` at `path` (missing levels created);
    `tree` itself is left as it was."""
    head, *rest = path
    return {**tree, head: set_path(tree.get(head, {}), tuple(rest), value) if rest else value}


def optimizer_paths(optimizers: dict) -> list[tuple[str, ...]]:
    """The paths of the optax transformations in a nested dict of them (`Agent.optimizers`):
    the paths of the trained subtrees of `TrainState.params` and of `TrainState.opt_state`."""
    is_tx = lambda x: isinstance(x, optax.GradientTransformation)
    leaves = jax.tree_util.tree_flatten_with_path(optimizers, is_leaf=is_tx)[0]
    return [tuple(k.key for k in path) for path, _ in leaves]


def _batch_key_spec(obs_spec, modalities, action_dim):
    """Expected (shape-after-(B,T), dtype kind) of each batch entry, for early checks."""
    spec = {}
    for m in modalities:
        spec[m] = tuple(obs_spec[m].shape)
        spec[f"{m}_flag"] = ()
    spec.update(action=(action_dim,), reward=(), discount=(), is_first=())
    return spec


def drop_modalities(key: jax.Array, flags: dict, modalities, rate: float) -> dict:
    """MSSM-e's random modality drops (MuMMI Sec. VI, after MVAE's subset training [3]):
    each present modality of each step is dropped with probability `rate`, never all the
    present ones: where every present modality was drawn for dropping, one of them, chosen
    uniformly, is kept. A step with none present stays empty.

    Args:
      key: PRNG key. flags: `{m: (B, T)}` presence (1 present, 0 missing).
      modalities: the names, in the task's order. rate: the drop probability.

    Returns:
      `{m: (B, T)}` flags after the drops (float, as given).
    """
    keys = jax.random.split(key, len(modalities))
    kept = {
        m: jax.random.bernoulli(k, 1.0 - rate, flags[m].shape)
        for m, k in zip(modalities, keys, strict=True)
    }
    present = jnp.stack([flags[m] > 0 for m in modalities])  # (M, B, T)
    survived = jnp.any(present & jnp.stack([kept[m] for m in modalities]), axis=0)
    # Folded in, not split off, so that the drop draws above keep their keys.
    u = jax.random.uniform(jax.random.fold_in(key, len(modalities)), present.shape)
    choice = jnp.argmax(jnp.where(present, u, -1.0), axis=0)  # a present modality, uniformly
    return {m: flags[m] * (kept[m] | (~survived & (choice == i))) for i, m in enumerate(modalities)}


class Agent:
    """Builds one model from a resolved config and an environment's specs.

    Args:
      config: a resolved `Config` (see `presets.make_config`).
      obs_spec: the environment's `observation_spec()` dict.
      action_spec: the environment's `action_spec()` (a (A,) array spec in [-1, 1]).

    `optimizers` holds one optax transformation per trained subtree, nested like
    `TrainState.params` and `TrainState.opt_state` (`optimizer_paths` lists the paths);
    `target_decays` names the target networks and their decays.
    """

    def __init__(self, config: Config, obs_spec: dict, action_spec):
        self.config = config
        self.modalities = task_modalities(config.env.task, config.env.modalities)
        validate(config, self.modalities)
        missing = [k for m in self.modalities for k in (m, f"{m}_flag") if k not in obs_spec]
        if missing:
            raise ValueError(
                f"observation spec lacks {missing}; the config's modalities are "
                f"{self.modalities}: build the environment with the same task and modalities"
            )
        self.obs_spec = {k: obs_spec[k] for k in obs_spec}
        self.action_dim = int(np.prod(action_spec.shape))
        self.rep = config.rep_losses(self.modalities)
        self.weights = config.loss_weights(self.modalities)
        self.weights_fused = config.fused_weight()
        self._batch_spec = _batch_key_spec(obs_spec, self.modalities, self.action_dim)
        shapes = {m: tuple(obs_spec[m].shape) for m in self.modalities}
        # CoRAL's crop (env.crop_margin > 0, coral.md §3.5): images arrive image_size +
        # margin wide and the networks see image_size; a random window per sequence in
        # training for contrastive image losses, the centre elsewhere.
        self.crop = config.env.image_size if config.env.crop_margin > 0 else 0
        self.random_crop = []
        if self.crop:
            for m, shape in shapes.items():
                if len(shape) == 3:
                    if min(shape[:2]) < self.crop:
                        raise ValueError(
                            f"observation {m!r} is {shape[0]}x{shape[1]}, smaller than the "
                            f"{self.crop} px crop (env.image_size); build the environment with "
                            "image_size = env.image_size + env.crop_margin"
                        )
                    shapes[m] = (self.crop, self.crop, shape[-1])
                    if self.rep[m] not in ("recon", "none"):
                        self.random_crop.append(m)
        # CoRAL's z-scored proprioception (model.proprio_norm, coral.md §2): statistics kept
        # in params["obs_norm"], identity until the runner sets them after the prefill.
        self.norm_modalities = (
            ["proprio"]
            if config.model.proprio_norm == "zscore" and "proprio" in self.modalities
            else []
        )
        self.nets = mssm.build_world_model(config, shapes, self.action_dim, self.rep)
        self.optimizers = self._make_optimizers()
        self.train_fn = self._make_train_fn()
        self.act_fn = self._make_act_fn()
        # One program each: eager init would compile every initialiser op on its own (tens
        # of small XLA programs, seconds each on a CPU), and a traced `training` flag lets
        # collection and evaluation share one acting program instead of compiling two.
        self._init_jit = prng.jit(self._init)
        self._train_jit = prng.jit(self.train_fn, donate_argnums=0)
        self._act_jit = prng.jit(self.act_fn, donate_argnums=1)
        self._checked_shapes = set()

    # ------------------------------------------------------------------ state
    def init(self, key: jax.Array) -> TrainState:
        """Fresh parameters, targets and optimiser states; `key` from `parallel.seed_key(seed)`."""
        return self._init_jit(key)

    def _init(self, key: jax.Array) -> TrainState:
        k_wm, k_actor, k_value, k_sac, k_state = jax.random.split(key, 5)
        params = {"wm": self.nets.init(k_wm)}
        feat = jnp.zeros((1, self.nets.feat_size))
        if self._uses_imagination or self.config.behavior.planner != "none":
            params["actor"] = self.nets.actor.init(k_actor, feat)
            params["value"] = self.nets.value.init(k_value, feat)
        if self._uses_sac:
            params["sac"] = self._init_sac(k_sac)
        if self.norm_modalities:  # no optimiser: set by `with_input_stats`, never trained
            shapes = {m: self.obs_spec[m].shape for m in self.norm_modalities}
            params["obs_norm"] = {
                m: {"mean": jnp.zeros(shape), "std": jnp.ones(shape)} for m, shape in shapes.items()
            }
        # Copies: the state is donated, and one buffer cannot be donated twice (XLA gives
        # each output of the jitted init its own buffer; the copy keeps that explicit).
        targets = {}
        for path in self.target_decays:
            targets = set_path(targets, path, jax.tree.map(jnp.copy, get_path(params, path)))
        return TrainState(
            params, targets, self.init_opt_state(params), k_state, jnp.zeros((), jnp.int32)
        )

    def param_path(self, path: tuple[str, ...]) -> tuple[str, ...]:
        """The `params` subtree that the optimiser at `path` steps: the same path, except
        CVRL's separate SAC optimizer (`optim.sac_actor_optimizer=separate`), kept at
        `("sac", "actor")` beside the critic's and stepping the imagination actor."""
        if path == ("sac", "actor") and self.config.behavior.learner != "sac":
            return ("actor",)
        return path

    def init_opt_state(self, params: dict) -> dict:
        """Fresh optimiser states for `params` (`TrainState.opt_state`'s layout: keyed by
        optimiser path, each state shaped like the subtree at `param_path`)."""
        opt_state = {}
        for path in optimizer_paths(self.optimizers):
            opt = get_path(self.optimizers, path)
            opt_state = set_path(opt_state, path, opt.init(get_path(params, self.param_path(path))))
        return opt_state

    @property
    def target_decays(self) -> dict[tuple[str, ...], float]:
        """`{path: decay}` of the target networks: `target <- decay * target + (1 - decay) *
        online` after each update (`behavior.ema_update`), online = `params` at the path."""
        b = self.config.behavior
        out = {}
        if b.slow_value and (self._uses_imagination or b.planner != "none"):
            out[("value",)] = b.slow_value_decay
        if self._uses_sac:
            out[("sac", "critic")] = 1.0 - b.sac_tau  # sac.polyak_update's decay
        return out

    @property
    def _uses_imagination(self):
        return self.config.behavior.learner == "imagination"

    @property
    def _uses_sac(self):
        b = self.config.behavior
        return b.learner == "sac" or b.sac_weight > 0

    def _init_sac(self, key):
        b = self.config.behavior
        k_critic, k_actor = jax.random.split(key)
        feat = jnp.zeros((1, self.nets.feat_size))
        act = jnp.zeros((1, self.action_dim))
        out = {
            "critic": self.nets.sac_critic.init(k_critic, feat, act),
            "log_alpha": jnp.asarray(math.log(b.sac_init_alpha), jnp.float32),
        }
        if b.learner == "sac":  # CoRAL: a separate SAC actor; CVRL's hybrid term uses the actor
            out["actor"] = self.nets.sac_actor.init(k_actor, feat)
        return out

    def _make_optimizers(self):
        """One optax chain per trained subtree, nested like `TrainState.params`."""
        o, b = self.config.optim, self.config.behavior

        def adam(lr):
            return optim.clipped_adam(lr, o.eps, o.clip, o.adam)

        opts = {"wm": self._wm_optimizer(adam)}
        if self._uses_imagination or b.planner != "none":
            opts["actor"] = adam(o.actor_lr)
            opts["value"] = adam(o.value_lr)
        if self._uses_sac:
            # CoRAL clips the critic at 100 and alpha at 1 (coral.md §4.1); 0: the older
            # behaviour (critic at optim.clip, alpha unclipped).
            critic_clip = o.sac_critic_clip or o.clip
            sac_opts = {"critic": optim.clipped_adam(o.sac_lr, o.eps, critic_clip, o.adam)}
            if b.learner == "sac" or o.sac_actor_optimizer == "separate":
                # CoRAL's own actor, or CVRL's SAC optimizer over the imagination actor
                # (app. B); `param_path` says which parameters it steps.
                sac_opts["actor"] = adam(o.sac_lr)
            if o.alpha_clip > 0:
                sac_opts["log_alpha"] = optim.clipped_adam(o.sac_lr, o.eps, o.alpha_clip, o.adam)
            else:
                sac_opts["log_alpha"] = optim.adam(o.sac_lr, o.eps, o.adam)
            opts["sac"] = sac_opts
        return opts

    def _wm_optimizer(self, adam):
        """Adam over the world model; parameters an objective labels (CoRAL's temperature,
        coral.md §3.3) train at that objective's own learning rate."""
        o = self.config.optim
        chosen = [obj for obj in self.nets.objectives.values() if obj.label is not None]
        if not chosen:
            return adam(o.model_lr)
        rates = {}
        for obj in chosen:
            rates.update(obj.learning_rates(self.config))

        def label(path, _):
            key = jax.tree_util.keystr(path)
            return next((x for obj in chosen if (x := obj.label(key)) is not None), "net")

        # Adam's update is linear in the learning rate, so scaling it after the chain is the
        # same as a separate Adam at the label's rate (and keeps one clip over all of them).
        scales = {x: optax.scale(lr / o.model_lr) for x, lr in rates.items()}
        return optax.chain(
            adam(o.model_lr),
            optax.multi_transform(
                {"net": optax.identity(), **scales},
                lambda tree: jax.tree_util.tree_map_with_path(label, tree),
            ),
        )

    def initial_carry(self, n: int) -> dict:
        """Per-environment filter state: latent state and previous action, zeros."""
        return {
            "state": mssm.initial_state(n, self.config),
            "action": jnp.zeros((n, self.action_dim), jnp.float32),
        }

    # ------------------------------------------------------------------ public calls
    def train(self, state: TrainState, batches: dict) -> tuple[TrainState, dict]:
        """K updates in one jitted call; `batches` is a dict of `(K, B, T, ...)` arrays."""
        self.check_batch(batches, leading=3)
        with explain_out_of_memory(
            "one train call (train.updates_per_call updates of train.batch x train.length)",
            "lower train.batch or train.length (--set train.batch=N), or compute the image "
            "networks in bfloat16 (--set model.precision=bfloat16)",
        ):
            return self._train_jit(state, batches)

    def act(self, state: TrainState, carry: dict, obs: dict, key: jax.Array, training=True):
        """Actions `(n, A)` for `n` environments; `obs` holds `(n, ...)` arrays and
        `is_first` `(n,)`. `training`: collection (True: sampled, exploration noise) or
        evaluation (False: `behavior.eval_mode`), one compiled program for both. Returns
        `(action, carry)`; `carry` is donated."""
        return self._act_jit(state, carry, obs, key, np.asarray(training, np.bool_))

    def check_batch(self, batches: dict, leading: int) -> None:
        """A clear error for batches that do not match the observation spec (before jit)."""
        signature = tuple(
            (k, tuple(np.shape(v)), str(getattr(v, "dtype", "")))
            for k, v in sorted(batches.items())
        )
        if signature in self._checked_shapes:
            return
        lead = None
        for key, tail in self._batch_spec.items():
            if key not in batches:
                raise ValueError(
                    f"batch lacks {key!r}; expected keys {sorted(self._batch_spec)} "
                    "(see docs/ARCHITECTURE.md, 'Replay batches')"
                )
            shape = tuple(np.shape(batches[key]))
            if len(shape) != leading + len(tail) or shape[leading:] != tail:
                raise ValueError(
                    f"batch[{key!r}] has shape {shape}; expected {leading} leading dims then "
                    f"{tail} (the observation spec of {self.config.env.task})"
                )
            if lead is None:
                lead = shape[:leading]
            elif shape[:leading] != lead:
                raise ValueError(f"batch[{key!r}] leading dims {shape[:leading]} != {lead}")
        for m in self.modalities:
            want = np.dtype(self.obs_spec[m].dtype)
            got = np.dtype(batches[m].dtype)
            if want == np.uint8 and got != np.uint8:
                raise ValueError(f"batch[{m!r}] has dtype {got}; images must stay uint8")
            if want.kind == "f" and got.kind != "f":
                raise ValueError(f"batch[{m!r}] has dtype {got}; expected a float dtype")
        self._checked_shapes.add(signature)

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, obs: dict, key: jax.Array | None = None, norm: dict | None = None) -> dict:
        """Raw observations -> network inputs (reference-code.md §10 item 5), on device.

        With `env.crop_margin` > 0, images are cropped to `env.image_size` first: with a
        `key` (training, `(B, T, ...)` inputs) contrastive image modalities get a random
        window per sequence, others the centre (CoRAL §3.5). `norm`: `params["obs_norm"]`,
        `{m: {"mean", "std"}}` z-scoring those modalities (CoRAL App. B)."""
        m_cfg = self.config.model
        out = {}
        if self.crop:
            keys = {}
            if key is not None and self.random_crop:
                split = jax.random.split(key, len(self.random_crop))
                keys = dict(zip(self.random_crop, split, strict=True))
            obs = dict(obs)
            for m in self.modalities:
                if len(self.obs_spec[m].shape) != 3:
                    continue
                if m in keys:
                    obs[m] = inputs.random_crop(obs[m], keys[m], self.crop)
                else:
                    obs[m] = inputs.center_crop(obs[m], self.crop)
        for m in self.modalities:
            x = obs[m]
            if m == "depth":
                x = x.astype(jnp.float32) / m_cfg.depth_scale
                if m_cfg.depth_clip:
                    x = jnp.clip(x, 0.0, 1.0)
                x = x - 0.5
            elif jnp.issubdtype(x.dtype, jnp.integer):
                x = x.astype(jnp.float32) / 255.0 - 0.5
            elif m == "touch":
                x = x.astype(jnp.float32)
                if m_cfg.touch_scale == "div200":
                    x = x / 200.0
                elif m_cfg.touch_scale == "log1p":
                    x = jnp.log1p(jnp.maximum(x, 0.0))
            else:
                x = x.astype(jnp.float32)
            if norm is not None and m in norm:
                x = inputs.zscore(x, norm[m]["mean"], norm[m]["std"])
            out[m] = x
            out[f"{m}_flag"] = obs[f"{m}_flag"].astype(jnp.float32)
        return out

    @property
    def uses_input_stats(self) -> bool:
        """Whether `with_input_stats` has statistics to set (model.proprio_norm)."""
        return bool(self.norm_modalities)

    def with_input_stats(self, state: TrainState, episodes) -> TrainState:
        """`state` with the z-scoring statistics of `episodes` (dicts of `(L, ...)` arrays on
        the host, the prefill's random-policy episodes; CoRAL App. B) in params["obs_norm"];
        present steps only. Without model.proprio_norm it returns `state` unchanged."""
        if not self.norm_modalities:
            return state
        norm = {}
        for m in self.norm_modalities:
            x = np.concatenate([np.asarray(ep[m], np.float32) for ep in episodes])
            present = np.concatenate([np.asarray(ep[f"{m}_flag"]) for ep in episodes])
            mean, std = inputs.zscore_stats(x, present)
            norm[m] = {"mean": np.asarray(mean), "std": np.asarray(std)}
        return state.replace(params={**state.params, "obs_norm": norm})

    # ------------------------------------------------------------------ world model
    def draw_noise(self, key: jax.Array, batch: int, length: int) -> dict:
        """The standard-normal draws of one update's Gaussian samples, as data.

        Returns `{"observe": (T, 2, B', S), "imagine_state": (H, N', S),
        "imagine_action": (H, N, A)}` with N = B * T imagination starts, and B' = N' = 1
        under `model.shared_noise` (the released code's batch-shared RSSM noise; the
        actor's samples are per row either way). `update_with_noise` takes them, so a parity
        check can give both implementations the same draws.
        """
        c, nets = self.config, self.nets
        k_obs, k_state, k_action = jax.random.split(key, 3)
        n, horizon = batch * length, c.behavior.horizon
        return {
            "observe": nets.state_noise(k_obs, (length, 2), batch),
            "imagine_state": nets.state_noise(k_state, (horizon,), n),
            "imagine_action": jax.random.normal(
                k_action, (horizon, n, self.action_dim), jnp.float32
            ),
        }

    def _world_model_loss(self, wm_params, batch, noise, key, obs_norm=None):
        """World-model loss for one batch `(B, T, ...)`; `noise["observe"]` feeds the
        RSSM's samples; `obs_norm` is `params["obs_norm"]` (z-scoring), if any. Returns
        `(loss, aux)`, aux holding `post`, `prior`, `experts` (`{m: (mean, std)}`, PoE
        only), `fused` and `metrics`."""
        c = self.config
        nets = self.nets
        k_drop, k_obs, k_rep = jax.random.split(key, 3)
        # The crop's key is folded in, not split off: every other preset keeps its keys.
        k_crop = jax.random.fold_in(key, 3) if self.random_crop else None
        obs = self.preprocess(batch, k_crop, obs_norm)
        flags = {m: obs[f"{m}_flag"] for m in self.modalities}
        if c.loss.modality_drop > 0:
            flags = drop_modalities(k_drop, flags, self.modalities, c.loss.modality_drop)
        embeds = nets.encode(wm_params, obs)  # {m: (B, T, E)}
        fused, experts, k_obs = nets.fuse(wm_params, embeds, flags, k_obs)
        actions = batch["action"].astype(jnp.float32)
        is_first = batch["is_first"].astype(jnp.float32)
        post, prior = nets.observe(wm_params, fused, actions, is_first, noise["observe"])
        feat = mssm.features(post)  # (B, T, F)
        metrics = {}
        kl_loss, kl_value = losses.kl_loss(
            post["mean"],
            post["std"],
            prior["mean"],
            prior["std"],
            free_nats=c.loss.free_nats,
            mode=c.loss.kl_mode,
            balance=c.loss.kl_balance,
        )
        kl_loss = c.loss.kl_scale * kl_loss
        reward_pred = nets.reward(wm_params, feat)
        reward_loss = losses.reward_loss(reward_pred, batch["reward"].astype(jnp.float32))
        total = kl_loss + c.loss.reward_scale * reward_loss
        metrics.update({"wm/kl": kl_value, "wm/kl_loss": kl_loss, "wm/reward": reward_loss})
        ctx = objectives.LossContext(
            params=wm_params, wm=nets, obs=obs, flags=flags, embeds=embeds, fused=fused,
            experts=experts, post=post, prior=prior, feat=feat, config=c, key=k_rep,
            weights={**self.weights, "fused": self.weights_fused},
        )  # fmt: skip
        rep_loss, rep_metrics = self._representation_loss(ctx)
        total = total + rep_loss
        metrics.update(rep_metrics)
        metrics["wm/loss"] = total
        metrics["wm/prior_entropy"] = jnp.mean(dist.entropy(prior["std"]))
        metrics["wm/post_entropy"] = jnp.mean(dist.entropy(post["std"]))
        aux = {"post": post, "prior": prior, "experts": experts, "fused": fused}
        return total, {**aux, "metrics": metrics}

    def _representation_loss(self, ctx: objectives.LossContext):
        """Sum over modalities of lambda^m * L_rep^m (MuMMI eq. 17, and the baselines): each
        chosen objective's weighted term, in registry order (objectives.py)."""
        total, metrics = 0.0, {}
        for name, modalities in objectives.groups(self.rep).items():
            loss, m = self.nets.objectives[name].loss(ctx, modalities)
            total = total + loss
            metrics.update(m)
        return total, metrics

    # ------------------------------------------------------------------ behaviour
    def _actor_sample(self, actor_params, feat, key):
        raw = self.nets.actor.apply(actor_params, feat)
        return dist.actor_distribution(raw).sample(key)

    def _actor_sample_from_noise(self, actor_params, feat, noise):
        raw = self.nets.actor.apply(actor_params, feat)
        return dist.actor_distribution(raw).sample_from_noise(noise)

    def _img_step(self, wm_params):
        """Prior step drawing its own noise from a key (acting, MPC)."""

        def step(state, action, key):
            noise = self.nets.state_noise(key, (), action.shape[0])
            return self.nets.img_step(wm_params, state, action, noise)

        return step

    def _img_step_from_noise(self, wm_params):
        return lambda state, action, noise: self.nets.img_step(wm_params, state, action, noise)

    def _reward_fn(self, wm_params):
        return lambda feat: self.nets.reward(wm_params, feat)

    def _value_fn(self, value_params, feat):
        return self.nets.value.apply(value_params, feat)[..., 0]

    def _imagination_grads(self, params, targets, post, noise, key):
        """Actor and value gradients from imagined rollouts of every posterior state (MuMMI
        app. A); `noise["imagine_action"]`, `noise["imagine_state"]` feed the actor's and
        the dynamics' samples; `targets` is `TrainState.targets` (the slow value, if any).
        Returns `(grads, metrics, aux)`, grads keyed `"actor"`, `"value"`, aux holding the
        imagined `feats` `(H, N, F)` (`(H + 1, N, F)`, the start first, under
        `behavior.actor_objective=sum`)."""
        b = self.config.behavior
        wm = jax.lax.stop_gradient(params["wm"])
        starts = behavior.flatten_starts(jax.lax.stop_gradient(post))
        inputs = (noise["imagine_action"], noise["imagine_state"])

        def loss(actor_params, value_params):
            policy = functools.partial(self._actor_sample_from_noise, actor_params)
            # Eq. 18 sums V_lambda from the start state on; the released code starts at s_1.
            eq18 = b.actor_objective == "sum"
            states, _ = behavior.imagine(
                self._img_step_from_noise(wm), policy, starts, inputs, include_start=eq18
            )
            feats = behavior.features(states)  # (H, N, F), or (H + 1, N, F) with the start
            entropy = None
            if b.actor_entropy > 0:
                raw = self.nets.actor.apply(actor_params, jax.lax.stop_gradient(feats))
                entropy = dist.actor_distribution(raw).entropy(key)
            a_loss, v_loss, metrics = behavior.actor_value_losses(
                feats,
                value_params,
                self._reward_fn(wm),
                self._value_fn,
                gamma=b.gamma,
                lam=b.lam,
                slow_value_params=targets.get("value"),
                entropy=entropy,
                entropy_coef=b.actor_entropy,
                discount_weighted=not eq18,
            )
            metrics = {**metrics, "actor/loss": a_loss, "value/loss": v_loss}
            return a_loss + v_loss, (metrics, feats)

        grad_fn = jax.grad(loss, argnums=(0, 1), has_aux=True)
        (g_actor, g_value), (metrics, feats) = grad_fn(params["actor"], params["value"])
        metrics = {**metrics, **self._actor_spread(params["actor"], starts)}
        return {"actor": g_actor, "value": g_value}, metrics, {"feats": feats}

    def _actor_spread(self, actor_params, starts) -> dict:
        """Metrics of the actor's tanh-normal on the first `ACTOR_PROBE_ROWS` imagination
        starts: `actor/std`, the median pre-tanh std (5 at initialisation), and
        `actor/saturated`, the share of action dimensions held at a bound
        (`TanhNormal.saturated`). An actor whose std has collapsed onto saturated means acts
        one bang-bang posture and learns little until it lets go (RESULTS.md, "Why learning
        starts late"). A slice of the starts keeps it off the update's cost."""
        probe = jax.tree.map(lambda x: jax.lax.stop_gradient(x[:ACTOR_PROBE_ROWS]), starts)
        raw = self.nets.actor.apply(actor_params, behavior.features(probe))
        d = dist.actor_distribution(raw)
        return {"actor/std": jnp.median(d.std), "actor/saturated": jnp.mean(d.saturated())}

    def _sac_grads(self, params, targets, post, batch, key):
        """CVRL's hybrid term (actor = the imagination actor) or CoRAL's model-free SAC;
        `targets["sac"]["critic"]` gives the TD targets. Returns `(grads, metrics)`, grads
        keyed `"critic"`, `"actor"` (whichever actor the term trains), `"log_alpha"`."""
        b = self.config.behavior
        model_free = b.learner == "sac"
        if model_free:  # CoRAL: deterministic features [posterior mean, h] (coral.md §2)
            feats = jnp.concatenate([post["mean"], post["deter"]], axis=-1)
        else:
            feats = mssm.features(post)
        trans = sac.make_transitions(
            jax.lax.stop_gradient(feats),
            batch["action"].astype(jnp.float32),
            batch["reward"].astype(jnp.float32),
            batch["discount"].astype(jnp.float32),
            pairing=b.sac_pairing,
            is_first=batch["is_first"],
        )
        actor_net = self.nets.sac_actor if model_free else self.nets.actor
        # CoRAL's actor std (behavior.sac_init_std / sac_min_std); the hybrid term's actor is
        # the imagination actor, with Dreamer's.
        std = self._sac_std if model_free else {}

        def policy_fn(actor_params, obs, k):
            d = dist.actor_distribution(actor_net.apply(actor_params, obs), **std)
            return d.sample_and_log_prob(k)

        def q_fn(critic_params, obs, action):
            # (M, 2) -> (2, M): sac.py takes an ensemble-major Q.
            return jnp.moveaxis(self.nets.sac_critic.apply(critic_params, obs, action), -1, 0)

        sac_params = {
            "critic": params["sac"]["critic"],
            "actor": params["sac"]["actor"] if model_free else params["actor"],
            "log_alpha": params["sac"]["log_alpha"],
        }

        def total(p):
            parts, metrics = sac.sac_losses(
                p,
                targets["sac"]["critic"],
                trans,
                key,
                q_fn=q_fn,
                policy_fn=policy_fn,
                action_dim=self.action_dim,
                gamma=b.gamma,
                actor_grad=b.sac_actor_grad,
                learn_alpha=b.sac_actor_grad,
            )
            weight = 1.0 if model_free else b.sac_weight
            loss = parts["critic"] + weight * parts["actor"] + parts["alpha"]
            return loss, metrics

        grads, metrics = jax.grad(total, has_aux=True)(sac_params)
        return grads, metrics

    @property
    def _sac_std(self) -> dict:
        """`actor_distribution` std options of the model-free SAC actor (coral.md §4.1)."""
        b = self.config.behavior
        return {"init_std": b.sac_init_std, "min_std": b.sac_min_std}

    # ------------------------------------------------------------------ the train step
    def _gradients(self, params, targets, batch, noise, key):
        """Every network's gradient for one batch `(B, T, ...)`, from one parameter
        snapshot (reference-code.md §5.3). Returns `(grads, metrics, aux)`: grads nested
        like the trained part of `params` (`self.optimizers`' layout; metrics
        `grad_norm/<path>`, e.g. `grad_norm/sac/critic`), aux the world model's and
        imagination's intermediate values (see `_world_model_loss`, `_imagination_grads`),
        which the update discards."""
        k_wm, k_beh, k_sac = jax.random.split(key, 3)
        (_, aux), g_wm = jax.value_and_grad(self._world_model_loss, has_aux=True)(
            params["wm"], batch, noise, k_wm, params.get("obs_norm")
        )
        metrics = aux.pop("metrics")
        post = aux["post"]
        grads = {"wm": g_wm}
        if self._uses_imagination:
            g, m, imag = self._imagination_grads(params, targets, post, noise, k_beh)
            grads.update(g)
            metrics.update(m)
            aux["imagine"] = imag
        if self._uses_sac:
            g, m = self._sac_grads(params, targets, post, batch, k_sac)
            metrics.update(m)
            grads["sac"] = {"critic": g["critic"], "log_alpha": g["log_alpha"]}
            if "actor" in self.optimizers["sac"]:  # its own optimiser (`_make_optimizers`)
                grads["sac"]["actor"] = g["actor"]
            else:  # CVRL hybrid: the SAC actor term trains the imagination actor too
                grads["actor"] = jax.tree.map(jnp.add, grads["actor"], g["actor"])
        for path in optimizer_paths(self.optimizers):
            if has_path(grads, path):
                metrics["grad_norm/" + "/".join(path)] = optax.tree.norm(get_path(grads, path))
        return grads, metrics, aux

    def inspect_update(
        self, state: TrainState, batch: dict, noise: dict
    ) -> tuple[dict, dict, dict]:
        """`(grads, metrics, aux)` of the update `state` would make on one batch `(B, T, ...)`
        with the given sampling `noise` (`draw_noise`'s layout); nothing is applied. For
        parity checks and debugging: it runs the train step's own gradient code."""
        if not hasattr(self, "_inspect_jit"):
            self._inspect_jit = prng.jit(self._gradients)
        self.check_batch(batch, leading=2)
        _, _, key = jax.random.split(state.key, 3)
        return self._inspect_jit(state.params, state.targets, batch, noise, key)

    def update_with_noise(self, state: TrainState, batch, noise, key) -> tuple[TrainState, dict]:
        """One update on one batch `(B, T, ...)` with the given sampling `noise`
        (`draw_noise`'s layout); `key` feeds the rest (modality drops, SAC). Pure; the
        train step scans it, and a parity check calls it with shared noise."""
        params, targets, opt_state = state.params, state.targets, state.opt_state
        grads, metrics, _ = self._gradients(params, targets, batch, noise, key)
        for path in optimizer_paths(self.optimizers):
            if not has_path(grads, path):  # e.g. a planner's actor-critic without a learner
                continue
            # Both of CVRL's actor optimizers read the same snapshot's gradients; applied one
            # after the other, their steps add (Adam and the clip ignore `online`).
            online = get_path(params, self.param_path(path))
            updates, new = get_path(self.optimizers, path).update(
                get_path(grads, path), get_path(opt_state, path), online
            )
            opt_state = set_path(opt_state, path, new)
            params = set_path(params, self.param_path(path), optax.apply_updates(online, updates))
        # Each target towards its online network as updated (sac.polyak_update's form).
        for path, decay in self.target_decays.items():
            moved = behavior.ema_update(get_path(targets, path), get_path(params, path), decay)
            targets = set_path(targets, path, moved)
        return TrainState(params, targets, opt_state, state.key, state.step + 1), metrics

    def _make_train_fn(self):
        def update(state: TrainState, batch):
            key, k_noise, k_update = jax.random.split(state.key, 3)
            batch_size, length = batch["reward"].shape
            noise = self.draw_noise(k_noise, batch_size, length)
            state, metrics = self.update_with_noise(state, batch, noise, k_update)
            return state.replace(key=key), metrics

        def train_fn(state: TrainState, batches):
            state, metrics = jax.lax.scan(update, state, batches)
            return state, jax.tree.map(jnp.mean, metrics)

        return train_fn

    # ------------------------------------------------------------------ acting
    def _make_act_fn(self):
        c = self.config
        b = c.behavior

        def act_fn(state: TrainState, carry, obs, key, training=True):
            # `training`: a bool scalar, traced (collection: sample + exploration noise;
            # evaluation: behavior.eval_mode), so both uses run one compiled program.
            params = state.params
            wm = params["wm"]
            k_obs, k_act, k_mpc, k_noise = jax.random.split(key, 4)
            first = obs["is_first"].astype(jnp.float32)
            keep = 1.0 - first
            # Reset: zero the latent and the previous action (reference-code.md §10 item 23).
            latent = jax.tree.map(
                lambda x: x * keep.reshape((-1,) + (1,) * (x.ndim - 1)), carry["state"]
            )
            prev_action = carry["action"] * keep[:, None]
            x = self.preprocess(obs, norm=params.get("obs_norm"))  # centre crop, if any
            flags = {m: x[f"{m}_flag"] for m in self.modalities}
            embeds = self.nets.encode(wm, x)
            k_fuse, k_post = jax.random.split(k_obs)
            fused, _, _ = self.nets.fuse(wm, embeds, flags, k_fuse)
            noise = self.nets.state_noise(k_post, (2,), prev_action.shape[0])
            post = self.nets.obs_step(wm, latent, prev_action, fused, noise)
            feat = mssm.features(post)
            if b.learner == "sac":
                det = jnp.concatenate([post["mean"], post["deter"]], axis=-1)
                raw = self.nets.sac_actor.apply(params["sac"]["actor"], det)
                d = dist.actor_distribution(raw, **self._sac_std)
            else:
                d = dist.actor_distribution(self.nets.actor.apply(params["actor"], feat))
            # Collection samples; evaluation acts as `behavior.eval_mode` says (CoRAL evaluates
            # tanh(mean), coral.md §5.4; Dreamer the mode).
            action = d.sample(k_act)
            if b.eval_mode == "mean":
                action = jnp.where(training, action, d.deterministic())
            elif b.eval_mode != "sample":
                action = jnp.where(training, action, d.mode(k_act))
            if b.planner == "latent_mpc":
                # MPC starts from an actor sample of its own in training and evaluation
                # (reference §5.4), or from the action above where eval_mode is not "sample".
                action = mpc.plan(
                    self._img_step(wm),
                    functools.partial(self._actor_sample, params["actor"]),
                    self._reward_fn(wm),
                    functools.partial(self._value_fn, params["value"]),
                    post,
                    k_mpc,
                    horizon=b.mpc_horizon,
                    iters=b.mpc_iters,
                    lr=b.mpc_lr,
                    gamma=b.gamma,
                    lam=b.lam,
                    first_action_only=b.mpc_first_action_only,
                    first_action=None if b.eval_mode == "sample" else action,
                    objective=b.mpc_objective,
                )
            if b.expl_noise > 0:  # none on CoRAL's SAC samples (coral.md §4.1)
                noise = b.expl_noise * jax.random.normal(k_noise, action.shape)
                action = action + jnp.where(training, noise, 0.0)
            action = jnp.clip(action, -1.0, 1.0)
            return action, {"state": post, "action": action}

        return act_fn

    # ------------------------------------------------------------------ introspection
    def expert_posteriors(self, state: TrainState, obs: dict) -> dict:
        """Each modality's expert q(s^f | x^m) for a batch of single observations (MuMMI
        eq. 11; what Fig. 1/19/20 plot). PoE fusion only.

        Args:
          state: a `TrainState` (only `params["wm"]` is read).
          obs: raw observations `{m: (N, *shape)}` in the environment's dtypes; flags are
            not needed (an expert's output does not depend on its presence).
        Returns:
          `{m: (mean, std)}` in the task's modality order, NumPy arrays `(N, fused)` each.
        """
        if not self.nets.poe:
            raise ValueError(
                f"expert_posteriors needs model.fusion='poe'; {self.config.method} uses "
                f"{self.config.model.fusion!r}, which has no per-modality experts"
            )
        if not hasattr(self, "_experts_jit"):

            def experts(wm, raw):
                x = self.preprocess(raw)
                return self.nets.experts(wm, self.nets.encode(wm, x))

            self._experts_jit = prng.jit(experts)
        raw = {}
        for m in self.modalities:
            raw[m] = np.asarray(obs[m])
            raw[f"{m}_flag"] = np.ones(raw[m].shape[:1], np.float32)
        out = self._experts_jit(state.params["wm"], raw)
        # jit returns dicts with sorted keys; keep the task's modality order.
        return {m: (np.asarray(out[m][0]), np.asarray(out[m][1])) for m in self.modalities}

    def param_counts(self, state: TrainState) -> dict[str, int]:
        count = lambda t: int(sum(np.prod(x.shape) for x in jax.tree.leaves(t)))
        return {k: count(v) for k, v in state.params.items()}
