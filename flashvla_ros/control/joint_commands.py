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
A tick's commands as absolute joint position targets, for joint controllers.

`JointCommander` keeps the newest valid joint state (by arrival, like the camera) and turns a
tick into joint targets for the chain between `base_frame` and `ee_frame` of the robot's URDF
(plus the gripper joints, if any):

- an end-effector model (`ee_delta`): inverse kinematics (`kinematics.ArmKinematics`), the
  first action of the chunk from the measured joints, every later one from the previous target;
- a joint-position model (`joint_position`): the model's joint values passed through by name,
  clamped to the URDF's position limits and, per control period, to its velocity limits (the
  first from the measured joints), so a far target is approached, never jumped to;
- a hold: the measured positions, one point (the gripper joints at the last gripper command,
  as every hold keeps the gripper). Never an empty trajectory: some controller releases do not
  treat one as a stop (ros2_controllers issue 683).

Joint states that are missing, stale (older than `max_age_s` by arrival) or lack a chain joint
are a fault: the runner holds once and says why, as for a stale camera. No ROS here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
import threading
import time

import numpy as np

from ..policy.actions import GRIPPER, MOTION
from ..policy.config import EE_DELTA, JOINT_POSITION
from .kinematics import INSTALL_HINT, ArmKinematics, KinematicsError


def require_pinocchio() -> None:
    """Raise ImportError with the install hint when Pinocchio is missing (joint outputs)."""
    try:
        import pinocchio  # noqa: F401
    except ImportError as error:
        raise ImportError(f'joint outputs: {INSTALL_HINT}') from error


@dataclass(frozen=True)
class JointTargets:
    """Joint position targets: one row per point, one column per name."""

    names: list[str]
    points: np.ndarray  # [n, len(names)]
    hold: bool = False


