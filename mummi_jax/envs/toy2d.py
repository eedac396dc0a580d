"""The toy 2D robot of MuMMI Fig. 1, 19 and 20 as a `dm_env.Environment`. Pure NumPy.

A point robot in the box [-1, 1]^2 with velocity actions `a in [-1, 1]^2` (times `MAX_SPEED`
per env step, clipped to the box) and a reaching reward `exp(-2 |p - GOAL|)` in (0, 1] per
env step, summed over the action repeat. The paper gives no task for the toy robot (it only
plots latent spaces); the reward is ours, so that a world-model agent can learn in CPU minutes.

The goal is the centre of the box. It was (0.5, 0.5) before 2026-12-04, where a constant
"up and right" policy already beats random actions; tiny MuMMI then often settled on
saturated actions that pin the robot to the top wall, where the action moves nothing, so
neither the world model's nor the actor's gradient (tanh at +-1) can pull it back: 71 with
the robot at y = 1 against 42 for random on one machine, 156 on another, same seed. From
the centre a constant action scores below random (13 against 47), and seeds 0-3 all learn
(BENCHMARKS.md, "Learning check").

Tasks and modalities (each with a float32 `()` flag `<m>_flag`, 1.0 here; `MissingData` drops):

- `toy_position_camera` (Fig. 1): `position` float32 `(2,)` = (x, y) from the laser rangers,
  and `camera` uint8 `(S, S, 3)`: the ceiling camera, the robot a red disc on a grey floor,
  row 0 at y = +1 and column 0 at x = -1.
- `toy_front_back` (Fig. 19): `front` and `back` uint8 `(S, S, 3)`: a camera facing +y and one
  facing -y, each ray-casting the box walls over a 90 degree field of view. Each wall has its
  own colour, its brightness rises along the wall and it carries stripes, so the column
  pattern tells x and the wall's apparent height (1 / distance) tells y.
- `toy_xy` (Fig. 20): `x` and `y` float32 `(1,)`, independent sensors.

Every task also gives `true_position` float32 `(2,)` (not a modality: no flag, never dropped)
for latent-space plots.
"""

from __future__ import annotations

import dm_env
import numpy as np
from dm_env import specs

from mummi_jax.envs.tasks import task_modalities

TASKS = ("toy_front_back", "toy_position_camera", "toy_xy")
_OPTIONS = ("action_repeat", "image_size", "modalities", "seed", "time_limit")

MAX_SPEED = 0.1  # world units per env step: 20 steps to cross the box
GOAL = np.array([0.0, 0.0])  # the box's centre (module docstring)
ROBOT_RADIUS = 0.15  # ceiling camera disc, world units
FOV = np.pi / 2  # front/back cameras
WALL_HEIGHT = 0.5  # a wall at this perpendicular distance fills the image height

_FLOOR_TOP = np.array([170.0, 170.0, 170.0])  # ceiling camera's floor
_ROBOT = np.array([230.0, 30.0, 30.0])
_CEILING = np.array([40.0, 40.0, 48.0])  # what the front/back cameras see above the walls
_FLOOR = np.array([110.0, 100.0, 90.0])
# Walls: north (y = 1), south (y = -1), east (x = 1), west (x = -1).
_WALLS = np.array(
    [[230.0, 70.0, 60.0], [60.0, 100.0, 230.0], [60.0, 190.0, 80.0], [230.0, 210.0, 60.0]]
)


