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

"""Inverse kinematics (control/kinematics.py) on the Panda's and the UR5's URDFs."""

import importlib.metadata
from pathlib import Path
import sys

import numpy as np
import pytest

from flashvla_ros.control.kinematics import INSTALL_HINT, ArmKinematics, KinematicsError

pin = pytest.importorskip('pinocchio')

ROBOTS = {
    'panda': ('panda_description/urdf/panda.urdf', 'panda_hand_tcp'),
    'ur5': ('ur_description/urdf/ur5_robot.urdf', 'tool0'),
}


def urdf(robot: str) -> str:
    """Return a URDF from the example-robot-data wheel, or skip without it."""
    try:
        root = importlib.metadata.distribution('example-robot-data').locate_file(
            'cmeel.prefix/share/example-robot-data/robots')
    except importlib.metadata.PackageNotFoundError:
        pytest.skip('example-robot-data is not installed')
    path = Path(str(root)) / ROBOTS[robot][0]
    if not path.is_file():
        pytest.skip(f'{path} is missing')
    return path.read_text()


def arm(robot: str, **kwargs) -> ArmKinematics:
    """Build the solver for a robot's tool frame."""
    return ArmKinematics.from_urdf(urdf(robot), ROBOTS[robot][1], **kwargs)


def goal(pose: np.ndarray, cmd: np.ndarray) -> np.ndarray:
    """Compose a base-frame command: p + dp, Exp(w) @ R (robosuite's OSC_POSE)."""
    out = np.eye(4)
    out[:3, :3] = pin.exp3(cmd[3:6]) @ pose[:3, :3]
    out[:3, 3] = pose[:3, 3] + cmd[:3]
    return out


