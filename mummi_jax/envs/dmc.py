"""Multi-modal Natural MuJoCo (MuMMI Sec. V; CVRL Sec. 4) on dm_control.

Observation per agent step (docs/ARCHITECTURE.md "Environment observations"):

- `image` uint8 `(S, S, 3)`: RGB composited over a moving natural background;
- `depth` float32 `(S, S, 1)`: metric depth (m) from the same camera, with no background
  ("backgrounds assumed far", MuMMI Sec. V);
- `touch` float32 `(k,)`: raw touch sensor values (N), walker foot soles (2), finger
  fingertip (2, dm_control's log1p), cup inside (1), cheetah feet (2), quadruped toes (4);
- `proprio` float32 `(d,)`: dm_control's state observations flattened (optional), or with
  `proprio="partial"` CoRAL's robot-only slices of them (`tasks.PARTIAL_PROPRIO`);
- `<m>_flag` float32 `()`: 1.0 here; `missing.MissingData` zeroes values and flags.

Touch sensors are injected into the suite's own XML at load time (environments.md §1); no
suite file is copied. Rendering does one `mjv_updateScene`, one render that reads RGB and
depth together, and one cheap segmentation pass for exact compositing (environments.md §2).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before the first dm_control/mujoco import

import dm_env  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from dm_control import suite  # noqa: E402
from dm_control.mujoco import engine  # noqa: E402
from dm_env import specs  # noqa: E402
from lxml import etree  # noqa: E402

from mummi_jax.envs import backgrounds as bg  # noqa: E402
from mummi_jax.envs.tasks import (  # noqa: E402
    PARTIAL_PROPRIO,
    default_touch_site,
    task_info,
    task_modalities,
)

# task -> (dm_control domain, dm_control task)
TASKS = {
    "walker_run": ("walker", "run"),
    "walker_walk": ("walker", "walk"),
    "walker_stand": ("walker", "stand"),
    "finger_spin": ("finger", "spin"),
    "cup_catch": ("ball_in_cup", "catch"),
    "cheetah_run": ("cheetah", "run"),
    "quadruped_walk": ("quadruped", "walk"),
    "cartpole_balance": ("cartpole", "balance"),
    "cartpole_swingup": ("cartpole", "swingup"),
    "reacher_easy": ("reacher", "easy"),
    "pendulum_swingup": ("pendulum", "swingup"),
}
# MuMMI's camera 0 for cup is the low, level view, which is upstream's cam1; the released
# code uses camera 2 for quadruped (reference-code.md §6.1/§6.2, environments.md §1.1).
DEFAULT_CAMERA = {"ball_in_cup": 1, "quadruped": 2}
COMPOSITES = ("segmentation", "red_threshold")

# Our own site geometry (MuJoCo site attributes), in the named body's frame. group 4 is not
# drawn by default, and rgba alpha 0 keeps it out of every render pass, so RGB is unchanged.
# walker: the foot capsule lies along x (radius .05, half-length .1) at the body origin.
# "sole" is the released code's site (reference-code.md 6.2: an ellipsoid .15 x .05 x .02,
# 1 cm forward and 6 cm down, straddling the capsule's underside); "sole_box" the box under
# the sole this package used before 2026-12-06 (the CPU grid's walker runs keep it); "foot"
# the whole capsule (radius +1 cm).
_WALKER_SITES = {
    "sole": dict(type="ellipsoid", pos="0.01 0 -0.06", size="0.15 0.05 0.02"),
    "sole_box": dict(type="box", pos="0 0 -0.045", size="0.11 0.06 0.02"),
    "foot": dict(type="capsule", zaxis="1 0 0", size="0.06 0.1"),
}
# cup: the bottom capsule's top surface is at z = -0.1 + 0.008; "bottom" is a thin disc
# sitting on it, "interior" the whole inner volume, which also catches side-wall hits.
_CUP_SITES = {
    "bottom": dict(type="ellipsoid", pos="0 0 -0.092", size="0.03 0.01 0.005"),
    "interior": dict(type="box", pos="0 0 -0.05", size="0.062 0.02 0.06"),
}
# cheetah: "foot" is the released code's site (reference-code.md 6.2: a sphere of radius
# .084 at each foot's tip); "foot_capsule" each foot capsule enlarged by 1.4 cm, same placement
# as the geom (this package's site before 2026-12-06).
_CHEETAH_SITES = {
    "foot": {
        "bfoot": dict(type="sphere", pos=".06 0 -.197", size="0.084"),
        "ffoot": dict(type="sphere", pos=".09 0 -.14", size="0.084"),
    },
    "foot_capsule": {
        "bfoot": dict(type="capsule", pos=".03 0 -.097", euler="0 -15 0", size="0.06 .094"),
        "ffoot": dict(type="capsule", pos=".045 0 -.07", euler="0 -34 0", size="0.06 .07"),
    },
}
_QUADRUPED_TOES = ("toe_front_left", "toe_front_right", "toe_back_right", "toe_back_left")
_OPTIONS = (
    "modalities",
    "image_size",
    "action_repeat",
    "time_limit",
    "background",
    "background_split",
    "composite",
    "touch_site",
    "fast_render",
    "camera_id",
    "proprio",
)
PROPRIO_SETS = ("full", "partial")
_BACKGROUND_GEOMS = ("floor", "ground")  # + reacher's arena walls (names "wall*")


def _model_xml(domain: str):
    """The suite's own (xml_string, assets), exactly as its factories load them."""
    module = getattr(suite, domain)
    if domain == "quadruped":
        floor = module._DEFAULT_TIME_LIMIT * module._WALK_SPEED
        return module.make_model(floor_size=floor), module.common.ASSETS
    return module.get_model_and_assets()


