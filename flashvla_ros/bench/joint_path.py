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
The joint path against the end-effector path on LIBERO, with the scripted expert's commands.

    python -m flashvla_ros.bench.joint_path --suite libero_object --init-states 0:10
        --json docs/ik/libero_joint_path_object.json

On the same initial states the expert drives LIBERO's Panda twice:

- `ee`: its commands go to the OSC_POSE controller, as OpenVLA's evaluation sends them;
- `joint`: the same commands, in metres and radians, go through the policy node's joint-output
  code (`JointCommander`: inverse kinematics from the measured joints, the gripper as
  `panda_finger_joint1`) into a joint position controller (`LiberoWorld(control='joint')`).

It reports the success of each path with Wilson intervals, their paired difference, the
solver's time per step, and two errors per step: the solver's (forward kinematics of the
target against the commanded pose) and the controller's (the tool pose the step reached
against the target's), which is the arm's lag, the same for any joint controller.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import time

import numpy as np

from ..control.joint_commands import JointCommander
from ..control.kinematics import ArmKinematics
from ..sim.libero import GRIPPER_JOINT, TOOL_FRAME, LiberoEpisode, LiberoWorld
from ..sim.worlds import EpisodeSpec
from .run import paired_diff, specs_range, wilson

PERIOD_S = 0.05  # LIBERO's 20 Hz control
GRIPPER_POSITIONS = (0.0, 0.04)  # panda_finger_joint1 at gripper command 0 (closed), 1 (open)


def joint_commander(world: LiberoWorld) -> JointCommander:
    """Build the node's joint-output code for LIBERO's Panda (config/joints_libero.yaml)."""
    kinematics = ArmKinematics.from_urdf(world.robot_description(), TOOL_FRAME)
    return JointCommander(kinematics, PERIOD_S, max_age_s=1.0,
                          gripper_joints=[GRIPPER_JOINT], gripper_positions=GRIPPER_POSITIONS)


def pose_errors(kinematics: ArmKinematics, q0: np.ndarray, command: np.ndarray,
                q1: np.ndarray) -> tuple[float, float]:
    """Return (mm, degrees) between the commanded tool pose from `q0` and the pose at `q1`."""
    import pinocchio as pin
    start, reached = kinematics.forward(q0), kinematics.forward(q1)
    position = start[:3, 3] + command[:3]
    rotation = pin.exp3(command[3:6]) @ start[:3, :3]
    angle = np.linalg.norm(pin.log3(rotation.T @ reached[:3, :3]))
    return float(np.linalg.norm(reached[:3, 3] - position) * 1e3), float(np.degrees(angle))


def run_ee(world: LiberoWorld, spec: EpisodeSpec) -> bool:
    """Roll the expert out through OSC_POSE, as OpenVLA's evaluation sends commands."""
    episode = world.open(spec, render=False)
    while not episode.done:
        episode.step(episode.expert_action())
    return episode.success()


def run_joint(world: LiberoWorld, spec: EpisodeSpec, commander: JointCommander,
              errors: dict[str, list[float]]) -> bool:
    """Roll the expert out through the node's IK into the joint position controller."""
    episode: LiberoEpisode = world.open(spec, render=False)
    kinematics = commander.kinematics
    while not episode.done:
        state = episode.joint_state()
        commander.observe(state.names, state.positions, time.monotonic())
        q0 = commander.measured()
        command = world.command.to_metres(episode.expert_action())
        targets = commander.targets([command])
        chain = targets.points[0][:kinematics.dof]
        episode.step_joints(targets.names, targets.points[0])
        state = episode.joint_state()
        commander.observe(state.names, state.positions, time.monotonic())
        mm, deg = pose_errors(kinematics, q0, command, chain)
        # A step some joint makes at its velocity limit falls short of the command, by design.
        limited = np.any(np.abs(chain - q0) >= kinematics.velocity * PERIOD_S * (1 - 1e-9))
        errors['limited'].append(float(limited))
        errors['ik_mm' if not limited else 'limited_mm'].append(mm)
        errors['ik_deg' if not limited else 'limited_deg'].append(deg)
        reached = kinematics.forward(commander.measured())
        wanted = kinematics.forward(chain)
        errors['lag_mm'].append(float(np.linalg.norm(reached[:3, 3] - wanted[:3, 3]) * 1e3))
    return episode.success()


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {'p50': float(np.percentile(arr, 50)), 'p99': float(np.percentile(arr, 99)),
            'max': float(arr.max())}


def compare(suite: str, start: int, stop: int, tasks: list[int] | None = None,
            log=print) -> dict:
    """Run both paths on every task's initial states start..stop-1; return the report."""
    ee_world = LiberoWorld(suite)
    joint_world = LiberoWorld(suite, control='joint')
    commander = joint_commander(joint_world)
    specs = ee_world.specs(stop - start, start, tasks)
    errors: dict[str, list[float]] = {k: [] for k in (
        'ik_mm', 'ik_deg', 'limited', 'limited_mm', 'limited_deg', 'lag_mm')}
    ee, joint, groups = [], [], []
    try:
        for spec in specs:
            ee.append(run_ee(ee_world, spec))
            joint.append(run_joint(joint_world, spec, commander, errors))
            groups.append(spec.group)
            log(f'{spec.key}: ee {"ok" if ee[-1] else "FAIL"}, '
                f'joint {"ok" if joint[-1] else "FAIL"}')
    finally:
        ee_world.close()
        joint_world.close()
    per_task = {g: {'ee': int(sum(e for e, gg in zip(ee, groups, strict=True) if gg == g)),
                    'joint': int(sum(j for j, gg in zip(joint, groups, strict=True) if gg == g)),
                    'episodes': groups.count(g)} for g in dict.fromkeys(groups)}
    return {
        'suite': suite, 'init_states': f'{start}:{stop}', 'episodes': len(specs),
        'controller': 'ee: OSC_POSE (LIBERO default); joint: JOINT_POSITION kp 150, '
                      'damping ratio 1, targets from JointCommander (DLS IK)',
        'success': {'ee': float(np.mean(ee)), 'joint': float(np.mean(joint))},
        'wilson': {'ee': wilson(ee), 'joint': wilson(joint)},
        'paired_joint_minus_ee': paired_diff(ee, joint),
        'per_task': per_task,
        'ik_ms_per_step': percentiles(list(commander.target_ms)),
        'steps': len(errors['lag_mm']),
        # The solver's error where no joint met its velocity limit; where one did, the tool
        # moves less than commanded (the step is shortened, not bent): the share and the error.
        'ik_error_mm': percentiles(errors['ik_mm']),
        'ik_error_deg': percentiles(errors['ik_deg']),
        'velocity_limited_share': float(np.mean(errors['limited'])),
        'velocity_limited_error_mm': percentiles(errors['limited_mm'] or [0.0]),
        'velocity_limited_error_deg': percentiles(errors['limited_deg'] or [0.0]),
        'controller_lag_mm': percentiles(errors['lag_mm']),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--suite', default='libero_object')
    parser.add_argument('--init-states', default='0:10', help='start:stop of every task')
    parser.add_argument('--tasks', default='', help='task indices, e.g. 0,3 (default: all)')
    parser.add_argument('--json', type=Path, help='write the report here')
    args = parser.parse_args(argv)
    start, stop = specs_range(args.init_states)
    tasks = [int(t) for t in args.tasks.split(',')] if args.tasks else None
    report = compare(args.suite, start, stop, tasks)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + '\n')


if __name__ == '__main__':
    main()
