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
# Touch sites (envs/dmc.py builds them): walker "sole" is MuMMI-like, "foot" the whole foot;
# cup "bottom" a disc on the cup's floor, "interior" its whole inner volume.
_WALKER = ("sole", "foot")
TASKS: dict[str, TaskInfo] = {
    # MuMMI's five multi-modal Natural MuJoCo tasks (Table I).
    "walker_run": TaskInfo("dmc", _NATURAL, ("proprio",), True, _WALKER),
    "walker_walk": TaskInfo("dmc", _NATURAL, ("proprio",), True, _WALKER),
    "walker_stand": TaskInfo("dmc", _NATURAL, ("proprio",), True, _WALKER),
    "finger_spin": TaskInfo("dmc", _NATURAL, ("proprio",), True, ("fingertip",)),
    "cup_catch": TaskInfo("dmc", _NATURAL, ("proprio",), True, ("bottom", "interior")),
    # The rest of CVRL's ten Natural MuJoCo tasks.
    "cheetah_run": TaskInfo("dmc", _NATURAL, ("proprio",), touch_sites=("foot",)),
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

IMAGE_MODALITIES = ("image", "depth", "camera", "front", "back", "workspace", "eye_in_hand")


def task_info(name: str) -> TaskInfo:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


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
