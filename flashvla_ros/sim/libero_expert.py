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
A scripted expert for LIBERO's pick-and-place suites (LIBERO-Object, LIBERO-Spatial).

It reads the task's goal from the BDDL problem (`(In <obj> <region>)` or `(On <obj> <target>)`)
and the simulator's poses and collision geometry (privileged state), and returns one command
(OSC_POSE x, y, z, roll, pitch, yaw in [-1, 1] and a gripper in [0, 1], 1 = open) per step.

The command is a function of the current state: whether the fingers hold the object decides
between picking (hover above the grasp point, descend, close) and placing (lift to a height
that clears what lies between, carry the object's centre over the target, lower, open). So it
can label any state, e.g. one a learnt policy reached.

`python -m flashvla_ros.sim.libero_expert --suite libero_object --states 0:10` measures it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import json
import sys
import time
from typing import Any

import numpy as np

OPEN, CLOSED = 1.0, 0.0
MOTION_SCALE = 0.05  # metres per unit of the OSC_POSE command
GAIN = 14.0  # command per metre of error: full speed beyond ~7 cm, slowing in the last ones
ROT_GAIN = 2.5  # command per radian of orientation error
MAX_CMD = 1.0
HOVER = 0.07  # above the grasp point before descending onto it
LIFT_CLEAR = 0.04  # the carried object's bottom over whatever it passes
GRASP_TOL = 0.008  # metres: close the fingers within this of the grasp point
SQUEEZE_TOL = 0.03  # metres the object may slide from the fingers while they close on it
PLACE_TOL = 0.01
FINGER_OPEN = 0.075  # finger gap (m) above which the gripper counts as open
FINGER_REACH = 0.053  # the open fingers' outer faces at their tips, from the grip site
FINGER_UPPER = (0.065, 0.02)  # ... and higher up, where they widen: reach, height over the tips
NEIGHBOUR = 0.10  # what stands within this of the path sets the travel height
ANGLES = np.deg2rad(np.arange(0, 360, 45))  # candidate closing directions of a round object
RIM_ANGLES = np.deg2rad(np.arange(0, 360, 10))  # candidate sides of a bowl's rim to grasp
TURN_COST = 0.005  # metres of clearance worth one radian less of wrist turn
HAND_HALF = (0.11, 0.035)  # the hand's half length (along the fingers' closing) and width
HAND_ABOVE = 0.03  # the hand's underside over the grip site
CLEAR_ENOUGH = 0.03  # clearance beyond this scores no better
TIP_MARGIN = 0.01  # the fingertips' clearance below this scores twice


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in the world (metres)."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def center(self) -> np.ndarray:
        return (self.lo + self.hi) / 2


def goal_of(env: Any) -> tuple[str, str, str]:
    """Return (predicate, object, target) of the task's single goal, e.g. ('on', bowl, plate)."""
    goals = env.parsed_problem['goal_state']
    if len(goals) != 1 or len(goals[0]) != 3 or goals[0][0].lower() not in ('in', 'on'):
        raise ValueError(f'the expert places one object, not {goals!r}')
    return goals[0][0].lower(), goals[0][1], goals[0][2]


def _geom_corners(env: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Return each collision geom's box: its world corners (G, 8, 3), root body and footprint.

    A footprint row is (centre x, y, axis x, y, half length along it, half width across it,
    top): the rectangle, aligned with the geom, that bounds its shadow on the table. Unlike
    the world-aligned box it stays tight around a turned thin wall (a drawer's, a cabinet's).
    """
    model, data = env.sim.model._model, env.sim.data._data
    geoms = np.flatnonzero((model.geom_contype != 0) | (model.geom_conaffinity != 0))
    rot = data.geom_xmat[geoms].reshape(-1, 3, 3)
    half = model.geom_aabb[geoms, 3:]
    local = model.geom_aabb[geoms, None, :3] + _SIGNS * half[:, None]
    world = data.geom_xpos[geoms, None] + np.einsum('gij,gkj->gki', rot, local)
    # the most horizontal of the geom's axes sets the rectangle's directions
    flat = np.argmin(np.abs(rot[:, 2, :]), axis=1)
    axis = rot[np.arange(len(geoms)), :2, flat]
    axis /= np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-9)
    across = np.stack([-axis[:, 1], axis[:, 0]], axis=1)
    spans = np.abs(np.einsum('gi,gij->gj', axis, rot[:, :2])) * half
    widths = np.abs(np.einsum('gi,gij->gj', across, rot[:, :2])) * half
    center = world.mean(1)
    footprint = np.column_stack([center[:, :2], axis, spans.sum(1), widths.sum(1),
                                 world[:, :, 2].max(1)])
    return world, model.body_rootid[model.geom_bodyid[geoms]], footprint


_SIGNS = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T


def _box(points: np.ndarray) -> Box:
    return Box(points.min(0), points.max(0))


def _root(env: Any, name: str) -> int:
    return int(env.sim.model._model.body_rootid[env.obj_body_id[name]])


def _xy_distance(box: Box, point: np.ndarray) -> float:
    d = np.maximum(np.maximum(box.lo[:2] - point[:2], point[:2] - box.hi[:2]), 0.0)
    return float(np.linalg.norm(d))


def _top_along(boxes: list[Box], start: np.ndarray, end: np.ndarray, margin: float) -> float:
    """Return the highest top of `boxes` within `margin` of the xy segment start-end."""
    if not boxes:
        return -np.inf
    lo = np.array([b.lo[:2] for b in boxes])
    hi = np.array([b.hi[:2] for b in boxes])
    top = np.array([b.hi[2] for b in boxes])
    points = start[:2] + np.linspace(0.0, 1.0, 12)[:, None] * (end[:2] - start[:2])
    gap = np.maximum(np.maximum(lo[None] - points[:, None], points[:, None] - hi[None]), 0.0)
    near = (np.linalg.norm(gap, axis=-1) < margin).any(0)
    return float(top[near].max()) if near.any() else -np.inf


def _quat_xyzw_to_mat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _rotvec(r: np.ndarray) -> np.ndarray:
    """Return the axis-angle vector of a rotation matrix."""
    angle = np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if np.pi - angle < 1e-3:  # near a half turn the skew part vanishes: use the diagonal
        axis = np.sqrt(np.maximum((np.diag(r) + 1) / 2, 0.0))
        axis *= np.sign(np.where(np.abs(r[2] + r[:, 2]) > 1e-9, r[2] + r[:, 2], 1.0))
        return axis / np.linalg.norm(axis) * angle
    return axis / (2 * np.sin(angle)) * angle


def _down(yaw: float) -> np.ndarray:
    """Return the orientation of a gripper pointing down, its fingers closing along yaw+90deg."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


def _yaw_for(closing: float, current: float) -> float:
    """Return the gripper yaw closing its fingers along `closing`, nearest to `current`."""
    yaw = closing - np.pi / 2
    return float(current + (yaw - current + np.pi / 2) % np.pi - np.pi / 2)


@dataclass
class Grasp:
    """Where the grip site goes to close on the object, and the gripper's yaw there."""

    point: np.ndarray
    yaw: float


def _xy_distances(footprints: np.ndarray, points: list[np.ndarray], above: float) -> np.ndarray:
    """Return the xy distances from `points` to the footprints whose tops rise above `above`."""
    tall = footprints[footprints[:, 6] > above]
    if not len(tall):
        return np.full(1, np.inf)
    d = np.array(points)[:, None, :2] - tall[None, :, :2]
    along = np.abs(d[..., 0] * tall[:, 2] + d[..., 1] * tall[:, 3]) - tall[:, 4]
    across = np.abs(d[..., 1] * tall[:, 2] - d[..., 0] * tall[:, 3]) - tall[:, 5]
    return np.hypot(np.maximum(along, 0.0), np.maximum(across, 0.0)).ravel()


def _clearance(point: np.ndarray, closing: np.ndarray, others: np.ndarray
               ) -> tuple[float, float]:
    """Return how far (xy, m) the open fingers and the hand keep from `others`; the tips'."""
    across = np.array([-closing[1], closing[0], 0.0])
    tips = [point + s * FINGER_REACH * closing for s in (-1, 0, 1)]
    upper = [point + s * FINGER_UPPER[0] * closing for s in (-1, 1)]
    hand = [point + a * HAND_HALF[0] * closing + b * HAND_HALF[1] * across
            for a in np.linspace(-1, 1, 7) for b in (-1, 0, 1)]
    tip = min(float(_xy_distances(others, tips, point[2] - 0.01).min()), CLEAR_ENOUGH)
    return float(min(tip, _xy_distances(others, upper, point[2] + FINGER_UPPER[1]).min(),
                     _xy_distances(others, hand, point[2] + HAND_ABOVE).min())), tip


def _grasp(env: Any, name: str, shape: Box, corners: np.ndarray, eef_yaw: float,
           others: np.ndarray) -> Grasp:
    """
    Choose the grasp: a bowl by its rim, anything else across its narrow side, from above.

    Of the candidates (sides of the rim; points along a box's long side), the one whose
    fingers and hand stay clearest of the neighbours, then the least turn, then the centre.
    The choice depends on the scene only, not on where the gripper is.
    """
    height = shape.hi[2] - shape.lo[2]
    candidates = []  # (point, closing angle)
    if 'bowl' in name:
        center, radius = shape.center, (shape.hi[0] - shape.lo[0] + shape.hi[1] - shape.lo[1]) / 4
        # further in, the outer finger clears a wall close around the bowl (the drawer's)
        for a in RIM_ANGLES:
            for inset in (0.008, 0.018, 0.028):
                point = center + (radius - inset) * np.array([np.cos(a), np.sin(a), 0.0])
                point[2] = shape.hi[2] - 0.02
                candidates.append((point, a, inset - 0.008))
    else:
        body = env.sim.data.body_xmat[env.obj_body_id[name]].reshape(3, 3)
        local = corners @ body  # the geoms' corners in the object's frame
        extent = local.max(0) - local.min(0)
        vertical = int(np.argmax(np.abs(body[2])))
        a, b = [i for i in range(3) if i != vertical]
        narrow, wide = (a, b) if extent[a] < extent[b] else (b, a)
        center = shape.center.copy()
        center[2] = max(shape.hi[2] - 0.03, shape.lo[2] + min(0.012, height / 2))
        closing = float(np.arctan2(body[1, narrow], body[0, narrow]))
        along = body[:, wide] * np.array([1.0, 1.0, 0.0])
        along /= max(np.linalg.norm(along), 1e-9)
        reach = max(extent[wide] / 2 - 0.02, 0.0)
        for shift in np.linspace(-reach, reach, 7):
            candidates.append((center + shift * along, closing, abs(shift)))
        if extent[narrow] > 0.85 * extent[wide]:  # round: any closing direction grips it
            candidates += [(center, a, 0.001) for a in ANGLES[1:4]]
    best, best_score = None, -np.inf
    for point, angle, shift in candidates:
        u = np.array([np.cos(angle), np.sin(angle), 0.0])
        # the turn from the arm's home yaw (0), not its current one: the choice stays put
        clear, tip = _clearance(point, u, others)
        # a fingertip that lands on a wall stalls the descent: that counts twice
        score = (clear + min(tip, TIP_MARGIN) - TURN_COST * abs(_yaw_for(angle, 0.0))
                 - 0.2 * shift)
        if score > best_score:
            best, best_score = Grasp(point, _yaw_for(angle, eef_yaw)), score
    return best


def _move(eef: np.ndarray, goal: np.ndarray, clear_z: float, tol: float) -> np.ndarray:
    """Return the translation command: up to `clear_z` first when far, then straight on."""
    xy = goal[:2] - eef[:2]
    target = goal.copy()
    if np.linalg.norm(xy) > max(tol, 0.02):
        target[2] = max(goal[2], clear_z)
        if eef[2] < clear_z - 0.02:  # still below what lies on the way: rise before moving
            target[:2] = eef[:2] + xy * 0.2
    step = (target - eef) * GAIN
    norm = np.linalg.norm(step)
    return step if norm <= MAX_CMD else step * (MAX_CMD / norm)


def expert_action(episode: Any) -> np.ndarray:
    """Return the expert's command for the episode's current state."""
    obs, env = episode.obs, episode.env.env
    predicate, name, target = goal_of(env)
    eef = np.asarray(obs['robot0_eef_pos'], dtype=np.float64)
    rot = _quat_xyzw_to_mat(np.asarray(obs['robot0_eef_quat'], dtype=np.float64))
    eef_yaw = float(np.arctan2(rot[1, 0], rot[0, 0]))
    gap = float(obs['robot0_gripper_qpos'][0] - obs['robot0_gripper_qpos'][1])
    opening = float(obs['robot0_gripper_qvel'][0]) > 0.005
    closing = float(obs['robot0_gripper_qvel'][0]) < -0.005

    root = _root(env, name)
    geoms, roots, footprints = _geom_corners(env)
    corners = geoms[roots == root].reshape(-1, 3)
    shape = _box(corners)
    if predicate == 'in':  # a region (site) of a container: the container is the obstacle
        holder = env.object_states_dict[target].parent_name
        target_xy = np.asarray(env.sim.data.get_site_xpos(target))[:2]
    else:
        holder = target
        target_xy = np.asarray(env.sim.data.body_xpos[env.obj_body_id[target]])[:2]
    holder_shape = _box(geoms[roots == _root(env, holder)].reshape(-1, 3))
    # every object and fixture but the one carried (not the robot, the table or the floor)
    scene = {_root(env, n) for n in list(env.objects_dict) + list(env.fixtures_dict)} - {root}
    in_scene = np.isin(roots, list(scene))
    others = [_box(g) for g in geoms[in_scene]]
    held = bool(env._check_grasp(gripper=env.robots[0].gripper, object_geoms=env.get_object(name)))
    held = held and 0.002 < gap < FINGER_OPEN and not opening

    if held:  # carry the object's centre over the target, lower it, let go
        offset = eef - np.append(shape.center[:2], shape.lo[2])
        if predicate == 'in':  # its bottom low in the container, the fingers not below its rim
            bottom = max(holder_shape.lo[2] + 0.03, holder_shape.hi[2] - 0.03 - offset[2])
        else:  # its bottom just on the target
            bottom = holder_shape.hi[2] + 0.005
        goal = np.append(target_xy, bottom) + offset
        top = _top_along(others, shape.center, np.append(target_xy, 0.0),
                         NEIGHBOUR + (shape.hi[0] - shape.lo[0]) / 2)
        clear_z = max(top, holder_shape.hi[2]) + LIFT_CLEAR + offset[2]
        command = _move(eef, goal, clear_z, PLACE_TOL)
        placed = np.linalg.norm(goal[:2] - eef[:2]) < PLACE_TOL and eef[2] - goal[2] < PLACE_TOL
        gripper = OPEN if placed else CLOSED
        yaw = eef_yaw
    else:
        grasp = _grasp(env, name, shape, corners, eef_yaw, footprints[in_scene])
        yaw = grasp.yaw
        near = _top_along(others, eef, grasp.point, NEIGHBOUR)
        hover = grasp.point + np.array([0.0, 0.0, HOVER])
        clear_z = max(hover[2], near + 0.05)
        err = grasp.point - eef
        yaw_err = abs((yaw - eef_yaw + np.pi) % (2 * np.pi) - np.pi)
        at_grasp = np.linalg.norm(err[:2]) < GRASP_TOL and abs(err[2]) < GRASP_TOL
        # a finger that meets the object first pushes it: keep closing while the fingers move
        squeezing = closing and np.linalg.norm(err[:2]) < SQUEEZE_TOL and abs(err[2]) < GRASP_TOL
        if (at_grasp or squeezing) and not opening and gap > 0.004:
            command, gripper = np.zeros(3), CLOSED
        elif gap < FINGER_OPEN and not (at_grasp or squeezing):  # missed: open, rise, retry
            command, gripper = _move(eef, eef + np.array([0.0, 0.0, 0.05]), eef[2], 1.0), OPEN
        elif np.linalg.norm(err[:2]) < 0.01 and yaw_err < 0.1:  # above it, turned: descend
            command, gripper = _move(eef, grasp.point, -np.inf, GRASP_TOL), OPEN
        else:
            command, gripper = _move(eef, hover, clear_z, 0.01), OPEN
    turn = np.clip(_rotvec(_down(yaw) @ rot.T) * ROT_GAIN, -MAX_CMD, MAX_CMD)
    return np.concatenate([command, turn, [gripper]])


def _states(text: str) -> range:
    start, _, stop = text.partition(':')
    return range(int(start), int(stop)) if stop else range(int(start), int(start) + 1)


def run(suite: str, states: range, tasks: list[int] | None = None,
        log: Any = sys.stdout) -> dict[str, Any]:
    """Run the expert on every task (or `tasks`) of `suite` from `states`; return the tally."""
    from .libero import LiberoWorld
    world = LiberoWorld(suite=suite)
    per_task: dict[str, dict[str, Any]] = {}
    steps, seconds = [], []
    try:
        for spec in world.specs(len(states), states.start, tasks):
            t0 = time.perf_counter()
            episode = world.open(spec, render=False)
            while not episode.done:
                episode.step(expert_action(episode))
            seconds.append(time.perf_counter() - t0)
            steps.append(episode.steps)
            row = per_task.setdefault(spec.group, {'task': spec.task, 'success': 0, 'episodes': 0,
                                                   'failed': []})
            row['episodes'] += 1
            row['success'] += int(episode.success())
            if not episode.success():
                row['failed'].append(spec.seed)
            print(f'{suite} task {spec.task} state {spec.seed}: '
                  f'{"ok" if episode.success() else "FAIL"} in {episode.steps} steps '
                  f'({seconds[-1]:.1f} s)', file=log, flush=True)
    finally:
        world.close()
    total = sum(r['success'] for r in per_task.values())
    count = sum(r['episodes'] for r in per_task.values())
    return {'suite': suite, 'states': [states.start, states.stop], 'tasks': per_task,
            'success': total, 'episodes': count, 'rate': total / max(count, 1),
            'mean_steps': float(np.mean(steps)) if steps else 0.0,
            'mean_seconds': float(np.mean(seconds)) if seconds else 0.0}


def main(argv: list[str] | None = None) -> int:
    """Measure the expert: success per task and overall, mean steps."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--suite', default='libero_object')
    parser.add_argument('--states', default='0:10', help='initial states, start:stop')
    parser.add_argument('--tasks', default=None, help='task indices, e.g. 0,3 (default: all)')
    parser.add_argument('--json', default=None, help='also write the tally here')
    args = parser.parse_args(argv)
    tasks = [int(t) for t in args.tasks.split(',')] if args.tasks else None
    result = run(args.suite, _states(args.states), tasks)
    for group, row in result['tasks'].items():
        print(f'task {row["task"]:2d} {row["success"]:3d}/{row["episodes"]:<3d} {group}'
              + (f'  failed states {row["failed"]}' if row['failed'] else ''))
    print(f'{result["suite"]}: {result["success"]}/{result["episodes"]} '
          f'({100 * result["rate"]:.0f}%), mean {result["mean_steps"]:.0f} steps, '
          f'{result["mean_seconds"]:.1f} s per episode')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
