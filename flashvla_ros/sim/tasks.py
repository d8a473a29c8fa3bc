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
Task families over the tabletop: instruction, success check and a scripted expert.

The expert is a function of the current state only (no memory), so it can label any state a
learner visits (DAgger-style). Its moves are saturated at the step limit far from a goal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import (
    BLOCK_HALF,
    EE_RADIUS,
    MAX_STEP,
    TABLE_SIZE,
    WorldState,
    random_state,
    render,
    step,
)
from .worlds import CommandUnits, EpisodeSpec, JointState

PUSH_DISTANCE = 0.08  # metres a pushed block must travel along the asked direction
PUSH_DIRECTIONS = {
    'to the left': np.array([-1.0, 0.0]), 'to the right': np.array([1.0, 0.0]),
    'forward': np.array([0.0, 1.0]), 'backward': np.array([0.0, -1.0]),
}
REACH_TOLERANCE = 0.02
FAMILIES = ('reach', 'pick_place', 'push')


@dataclass(frozen=True)
class Task:
    family: str
    block: str
    zone: str = ''
    direction: str = ''

    @property
    def instruction(self) -> str:
        if self.family == 'reach':
            return f'move to the {self.block} block'
        if self.family == 'pick_place':
            return f'put the {self.block} block in the {self.zone} zone'
        return f'push the {self.block} block {self.direction}'


GANTRY_JOINTS = ('gantry_x', 'gantry_y', 'gripper')  # the mock robot: an x-y gantry
# Its URDF: base_link at the table's corner (x right, y up in the image), two prismatic joints
# over the table (the ee's range: world.step clips it there) carrying the `tool` frame, and the
# gripper (0 open, 1 closed) on the tool. The velocity limit is above any clamped command.
GANTRY_URDF = f"""<robot name="mock_gantry">
  <link name="base_link"/>
  <link name="x_carriage"/>
  <link name="y_carriage"/>
  <link name="tool"/>
  <link name="finger"/>
  <joint name="gantry_x" type="prismatic">
    <parent link="base_link"/><child link="x_carriage"/>
    <origin xyz="0 0 0" rpy="0 0 0"/><axis xyz="1 0 0"/>
    <limit lower="0" upper="{TABLE_SIZE}" effort="100" velocity="1.0"/>
  </joint>
  <joint name="gantry_y" type="prismatic">
    <parent link="x_carriage"/><child link="y_carriage"/>
    <origin xyz="0 0 0" rpy="0 0 0"/><axis xyz="0 1 0"/>
    <limit lower="0" upper="{TABLE_SIZE}" effort="100" velocity="1.0"/>
  </joint>
  <joint name="tool_fixed" type="fixed">
    <parent link="y_carriage"/><child link="tool"/>
    <origin xyz="0 0 0" rpy="0 0 0"/>
  </joint>
  <joint name="gripper" type="prismatic">
    <parent link="tool"/><child link="finger"/>
    <origin xyz="0 0 0" rpy="0 0 0"/><axis xyz="0 0 1"/>
    <limit lower="0" upper="1" effort="10" velocity="10"/>
  </joint>
</robot>
"""


