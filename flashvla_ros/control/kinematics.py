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
End-effector displacements to joint position targets: inverse kinematics for a real arm.

The policy's action is a 7-vector (dx, dy, dz, droll, dpitch, dyaw, gripper): metres and
radians per control step, already clamped by the node. `ArmKinematics` turns the first six
into joint position targets for the joints between `base_frame` and `ee_frame` of a URDF.

Composition of a command (dp, w) = (dx, dy, dz), (droll, dpitch, dyaw), both expressed in
`command_frame` C (usually the base), applied to the tool pose (p, R) in C:

    p_target = p + dp
    R_target = Exp(w) @ R        (Exp: rotation vector -> matrix, Rodrigues)

so w is a rotation vector (axis * angle, not roll-pitch-yaw angles) in C, applied on the
left, about the tool's own origin. This is robosuite's OSC_POSE controller, which LIBERO
uses: `set_goal_orientation` builds `quat2mat(axisangle2quat(delta)) @ current_orientation`
and `set_goal_position` adds the delta, both in the world frame (robosuite 1.4,
`utils/control_utils.py`). robosuite's scaling of the [-1, 1] action to metres and radians
(`output_max`) is not done here: commands arrive in metres and radians. When C moves with
the arm (e.g. C is the tool frame), its pose at the step's starting joints is used.

Solver: damped least squares on Pinocchio's frame Jacobian (chosen over a pink/daqp QP by
measurement, `scripts/measure_ik.py`, `docs/ik/solvers.json`). Each command is solved by a
few Gauss-Newton iterations that minimise |pose error|^2 + damping |q - q_start|^2, so
iterating removes the nonlinearity without undoing the damping. Each singular direction of
the Jacobian is damped the more the further its singular value falls below a threshold, so
joints stay slow near singularities and the tracking is exact away from them. Joints that
would pass a position limit stop at it and the remaining joints carry on solving. The whole
step is then scaled uniformly (keeping its direction) so no joint moves more than its
velocity limit times the control period. A null-space term pulls the arm towards `posture`
without moving the tool (to first order; the iterations remove the rest).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# What to tell a user without Pinocchio: the pip extra or the rosdep key.
INSTALL_HINT = (
    "inverse kinematics needs Pinocchio: pip install -e '.[ik]' (PyPI package 'pin'), "
    "or in a ROS workspace the rosdep key 'pinocchio' (ros-$ROS_DISTRO-pinocchio)"
)

# Singular-value threshold under which a direction is damped, and the damping's maximum
# (Maciejewski-Klein style, per singular direction): far from singularities the step is the
# exact pseudo-inverse, near them the joint step per unit of task error is at most about
# 1 / (2 * _DAMPING_MAX).
_SIGMA_DAMP = 0.05
_DAMPING_MAX = 0.05
# Gauss-Newton iterations per command and the tolerances that end them early.
_MAX_ITER = 10
_TOL_POS_M = 1e-6
_TOL_ROT_RAD = 1e-5
# Fraction of the posture error corrected per command, at most this share of the velocity
# budget, so the posture never crowds out the task.
_POSTURE_GAIN = 0.1
_POSTURE_BUDGET = 0.5


class KinematicsError(ValueError):
    """A model, frame, joint state or command that the solver refuses, with the reason."""


def _pinocchio() -> Any:
    """Import Pinocchio lazily, so the rest of the package works without it."""
    try:
        import pinocchio
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return pinocchio


@dataclass(frozen=True)
class _Joint:
    """One chain joint: its name and where it sits in Pinocchio's q."""

    name: str
    idx_q: int
    continuous: bool  # stored as (cos, sin) in q: an angle here, no position limits