class JointCommander:
    """One robot's joint state and its tick-to-joint-targets conversion (thread-safe)."""

    def __init__(self, kinematics: ArmKinematics, period_s: float, max_age_s: float,
                 action_space: str = EE_DELTA, action_joints: Sequence[str] = (),
                 gripper_joints: Sequence[str] = (),
                 gripper_positions: Sequence[float] = (0.0, 1.0)) -> None:
        """
        Check the model's joints against the chain; raise KinematicsError with the reason.

        `action_joints`: a joint-position model's joint per leading action dimension (every
        chain joint, in any order); `gripper_joints` get `gripper_positions[0]` at gripper
        command 0 and `[1]` at 1 (linear between).
        """
        self.kinematics = kinematics
        self.period_s = period_s
        self.max_age_s = max_age_s
        self.action_space = action_space
        chain = kinematics.joint_names
        overlap = sorted(set(gripper_joints) & set(chain))
        if overlap:
            raise KinematicsError(f'gripper joint(s) {overlap} are joints of the arm chain')
        self._columns: list[int] = []
        if action_space == JOINT_POSITION:
            names = list(action_joints)
            if len(names) > MOTION.stop:
                raise KinematicsError(
                    f'the model names {len(names)} joints; its actions have '
                    f'{MOTION.stop} motion dimensions (the last one is the gripper)')
            if sorted(names) != sorted(chain):
                raise KinematicsError(
                    f"the model's joints {names} are not the chain's joints {chain} "
                    f'between {kinematics.base_frame!r} and {kinematics.ee_frame!r}')
            self._columns = [names.index(n) for n in chain]  # action column of each chain joint
        elif action_space != EE_DELTA:
            raise KinematicsError(f'unknown action space {action_space!r}')
        self.gripper_joints = list(gripper_joints)
        self._gripper_positions = (float(gripper_positions[0]), float(gripper_positions[1]))
        self.names = [*chain, *self.gripper_joints]
        self._lock = threading.Lock()
        self._q: np.ndarray | None = None  # newest valid chain positions
        self._gripper_q: np.ndarray | None = None  # and the gripper joints', same message
        self._arrival: float | None = None
        self._rejected = ''  # why the newest joint state was refused
        self.target_ms: deque[float] = deque(maxlen=200)  # time per tick's targets (IK)

    # -- joint states (any thread) -----------------------------------------------------------

    def observe(self, names: Sequence[str], positions: Sequence[float], now: float) -> str:
        """Take a joint state that arrived at `now`; return why it was refused ('' if not)."""
        try:
            q = self.kinematics.from_joint_state(names, positions)
            grip = self._gripper_state(names, positions)
        except KinematicsError as exc:
            with self._lock:
                self._rejected = f'joint_states refused: {exc}'
                return self._rejected
        with self._lock:
            self._q, self._gripper_q, self._arrival, self._rejected = q, grip, now, ''
        return ''

    def _gripper_state(self, names: Sequence[str], positions: Sequence[float]) -> np.ndarray:
        by_name = dict(zip(names, positions, strict=True))
        missing = [n for n in self.gripper_joints if n not in by_name]
        if missing:
            raise KinematicsError(f'joint state lacks gripper joint(s) {missing}')
        grip = np.array([float(by_name[n]) for n in self.gripper_joints])
        if not np.all(np.isfinite(grip)):
            raise KinematicsError('joint state has non-finite gripper joint positions')
        return grip

    def fault(self, now: float) -> str:
        """Return why no joint command may be made now ('' while the joint state is fresh)."""
        with self._lock:
            if self._arrival is None:
                return self._rejected or 'no joint_states received yet'
            age = now - self._arrival
            if age > self.max_age_s:
                why = f'; last: {self._rejected}' if self._rejected else ''
                return (f'joint_states stale: no valid joint state for {age:.2f} s '
                        f'(max_joint_state_age_s {self.max_age_s:g}){why}')
            return ''

    def age(self, now: float) -> float | None:
        """Return the age of the newest valid joint state by arrival, s (None: none yet)."""
        with self._lock:
            return None if self._arrival is None else now - self._arrival

    def measured(self) -> np.ndarray | None:
        """Return the newest valid chain positions (chain order), or None."""
        with self._lock:
            return None if self._q is None else self._q.copy()

    # -- targets (the tick's thread) ---------------------------------------------------------

    def targets(self, commands: Sequence[np.ndarray]) -> JointTargets:
        """
        Return one point per command of the chunk (clamped 7-D commands, first = this tick's).

        Raise KinematicsError without a valid joint state (the runner holds before that).
        """
        with self._lock:
            q0, grip0 = self._q, self._gripper_q
        if q0 is None:
            raise KinematicsError('no joint state to start from')
        start = time.perf_counter()
        cmds = np.asarray(commands, dtype=float).reshape(len(commands), -1)
        if self.action_space == EE_DELTA:
            arm = self.kinematics.targets(q0, cmds[:, :GRIPPER], self.period_s)
        else:
            arm = self._passthrough(q0, cmds[:, self._columns])
        grip = np.array([self._gripper(g, grip0) for g in cmds[:, GRIPPER]]) \
            .reshape(len(cmds), -1)
        self.target_ms.append((time.perf_counter() - start) * 1e3)
        return JointTargets(self.names, np.hstack([arm, grip]))

    def hold(self, gripper: float) -> JointTargets | None:
        """
        Return the hold: the measured positions, one point (None before any joint state).

        The gripper joints go to `gripper` (the last gripper command), or stay where they are
        measured when it is NaN ("no gripper command yet").
        """
        with self._lock:
            q0, grip0 = self._q, self._gripper_q
        if q0 is None:
            return None
        point = np.concatenate([q0, self._gripper(gripper, grip0)])
        return JointTargets(self.names, point[None, :], hold=True)

    def _gripper(self, command: float, measured: np.ndarray | None) -> np.ndarray:
        """Return the gripper joints' targets for one gripper command (NaN: as measured)."""
        if not self.gripper_joints:
            return np.zeros(0)
        if np.isnan(command):
            assert measured is not None
            return measured.copy()
        opened, closed = self._gripper_positions
        return np.full(len(self.gripper_joints), opened + float(command) * (closed - opened))

    def _passthrough(self, q0: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        """Clamp the model's joint targets to the position limits and each period's reach."""
        k = self.kinematics
        lo, hi = np.minimum(k.lower, q0), np.maximum(k.upper, q0)  # never pushed further out
        reach = k.velocity * self.period_s
        out = np.empty_like(wanted)
        q = q0
        for i, target in enumerate(wanted):
            q = np.clip(np.clip(target, q - reach, q + reach), lo, hi)
            out[i] = q
        return out
