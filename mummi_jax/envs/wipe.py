"""robosuite Table Wiping with a Franka Panda (MuMMI Sec. VI) as a `dm_env.Environment`.

Observation per agent step (docs/ARCHITECTURE.md "Environment observations"):

- `workspace` uint8 `(S, S, 3)`: RGB from robosuite's `agentview` camera;
- `eye_in_hand` uint8 `(S, S, 3)`: RGB from `robot0_eye_in_hand` (camera on the wrist);
- `proprio` float32 `(47,)`: robosuite's `robot0_proprio-state` (optional);
- `<m>_flag` float32 `()`: 1.0 here; `missing.MissingData` zeroes values and flags.

Images are right side up (robosuite renders OpenGL's bottom-up rows; we flip them here rather
than through the process-global `robosuite.macros.IMAGE_CONVENTION`).

Episode: `time_limit` env (control) steps at `control_freq` Hz, default 500 steps at 20 Hz
(25 s; MuMMI does not state its horizon or control rate, environments.md §5), `action_repeat`
default 1, so 500 agent steps. Reaching the limit is a truncation (discount 1.0, as
dm_control's time limit); robosuite's early terminations (arm touches the table, joint limit,
all markers wiped) are terminations (discount 0.0). Actions: OSC pose deltas, `(6,)` in
[-1, 1], rescaled to robosuite's action bounds.

Rendering (environments.md §4.3): `fast_render=True` turns MSAA and reflections off and
shrinks shadows to 1024, which takes a 2-camera step from 110-160 ms to 40-49 ms on the 2-core
llvmpipe machine at a mean pixel change of 3.4/255 (workspace) and 0.8/255 (eye in hand); the
offscreen buffer is `offscreen_size` square (default `image_size`). `env.render_settings`
records what was applied. `hard_reset=False` always: a hard reset rebuilds the simulator every
episode (1.3-2.5 s) and would discard these settings.

Domain randomisation (MuMMI trains Wipe "with domain randomization"): per episode, seeded,
colours (geom and material RGB moved 20 % towards a random colour), both cameras (position
+-1 cm, rotation up to 0.087 rad, fovy +-5 deg) and lights (position +-10 cm, direction,
ambient/diffuse/specular +-0.1), with robosuite's DomainRandomizationWrapper defaults.
Not that wrapper itself: its colour modder asserts mujoco == 3.1.1 and it re-randomises every
step by default. Textures are left alone (changing them needs a GL re-upload).

Seeding: robosuite 1.5.1 draws the marker path and the initial joint noise from numpy's
*global* generator, so each env keeps its own `RandomState` and swaps it in around every call
into robosuite; two envs with one seed give identical observations.

One simulator family per process: never build this in a process that renders dm_control
(environments.md §4.4); the runner's spawned workers keep them apart.
"""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before the first mujoco/robosuite import

import dm_env  # noqa: E402
import numpy as np  # noqa: E402
from dm_env import specs  # noqa: E402

from mummi_jax.envs.tasks import task_modalities  # noqa: E402

# modality -> robosuite camera name
CAMERAS = {"workspace": "agentview", "eye_in_hand": "robot0_eye_in_hand"}
DR_KINDS = ("color", "camera", "lighting")
INSTALL_HINT = (
    "the 'wipe' task needs robosuite: pip install -r requirements.txt -e . "
    "(or pip install -e .[robosuite]); robosuite==1.5.1, not 1.5.2, whose mink pin needs numpy<2"
)
_OPTIONS = (
    "modalities",
    "image_size",
    "action_repeat",
    "time_limit",
    "control_freq",
    "fast_render",
    "offscreen_size",
    "domain_randomization",
    "randomize",
    "reward_shaping",
    "early_terminations",
)


def _import_robosuite():
    """Imports robosuite and applies the mujoco compatibility patch, or says how to install."""
    try:
        import robosuite
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    from mummi_jax.envs import robosuite_compat

    robosuite_compat.apply()
    return robosuite


@contextlib.contextmanager
def _global_numpy_rng(state: np.random.RandomState):
    """Runs robosuite with `state` as numpy's global generator, then hands it back."""
    saved = np.random.get_state()
    np.random.set_state(state.get_state())
    try:
        yield
    finally:
        state.set_state(np.random.get_state())
        np.random.set_state(saved)


_HIDDEN_GROUP = 5  # a geom group robosuite never shows


