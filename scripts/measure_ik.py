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
Compare IK solvers for end-effector commands: Pinocchio DLS against a pink QP (daqp).

    .venv/bin/pip install pin example-robot-data pin-pink daqp
    .venv/bin/python scripts/measure_ik.py [--out docs/ik/solvers.json] [--period 0.05]

On the Panda (tool `panda_hand_tcp`) and the UR5 (`tool0`) of `example-robot-data`:

- tracking: seeded random well-conditioned poses (smallest Jacobian singular value >= 0.08),
  chunks of 8 random commands (up to 5 mm and 0.03 rad per axis), each from the previous
  target; error of the tool pose against the composed target (see
  `flashvla_ros/control/kinematics.py`); time per tick for one command and for a chunk;
- limits: the Panda's joint 7 near its upper limit, a command that turns the tool 0.03 rad
  about joint 7's axis (pushing it up) while moving 5 mm in x: overshoot past the limit,
  position error of the translation once the joint has stopped;
- singularities: the UR5 with wrist_2 = 0.02 rad (0 is singular) and the Panda upright with
  joint 4 at its upper limit (-0.07 rad, nearly stretched), commands along the Jacobian's
  weakest direction (1 cm of mixed position and rotation per step): largest joint step as
  a share of the velocity budget, distance to the chunk's goal before and after.

Prints a table and writes the figures to JSON. Timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import importlib.metadata
import json
from pathlib import Path
import platform
import time
from typing import Any

import numpy as np
import pinocchio as pin

from flashvla_ros.control.kinematics import ArmKinematics

ROBOTS = {
    'panda': ('panda_description/urdf/panda.urdf', 'panda_hand_tcp'),
    'ur5': ('ur_description/urdf/ur5_robot.urdf', 'tool0'),
}


def urdf_text(rel: str) -> str:
    """Return a URDF shipped by the example-robot-data wheel."""
    root = importlib.metadata.distribution('example-robot-data').locate_file(
        'cmeel.prefix/share/example-robot-data/robots')
    return (Path(str(root)) / rel).read_text()


class PinkSolver:
    """The QP alternative: pink frame task + posture task, position and velocity limits."""

    def __init__(self, kin: ArmKinematics, iterations: int = 1) -> None:
        """Share the reduced model of `kin` (its world is the base)."""
        import pink
        from pink.limits import ConfigurationLimit, VelocityLimit
        from pink.tasks import FrameTask, PostureTask
        self.pink = pink
        self.kin = kin
        self.model = kin._model
        self.frame = FrameTask(kin.ee_frame, position_cost=1.0, orientation_cost=1.0)
        self.posture = PostureTask(cost=1e-3)
        self.limits = [ConfigurationLimit(self.model), VelocityLimit(self.model)]
        self.iterations = iterations

    def targets(self, q_start: np.ndarray, commands: np.ndarray, period_s: float) -> np.ndarray:
        """Solve like `ArmKinematics.targets` (revolute joints only: q is the angle)."""
        kin = self.kin
        if kin.posture is None:
            kin.posture = q_start.copy()
        self.posture.set_target(kin.posture)
        conf = self.pink.Configuration(self.model, self.model.createData(), q_start.copy())
        out = np.empty((len(commands), len(q_start)))
        for i, cmd in enumerate(commands):
            ee = conf.get_transform_frame_to_world(kin.ee_frame)
            target = pin.SE3(pin.exp3(cmd[3:6]) @ ee.rotation, ee.translation + cmd[:3])
            self.frame.set_target(target)
            q0 = conf.q.copy()
            for _ in range(self.iterations):
                # Each iteration gets the velocity budget that is left of this period.
                left = period_s * self.model.velocityLimit - np.abs(conf.q - q0)
                lim = [self.limits[0],
                       # pink reads a limit under 1e-10 as none: keep a spent one tiny.
                       self.pink.limits.VelocityLimit(self.model, np.maximum(left / period_s,
                                                                             1e-9))]
                v = self.pink.solve_ik(conf, [self.frame, self.posture], period_s,
                                       solver='daqp', limits=lim, safety_break=False)
                conf.integrate_inplace(v, period_s)
            out[i] = conf.q
        return out