class Toy2D(dm_env.Environment):
    """One toy task; see the module docstring. `time_limit` counts env steps."""

    def __init__(self, name, seed, modalities, image_size, action_repeat, time_limit):
        self.name = name
        self.modalities = tuple(modalities)
        self.image_size = s = int(image_size)
        self.action_repeat = int(action_repeat)
        self.time_limit = int(time_limit)
        self._rng = np.random.default_rng(seed)
        self._pos = np.zeros(2)
        self._steps = 0
        self._needs_reset = True

        # Pixel centres of the ceiling camera in world coordinates.
        centres = -1.0 + (np.arange(s) + 0.5) * 2.0 / s
        self._px, self._py = centres[None, :], centres[::-1, None]  # (1, S), (S, 1)
        # Column angles of the front/back cameras (never exactly 0, so no ray is parallel).
        theta = -FOV / 2 + (np.arange(s) + 0.5) * FOV / s
        self._sin, self._cos = np.sin(theta), np.cos(theta)

        image = specs.BoundedArray((s, s, 3), np.uint8, 0, 255)
        unit = dict(dtype=np.float32, minimum=-1.0, maximum=1.0)
        all_specs = {
            "position": specs.BoundedArray((2,), name="position", **unit),
            "camera": image.replace(name="camera"),
            "front": image.replace(name="front"),
            "back": image.replace(name="back"),
            "x": specs.BoundedArray((1,), name="x", **unit),
            "y": specs.BoundedArray((1,), name="y", **unit),
        }
        self._obs_spec = {}
        for m in self.modalities:
            self._obs_spec[m] = all_specs[m]
            self._obs_spec[f"{m}_flag"] = specs.BoundedArray((), np.float32, 0.0, 1.0, f"{m}_flag")
        self._obs_spec["true_position"] = specs.BoundedArray((2,), name="true_position", **unit)
        self._action_spec = specs.BoundedArray((2,), np.float32, -1.0, 1.0, name="action")

    @property
    def episode_length(self) -> int:
        """Agent steps per episode (observations: one more, the reset)."""
        return -(-self.time_limit // self.action_repeat)

    @property
    def position(self) -> np.ndarray:
        return self._pos.copy()

    def reseed(self, seed: int) -> None:
        """Re-seeds the initial-position stream (the runner's per-episode seeding)."""
        self._rng = np.random.default_rng(seed)

    def observation_spec(self):
        return dict(self._obs_spec)

    def action_spec(self):
        return self._action_spec

    def reset(self) -> dm_env.TimeStep:
        self._pos = self._rng.uniform(-1.0, 1.0, 2)
        self._steps = 0
        self._needs_reset = False
        return dm_env.restart(self._observe())

    def step(self, action) -> dm_env.TimeStep:
        if self._needs_reset:
            return self.reset()
        velocity = np.clip(np.asarray(action, np.float64).reshape(2), -1.0, 1.0) * MAX_SPEED
        n = min(self.action_repeat, self.time_limit - self._steps)
        reward = 0.0
        for _ in range(n):
            self._pos = np.clip(self._pos + velocity, -1.0, 1.0)
            reward += self.reward_at(self._pos)
        self._steps += n
        obs = self._observe()
        if self._steps >= self.time_limit:
            self._needs_reset = True
            return dm_env.truncation(reward, obs)  # a time limit: discount 1.0
        return dm_env.transition(reward, obs)

    @staticmethod
    def reward_at(pos) -> float:
        """Reaching reward in (0, 1]: 1 at the goal, exp(-2 d) at distance d."""
        return float(np.exp(-2.0 * np.hypot(*(np.asarray(pos) - GOAL))))

    # ------------------------------------------------------------------ rendering

    def _observe(self) -> dict:
        pos32 = self._pos.astype(np.float32)
        obs = {}
        for m in self.modalities:
            if m == "position":
                obs[m] = pos32.copy()
            elif m == "camera":
                obs[m] = self._render_top()
            elif m == "front":
                obs[m] = self._render_wall(1.0)
            elif m == "back":
                obs[m] = self._render_wall(-1.0)
            elif m == "x":
                obs[m] = pos32[:1].copy()
            else:  # "y"
                obs[m] = pos32[1:].copy()
            obs[f"{m}_flag"] = np.float32(1.0)
        obs["true_position"] = pos32
        return obs

    def _render_top(self) -> np.ndarray:
        """Ceiling camera: uint8 `(S, S, 3)`, an anti-aliased red disc at the robot."""
        dist = np.sqrt((self._px - self._pos[0]) ** 2 + (self._py - self._pos[1]) ** 2)
        pixel = 2.0 / self.image_size
        alpha = np.clip((ROBOT_RADIUS - dist) / pixel + 0.5, 0.0, 1.0)[..., None]
        return (_FLOOR_TOP + alpha * (_ROBOT - _FLOOR_TOP)).astype(np.uint8)

    def _render_wall(self, facing: float) -> np.ndarray:
        """Front (`facing` = +1, towards +y) or back (-1) camera: uint8 `(S, S, 3)`.

        One ray per column: the first wall hit gives the column's colour (wall colour times a
        brightness rising along the wall, with stripes) and its height (WALL_HEIGHT * S over
        the perpendicular distance, so nearer walls look taller).
        """
        # Image right is +x for the camera facing +y and -x for the one facing -y.
        dx, dy = facing * self._sin, facing * self._cos  # (S,) each
        x, y = self._pos
        tx = (np.sign(dx) - x) / dx  # distance along the ray to the east/west wall
        ty = (np.sign(dy) - y) / dy  # ... to the north/south wall
        vertical = ty <= tx  # hits the north or south wall first
        t = np.minimum(tx, ty)
        wall = np.where(vertical, np.where(dy > 0, 0, 1), np.where(dx > 0, 2, 3))
        along = np.clip(np.where(vertical, x + t * dx, y + t * dy), -1.0, 1.0)
        shade = (0.45 + 0.275 * (along + 1.0)) * (0.8 + 0.2 * np.cos(6 * np.pi * along))
        colour = _WALLS[wall] * shade[:, None]  # (S, 3)
        perp = np.maximum(t * self._cos, 1e-3)
        half = 0.5 * WALL_HEIGHT * self.image_size / perp  # (S,) half height in pixels
        rows = np.arange(self.image_size)[:, None] + 0.5 - self.image_size / 2  # (S, 1)
        img = np.where((rows < 0)[..., None], _CEILING, _FLOOR)  # (S, 1, 3)
        img = np.where((np.abs(rows) < half[None, :])[..., None], colour[None], img)
        return img.astype(np.uint8)


def make(
    name: str,
    seed: int = 0,
    image_size: int = 32,
    action_repeat: int = 1,
    time_limit: int = 100,
    modalities=(),
    **unknown,
) -> dm_env.Environment:
    """Builds a toy 2D robot task (MuMMI Fig. 1, 19, 20). `time_limit` counts env steps."""
    if unknown:
        raise ValueError(
            f"unknown toy2d option(s) {', '.join(sorted(unknown))}; valid: {', '.join(_OPTIONS)}"
        )
    if name not in TASKS:
        raise ValueError(f"unknown toy task {name!r}; valid tasks: {', '.join(TASKS)}")
    modalities = task_modalities(name, tuple(modalities))
    for key, value, low in (
        ("image_size", image_size, 4),
        ("action_repeat", action_repeat, 1),
        ("time_limit", time_limit, 1),
    ):
        if int(value) < low:
            raise ValueError(f"{key} must be >= {low}, got {value}")
    return Toy2D(name, seed, modalities, image_size, action_repeat, time_limit)