def _in_view(model, data, camera_id: int, aspect: float) -> np.ndarray:
    """(ngeom,) bool: geom bounding sphere intersects the camera's view pyramid.

    MuJoCo camera frame: x right, y up, looking down -z; `cam_fovy` is the vertical angle.
    """
    rot = data.cam_xmat[camera_id].reshape(3, 3)
    v = data.geom_xpos - data.cam_xpos[camera_id]
    x, y, z = v @ rot[:, 0], v @ rot[:, 1], -(v @ rot[:, 2])
    r = model.geom_rbound
    ty = np.tan(np.deg2rad(model.cam_fovy[camera_id]) / 2.0)
    tx = ty * aspect
    kx, ky = 1.0 / np.sqrt(1.0 + tx * tx), 1.0 / np.sqrt(1.0 + ty * ty)
    # Signed distance to each side plane through the camera (outward normal) against r.
    outside = (z < -r) | ((np.abs(x) - tx * z) * kx > r) | ((np.abs(y) - ty * z) * ky > r)
    return ~outside


class _Randomizer:
    """Per-episode colour / camera / lighting randomisation of a MuJoCo model, seeded.

    Perturbations are drawn around the values saved at construction, so they never drift.
    Only RGB is touched: robosuite hides wiped markers through the alpha channel.
    """

    def __init__(self, model, kinds, camera_ids):
        self._m, self._kinds, self._cams = model, tuple(kinds), list(camera_ids)
        self._defaults = {
            k: np.array(getattr(model, k))
            for k in (
                "geom_rgba",
                "mat_rgba",
                "cam_pos",
                "cam_quat",
                "cam_fovy",
                "light_pos",
                "light_dir",
                "light_ambient",
                "light_diffuse",
                "light_specular",
            )
        }

    def randomize(self, rng: np.random.Generator) -> None:
        import mujoco

        m, d = self._m, self._defaults
        if "color" in self._kinds:
            for key in ("geom_rgba", "mat_rgba"):
                rgb = d[key][:, :3]
                target = rng.uniform(0.0, 1.0, rgb.shape)
                getattr(m, key)[:, :3] = 0.8 * rgb + 0.2 * target
        if "camera" in self._kinds:
            for i in self._cams:
                m.cam_pos[i] = d["cam_pos"][i] + rng.uniform(-0.01, 0.01, 3)
                axis = rng.normal(size=3)
                axis /= np.linalg.norm(axis)
                dq = np.zeros(4)
                mujoco.mju_axisAngle2Quat(dq, axis, rng.uniform(0.0, 0.087))
                q = np.zeros(4)
                mujoco.mju_mulQuat(q, d["cam_quat"][i], dq)
                m.cam_quat[i] = q
                m.cam_fovy[i] = d["cam_fovy"][i] + rng.uniform(-5.0, 5.0)
        if "lighting" in self._kinds:
            n = m.nlight
            m.light_pos[:] = d["light_pos"] + rng.uniform(-0.1, 0.1, (n, 3))
            direction = d["light_dir"] + rng.uniform(-0.35, 0.35, (n, 3))
            m.light_dir[:] = direction / np.linalg.norm(direction, axis=1, keepdims=True)
            for key in ("light_ambient", "light_diffuse", "light_specular"):
                getattr(m, key)[:] = np.clip(d[key] + rng.uniform(-0.1, 0.1, (n, 3)), 0.0, 1.0)


