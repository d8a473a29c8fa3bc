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

"""LIBERO as a world (the LIBERO tier): its episodes under OpenVLA's protocol, and the bench."""

from importlib.metadata import entry_points
import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip('libero')
pytest.importorskip('robosuite')

from flashvla_ros.bench.run import main as bench_main  # noqa: E402
from flashvla_ros.sim.libero import LiberoWorld  # noqa: E402
from flashvla_ros.sim.openvla_protocol import NOOP_ACTION, SUITE_STEPS, policy_frame  # noqa: E402

pytestmark = pytest.mark.libero


@pytest.fixture(scope='module')
def world():
    world = LiberoWorld('libero_object')
    yield world
    world.close()


def test_episodes_come_task_by_task_over_the_fixed_initial_states(world):
    specs = world.specs(3, 5)
    assert world.n_tasks == 10 and len(specs) == 30
    assert [(s.task, s.seed) for s in specs[:4]] == [(0, 5), (0, 6), (0, 7), (1, 5)]
    assert world.init_states(0).shape[0] == 50
    with pytest.raises(ValueError, match=r'initial states 0\.\.49'):
        world.open(world.specs(1, 50)[0])


def test_an_episode_starts_settled_from_its_state_and_speaks_the_protocol(world):
    spec = world.specs(1, 0, [0])[0]
    episode = world.open(spec)
    assert episode.steps == 0 and not episode.done
    assert episode.max_steps == SUITE_STEPS['libero_object'] == 280
    assert episode.instruction == 'pick up the alphabet soup and place it in the basket'
    frame = episode.observe()
    assert frame.shape == (224, 224, 3) and frame.dtype == np.uint8
    raw = episode.obs['agentview_image']
    assert np.array_equal(frame, policy_frame(raw, center_crop=False))
    assert np.array_equal(episode.cameras()['agentview'], raw[::-1, ::-1])  # upright
    joints = episode.joint_state()
    assert joints.names[:7] == tuple(f'panda_joint{i}' for i in range(1, 8))
    assert joints.positions.shape == (9,)
    # The same state twice gives the same first frame: the 10 settling no-ops are deterministic.
    again = world.open(spec)
    assert np.array_equal(again.observe(), frame)


def test_commands_map_to_the_controller_as_openvla_sends_them(world):
    episode = world.open(world.specs(1, 0, [0])[0], render=False)
    # OpenVLA's gripper: 1 = open -> LIBERO -1; 0 = close -> +1. NaN (a hold) keeps it.
    assert episode.libero_action(np.array([0.1, 0, 0, 0, 0, 0, 0.0]))[6] == 1.0
    assert episode.libero_action(np.array([0.1, 0, 0, 0, 0, 0, 1.0]))[6] == -1.0
    episode.step(np.array([0, 0, 0, 0, 0, 0, 0.0]))  # close
    assert episode.libero_action(np.array([0, 0, 0, 0, 0, 0, np.nan]))[6] == 1.0
    with pytest.raises(ValueError, match='6 finite motions'):
        episode.libero_action(np.array([np.inf, 0, 0, 0, 0, 0, 0.0]))
    assert NOOP_ACTION.tolist() == [0, 0, 0, 0, 0, 0, -1]


def test_an_episode_ends_at_the_suites_step_limit(world):
    episode = world.open(world.specs(1, 1, [2])[0], render=False)
    while not episode.done:
        episode.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))  # stay open, never succeed
    assert episode.steps == 280 and not episode.success()


def test_the_bench_runs_a_libero_episode_end_to_end(tmp_path):
    out = tmp_path / 'report.json'
    assert bench_main(['--world', 'libero', '--suite', 'libero_object', '--tasks', '0',
                       '--init-states', '0:1', '--render', 'fast', '--accel', 'none',
                       '--json', str(out)]) == 0
    report = json.loads(out.read_text())
    assert report['world'] == 'libero' and report['suite'] == 'libero_object'
    assert report['episodes'] == 1 and report['specs'] == [[0, 0]]
    config = report['configs'][0]
    # The embedded model was not trained on LIBERO: the loop is checked, not its success.
    assert config['control_steps'] == 280 or config['success'] == 1.0
    assert list(config['per_group']) == ['pick_up_the_alphabet_soup_and_place_it_in_the_basket']
    assert report['expert']['success'] == 1.0  # the scripted expert solves this one


def test_a_recorded_state_redraws_the_frame_the_episode_showed(world):
    # Not bit for bit: the camera renders the kinematics of the physics step's start (mj_step
    # integrates after computing them), a redraw those of the state, one 2 ms substep later.
    # A moving edge shifts by about a pixel; everything else is identical.
    episode = world.open(world.specs(1, 3, [1])[0])
    states, frames = [], []
    for _ in range(8):
        states.append(episode.env.sim.data.qpos.astype(np.float32))
        frames.append(episode.observe())
        episode.step(episode.expert_action())
    for frame, state in zip(frames, states, strict=True):
        diff = np.abs(world.render_state(1, state).astype(int) - frame.astype(int))
        assert diff.mean() < 1.0 and (diff > 8).mean() < 0.02, (diff.mean(), (diff > 8).mean())


