"""Environments behind one dm_env interface: `make(name, seed=..., **options)`.

Every environment returns a dict observation with one entry per modality plus a float32
presence flag `<modality>_flag` of shape () per modality (1 = observed, 0 = missing),
actions normalised to [-1, 1], and the missing-data process of `mummi_jax.masks` applied
per agent step on the host (see `mummi_jax.envs.missing`).

The suites are imported lazily: dm_control and robosuite must not share a process
(docs/ARCHITECTURE.md), and the package imports without robosuite installed.
"""

from __future__ import annotations

import os

# Must be set before dm_control / mujoco / robosuite are first imported (environments.md §6).
os.environ.setdefault("MUJOCO_GL", "egl")

from mummi_jax.envs.tasks import TASKS, task_info, task_modalities  # noqa: E402

__all__ = ["TASKS", "make", "task_info", "task_modalities"]


def make(name: str, seed: int = 0, **options):
    """Builds task `name` as a `dm_env.Environment`.

    Common options: `modalities` (tuple, default: the task's), `missing` ("reference" |
    "paper" | "none"), `missing_rate` (p for reference, fraction for paper), `max_missing_len`,
    `action_repeat`, `time_limit` (env steps), `image_size`. Suite-specific options are
    documented in each adapter. Unknown names or options raise ValueError listing the choices.
    """
    info = task_info(name)
    if info.suite == "dmc":
        from mummi_jax.envs import dmc as suite
    elif info.suite == "toy":
        from mummi_jax.envs import toy2d as suite
    elif info.suite == "robosuite":
        from mummi_jax.envs import wipe as suite
    else:  # pragma: no cover - the table only names the suites above
        raise ValueError(f"task {name!r} has unknown suite {info.suite!r}")
    missing_options = {
        k: options.pop(k) for k in ("missing", "missing_rate", "max_missing_len") if k in options
    }
    env = suite.make(name, seed=seed, **options)
    from mummi_jax.envs.missing import MissingData

    return MissingData(env, seed=seed, **missing_options)