def pose_error(prev: np.ndarray, cmd: np.ndarray, now: np.ndarray) -> tuple[float, float]:
    """Return (mm, deg) between `now` and `prev` moved by `cmd` (base-frame command)."""
    p_t = prev[:3, 3] + cmd[:3]
    r_t = pin.exp3(cmd[3:6]) @ prev[:3, :3]
    return (1e3 * float(np.linalg.norm(now[:3, 3] - p_t)),
            float(np.degrees(np.linalg.norm(pin.log3(r_t.T @ now[:3, :3])))))


def sigma_min(kin: ArmKinematics, q: np.ndarray) -> float:
    """Return the smallest singular value of the tool Jacobian at `q`."""
    return float(np.linalg.svd(kin._kinematics(q, True), compute_uv=False)[-1])


def tracking(kin: ArmKinematics, solve: Callable, period: float, poses: int,
             seed: int) -> dict[str, Any]:
    """Time and score random chunks from random well-conditioned poses."""
    rng = np.random.default_rng(seed)
    tick, chunk, mm, deg = [], [], [], []
    done = limited = 0
    while done < poses:
        q = rng.uniform(np.maximum(kin.lower, -3.0) + 0.3, np.minimum(kin.upper, 3.0) - 0.3)
        if sigma_min(kin, q) < 0.08:
            continue
        done += 1
        kin.posture = q.copy()
        cmds = np.concatenate([rng.uniform(-0.005, 0.005, (8, 3)),
                               rng.uniform(-0.03, 0.03, (8, 3))], axis=1)
        for _ in range(3):
            t = time.perf_counter()
            solve(q, cmds[:1], period)
            tick.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = solve(q, cmds, period)
        chunk.append(time.perf_counter() - t)
        prev, q_prev = kin.forward(q), q
        for cmd, qt in zip(cmds, out, strict=True):
            now = kin.forward(qt)
            e_mm, e_deg = pose_error(prev, cmd, now)
            # A step at a joint's velocity limit is cut short on purpose: not a miss.
            limited += bool(np.max(np.abs(qt - q_prev) / (kin.velocity * period)) > 0.999)
            q_prev = qt
            mm.append(e_mm)
            deg.append(e_deg)
            prev = now
    return {
        'tick_ms_median': 1e3 * float(np.median(tick)),
        'tick_ms_p99': 1e3 * float(np.percentile(tick, 99)),
        'chunk8_ms_median': 1e3 * float(np.median(chunk)),
        'chunk8_ms_p99': 1e3 * float(np.percentile(chunk, 99)),
        'err_mm_median': float(np.median(mm)), 'err_mm_max': float(np.max(mm)),
        'err_deg_median': float(np.median(deg)), 'err_deg_max': float(np.max(deg)),
        'velocity_limited_steps': limited, 'steps': len(mm),
    }


def at_limit(kin: ArmKinematics, solve: Callable, period: float) -> dict[str, Any]:
    """Push the Panda's joint 7 into its upper limit while translating."""
    q = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, kin.upper[6] - 0.15])
    kin.posture = q.copy()
    jac = kin._kinematics(q, True)
    axis = jac[3:, 6] / np.linalg.norm(jac[3:, 6])  # joint 7 turns the tool about this
    cmds = np.tile(np.concatenate([[0.005, 0.0, 0.0], 0.03 * axis]), (20, 1))
    out = solve(q, cmds, period)
    prev, pos_mm = kin.forward(q), []
    for cmd, qt in zip(cmds, out, strict=True):
        now = kin.forward(qt)
        if qt[6] >= kin.upper[6] - 1e-6:
            pos_mm.append(1e3 * float(np.linalg.norm(now[:3, 3] - prev[:3, 3] - cmd[:3])))
        prev = now
    return {
        'overshoot_rad': float(max(0.0, np.max(out[:, 6] - kin.upper[6]))),
        'steps_at_limit': len(pos_mm),
        'pos_err_mm_at_limit_max': float(max(pos_mm)) if pos_mm else None,
        'max_step_over_budget': float(np.max(np.abs(np.diff(np.vstack([q, out]), axis=0))
                                             / (kin.velocity * period))),
    }