def errors(want: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """Return (mm, degrees) between two poses."""
    return (1e3 * float(np.linalg.norm(got[:3, 3] - want[:3, 3])),
            float(np.degrees(np.linalg.norm(pin.log3(want[:3, :3].T @ got[:3, :3])))))


def sigma_min(kin: ArmKinematics, q: np.ndarray) -> float:
    """Return the smallest singular value of the tool's Jacobian at q."""
    model = kin._model
    data = model.createData()
    frame = model.getFrameId(kin.ee_frame)
    jac = pin.computeFrameJacobian(model, data, q, frame,
                                   pin.ReferenceFrame.LOCAL_WORLD_ALIGNED)
    return float(np.linalg.svd(jac, compute_uv=False)[-1])


def check_limits(kin: ArmKinematics, q0: np.ndarray, out: np.ndarray, period: float) -> None:
    """Assert position limits and per-step velocity limits along a chunk."""
    assert np.all(out >= kin.lower - 1e-12) and np.all(out <= kin.upper + 1e-12)
    steps = np.abs(np.diff(np.vstack([q0, out]), axis=0))
    assert np.all(steps <= kin.velocity * period * (1 + 1e-9))


@pytest.mark.parametrize('robot', ['panda', 'ur5'])
def test_tracks_commands_from_random_poses(robot):
    """Each target moves the tool by its command within 1 mm and 0.5 degrees."""
    kin = arm(robot)
    rng = np.random.default_rng(7)
    period, done = 0.1, 0
    for _ in range(200):  # bounded: a broken sigma_min must fail, not hang
        if done == 12:
            break
        q = rng.uniform(np.maximum(kin.lower, -3.0) + 0.3, np.minimum(kin.upper, 3.0) - 0.3)
        if sigma_min(kin, q) < 0.08:  # reachable and well-conditioned
            continue
        done += 1
        cmds = np.concatenate([rng.uniform(-0.005, 0.005, (8, 3)),
                               rng.uniform(-0.03, 0.03, (8, 3)),
                               rng.uniform(-1.0, 1.0, (8, 1))], axis=1)  # gripper: ignored
        out = kin.targets(q, cmds, period)
        assert out.shape == (8, kin.dof)
        check_limits(kin, q, out, period)
        prev = kin.forward(q)
        for cmd, qt in zip(cmds, out, strict=True):
            now = kin.forward(qt)
            mm, deg = errors(goal(prev, cmd), now)
            assert mm < 1.0 and deg < 0.5, (robot, cmd, mm, deg)
            prev = now  # each command starts from the previous target
    assert done == 12


def test_rotation_is_a_rotation_vector_applied_on_the_left():
    """R_target = Exp(w) @ R in the base, which differs from R @ Exp(w) and from RPY."""
    kin = arm('panda')
    q = np.array([0.2, -0.6, 0.1, -2.2, 0.1, 1.7, 0.6])
    w = np.array([0.15, -0.1, 0.12])
    start = kin.forward(q)
    got = kin.forward(kin.targets(q, np.concatenate([[0.0, 0.0, 0.0], w])[None], 1.0)[0])
    assert errors(goal(start, np.concatenate([[0, 0, 0], w])), got)[1] < 0.5
    right = start.copy()
    right[:3, :3] = start[:3, :3] @ pin.exp3(w)
    rpy = start.copy()
    rpy[:3, :3] = pin.rpy.rpyToMatrix(*w) @ start[:3, :3]
    # The test can tell the conventions apart: both alternatives are off by degrees.
    assert errors(right, got)[1] > 2.0 and errors(rpy, got)[1] > 0.5
    assert errors(start, got)[0] < 1.0  # turns about the tool's own origin


def test_command_frame_moves_the_commands_axes():
    """With the tool as command frame, dx moves along the tool's own x axis."""
    kin = arm('panda', command_frame='panda_hand_tcp')
    q = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
    start = kin.forward(q)
    end = kin.forward(kin.targets(q, np.array([[0.01, 0, 0, 0, 0, 0]]), 0.1)[0])
    np.testing.assert_allclose(end[:3, 3] - start[:3, 3], 0.01 * start[:3, 0], atol=1e-4)


def test_base_frame_below_the_root_shortens_the_chain():
    """A base on link 1 leaves joints 2..7, and poses are relative to link 1."""
    kin = arm('panda', base_frame='panda_link1')
    full = arm('panda')
    assert kin.joint_names == full.joint_names[1:]
    q = np.array([-0.6, 0.1, -2.2, 0.1, 1.7, 0.6])
    model = pin.buildModelFromXML(urdf('panda'))
    data = model.createData()
    pin.framesForwardKinematics(model, data, np.concatenate([[0.4], q, [0.0, 0.0]]))
    want = data.oMf[model.getFrameId('panda_link1')].actInv(
        data.oMf[model.getFrameId('panda_hand_tcp')]).homogeneous
    np.testing.assert_allclose(kin.forward(q), want, atol=1e-9)


def test_joint_at_its_limit_stops_there_and_the_others_keep_tracking():
    """Turning the tool pushes joint 7 into its limit; it stops, the other six track."""
    kin = arm('panda')
    q = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, kin.upper[6] - 0.1])
    jac = pin.computeFrameJacobian(kin._model, kin._model.createData(), q,
                                   kin._model.getFrameId(kin.ee_frame),
                                   pin.ReferenceFrame.LOCAL_WORLD_ALIGNED)
    axis = jac[3:, 6] / np.linalg.norm(jac[3:, 6])  # turning about it raises joint 7
    cmds = np.tile(np.concatenate([[0.005, 0.0, 0.0], 0.03 * axis]), (15, 1))
    period = 0.1
    out = kin.targets(q, cmds, period)
    check_limits(kin, q, out, period)
    at_limit = np.isclose(out[:, 6], kin.upper[6], atol=1e-9)
    assert at_limit[-5:].all()  # reached the limit and stayed on it
    prev = kin.forward(q)
    for cmd, qt, stopped in zip(cmds, out, at_limit, strict=True):
        now = kin.forward(qt)
        if stopped:  # the Panda's other six joints still reach the whole pose
            mm, deg = errors(goal(prev, cmd), now)
            assert mm < 1.0 and deg < 0.5, (mm, deg)
        prev = now


def test_velocity_limit_shrinks_the_step_but_keeps_its_direction():
    """A 20 cm command at 20 Hz is cut to the velocity limits, in the commanded direction."""
    kin = arm('ur5')
    q = np.array([0.3, -1.2, 1.5, -1.9, 1.2, 0.5])
    period = 0.05
    cmd = np.array([[0.12, -0.16, 0.0, 0.0, 0.0, 0.0]])
    out = kin.targets(q, cmd, period)
    check_limits(kin, q, out, period)
    steps = np.abs(out[0] - q) / (kin.velocity * period)
    assert steps.max() == pytest.approx(1.0)  # limited
    moved = kin.forward(out[0])[:3, 3] - kin.forward(q)[:3, 3]
    cosine = moved @ cmd[0, :3] / (np.linalg.norm(moved) * np.linalg.norm(cmd[0, :3]))
    assert np.linalg.norm(moved) > 0.02 and cosine > 0.98


