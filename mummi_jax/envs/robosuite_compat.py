"""Run-time patch that lets robosuite 1.5.x run on the pinned mujoco 3.17.0.

robosuite 1.5.1/1.5.2 were written against mujoco <= 3.9 and break on the mujoco that
dm-control 1.0.50 needs (environments.md §4.2):

1. From mujoco 3.12 on, an `mjtJoint` enum member no longer compares equal to the numpy
   int32 stored in `model.jnt_type`, so `MjModel.get_joint_qpos_addr` / `get_joint_qvel_addr`
   fall through to an `assert` for every hinge joint. The patch compares `int()` values.
2. From mujoco 3.10 on, `mj_fullM(m, dst, qM)` became `mj_fullM(m, d, dst)` and `MjData.qM`
   is gone by 3.11. robosuite's controller calls `mujoco.mj_fullM(model, mass_matrix,
   sim.data.qM)`. The patch gives robosuite's `MjData` a `qM` property that returns the raw
   `mujoco.MjData`, and swaps the controller module's `mujoco` for a proxy whose `mj_fullM`
   reorders the arguments when handed an `MjData`.

Both are no-ops on a mujoco that still has the old behaviour. Validated in environments.md
§4.2: the patched 3.17.0 trajectory equals the unpatched 3.9.0 one to the last digit.
`apply()` must run after `import robosuite` and before `robosuite.make`; it is idempotent.
"""

from __future__ import annotations

import types

import mujoco
import numpy as np

_APPLIED = False

# (ndim of qpos, ndim of qvel) per joint type; hinge and slide are 1-dim.
_JOINT_DIMS = {
    int(mujoco.mjtJoint.mjJNT_FREE): (7, 6),
    int(mujoco.mjtJoint.mjJNT_BALL): (4, 3),
    int(mujoco.mjtJoint.mjJNT_SLIDE): (1, 1),
    int(mujoco.mjtJoint.mjJNT_HINGE): (1, 1),
}


def enum_compare_broken() -> bool:
    """True where `mjtJoint` members no longer equal numpy ints (mujoco >= 3.12)."""
    return not bool(mujoco.mjtJoint.mjJNT_FREE == np.int32(int(mujoco.mjtJoint.mjJNT_FREE)))


def full_m_changed() -> bool:
    """True where `MjData.qM` is gone and `mj_fullM` takes `(m, d, dst)` (mujoco >= 3.11)."""
    return not hasattr(mujoco.MjData, "qM")


def _joint_addr(model, name: str, which: int):
    """robosuite's contract: an int for 1-dim joints, else a (start, end) tuple."""
    joint_id = model.joint_name2id(name)
    joint_type = int(model.jnt_type[joint_id])
    if joint_type not in _JOINT_DIMS:
        raise ValueError(f"joint {name!r} has unknown type {joint_type}")
    ndim = _JOINT_DIMS[joint_type][which]
    addr = int((model.jnt_qposadr if which == 0 else model.jnt_dofadr)[joint_id])
    return addr if ndim == 1 else (addr, addr + ndim)


def _get_joint_qpos_addr(self, name):
    return _joint_addr(self, name, 0)


def _get_joint_qvel_addr(self, name):
    return _joint_addr(self, name, 1)


def _mj_full_m(m, *args):
    # Old call: (m, dst, qM) where qM is our `qM` property's raw MjData; new API: (m, d, dst).
    a, b = args
    if isinstance(b, mujoco.MjData):
        return mujoco.mj_fullM(m, b, a)
    return mujoco.mj_fullM(m, a, b)


class _MujocoProxy(types.ModuleType):
    """The `mujoco` module with `mj_fullM` accepting robosuite's old argument order."""

    def __init__(self):
        super().__init__("mujoco")
        self.mj_fullM = _mj_full_m

    def __getattr__(self, name):
        return getattr(mujoco, name)


def apply() -> None:
    """Patches the imported robosuite in place (once per process)."""
    global _APPLIED
    if _APPLIED:
        return
    from robosuite.controllers.parts import controller as controller_module
    from robosuite.utils import binding_utils

    if enum_compare_broken():
        binding_utils.MjModel.get_joint_qpos_addr = _get_joint_qpos_addr
        binding_utils.MjModel.get_joint_qvel_addr = _get_joint_qvel_addr
    if full_m_changed():
        # The raw MjData stands in for the old qM array; `_mj_full_m` recognises it.
        binding_utils.MjData.qM = property(lambda self: self._data)
        controller_module.mujoco = _MujocoProxy()
    _APPLIED = True