def _add_touch(root, body: str, name: str, attrs: dict) -> str:
    (node,) = root.xpath(f"//body[@name='{body}']")
    etree.SubElement(node, "site", name=name, group="4", rgba="0 0 0 0", **attrs)
    return name


def _sensor_section(root):
    section = root.find("sensor")
    if section is None:
        section = etree.SubElement(root, "sensor")
    return section


def inject_touch(domain: str, xml: str, variant: str) -> tuple[str, list[str]]:
    """Returns (xml with touch sites + sensors, sensor names in observation order)."""
    if domain == "finger":  # upstream already has touchtop/touchbottom sensors
        return xml, ["touchtop", "touchbottom"]
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml)
    if domain == "walker":
        sites = [
            _add_touch(root, f"{side}_foot", f"mummi_{side}_sole", _WALKER_SITES[variant])
            for side in ("left", "right")
        ]
    elif domain == "ball_in_cup":
        sites = [_add_touch(root, "cup", "mummi_cup_touch", _CUP_SITES[variant])]
    elif domain == "cheetah":
        sites = [
            _add_touch(root, b, f"mummi_{b}_touch", a) for b, a in _CHEETAH_SITES[variant].items()
        ]
    elif domain == "quadruped":
        sites = list(_QUADRUPED_TOES)  # upstream toe sites (spheres r=.084, group 4)
    else:
        raise ValueError(f"domain {domain!r} has no touch modality")
    section = _sensor_section(root)
    names = []
    for site in sites:
        names.append(f"mummi_touch_{site}")
        etree.SubElement(section, "touch", name=names[-1], site=site)
    return etree.tostring(root, encoding="unicode"), names


def _apply_render_settings(model, size: int, fast: bool) -> None:
    """Must run before the GL context exists: it reads these once (environments.md §6.3)."""
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
    model.vis.global_.offheight = max(model.vis.global_.offheight, size)
    if fast:
        # Visually free at 64x64 (environments.md §2.3), measured here against the defaults
        # over 80 random steps: mean |d depth/5m| <= 3e-4; mean |d rgb| of the plain scene
        # 0.1-0.2 /255 for finger and cup, 1.4 for walker (its floor reflection, which the
        # composite replaces anyway); the agent step drops from 16-22 ms to 4-6 ms. The 2048^2
        # shadow map and the tessellation (28 slices: the cup's string tendon is 28 segments
        # drawn in every pass) dominate llvmpipe's cost; 12 slices moved depth edges more.
        model.vis.quality.shadowsize = 512
        model.vis.quality.numslices = 16
        model.vis.quality.numstacks = 10