class Episode:
    """One seeded episode: a world, a task, and the step limit it must be solved within."""

    def __init__(self, seed: int, family: str | None = None, max_steps: int = 80,
                 image_size: int = 224) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.image_size = image_size
        self.max_steps = max_steps
        family = family or FAMILIES[int(rng.integers(len(FAMILIES)))]
        if family not in FAMILIES:
            raise ValueError(f'unknown task family {family!r}; choose from {FAMILIES}')
        for _ in range(100):
            self.state = random_state(rng)
            self.task = _sample_task(rng, family, self.state)
            if self.task is not None:
                break
        else:
            raise RuntimeError(f'no feasible {family} task for seed {seed}')
        self.spec = EpisodeSpec(family, seed)

    @property
    def instruction(self) -> str:
        return self.task.instruction

    @property
    def steps(self) -> int:
        return self.state.steps

    def observe(self) -> np.ndarray:
        return render(self.state, self.image_size)

    def cameras(self) -> dict[str, np.ndarray]:
        return {'overhead': self.observe()}

    def joint_state(self) -> JointState:
        closed = float(self.state.gripper_closed)
        return JointState(GANTRY_JOINTS, np.array([*self.state.ee, closed]))

    def step(self, action: np.ndarray) -> None:
        step(self.state, action)

    def step_joints(self, names: list[str], positions: np.ndarray) -> None:
        """
        Step towards absolute joint targets (`GANTRY_JOINTS` by name; a joint controller's).

        The gantry moves by the targets' offset from where it is (clipped to one step's
        reach, as every step); `gripper` closes as a command's does; absent, it stays.
        """
        by_name = dict(zip(names, np.asarray(positions, dtype=np.float64), strict=True))
        unknown = sorted(set(by_name) - set(GANTRY_JOINTS))
        missing = [n for n in GANTRY_JOINTS[:2] if n not in by_name]
        if unknown or missing:
            raise ValueError(f'joint targets: unknown {unknown}, missing {missing}')
        target = np.array([by_name['gantry_x'], by_name['gantry_y']])
        if not np.isfinite(target).all():
            raise ValueError('joint targets must be finite')
        gripper = by_name.get('gripper', np.nan)  # NaN: as it is
        step(self.state, np.array([*(target - self.state.ee), 0.0, 0.0, 0.0, 0.0, gripper]))

    def success(self) -> bool:
        return is_success(self.task, self.state)

    @property
    def done(self) -> bool:
        return self.success() or self.state.steps >= self.max_steps

    def expert_action(self) -> np.ndarray:
        return expert_action(self.task, self.state)


class MockWorld:
    """The tabletop as a `World`: seeds from `start` on, the task families in turn."""

    name = 'mock'
    command = CommandUnits()  # metres per step; gripper 1 closes

    def __init__(self, max_steps: int = 80, families: tuple[str, ...] = FAMILIES,
                 image_size: int = 224) -> None:
        self.max_steps = max_steps
        self.families = families
        self.image_size = image_size

    def specs(self, count: int, start: int = 0) -> list[EpisodeSpec]:
        return [EpisodeSpec(self.families[i % len(self.families)], start + i)
                for i in range(count)]

    def open(self, spec: EpisodeSpec, render: bool = True) -> Episode:
        """Start `spec`; an empty group is a family drawn from the seed."""
        return Episode(spec.seed, spec.group or None, max_steps=self.max_steps,
                       image_size=self.image_size)

    def close(self) -> None:
        pass

    def robot_description(self) -> str:
        """Return the gantry's URDF: joint_state()'s joints, the ee's range, a `tool` frame."""
        return GANTRY_URDF


def _sample_task(rng: np.random.Generator, family: str, state: WorldState) -> Task | None:
    block = state.blocks[int(rng.integers(len(state.blocks)))]
    if family == 'reach':
        return Task('reach', block.colour)
    if family == 'pick_place':
        zone = state.zones[int(rng.integers(len(state.zones)))]
        return Task('pick_place', block.colour, zone=zone.colour)
    # A push must have room on the table: the block's goal and the approach point fit.
    names = list(PUSH_DIRECTIONS)
    for i in rng.permutation(len(names)):
        d = PUSH_DIRECTIONS[names[i]]
        goal = block.pos + d * (PUSH_DISTANCE + 0.02)
        approach = block.pos - d * 0.06
        inside = (goal >= BLOCK_HALF).all() and (goal <= TABLE_SIZE - BLOCK_HALF).all()
        if inside and (approach >= 0).all() and (approach <= TABLE_SIZE).all():
            return Task('push', block.colour, direction=names[i])
    return None


