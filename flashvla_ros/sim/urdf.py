# Copyright 2026 flashvla_ros contributors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""
A robot's kinematic URDF, written from the MuJoCo model a simulated world runs.

The `robot_description` a world node publishes is then the simulated arm itself, not a
similar one: every body of the robot's subtree becomes a link (no meshes: kinematics only),
every hinge a revolute joint with its range, every slide a prismatic one, every site a
fixed tool frame (the controllers' end-effector site among them).
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

import numpy as np

# URDF needs effort and velocity limits the robot's MJCF does not carry: the Franka Panda's
# datasheet values, by joint number (1..7), and for the fingers.
PANDA_EFFORT = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
PANDA_VELOCITY = (2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61)
FINGER_EFFORT, FINGER_VELOCITY = 20.0, 0.2


def rpy(quat_wxyz: np.ndarray) -> tuple[float, float, float]:
    """Return URDF's fixed-axis roll, pitch, yaw (R = Rz Ry Rx) of a w, x, y, z quaternion."""
    w, x, y, z = np.asarray(quat_wxyz, dtype=np.float64) / np.linalg.norm(quat_wxyz)
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return float(roll), float(pitch), float(yaw)


def _origin(pos, quat) -> str:
    xyz = ' '.join(f'{v:.9g}' for v in pos)
    angles = ' '.join(f'{v:.9g}' for v in rpy(quat))
    return f'<origin xyz="{xyz}" rpy="{angles}"/>'


def urdf_from_mujoco(model, root: str, rename, name: str = 'robot',
                     limits=None) -> str:
    """
    Write the URDF of `root`'s subtree of a MuJoCo model (`mujoco.MjModel`).

    `rename(mujoco_name) -> urdf_name` names links, joints and tool frames; `limits(joint_name)
    -> (effort, velocity)` gives what the MJCF lacks (default: 0, 0).
    """
    import mujoco

    def mj_name(kind, i: int) -> str:
        return mujoco.mj_id2name(model, kind, i) or f'{kind.name}{i}'

    body_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, root)
    if body_id < 0:
        raise ValueError(f'no body {root!r} in the model')
    inside = {body_id}
    for b in range(body_id + 1, model.nbody):  # MuJoCo numbers a subtree after its root
        if model.body_parentid[b] in inside:
            inside.add(b)
    lines = [f'<robot name={quoteattr(name)}>']
    for b in sorted(inside):
        link = rename(mj_name(mujoco.mjtObj.mjOBJ_BODY, b))
        lines.append(f'  <link name={quoteattr(link)}/>')
        if b != body_id:
            parent = rename(mj_name(mujoco.mjtObj.mjOBJ_BODY, model.body_parentid[b]))
            lines += _joint(model, b, parent, link, mj_name, rename, limits)
        for s in np.flatnonzero(model.site_bodyid == b):
            site = rename(mj_name(mujoco.mjtObj.mjOBJ_SITE, int(s)))
            lines += [f'  <link name={quoteattr(site)}/>',
                      f'  <joint name={quoteattr(site + "_fixed")} type="fixed">',
                      f'    <parent link={quoteattr(link)}/><child link={quoteattr(site)}/>',
                      f'    {_origin(model.site_pos[s], model.site_quat[s])}',
                      '  </joint>']
    lines.append('</robot>')
    return '\n'.join(lines) + '\n'


def _joint(model, b: int, parent: str, link: str, mj_name, rename, limits) -> list[str]:
    import mujoco

    origin = _origin(model.body_pos[b], model.body_quat[b])
    if model.body_jntnum[b] == 0:
        return [f'  <joint name={quoteattr(link + "_fixed")} type="fixed">',
                f'    <parent link={quoteattr(parent)}/><child link={quoteattr(link)}/>',
                f'    {origin}', '  </joint>']
    if model.body_jntnum[b] > 1:
        raise ValueError(f'body {link!r} has {model.body_jntnum[b]} joints; URDF allows one')
    j = int(model.body_jntadr[b])
    if np.any(model.jnt_pos[j] != 0):
        raise ValueError(f'joint of {link!r} is off its body origin; not written as URDF')
    kinds = {int(mujoco.mjtJoint.mjJNT_HINGE): 'revolute', int(mujoco.mjtJoint.mjJNT_SLIDE):
             'prismatic'}
    kind = kinds.get(int(model.jnt_type[j]))
    if kind is None:
        raise ValueError(f'joint of {link!r} is neither a hinge nor a slide')
    joint = rename(mj_name(mujoco.mjtObj.mjOBJ_JOINT, j))
    lower, upper = model.jnt_range[j] if model.jnt_limited[j] else (-np.pi, np.pi)
    effort, velocity = limits(joint) if limits else (0.0, 0.0)
    axis = ' '.join(f'{v:.9g}' for v in model.jnt_axis[j])
    return [f'  <joint name={quoteattr(joint)} type="{kind}">',
            f'    <parent link={quoteattr(parent)}/><child link={quoteattr(link)}/>',
            f'    {origin}', f'    <axis xyz="{axis}"/>',
            f'    <limit lower="{lower:.9g}" upper="{upper:.9g}" effort="{effort:.9g}" '
            f'velocity="{velocity:.9g}"/>', '  </joint>']


def panda_limits(joint: str) -> tuple[float, float]:
    """Return the datasheet effort and velocity of a `panda_jointN` or finger joint."""
    if joint.startswith('panda_joint'):
        i = int(joint.removeprefix('panda_joint')) - 1
        return PANDA_EFFORT[i], PANDA_VELOCITY[i]
    return FINGER_EFFORT, FINGER_VELOCITY