class MultiModalCamera(engine.Camera):
    """A dm_control camera that renders RGB + depth in one pass and segmentation in another.

    `render_all()` -> rgb (S, S, 3) uint8, depth (S, S) float32 metres, foreground (S, S) bool.
    """

    def __init__(self, physics, size, camera_id, background_geoms, fast):
        super().__init__(physics, height=size, width=size, camera_id=camera_id)
        self._seg_buffer = np.empty((size, size, 3), dtype=np.uint8)
        self._background_geoms = np.asarray(sorted(background_geoms), dtype=np.int64)
        if fast:
            # The floor reflection is a full extra scene pass; floor pixels are replaced by
            # the background anyway, so it is only visible with background="none".
            self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        extent = physics.model.stat.extent
        self.near = physics.model.vis.map.znear * extent
        self.far = physics.model.vis.map.zfar * extent

    def _render_rgbd_seg(self, segmentation):
        ctx = self._physics.contexts.mujoco.ptr
        mujoco.mjr_render(self._rect, self._scene.ptr, ctx)
        mujoco.mjr_readPixels(self._rgb_buffer, self._depth_buffer, self._rect, ctx)
        if segmentation:
            flags = self._scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = 1
            flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 1
            try:
                mujoco.mjr_render(self._rect, self._scene.ptr, ctx)
                mujoco.mjr_readPixels(self._seg_buffer, None, self._rect, ctx)
            finally:
                flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = 0
                flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 0

    def render_all(self, segmentation: bool = True):
        self.update()
        with self._physics.contexts.gl.make_current() as ctx:
            ctx.call(self._render_rgbd_seg, segmentation)
        # Rows come bottom-up from OpenGL.
        rgb = self._rgb_buffer[::-1].copy()
        depth = self.near / (1.0 - self._depth_buffer[::-1] * (1.0 - self.near / self.far))
        depth = np.clip(depth, 0.0, self.far).astype(np.float32)
        foreground = None
        if segmentation:
            seg = self._seg_buffer[::-1].astype(np.int32)
            segid = seg[..., 0] + (seg[..., 1] << 8) + (seg[..., 2] << 16)  # 0 = nothing
            foreground = self._foreground_table()[segid]
        return rgb, depth, foreground

    def _foreground_table(self):
        """Lookup segid+1 -> is foreground; nothing (skybox) and background geoms are False."""
        scene = self._scene
        n = scene.ngeom
        table = np.ones(n + 1, dtype=bool)
        table[0] = False
        geoms = scene.geoms
        for i in range(n):
            g = geoms[i]
            if g.objtype == mujoco.mjtObj.mjOBJ_GEOM and g.objid in self._background_geoms:
                table[g.segid + 1] = False
        return table


def _flatten_state(observation) -> np.ndarray:
    return np.concatenate([np.asarray(v, np.float32).ravel() for v in observation.values()]).astype(
        np.float32
    )


def _partial_state(observation, slices) -> np.ndarray:
    """CoRAL's partial proprioception: `slices` of (key, start, stop), concatenated."""
    parts = [np.asarray(observation[k], np.float32).ravel()[a:b] for k, a, b in slices]
    return np.concatenate(parts).astype(np.float32)


