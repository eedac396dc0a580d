"""The task table: names, suites and default modalities, with no simulator imports.

`config.py` and the launchers read this table to validate names early; `envs.make`
builds the environment. Modality names are the observation dict keys; each modality
`m` also has a presence flag `m_flag` in the observation (1 = observed, 0 = missing).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskInfo:
    suite: str  # "dmc" | "toy" | "robosuite"
    modalities: tuple[str, ...]  # default modalities
    optional: tuple[str, ...] = ()  # modalities available on request (e.g. proprio)
    mummi_table: bool = False  # one of MuMMI Table I's five tasks
    touch_sites: tuple[str, ...] = ()  # where the touch sensor can sit; the first is the default


_NATURAL = ("image", "depth", "touch")
# Touch sites (envs/dmc.py builds them), the released code's first: walker "sole" (its
# ellipsoid), "sole_box" (this package's before 2026-12-06), "foot" the whole foot; cup
# "bottom" a disc on the cup's floor, "interior" its whole inner volume; cheetah "foot" (a
# sphere at each foot tip), "foot_capsule".
_WALKER = ("sole", "sole_box", "foot")
TASKS: dict[str, TaskInfo] = {
    # MuMMI's five multi-modal Natural MuJoCo tasks (Table I).
    "walker_run": TaskInfo("dmc", _NATURAL, ("proprio",), True, _WALKER),
    "walker_walk": TaskInfo("dmc", _NATURAL, ("proprio",), True, _WALKER),
    "walker_stand": TaskInfo("dmc", _NATURAL, ("proprio",), True, _WALKER),
    "finger_spin": TaskInfo("dmc", _NATURAL, ("proprio",), True, ("fingertip",)),
    "cup_catch": TaskInfo("dmc", _NATURAL, ("proprio",), True, ("bottom", "interior")),
    # The rest of CVRL's ten Natural MuJoCo tasks.
    "cheetah_run": TaskInfo("dmc", _NATURAL, ("proprio",), touch_sites=("foot", "foot_capsule")),
    "quadruped_walk": TaskInfo("dmc", _NATURAL, ("proprio",), touch_sites=("toe",)),
    "cartpole_balance": TaskInfo("dmc", ("image", "depth"), ("proprio",)),
    "cartpole_swingup": TaskInfo("dmc", ("image", "depth"), ("proprio",)),
    "reacher_easy": TaskInfo("dmc", ("image", "depth"), ("proprio",)),
    "pendulum_swingup": TaskInfo("dmc", ("image", "depth"), ("proprio",)),
    # The toy 2D robot of MuMMI Fig. 1 / 19 / 20.
    "toy_position_camera": TaskInfo("toy", ("position", "camera")),
    "toy_front_back": TaskInfo("toy", ("front", "back")),
    "toy_xy": TaskInfo("toy", ("x", "y")),
    # robosuite Table Wiping (MuMMI Sec. VI).
    "wipe": TaskInfo("robosuite", ("workspace", "eye_in_hand"), ("proprio",)),
}

# CoRAL's partial proprioception (CoRAL Table 1; coral.md §5.1): the robot's own joints
# only, so that what the table names (ball, pole, root pose, target, ...) must come from the
# image. Per task, the (dm_control observation key, start, stop) slices concatenated in order.
_WALKER_PARTIAL = (("orientations", 0, 14), ("velocity", 3, 9))  # non-root velocities
PARTIAL_PROPRIO: dict[str, tuple[tuple[str, int, int], ...]] = {
    "walker_run": _WALKER_PARTIAL,
    "walker_walk": _WALKER_PARTIAL,
    "walker_stand": _WALKER_PARTIAL,
    "cup_catch": (("position", 0, 2), ("velocity", 0, 2)),  # the cup's, not the ball's
    "cartpole_balance": (("position", 0, 1), ("velocity", 0, 1)),  # the cart's
    "cartpole_swingup": (("position", 0, 1), ("velocity", 0, 1)),
    "cheetah_run": (("position", 2, 8), ("velocity", 3, 9)),  # the 6 joints
    "reacher_easy": (("position", 0, 2), ("velocity", 0, 2)),  # no to_target
    "finger_spin": (("position", 0, 2), ("velocity", 0, 2)),  # the finger's two joints
    # egocentric_state = 16 hinge angles, 16 hinge velocities, 12 actuator states: CoRAL
    # takes angles and actuator states (28), then velocities (16); no torso, IMU or forces.
    "quadruped_walk": (
        ("egocentric_state", 0, 16),
        ("egocentric_state", 32, 44),
        ("egocentric_state", 16, 32),
    ),
    "pendulum_swingup": (("orientation", 0, 2), ("velocity", 0, 1)),  # the whole state
}

IMAGE_MODALITIES = ("image", "depth", "camera", "front", "back", "workspace", "eye_in_hand")


def task_info(name: str) -> TaskInfo:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def default_touch_site(name: str) -> str:
    """The site a task senses touch with unless told otherwise (its first, the released
    code's); "" for a task without touch."""
    return "".join(task_info(name).touch_sites[:1])


def task_modalities(name: str, requested: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The modalities a task run will observe; `requested` empty means the default set."""
    info = task_info(name)
    if not requested:
        return info.modalities
    valid = info.modalities + info.optional
    bad = [m for m in requested if m not in valid]
    if bad:
        raise ValueError(
            f"task {name!r} has no modality {bad[0]!r}; valid modalities: {', '.join(valid)}"
        )
    return tuple(requested)