def test_every_entry_point_imports_beside_the_extra():
    # The extra must not break the rest: e.g. a CUDA torchvision beside the CPU torch fails on
    # import, and transformers imports torchvision when it is present.
    scripts = [e for e in entry_points(group='console_scripts')
               if e.value.startswith('flashvla_ros.')]
    assert len(scripts) >= 10
    for script in scripts:
        importlib.import_module(script.module)
    if importlib.util.find_spec('torchvision') is not None:
        importlib.import_module('torchvision')
    import cv2
    assert hasattr(cv2, 'imdecode')  # one cv2 (headless), not overwritten by opencv-python


def _forward_kinematics(urdf: str, positions: dict[str, float], tip: str) -> np.ndarray:
    """Chain the URDF's joint transforms from the root to `tip` (numpy only, no library)."""
    import xml.etree.ElementTree as ET

    def transform(xyz, angles):
        r, p, y = angles
        rx = np.array([[1, 0, 0], [0, np.cos(r), -np.sin(r)], [0, np.sin(r), np.cos(r)]])
        ry = np.array([[np.cos(p), 0, np.sin(p)], [0, 1, 0], [-np.sin(p), 0, np.cos(p)]])
        rz = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])
        t = np.eye(4)
        t[:3, :3], t[:3, 3] = rz @ ry @ rx, xyz
        return t

    joints = {j.find('child').get('link'): j for j in ET.fromstring(urdf).iter('joint')}
    chain, link = [], tip
    while link in joints:
        chain.append(joints[link])
        link = joints[link].find('parent').get('link')
    pose = np.eye(4)
    for joint in reversed(chain):
        origin = joint.find('origin')
        pose = pose @ transform([float(v) for v in origin.get('xyz').split()],
                                [float(v) for v in origin.get('rpy').split()])
        if joint.get('type') == 'revolute':
            axis = np.array([float(v) for v in joint.find('axis').get('xyz').split()])
            angle = positions[joint.get('name')]
            k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
            spin = np.eye(4)
            spin[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
            pose = pose @ spin
    return pose


def test_the_robot_description_is_the_simulated_arm(world):
    urdf = world.robot_description()
    assert urdf.count('type="revolute"') == 7 and urdf.count('type="prismatic"') == 2
    assert 'name="panda_grip_site"' in urdf and 'name="panda_joint4"' in urdf
    episode = world.open(world.specs(1, 0, [0])[0], render=False)
    sim = episode.env.sim
    rng = np.random.default_rng(0)
    base = sim.data.body_xpos[sim.model.body_name2id('robot0_base')].copy()
    for _ in range(5):
        q = rng.uniform(-1.0, 1.0, 7) + np.array([0, 0, 0, -1.5, 0, 1.8, 0])
        for i, value in enumerate(q, 1):
            sim.data.qpos[sim.model.get_joint_qpos_addr(f'robot0_joint{i}')] = value
        sim.forward()
        site = sim.model.site_name2id('gripper0_grip_site')
        pose = _forward_kinematics(urdf, {f'panda_joint{i}': v for i, v in enumerate(q, 1)},
                                   'panda_grip_site')
        assert np.allclose(pose[:3, 3], sim.data.site_xpos[site] - base, atol=1e-6)
        assert np.allclose(pose[:3, :3], sim.data.site_xmat[site].reshape(3, 3), atol=1e-6)


def test_joint_control_tracks_targets_and_keeps_its_interface_apart(world):
    joint_world = LiberoWorld('libero_object', control='joint')
    try:
        episode = joint_world.open(joint_world.specs(1, 0, [0])[0], render=False)
        joints = episode.joint_state()
        names = list(joints.names[:7])
        target = joints.positions[:7] + np.array([0.05, -0.05, 0, 0.05, 0, 0.05, 0])
        for _ in range(10):  # a few control periods: the controller settles on the target
            episode.step_joints([*names, 'panda_finger_joint1'], np.r_[target, 0.0])
        reached = episode.joint_state().positions
        assert np.abs(reached[:7] - target).max() < 0.01, reached[:7] - target
        assert reached[7] < 0.03  # finger target 0: the gripper closed
        with pytest.raises(ValueError, match='end-effector commands'):
            episode.step(np.zeros(7))
        with pytest.raises(ValueError, match='missing'):
            episode.step_joints(names[:6], target[:6])
        assert episode.steps == 10
    finally:
        joint_world.close()
    with pytest.raises(ValueError, match='joint targets'):
        world.open(world.specs(1, 0, [0])[0], render=False).step_joints(names, target)