class ArmKinematics:
    """Inverse kinematics of one arm: tool displacements to joint position targets."""

    def __init__(self, model: Any, joints: list[_Joint], base_frame: str, ee_frame: str,
                 command_frame: str, lower: np.ndarray, upper: np.ndarray,
                 velocity: np.ndarray, posture: np.ndarray | None) -> None:
        """Hold a reduced model; build it with `from_urdf`."""
        pin = _pinocchio()
        self._pin = pin
        self._model = model
        self._data = model.createData()
        self._joints = joints
        self.base_frame = base_frame
        self.ee_frame = ee_frame
        self.command_frame = command_frame
        self._base_id = model.getFrameId(base_frame)
        self._ee_id = model.getFrameId(ee_frame)
        self._cmd_id = model.getFrameId(command_frame)
        self.lower = lower
        self.upper = upper
        self.velocity = velocity
        self.posture = posture
        self._q_pin = pin.neutral(model)
        self._lwa = pin.ReferenceFrame.LOCAL_WORLD_ALIGNED

    @classmethod
    def from_urdf(cls, urdf: str, ee_frame: str, base_frame: str | None = None,
                  command_frame: str | None = None,
                  posture: np.ndarray | Sequence[float] | None = None) -> ArmKinematics:
        """
        Build the solver for the joints between `base_frame` and `ee_frame` of a URDF string.

        `base_frame` defaults to the URDF's root link and must be an ancestor of `ee_frame`;
        `command_frame` (default: `base_frame`) is the frame commands are expressed in;
        `posture` is the joint vector the null space pulls towards; by default the first
        `q_start` given to `targets` (the posture the arm was started in: the middle of the
        joint ranges can be singular, as the Panda's is). Joints off the chain (fingers, other
        branches) are held at their neutral position. Raise `KinematicsError` for a URDF
        that does not load, an unknown frame, a chain without joints or limits it cannot
        honour, and `ImportError` (with `INSTALL_HINT`) without Pinocchio.
        """
        pin = _pinocchio()
        try:
            full = pin.buildModelFromXML(urdf)
        except (ValueError, RuntimeError) as error:
            raise KinematicsError(f'the URDF does not load: {error}') from None
        if full.nframes <= 1:
            raise KinematicsError('the URDF does not load: it has no links')
        # The root link is the frame attached to the universe joint after "universe" itself.
        root = next((f.name for f in full.frames
                     if f.parentJoint == 0 and f.name != 'universe'
                     and f.type == pin.FrameType.BODY), None)
        if root is None:
            raise KinematicsError('the URDF does not load: no root link')
        base_frame = root if base_frame is None else base_frame
        command_frame = base_frame if command_frame is None else command_frame
        for role, name in (('ee_frame', ee_frame), ('base_frame', base_frame),
                           ('command_frame', command_frame)):
            if not full.existFrame(name):
                raise KinematicsError(f'{role} {name!r} is not a frame of the URDF model')

        ee_support = list(full.supports[full.frames[full.getFrameId(ee_frame)].parentJoint])
        base_support = list(
            full.supports[full.frames[full.getFrameId(base_frame)].parentJoint])
        if ee_support[:len(base_support)] != base_support:
            raise KinematicsError(
                f'base_frame {base_frame!r} is not an ancestor of ee_frame {ee_frame!r}')
        chain = ee_support[len(base_support):]
        if not chain:
            raise KinematicsError(
                f'no joint moves ee_frame {ee_frame!r} relative to base_frame {base_frame!r}')
        for j in chain:
            if full.joints[j].nv != 1:
                raise KinematicsError(
                    f'joint {full.names[j]!r} ({full.joints[j].shortname()}) is not a '
                    'revolute, continuous or prismatic joint')
        # The base and everything off the chain are fixed for the arm's IK: locking them
        # keeps the base fixed in the reduced model's world and the Jacobian 6 x dof.
        locked = [j for j in range(1, full.njoints) if j not in chain]
        model = (pin.buildReducedModel(full, locked, pin.neutral(full)) if locked else full)

        joints, lower, upper, velocity = [], [], [], []
        for j in range(1, model.njoints):
            jm = model.joints[j]
            continuous = jm.nq == 2
            joints.append(_Joint(model.names[j], jm.idx_q, continuous))
            lo, hi = model.lowerPositionLimit[jm.idx_q], model.upperPositionLimit[jm.idx_q]
            lower.append(-np.inf if continuous else lo)
            upper.append(np.inf if continuous else hi)
            velocity.append(model.velocityLimit[jm.idx_v])
            if not continuous and not lo < hi:
                raise KinematicsError(
                    f'joint {model.names[j]!r} has no position range in the URDF '
                    f'(lower {lo}, upper {hi})')
            if not velocity[-1] > 0.0:
                raise KinematicsError(
                    f'joint {model.names[j]!r} has velocity limit {velocity[-1]} in the URDF: '
                    'it could never move')
        lower_a, upper_a = np.array(lower), np.array(upper)
        posture_a = None
        if posture is not None:
            posture_a = np.asarray(posture, dtype=float)
            if posture_a.shape != lower_a.shape or not np.all(np.isfinite(posture_a)):
                raise KinematicsError(
                    f'posture must be {len(joints)} finite joint positions, '
                    f'got shape {posture_a.shape}')
        return cls(model, joints, base_frame, ee_frame, command_frame, lower_a, upper_a,
                   np.array(velocity), posture_a)

    @property
    def joint_names(self) -> list[str]:
        """Return the chain's joint names, base to tool: the order of every joint vector."""
        return [j.name for j in self._joints]

    @property
    def dof(self) -> int:
        """Return the number of chain joints."""
        return len(self._joints)

    def from_joint_state(self, names: Sequence[str],
                         positions: Sequence[float]) -> np.ndarray:
        """
        Order joint positions given by name (as in a JointState) into the chain's order.

        Joints off the chain are ignored. Raise `KinematicsError` naming the chain joints
        that are missing or not finite, or when names and positions differ in length.
        """
        if len(names) != len(positions):
            raise KinematicsError(
                f'joint state has {len(names)} names but {len(positions)} positions')
        by_name = dict(zip(names, positions, strict=True))
        missing = [n for n in self.joint_names if n not in by_name]
        if missing:
            raise KinematicsError(f'joint state lacks chain joint(s) {missing}')
        q = np.array([float(by_name[n]) for n in self.joint_names])
        bad = [n for n, v in zip(self.joint_names, q, strict=True) if not np.isfinite(v)]
        if bad:
            raise KinematicsError(f'joint state has non-finite position(s) for {bad}')
        return q

    def forward(self, q: np.ndarray | Sequence[float]) -> np.ndarray:
        """Return the 4x4 pose of `ee_frame` in `base_frame` at joint positions `q`."""
        self._kinematics(self._check_q(q), jacobian=False)
        base = self._data.oMf[self._base_id]
        return (base.actInv(self._data.oMf[self._ee_id])).homogeneous

    def targets(self, q_start: np.ndarray | Sequence[float], commands: np.ndarray,
                period_s: float) -> np.ndarray:
        """
        Return one joint position target per command, each solved from the one before.

        `q_start` is the measured joint vector (chain order) for the first command of a
        chunk; every later command starts from the previous target. `commands` is
        [n, 6] or [n, 7] (a trailing gripper column is ignored): (dx, dy, dz) metres and
        (droll, dpitch, dyaw) a rotation vector in radians, both in `command_frame`,
        composed as the module docstring says. `period_s` is the control period: a joint
        moves at most its velocity limit times it per command. Targets stay inside the
        position limits (a start outside them is not pushed further out). Returns [n, dof].
        """
        q = self._check_q(q_start)
        if self.posture is None:
            self.posture = q.copy()
        cmds = np.asarray(commands, dtype=float)
        if cmds.ndim == 1:
            cmds = cmds[None, :]
        if cmds.ndim != 2 or cmds.shape[1] not in (6, 7):
            raise KinematicsError(f'commands must be [n, 6] or [n, 7], got {cmds.shape}')
        if not np.all(np.isfinite(cmds[:, :6])):
            raise KinematicsError('commands must be finite')
        if not (np.isfinite(period_s) and period_s > 0.0):
            raise KinematicsError(f'period_s must be positive, got {period_s}')
        out = np.empty((len(cmds), self.dof))
        for i, cmd in enumerate(cmds):
            q = self._step(q, cmd[:3], cmd[3:6], period_s)
            out[i] = q
        return out

    def _check_q(self, q: np.ndarray | Sequence[float]) -> np.ndarray:
        """Return `q` as a float vector of the chain's length, or raise."""
        arr = np.asarray(q, dtype=float)
        if arr.shape != (self.dof,):
            raise KinematicsError(
                f'expected {self.dof} joint positions {self.joint_names}, got shape '
                f'{arr.shape}')
        if not np.all(np.isfinite(arr)):
            raise KinematicsError('joint positions must be finite')
        return arr.copy()

    def _kinematics(self, q: np.ndarray, jacobian: bool) -> np.ndarray | None:
        """Update the frame placements at `q`; return the tool Jacobian if asked."""
        qp = self._q_pin
        for j, v in zip(self._joints, q, strict=True):
            if j.continuous:
                qp[j.idx_q], qp[j.idx_q + 1] = np.cos(v), np.sin(v)
            else:
                qp[j.idx_q] = v
        pin = self._pin
        if jacobian:
            # One pass gives both the placements and the joint Jacobians.
            pin.computeJointJacobians(self._model, self._data, qp)
            pin.updateFramePlacements(self._model, self._data)
            # 6 x dof, also for one joint (the binding hands a 6 x 1 matrix back as a vector).
            return pin.getFrameJacobian(self._model, self._data, self._ee_id,
                                        self._lwa).reshape(6, -1)
        pin.framesForwardKinematics(self._model, self._data, qp)
        return None

    def _step(self, q0: np.ndarray, dp: np.ndarray, w: np.ndarray,
              period_s: float) -> np.ndarray:
        """
        Solve one command from `q0`: damped Gauss-Newton to the target, then the limits.

        Each iteration relinearises at the current q but solves for the whole step from q0,
        minimising |e(q)|^2 + damping |q - q0|^2 (Levenberg-Marquardt anchored at q0):
        iterating removes the nonlinearity in well-conditioned directions without undoing
        the damping in nearly singular ones, as iterating plain DLS steps would.
        """
        jac = self._kinematics(q0, jacobian=True)
        ee = self._data.oMf[self._ee_id]
        r_cmd = self._data.oMf[self._cmd_id].rotation
        # The command, taken to the model's world frame (the fixed base's world).
        p_t = ee.translation + r_cmd @ dp
        r_t = self._pin.exp3(r_cmd @ w) @ ee.rotation
        # A start outside a position limit is allowed, but never pushed further out.
        lo, hi = np.minimum(self.lower, q0), np.maximum(self.upper, q0)
        budget = self.velocity * period_s
        # The posture pull, a bounded share of the budget; projected on the null space below.
        pull = np.clip(_POSTURE_GAIN * (self.posture - q0), -_POSTURE_BUDGET * budget,
                       _POSTURE_BUDGET * budget)
        free = np.ones(self.dof, dtype=bool)
        q = q0.copy()
        for it in range(_MAX_ITER):
            if it:  # the placements first: most commands converge here, with no Jacobian
                self._kinematics(q, jacobian=False)
                ee = self._data.oMf[self._ee_id]
            err = np.concatenate([p_t - ee.translation,
                                  self._pin.log3(r_t @ ee.rotation.T)])
            done = (err[:3] @ err[:3] < _TOL_POS_M ** 2 and err[3:] @ err[3:] < _TOL_ROT_RAD ** 2)
            if done or not free.any():
                break
            if it:
                jac = self._kinematics(q, jacobian=True)
            jf = jac[:, free]
            u, sv, vt = np.linalg.svd(jf, full_matrices=False)
            # Damp only the weak directions, more the weaker they are (none above
            # _SIGMA_DAMP): well-conditioned ones stay exact even when a joint has stopped.
            damping = np.where(sv < _SIGMA_DAMP,
                               _DAMPING_MAX ** 2 * (1.0 - (sv / _SIGMA_DAMP) ** 2), 0.0)
            gain = sv / (sv * sv + damping + 1e-12)
            d = (q - q0)[free]
            # Whole step from q0: J# (e + J d - J pull) + pull, whose pull part is
            # (I - J#J) pull: the posture moves the tool by nothing to first order.
            step = vt.T @ (gain * (u.T @ (err + jf @ (d - pull[free])))) + pull[free]
            q_new = q.copy()
            q_new[free] = q0[free] + step
            # Joints that would pass a limit stop at it and leave the solve to the others.
            free &= (q_new >= lo) & (q_new <= hi)
            q_new = np.clip(q_new, lo, hi)
            moved = float(np.max(np.abs(q_new - q)))
            q = q_new
            if moved < 1e-9:
                break
        # Velocity limits: shrink the whole step, so the tool keeps the commanded direction.
        step = q - q0
        ratio = float(np.max(np.abs(step) / budget))
        return q0 + step / ratio if ratio > 1.0 else q