class MultiModalDMC(dm_env.Environment):
    """dm_control task with image/depth/touch/proprio dict observations and natural video.

    Action repeat is inside (reward summed over the repeat); `time_limit` counts env (control)
    steps; the dm_control task's own limit is disabled so truncation is decided here, with
    discount 1.0 as in dm_control.
    """

    def __init__(
        self,
        name,
        seed,
        modalities,
        image_size,
        action_repeat,
        time_limit,
        background,
        background_split,
        composite,
        touch_site,
        fast_render,
        camera_id,
        proprio="full",
    ):
        domain, task = TASKS[name]
        self._proprio_slices = PARTIAL_PROPRIO[name] if proprio == "partial" else None
        self.name, self.modalities = name, tuple(modalities)
        self._repeat, self._limit = int(action_repeat), int(time_limit)
        self._size, self._composite = int(image_size), composite
        self._env = suite.load(
            domain, task, task_kwargs={"random": seed, "time_limit": float("inf")}
        )
        physics = self._env.physics
        self._touch_names = []
        if "touch" in self.modalities:
            xml, assets = _model_xml(domain)
            xml, self._touch_names = inject_touch(domain, xml, touch_site)
            if domain != "finger":
                physics.reload_from_xml_string(xml, assets)
        self._log1p_touch = domain == "finger"  # dm_control's own finger convention
        self._touch_index = [physics.model.sensor(n).adr[0] for n in self._touch_names]
        _apply_render_settings(physics.model, self._size, fast_render)
        model = physics.model
        bg_ids = {
            i
            for i in range(model.ngeom)
            if model.geom(i).name in _BACKGROUND_GEOMS or model.geom(i).name.startswith("wall")
        }
        self._camera = MultiModalCamera(physics, self._size, camera_id, bg_ids, fast_render)
        bank = bg.load_bank(background, background_split, self._size)
        self._player = None if bank is None else bg.BackgroundPlayer(bank, seed)
        self._need_image = any(m in self.modalities for m in ("image", "depth"))

        spec = self._env.action_spec()
        self._low = spec.minimum.astype(np.float64)
        self._high = spec.maximum.astype(np.float64)
        self._action_spec = specs.BoundedArray(spec.shape, np.float32, -1.0, 1.0, name="action")
        self._steps = 0
        self._needs_reset = True
        self._obs_spec = self._build_obs_spec()

    # ------------------------------------------------------------------ specs

    def _build_obs_spec(self):
        s, out = self._size, {}
        for m in self.modalities:
            if m == "image":
                out[m] = specs.BoundedArray((s, s, 3), np.uint8, 0, 255, name=m)
            elif m == "depth":
                far = np.float32(self._camera.far)
                out[m] = specs.BoundedArray((s, s, 1), np.float32, 0.0, far, name=m)
            elif m == "touch":
                k = len(self._touch_names)
                out[m] = specs.BoundedArray((k,), np.float32, 0.0, np.inf, name=m)
            elif m == "proprio":
                if self._proprio_slices is None:
                    d = sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values())
                else:
                    d = sum(b - a for _, a, b in self._proprio_slices)
                out[m] = specs.Array((d,), np.float32, name=m)
            out[f"{m}_flag"] = specs.BoundedArray((), np.float32, 0.0, 1.0, name=f"{m}_flag")
        return out

    def observation_spec(self):
        return dict(self._obs_spec)

    def action_spec(self):
        return self._action_spec

    @property
    def physics(self):
        return self._env.physics

    @property
    def episode_length(self) -> int:
        """Agent steps per episode (observations: one more, the reset)."""
        return -(-self._limit // self._repeat)

    def reseed(self, seed: int) -> None:
        """Re-seeds every random source (task initial state, background clip choice).

        The runner calls it before each episode with a seed derived from (run seed, episode
        index), so a run resumed from a checkpoint replays exactly the same episodes.
        """
        self._env.task._random = np.random.RandomState(seed)
        if self._player is not None:
            self._player.reseed(seed)

    # ------------------------------------------------------------------ stepping

    def reset(self) -> dm_env.TimeStep:
        ts = self._env.reset()
        self._steps = 0
        self._needs_reset = False
        if self._player is not None:
            self._player.reset()
        return dm_env.restart(self._observe(ts.observation))

    def step(self, action) -> dm_env.TimeStep:
        if self._needs_reset:
            return self.reset()
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        a = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        reward = 0.0
        for _ in range(self._repeat):
            ts = self._env.step(a)
            reward += ts.reward or 0.0
            self._steps += 1
            if ts.last() or self._steps >= self._limit:
                break
        if self._player is not None:
            self._player.advance()
        obs = self._observe(ts.observation)
        if ts.last():  # a task termination: dm_control's discount (0 for a terminal state)
            self._needs_reset = True
            return (
                dm_env.termination(reward, obs)
                if ts.discount == 0
                else dm_env.truncation(reward, obs, ts.discount)
            )
        if self._steps >= self._limit:
            self._needs_reset = True
            return dm_env.truncation(reward, obs)  # discount 1.0, as dm_control's time limit
        return dm_env.transition(reward, obs)

    def render_all(self):
        """rgb (S,S,3) uint8 (no background), depth (S,S) float32, foreground (S,S) bool."""
        return self._camera.render_all(segmentation=True)

    def _observe(self, state) -> dict:
        out = {}
        if self._need_image:
            use_seg = self._player is not None and self._composite == "segmentation"
            rgb, depth, fg = self._camera.render_all(segmentation=use_seg)
            if self._player is not None:
                if fg is None:
                    fg = bg.red_threshold_mask(rgb)
                rgb = bg.composite(rgb, self._player.frame(), fg)
            out["image"], out["depth"] = rgb, depth[..., None]
        if "touch" in self.modalities:
            raw = self.physics.data.sensordata[self._touch_index].astype(np.float32)
            out["touch"] = np.log1p(raw) if self._log1p_touch else raw
        if "proprio" in self.modalities:
            if self._proprio_slices is None:
                out["proprio"] = _flatten_state(state)
            else:
                out["proprio"] = _partial_state(state, self._proprio_slices)
        obs = {}
        for m in self.modalities:
            obs[m] = out[m]
            obs[f"{m}_flag"] = np.float32(1.0)
        return obs

    def close(self):
        self._env.close()


def make(
    name: str,
    seed: int = 0,
    modalities=(),
    image_size: int = 64,
    action_repeat: int = 2,
    time_limit: int = 1000,
    background="default",
    background_split: str = "train",
    composite: str = "segmentation",
    touch_site: str | None = None,
    fast_render: bool = True,
    camera_id: int | None = None,
    proprio: str = "full",
    **unknown,
) -> dm_env.Environment:
    """Builds a Multi-modal Natural MuJoCo task (MuMMI Sec. V) as a `dm_env.Environment`.

    `time_limit` is in env (control) steps: 1000 = 500 agent steps at action_repeat 2.
    `background`: "default" (offline Ken-Burns bank), "procedural", "none" or a folder path.
    `composite`: "segmentation" (exact) or "red_threshold" (released code's red > 100 key).
    `touch_site`: walker "sole" | "sole_box" | "foot", cup "bottom" | "interior", cheetah
    "foot" | "foot_capsule" (None: the first, the released code's site).
    `proprio`: "full" (every state observation) | "partial" (CoRAL Table 1's robot-only slices).
    """
    if unknown:
        valid = ", ".join(sorted(_OPTIONS))
        raise ValueError(f"unknown dmc option(s) {', '.join(sorted(unknown))}; valid: {valid}")
    if name not in TASKS:
        raise ValueError(f"unknown dmc task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    task_info(name)
    modalities = task_modalities(name, tuple(modalities))
    domain = TASKS[name][0]
    if composite not in COMPOSITES:
        raise ValueError(f"unknown composite {composite!r}; valid: {', '.join(COMPOSITES)}")
    if proprio not in PROPRIO_SETS:
        raise ValueError(f"unknown proprio {proprio!r}; valid: {', '.join(PROPRIO_SETS)}")
    if proprio == "partial" and name not in PARTIAL_PROPRIO:
        raise ValueError(f"proprio='partial' has no split for {name}; use proprio='full'")
    if background_split not in bg.SPLITS:
        raise ValueError(
            f"unknown background_split {background_split!r}; valid: {', '.join(bg.SPLITS)}"
        )
    if "touch" in modalities:
        valid = task_info(name).touch_sites
        if not valid:
            raise ValueError(f"task {name!r} has no touch modality")
        touch_site = default_touch_site(name) if touch_site is None else touch_site
        if touch_site not in valid:
            raise ValueError(
                f"unknown touch_site {touch_site!r} for {name}; valid: {', '.join(valid)}"
            )
    for key, value in (("image_size", image_size), ("action_repeat", action_repeat)):
        if int(value) < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    if int(time_limit) < 1:
        raise ValueError(f"time_limit must be >= 1 env step, got {time_limit}")
    camera_id = DEFAULT_CAMERA.get(domain, 0) if camera_id is None else int(camera_id)
    return MultiModalDMC(
        name,
        seed,
        modalities,
        image_size,
        action_repeat,
        time_limit,
        background,
        background_split,
        composite,
        touch_site,
        fast_render,
        camera_id,
        proprio,
    )