class RobosuiteWipe(dm_env.Environment):
    """robosuite `Wipe` (Panda, WipingGripper, OSC pose control) with camera dict observations."""

    def __init__(
        self,
        seed,
        modalities,
        image_size,
        action_repeat,
        time_limit,
        control_freq,
        fast_render,
        offscreen_size,
        domain_randomization,
        randomize,
        reward_shaping,
        early_terminations,
    ):
        robosuite = _import_robosuite()
        self.name, self.modalities = "wipe", tuple(modalities)
        self._size, self._repeat, self._limit = int(image_size), int(action_repeat), int(time_limit)
        self._cameras = [CAMERAS[m] for m in self.modalities if m in CAMERAS]
        self.reseed(seed)
        from robosuite.environments.manipulation.wipe import DEFAULT_WIPE_CONFIG as wipe_defaults

        kwargs = dict(
            robots="Panda",
            has_renderer=False,
            has_offscreen_renderer=bool(self._cameras),
            use_camera_obs=bool(self._cameras),
            # Marker observables are 100 sensors per step and no modality of ours.
            use_object_obs=False,
            reward_shaping=bool(reward_shaping),
            control_freq=int(control_freq),
            # The limit is ours (`time_limit`); robosuite's horizon only has to be no shorter.
            horizon=self._limit,
            ignore_done=False,
            hard_reset=False,
            # A task_config replaces robosuite's defaults whole, so start from them.
            task_config={**wipe_defaults, "early_terminations": bool(early_terminations)},
        )
        if self._cameras:
            kwargs.update(camera_names=self._cameras, camera_heights=self._size)
            kwargs.update(camera_widths=self._size, camera_depths=False)
        with _global_numpy_rng(self._np_rng):
            self._env = robosuite.make("Wipe", **kwargs)
        # robosuite's constructor already drew one marker path; start the seed afresh so that
        # `reseed(s)` + `reset()` replays exactly the first episode of a new env with seed s.
        self.reseed(seed)
        self._render_unculled = None  # the render context's own `render`, when culling
        self.render_settings = self._apply_render_settings(fast_render, offscreen_size)
        self._randomizer = None
        if domain_randomization:
            model = self._env.sim.model._model
            cam_ids = [model.camera(c).id for c in self._cameras]
            self._randomizer = _Randomizer(model, randomize, cam_ids)
        low, high = self._env.action_spec
        self._low, self._high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self._action_spec = specs.BoundedArray(low.shape, np.float32, -1.0, 1.0, name="action")
        self._obs_spec = self._build_obs_spec()
        self._steps = 0
        self._needs_reset = True

    # ------------------------------------------------------------------ setup

    def _apply_render_settings(self, fast: bool, offscreen_size) -> dict:
        """Sets the offscreen buffer, MSAA, shadows, reflections; returns what is in force.

        The render context exists already (robosuite makes it in its constructor), so its
        MuJoCo buffers are rebuilt to pick up the model's new offscreen settings.
        """
        import mujoco

        sim = self._env.sim
        model = sim.model._model
        ctx = sim._render_context_offscreen
        if ctx is not None:
            size = int(offscreen_size or self._size)
            if fast or offscreen_size:
                model.vis.global_.offwidth = model.vis.global_.offheight = size
            if fast:
                model.vis.quality.offsamples = 0
                model.vis.quality.shadowsize = 1024
            ctx.gl_ctx.make_current()
            ctx.con.free()
            ctx._set_mujoco_context_and_buffers()
            ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0 if fast else 1
        # Culling is pixel-exact only when nothing outside the view can show up in it.
        culling = bool(fast and ctx is not None and not model.light_castshadow.any())
        if culling:
            self._install_frustum_culling(ctx)
        refl = mujoco.mjtRndFlag.mjRND_REFLECTION
        reflections = ctx is not None and bool(ctx.scn.flags[refl])
        return {
            "fast_render": bool(fast),
            "msaa_samples": int(model.vis.quality.offsamples),
            "reflections": reflections,
            "shadow_size": int(model.vis.quality.shadowsize),
            "offscreen_buffer": [int(model.vis.global_.offwidth), int(model.vis.global_.offheight)],
            "image_size": self._size,
            "cameras": list(self._cameras),
            "frustum_culling": culling,
            "mujoco_gl": os.environ.get("MUJOCO_GL", ""),
            "hard_reset": False,
        }

    def _install_frustum_culling(self, ctx) -> None:
        """Hides, per camera, the visual geoms whose bounding sphere is outside its view.

        On llvmpipe the cost of a 64x64 render is vertex processing of the Panda's 341 k mesh
        vertices, all of which MuJoCo sends to GL for every camera. The wrist camera sees
        about 76 k of them, the agentview about 194 k, so hiding the rest saves 5-10 ms per
        camera. Images are bit-identical: no light casts shadows and reflections are off.
        Hidden geoms go to `_HIDDEN_GROUP` (not drawn) for the one `mjv_updateScene` of that
        render and come back right after; physics never reads `geom_group`.
        """
        model, data = self._env.sim.model._model, self._env.sim.data._data
        ctx.vopt.geomgroup[_HIDDEN_GROUP] = 0
        shown = np.asarray(ctx.vopt.geomgroup, bool)[np.clip(model.geom_group, 0, 5)]
        # rbound 0 marks unbounded geoms (planes): never culled.
        cullable = shown & (model.geom_rbound > 0)
        original = ctx.render
        self._render_unculled = original

        def render(width, height, camera_id=None, segmentation=False):
            if camera_id is None or camera_id < 0:
                return original(width, height, camera_id, segmentation)
            hide = cullable & ~_in_view(model, data, camera_id, width / height)
            saved = model.geom_group[hide].copy()
            model.geom_group[hide] = _HIDDEN_GROUP
            try:
                return original(width, height, camera_id, segmentation)
            finally:
                model.geom_group[hide] = saved

        ctx.render = render

    def _build_obs_spec(self) -> dict:
        s, out = self._size, {}
        for m in self.modalities:
            if m in CAMERAS:
                out[m] = specs.BoundedArray((s, s, 3), np.uint8, 0, 255, name=m)
            elif m == "proprio":
                d = self._proprio_dim()
                out[m] = specs.Array((d,), np.float32, name=m)
            out[f"{m}_flag"] = specs.BoundedArray((), np.float32, 0.0, 1.0, name=f"{m}_flag")
        return out

    def _proprio_dim(self) -> int:
        with _global_numpy_rng(self._np_rng):
            obs = self._env._get_observations(force_update=True)
        return int(np.asarray(obs["robot0_proprio-state"]).size)

    # ------------------------------------------------------------------ dm_env

    def observation_spec(self):
        return dict(self._obs_spec)

    def action_spec(self):
        return self._action_spec

    @property
    def episode_length(self) -> int:
        """Agent steps per episode unless terminated early (observations: one more)."""
        return -(-self._limit // self._repeat)

    @property
    def sim(self):
        return self._env.sim

    def reseed(self, seed: int) -> None:
        """Re-seeds the marker path, initial joint noise and domain randomisation."""
        ss = np.random.SeedSequence(int(seed))
        env_seq, dr_seq = ss.spawn(2)
        self._np_rng = np.random.RandomState(np.random.MT19937(env_seq))
        self._dr_rng = np.random.default_rng(dr_seq)

    def reset(self) -> dm_env.TimeStep:
        if self._randomizer is not None:
            # Before robosuite's reset, whose forward pass and render then see the new domain.
            self._randomizer.randomize(self._dr_rng)
        with _global_numpy_rng(self._np_rng):
            raw = self._env.reset()
        self._steps = 0
        self._needs_reset = False
        return dm_env.restart(self._observe(raw))

    def step(self, action) -> dm_env.TimeStep:
        if self._needs_reset:
            return self.reset()
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        a = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        reward, done = 0.0, False
        with _global_numpy_rng(self._np_rng):
            for _ in range(self._repeat):
                raw, r, done, _ = self._env.step(a)
                reward += float(r)
                self._steps += 1
                if done or self._steps >= self._limit:
                    break
            # robosuite's `done` mixes its horizon with early terminations; ask which.
            terminated = done and self._env.early_terminations and self._env._check_terminated()
        obs = self._observe(raw)
        if terminated:
            self._needs_reset = True
            return dm_env.termination(reward, obs)
        if done or self._steps >= self._limit:
            self._needs_reset = True
            return dm_env.truncation(reward, obs)
        return dm_env.transition(reward, obs)

    def _observe(self, raw) -> dict:
        obs = {}
        for m in self.modalities:
            if m in CAMERAS:
                # OpenGL rows are bottom-up; flip to right side up.
                obs[m] = np.ascontiguousarray(raw[f"{CAMERAS[m]}_image"][::-1])
            elif m == "proprio":
                obs[m] = np.asarray(raw["robot0_proprio-state"], np.float32)
            obs[f"{m}_flag"] = np.float32(1.0)
        return obs

    def close(self):
        self._env.close()


def make(
    name: str = "wipe",
    seed: int = 0,
    modalities=(),
    image_size: int = 64,
    action_repeat: int = 1,
    time_limit: int = 500,
    control_freq: int = 20,
    fast_render: bool = True,
    offscreen_size: int | None = None,
    domain_randomization: bool = False,
    randomize=DR_KINDS,
    reward_shaping: bool = True,
    early_terminations: bool = True,
    **unknown,
) -> dm_env.Environment:
    """Builds robosuite Table Wiping (MuMMI Sec. VI) as a `dm_env.Environment`.

    `time_limit` is in env (control) steps at `control_freq` Hz: 500 at 20 Hz = 25 s = 500
    agent steps at action_repeat 1. `modalities`: any of workspace, eye_in_hand, proprio
    (default: the two cameras). `domain_randomization`: per-episode randomisation of the
    kinds in `randomize` (subset of color, camera, lighting). `fast_render`: MSAA and
    reflections off; `offscreen_size`: offscreen buffer side (default `image_size`).
    Raises ImportError with the install command when robosuite is missing.
    """
    if unknown:
        valid = ", ".join(sorted(_OPTIONS))
        raise ValueError(f"unknown wipe option(s) {', '.join(sorted(unknown))}; valid: {valid}")
    if name != "wipe":
        raise ValueError(f"unknown robosuite task {name!r}; valid tasks: wipe")
    modalities = task_modalities(name, tuple(modalities))
    for key, value in (
        ("image_size", image_size),
        ("action_repeat", action_repeat),
        ("time_limit", time_limit),
        ("control_freq", control_freq),
    ):
        if int(value) < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    if offscreen_size is not None and int(offscreen_size) < int(image_size):
        raise ValueError(f"offscreen_size {offscreen_size} is smaller than image_size {image_size}")
    if isinstance(randomize, str):
        randomize = (randomize,)
    bad = [k for k in randomize if k not in DR_KINDS]
    if bad:
        raise ValueError(f"unknown randomize kind {bad[0]!r}; valid: {', '.join(DR_KINDS)}")
    return RobosuiteWipe(
        seed,
        modalities,
        image_size,
        action_repeat,
        time_limit,
        control_freq,
        fast_render,
        offscreen_size,
        domain_randomization,
        tuple(randomize),
        reward_shaping,
        early_terminations,
    )