def is_success(task: Task, state: WorldState) -> bool:
    block = state.block(task.block)
    if task.family == 'reach':
        return bool(np.linalg.norm(state.ee - block.pos) <= REACH_TOLERANCE)
    if task.family == 'pick_place':
        held = state.held is not None and state.blocks[state.held] is block
        return state.zone(task.zone).contains(block.pos) and not held
    start = state.start_blocks[state.blocks.index(block)]
    return bool(np.dot(block.pos - start, PUSH_DIRECTIONS[task.direction]) >= PUSH_DISTANCE)


def _move(ee: np.ndarray, target: np.ndarray, gripper: float) -> np.ndarray:
    delta = np.clip(target - ee, -MAX_STEP, MAX_STEP)
    return np.array([delta[0], delta[1], 0.0, 0.0, 0.0, 0.0, gripper])


def expert_action(task: Task, state: WorldState) -> np.ndarray:
    """Return the scripted action for the current state (metres; gripper 1 closes)."""
    block = state.block(task.block)
    if task.family == 'reach':
        return _move(state.ee, block.pos, 0.0)
    if task.family == 'pick_place':
        held = state.held is not None and state.blocks[state.held] is block
        zone = state.zone(task.zone)
        if not held:
            if state.gripper_closed:
                return _move(state.ee, state.ee, 0.0)  # open first (wrong block or empty)
            if np.linalg.norm(block.pos - state.ee) <= 0.005:
                return _move(state.ee, state.ee, 1.0)
            return _move(state.ee, block.pos, 0.0)
        if np.linalg.norm(zone.pos - state.ee) <= 0.01:
            return _move(state.ee, state.ee, 0.0)
        return _move(state.ee, zone.pos, 1.0)
    return _push_action(task, state, block.pos)


def _push_action(task: Task, state: WorldState, block: np.ndarray) -> np.ndarray:
    """Push with the closed gripper: get behind the block, then move along the direction."""
    if state.held is not None:
        return _move(state.ee, state.ee, 0.0)  # let go of whatever was grasped
    if not state.gripper_closed:
        near = [b.pos for b in state.blocks if np.linalg.norm(b.pos - state.ee) <= 0.03]
        if near:  # closing here would grasp: step away first
            return _move(state.ee, state.ee + (state.ee - near[0]) * 10, 0.0)
        return _move(state.ee, state.ee, 1.0)
    d = PUSH_DIRECTIONS[task.direction]
    perp = np.array([-d[1], d[0]])
    rel = state.ee - block
    along, across = float(rel @ d), float(rel @ perp)
    contact = BLOCK_HALF + EE_RADIUS
    behind = block - d * (contact + 0.005)
    if along < -contact + 0.01 and abs(across) < 0.004:
        return _move(state.ee, state.ee + d * MAX_STEP, 1.0)  # aligned behind: push
    if along < -contact:
        return _move(state.ee, behind, 1.0)  # behind but off-line: slide into line
    # In front or beside: step out sideways (nearer side that stays on the table), then
    # around to behind. The 2 mm hysteresis keeps the two waypoints from trading places.
    clear = contact + 0.02
    side = 1.0 if across >= 0 else -1.0
    if not _on_table(block + perp * side * clear):
        side = -side
    if abs(across) < clear - 0.002 or np.sign(across) != side:
        return _move(state.ee, block + perp * side * clear + d * max(along, 0.0), 1.0)
    return _move(state.ee, block + perp * side * clear - d * (contact + 0.01), 1.0)


def _on_table(p: np.ndarray) -> bool:
    return bool(((p >= 0.0) & (p <= TABLE_SIZE)).all())


def run_expert(seed: int, family: str | None = None) -> tuple[bool, int]:
    """Roll the expert out on one seeded episode; return (success, steps)."""
    ep = Episode(seed, family)
    while not ep.done:
        ep.step(ep.expert_action())
    return ep.success(), ep.state.steps