@pytest.mark.parametrize('wrist_2', [0.02, 0.0])
def test_near_the_wrist_singularity_joints_stay_slow(wrist_2):
    """Commands along the UR5's lost direction give bounded, slow, finite joint steps."""
    kin = arm('ur5')
    q = np.array([0.3, -1.2, 1.5, -1.9, wrist_2, 0.5])
    assert sigma_min(kin, q) < 0.01  # really near singular
    model = kin._model
    jac = pin.computeFrameJacobian(model, model.createData(), q,
                                   model.getFrameId(kin.ee_frame),
                                   pin.ReferenceFrame.LOCAL_WORLD_ALIGNED)
    weak = np.linalg.svd(jac)[0][:, -1]
    period = 0.1
    cmds = np.tile(0.01 * weak, (10, 1))
    out = kin.targets(q, cmds, period)
    assert np.all(np.isfinite(out))
    check_limits(kin, q, out, period)
    # Undamped, this direction asks several rad/s; damped, it stays well below the limit.
    steps = np.abs(np.diff(np.vstack([q, out]), axis=0)) / (kin.velocity * period)
    assert steps.max() < 0.5
    want = kin.forward(q)
    for cmd in cmds:
        want = goal(want, cmd)
    assert sum(errors(want, kin.forward(out[-1]))) <= sum(errors(want, kin.forward(q))) + 1e-9


def test_stretched_panda_pushing_outwards_stays_bounded():
    """The upright Panda, elbow at its limit, reaching further up: bounded, never away."""
    kin = arm('panda')
    q = np.array([0.0, 0.0, 0.0, kin.upper[3], 0.0, 0.0, 0.0])
    period = 0.05
    cmds = np.tile([0.0, 0.0, 0.02, 0.0, 0.0, 0.0], (10, 1))
    out = kin.targets(q, cmds, period)
    check_limits(kin, q, out, period)
    heights = [kin.forward(qt)[2, 3] for qt in out]
    assert np.all(np.diff(np.concatenate([[kin.forward(q)[2, 3]], heights])) >= -1e-6)


def test_refuses_bad_models_frames_and_joint_states():
    """Bad URDF, unknown frames, missing joints and bad inputs raise with the reason."""
    with pytest.raises(KinematicsError, match='does not load'):
        ArmKinematics.from_urdf('<robot name="x"><link', 'tool0')
    text = urdf('ur5')
    for kwargs, name in (({'ee_frame': 'nope'}, 'nope'),
                         ({'ee_frame': 'tool0', 'base_frame': 'plinth'}, 'plinth'),
                         ({'ee_frame': 'tool0', 'command_frame': 'camera'}, 'camera')):
        with pytest.raises(ValueError, match=f"'{name}' is not a frame"):
            ArmKinematics.from_urdf(text, **kwargs)
    with pytest.raises(KinematicsError, match='not an ancestor'):
        ArmKinematics.from_urdf(text, 'shoulder_link', base_frame='tool0')
    kin = ArmKinematics.from_urdf(text, 'tool0')
    names = [*reversed(kin.joint_names), 'gripper']
    q = kin.from_joint_state(names, [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 9.0])
    np.testing.assert_array_equal(q, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    with pytest.raises(KinematicsError, match='elbow_joint'):
        kin.from_joint_state([n for n in names if n != 'elbow_joint'], [0.0] * 6)
    with pytest.raises(KinematicsError, match='non-finite'):
        kin.from_joint_state(names, [np.nan] + [0.0] * 6)
    with pytest.raises(KinematicsError, match='6 joint positions'):
        kin.targets(np.zeros(5), np.zeros((1, 6)), 0.1)
    with pytest.raises(KinematicsError, match='commands'):
        kin.targets(np.zeros(6), np.zeros((1, 5)), 0.1)
    with pytest.raises(KinematicsError, match='period'):
        kin.targets(np.zeros(6), np.zeros((1, 6)), 0.0)


def test_continuous_joint_is_an_angle_without_limits():
    """A continuous joint takes one angle (Pinocchio stores cos, sin) and has no range."""
    text = """<robot name="turntable"><link name="base"/><link name="top"/>
      <joint name="spin" type="continuous"><parent link="base"/><child link="top"/>
      <axis xyz="0 0 1"/><limit effort="1" velocity="2"/></joint></robot>"""
    kin = ArmKinematics.from_urdf(text, 'top')
    assert kin.joint_names == ['spin'] and np.isinf(kin.lower[0]) and kin.velocity[0] == 2.0
    np.testing.assert_allclose(kin.forward([4.0])[:3, :3], pin.exp3(np.array([0, 0, 4.0])),
                               atol=1e-12)
    out = kin.targets([3.1], np.array([[0, 0, 0, 0, 0, 0.1]]), 1.0)
    assert out[0, 0] == pytest.approx(3.2, abs=1e-6)  # past pi: no wrap, no limit


def test_without_pinocchio_the_error_says_how_to_install(monkeypatch):
    """The lazy import names the pip extra and the rosdep key."""
    monkeypatch.setitem(sys.modules, 'pinocchio', None)
    with pytest.raises(ImportError) as info:
        ArmKinematics.from_urdf('<robot name="x"/>', 'tool0')
    assert str(info.value) == INSTALL_HINT
    assert ".[ik]'" in INSTALL_HINT and 'pinocchio' in INSTALL_HINT
