"""The world-model bundle the agent composes: modules per role and pure apply functions.

`build_world_model(config, shapes, action_dim, rep_losses)` returns a `WorldModel` whose
methods are pure functions of a params dict keyed by module name (so per-component
parameter counts are easy to report), used by `agent.py`:

- `encode(p, obs)` -> per-modality embeddings (MuMMI app. B Fig. 8/9; ref. §2.1);
- `fuse(p, embeds, flags, key)` -> s^f (PoE over experts q(s^f|x^m), eq. 11, or concat);
- `state_noise(key, lead, batch)` -> the standard-normal draws of the RSSM's samples;
- `observe(p, fused, actions, is_first, noise)` -> posterior and prior states over (B, T);
- `obs_step` / `img_step` for acting and imagination; `reward`;
- `apply(p, name, ...)` for the representation heads (`g`, `cvrl`, `dec_<m>`, `coral_<m>`),
  which the objectives chosen in `rep` build and initialise (`objectives.py`).

Modules live in `networks.py`; the time loop in `observe` below.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp

from mummi_jax import networks, objectives
from mummi_jax.config import Config, resolve_config_conv, resolve_head_layout
from mummi_jax.distributions import product_of_experts, sample


# ----------------------------------------------------------------------------- time loop
def features(state: dict) -> jax.Array:
    """[s^c, h]: the feature vector of heads and the actor (ref. §2.4), `(..., S + D)`."""
    return jnp.concatenate([state["stoch"], state["deter"]], axis=-1)


def initial_state(batch: int, config: Config) -> dict:
    m = config.model
    z = lambda n: jnp.zeros((batch, n), jnp.float32)
    return {"mean": z(m.stoch), "std": z(m.stoch), "stoch": z(m.stoch), "deter": z(m.deter)}


def observe(obs_step, fused, actions, is_first, noise, config):
    """Filters a batch of sequences with `lax.scan` over time (MuMMI eq. 11).

    Args:
      obs_step: `(prev_state, prev_action, fused, noise) -> (post, prior)`.
      fused: `(B, T, F)` s^f; actions: `(B, T, A)`, the action that led to obs t;
      is_first: `(B, T)`: the state and previous action are zeroed there, as the
        reference does at every episode start (and every sequence starts from zeros).
      noise: `(T, 2, B or 1, S)` standard-normal draws for the prior and posterior samples
        of each step (`WorldModel.state_noise`).
    Returns:
      `(post, prior)`, dicts of `(B, T, ...)`.
    """
    batch = fused.shape[0]
    state0 = initial_state(batch, config)
    swap = lambda x: jnp.swapaxes(x, 0, 1)

    def step(state, inputs):
        f, a, first, eps = inputs
        keep = (1.0 - first)[:, None]
        state = jax.tree.map(lambda x: x * keep, state)
        post, prior = obs_step(state, a * keep, f, eps)
        return post, (post, prior)

    # Every sequence starts from the zero state (state0), but keeps its stored action at
    # t=0, as the reference does; only a real episode start zeroes the action.
    first = is_first.astype(jnp.float32)
    _, (post, prior) = jax.lax.scan(step, state0, (swap(fused), swap(actions), swap(first), noise))
    return jax.tree.map(swap, post), jax.tree.map(swap, prior)


@dataclass
class WorldModel:
    config: Config
    shapes: dict
    action_dim: int
    rep: dict
    modules: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ build
    def __post_init__(self):
        c, m = self.config, self.config.model
        mods = {}
        # model.precision: "bfloat16" computes the image encoders/decoders and expert heads,
        # almost all the FLOPs, in bf16 (the RSSM, heads and losses stay f32);
        # "bfloat16_matmul" rounds every network's product operands (networks.precision_dtypes).
        dtype, matmul_dtype = networks.precision_dtypes(m.precision)
        self.image_modalities = [k for k in self.shapes if len(self.shapes[k]) == 3]
        # The runner hands over the form it resolved for its seeds per device; an agent built
        # directly from an `auto` config gets the one-seed rule (a no-op for xla | matmul).
        conv = resolve_config_conv(c)
        for name, shape in self.shapes.items():
            if len(shape) == 3:
                mods[f"enc_{name}"] = networks.ConvEncoder(
                    m.cnn_depth, m.cnn_layers, dtype, conv, matmul_dtype
                )
            else:
                hidden = m.proprio_hidden if name == "proprio" else m.touch_hidden
                layers = m.proprio_layers if name == "proprio" else m.touch_layers
                if name not in ("proprio", "touch"):  # toy sensors: small MLPs
                    hidden, layers = m.touch_hidden, m.touch_layers
                mods[f"enc_{name}"] = networks.MLPEncoder(hidden, layers, m.embed)
        self.poe = m.fusion == "poe"
        if self.poe:
            for name in self.shapes:
                mods[f"expert_{name}"] = networks.ExpertHead(
                    m.expert_hidden, m.fused, m.min_std, dtype, matmul_dtype
                )
        mods["rssm"] = networks.RSSMCell(
            m.stoch, m.deter, m.hidden, m.min_std, m.rssm_layers, matmul_dtype
        )
        heads = resolve_head_layout(c)
        mods["reward"] = networks.DenseHead(m.units, m.reward_layers, 1, matmul_dtype, heads)
        # Representation heads (objectives.py): heads shared over modalities first, in
        # registry order, then each modality's own, in the task's order. `init` draws their
        # keys in this order, the order they had before the registry, so seeds keep their params.
        groups = objectives.groups(self.rep)
        self.objectives = {name: objectives.OBJECTIVES[name] for name in groups}
        shared = [(n, ms) for n, ms in groups.items() if not self.objectives[n].per_modality]
        own = [(n, [x]) for x, n in self.rep.items() if self.objectives[n].per_modality]
        resolved = replace(c, model=replace(m, conv_impl=conv))
        self.heads = []  # (objective name, its modalities, its module names), in init order
        for name, modalities in shared + own:
            built = self.objectives[name].build(resolved, self.shapes, modalities)
            mods.update(built)
            self.heads.append((name, modalities, list(built)))
        self.modules = mods
        self.feat_size = m.stoch + m.deter
        self.actor = networks.DenseHead(
            m.units, m.actor_layers, 2 * self.action_dim, matmul_dtype, heads
        )
        self.value = networks.DenseHead(m.units, m.value_layers, 1, matmul_dtype, heads)
        b = c.behavior
        self.sac_actor = networks.DenseHead(
            b.sac_hidden, b.sac_layers, 2 * self.action_dim, matmul_dtype
        )
        self.sac_critic = networks.TwinQ(b.sac_hidden, b.sac_layers, matmul_dtype)

    def init(self, key: jax.Array) -> dict:
        """Parameters of every world-model module, keyed by module name."""
        m = self.config.model
        keys = iter(jax.random.split(key, len(self.modules) + 1))
        params = {}
        embeds = {}
        for name, shape in self.shapes.items():
            x = jnp.zeros((1,) + tuple(shape))
            params[f"enc_{name}"] = self.modules[f"enc_{name}"].init(next(keys), x)
            embeds[name] = self.modules[f"enc_{name}"].apply(params[f"enc_{name}"], x)
            if self.poe:
                params[f"expert_{name}"] = self.modules[f"expert_{name}"].init(
                    next(keys), embeds[name]
                )
        fused_size = m.fused if self.poe else sum(e.shape[-1] for e in embeds.values())
        state = initial_state(1, self.config)
        action = jnp.zeros((1, self.action_dim))
        fused = jnp.zeros((1, fused_size))
        params["rssm"] = self.modules["rssm"].init(
            next(keys), state, action, fused, jnp.zeros((2, 1, m.stoch)), method="obs_step"
        )
        feat = jnp.zeros((1, self.feat_size))
        params["reward"] = self.modules["reward"].init(next(keys), feat)
        for objective, modalities, names in self.heads:
            heads = {name: self.modules[name] for name in names}
            head_keys = {name: next(keys) for name in names}
            head_embeds = {x: embeds[x] for x in modalities}
            params.update(self.objectives[objective].init(heads, head_keys, head_embeds, feat))
        return params

    # ------------------------------------------------------------------ pure functions
    def encode(self, p: dict, obs: dict) -> dict:
        """Per-modality embeddings `(..., E)` of preprocessed observations `(..., *shape)`."""
        return {m: self.modules[f"enc_{m}"].apply(p[f"enc_{m}"], obs[m]) for m in self.shapes}

    def experts(self, p: dict, embeds: dict) -> dict:
        """q(s^f | x^m) per modality: `{m: (mean, std)}`, each `(..., fused)`."""
        return {m: self.modules[f"expert_{m}"].apply(p[f"expert_{m}"], embeds[m]) for m in embeds}

    def fuse(self, p: dict, embeds: dict, flags: dict, key: jax.Array):
        """s^f and the experts. PoE drops missing experts by flag (MuMMI eq. 11); concat
        ignores the flags and feeds every embedding, a missing modality's being the encoding
        of its blanked observation (zeros in raw space: -0.5 for images and depth after
        `preprocess`), as the released Dreamer and CVRL do (reference-code.md; MuMMI Sec. V)."""
        m_cfg = self.config.model
        names = list(self.shapes)
        if not self.poe:
            return jnp.concatenate([embeds[m] for m in names], axis=-1), {}, key
        experts = self.experts(p, embeds)
        mean, std = self.product(experts, flags)
        if m_cfg.poe == "reference":
            fused = mean  # the released code feeds the fused mean deterministically
        else:
            key, sub = jax.random.split(key)
            fused = sample(sub, mean, std)
        return fused, experts, key

    def product(self, experts: dict, flags: dict) -> tuple[jax.Array, jax.Array]:
        """The PoE of the present experts (MuMMI eq. 11), `(mean, std)` each `(B, T, F)`:
        `experts` `{m: (mean, std)}` from `experts()`, `flags` `{m: (B, T)}`. MuMMI-b's
        density ratio reads this mean whether or not s^f is sampled from it."""
        m_cfg = self.config.model
        names = list(self.shapes)
        means = jnp.stack([experts[m][0] for m in names])
        stds = jnp.stack([experts[m][1] for m in names])
        present = jnp.stack([flags[m] for m in names])
        return product_of_experts(
            means, stds, present, form=m_cfg.poe, prior_expert=m_cfg.poe_prior_expert
        )

    def state_noise(self, key: jax.Array, lead: tuple, batch: int) -> jax.Array:
        """Standard-normal noise for RSSM samples, `(*lead, batch, S)`.

        With `model.shared_noise` it is `(*lead, 1, S)`: the released code's sampler
        (`_mnd_sample` in its tools) draws one vector per call and broadcasts it over the
        batch, so every row of a batch gets the same noise at a given step, in the observe
        scan and in imagination (reference-parity.md, "Shared noise").
        """
        rows = 1 if self.config.model.shared_noise else batch
        return jax.random.normal(key, (*lead, rows, self.config.model.stoch), jnp.float32)

    def observe(self, p, fused, actions, is_first, noise):
        """Posterior and prior over `(B, T)`; `noise` `(T, 2, B or 1, S)` (`state_noise`)."""
        cell = self.modules["rssm"]
        return observe(
            lambda *a: cell.apply(p["rssm"], *a, method="obs_step"),
            fused,
            actions,
            is_first,
            noise,
            self.config,
        )

    def obs_step(self, p, state, prev_action, fused, noise):
        """One filter step; `noise` `(2, n or 1, S)`."""
        post, _ = self.modules["rssm"].apply(
            p["rssm"], state, prev_action, fused, noise, method="obs_step"
        )
        return post

    def img_step(self, p, state, action, noise):
        """One prior step; `noise` `(n or 1, S)`."""
        return self.modules["rssm"].apply(p["rssm"], state, action, noise, method="img_step")

    def reward(self, p, feat):
        return self.modules["reward"].apply(p["reward"], feat)[..., 0]

    def apply(self, p, name, *args, **kwargs):
        """Applies module `name` (a representation head: `g`, `cvrl`, `dec_<m>`, ...)."""
        return self.modules[name].apply(p[name], *args, **kwargs)


def build_world_model(config: Config, shapes: dict, action_dim: int, rep: dict) -> WorldModel:
    """`shapes`: `{modality: observation shape}`; `rep`: `{modality: loss name}`."""
    return WorldModel(config, dict(shapes), action_dim, dict(rep))