def singular(kin: ArmKinematics, solve: Callable, period: float, q: np.ndarray,
             size: float) -> dict[str, Any]:
    """Command along the weakest Jacobian direction at `q`; report joint steps and error."""
    kin.posture = q.copy()
    u = np.linalg.svd(kin._kinematics(q, True))[0][:, -1]
    cmds = np.tile(size * u / np.linalg.norm(u), (10, 1))
    out = solve(q, cmds, period)
    steps = np.abs(np.diff(np.vstack([q, out]), axis=0)) / (kin.velocity * period)
    # Distance to the pose the whole chunk asked for, before and after.
    goal = kin.forward(q)
    for cmd in cmds:
        goal = np.vstack([np.hstack([pin.exp3(cmd[3:]) @ goal[:3, :3],
                                     (goal[:3, 3] + cmd[:3])[:, None]]), [0, 0, 0, 1]])
    before = pose_error(goal, np.zeros(6), kin.forward(q))
    after = pose_error(goal, np.zeros(6), kin.forward(out[-1]))
    return {
        'sigma_min': sigma_min(kin, q),
        'max_step_over_budget': float(steps.max()),
        'goal_err_before_mm_deg': before, 'goal_err_after_mm_deg': after,
        'finite': bool(np.all(np.isfinite(out))),
    }


def main() -> None:
    """Measure both solvers and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--out', default='docs/ik/solvers.json')
    parser.add_argument('--period', type=float, default=0.05, help='control period, s')
    parser.add_argument('--poses', type=int, default=40)
    args = parser.parse_args()

    results: dict[str, Any] = {}
    for robot, (rel, ee) in ROBOTS.items():
        text = urdf_text(rel)
        t = time.perf_counter()
        kin = ArmKinematics.from_urdf(text, ee)
        build_ms = 1e3 * (time.perf_counter() - t)
        solvers = {'dls': kin.targets,
                   'pink_qp': PinkSolver(kin).targets,
                   'pink_qp_x3': PinkSolver(kin, iterations=3).targets}
        for name, solve in solvers.items():
            row: dict[str, Any] = {'build_ms': build_ms}
            row.update(tracking(kin, solve, args.period, args.poses, seed=1))
            if robot == 'panda':
                row['limit'] = at_limit(kin, solve, args.period)
                stretched = np.array([0.0, 0.0, 0.0, kin.upper[3], 0.0, 0.0, 0.0])
                row['singular'] = singular(kin, solve, args.period, stretched, 0.01)
            else:
                wrist = np.array([0.3, -1.2, 1.5, -1.9, 0.02, 0.5])
                row['singular'] = singular(kin, solve, args.period, wrist, 0.01)
            results[f'{robot}/{name}'] = row
            kin.posture = None

    head = ('robot/solver', 'tick med', 'tick p99', 'chunk8 med', 'chunk8 p99', 'mm max',
            'deg max', 'limit over', 'limit mm', 'sing step/budget', 'sing goal mm,deg')
    print(' | '.join(head))
    for key, r in results.items():
        lim = r.get('limit', {})
        sing = r['singular']
        print(' | '.join([
            key, f"{r['tick_ms_median']:.3f} ms", f"{r['tick_ms_p99']:.3f} ms",
            f"{r['chunk8_ms_median']:.3f} ms", f"{r['chunk8_ms_p99']:.3f} ms",
            f"{r['err_mm_max']:.4f}", f"{r['err_deg_max']:.4f}",
            f"{lim['overshoot_rad']:.1e}" if lim else '-',
            ('-' if lim.get('pos_err_mm_at_limit_max') is None
             else f"{lim['pos_err_mm_at_limit_max']:.3f}"),
            f"{sing['max_step_over_budget']:.3f}",
            '{:.1f},{:.2f} -> {:.1f},{:.2f}'.format(
                *sing['goal_err_before_mm_deg'], *sing['goal_err_after_mm_deg'])]))
    versions = {name: importlib.metadata.version(name)
                for name in ('pin', 'example-robot-data', 'pin-pink', 'daqp', 'numpy')}
    out = {'period_s': args.period, 'poses': args.poses, 'machine': platform.processor()
           or platform.machine(), 'versions': versions, 'results': results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + '\n')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
