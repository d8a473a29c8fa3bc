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
Several robots, one model, through real processes: batched against one at a time (a benchmark).

    python scripts/measure_multi_robot.py                     # N = 1, 2, 4, 8, then faults
    python scripts/measure_multi_robot.py --robots 4 --duration 20 --faults none

For each N, N mock worlds (separate processes, 29.97 Hz cameras, namespaces r1..rN) run
against one `policy_node` serving `robots: [r1..rN]` with the shipped config/policy.yaml and
the embedded default model: once batched (`max_batch` 8) and once one at a time (`max_batch`
1), back to back. This process is the independent subscriber: per robot it records
`rN/policy_node/command_timing` and computes the figures of docs/TIMING.md (command rate, tick
lateness, frame to command, missed ticks) against their targets; throughput is the steps the
server served per second (its /diagnostics `batched_steps`). Fault scenarios (4 robots,
batched): `disappear` kills r4's world when the measurement starts; `flood` adds a process
that publishes r4's camera topic as fast as it can (also a CPU hog: its targets are the busy
ones). Writes `--json` (default docs/multi_robot/cpu.json).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys

# This folder: the same probe of processes, the same CPU reading.
from measure_node_timing import ProcessProbe, cpu_idle_share, cpu_times

from flashvla_ros.control.timing import BUSY, IDLE, missed_targets, unjudged_targets
from flashvla_ros.ros.processes import robot_names, ros_env, start_policy, start_world

ROOT = Path(__file__).resolve().parent.parent
PERIOD_S = 0.1  # config/policy.yaml's control_rate_hz
FLOOD = '''
import sys, rclpy, numpy as np
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from flashvla_ros.ros.convert import rgb_to_image
rclpy.init()
node = rclpy.create_node('camera_flood')
pub = node.create_publisher(Image, sys.argv[1], qos_profile_sensor_data)
rgb = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
while rclpy.ok():
    pub.publish(rgb_to_image(rgb, node.get_clock().now().to_msg()))
'''


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def cpu_shares(procs: dict[str, list[int]], before: dict[int, float], seconds: float
               ) -> dict[str, float]:
    """Cores used by each group of processes over `seconds` (1.0: one core, busy)."""
    return {name: round(sum(process_cpu_s(p) - before[p] for p in pids) / seconds, 3)
            for name, pids in procs.items()}


class Fleet(ProcessProbe):
    """N mock worlds and one server as processes; this process probes every robot."""

    def __init__(self, robots: int, max_batch: int, args: argparse.Namespace,
                 logs: Path) -> None:
        from flashvla_ros.ros.command_probe import CommandProbe

        self.robots = robot_names(robots)
        self.worlds = {r: start_world(r, 1000 * i, logs, '-p', 'max_steps:=80', '-p',
                                      f'camera_rate_hz:={args.camera_hz}')
                       for i, r in enumerate(self.robots)}
        self.server = start_policy('default', logs, self.robots, f'max_batch:={max_batch}',
                                   *args.param, params_file=ROOT / 'config' / 'policy.yaml')
        # A world may be killed on purpose (the disappear fault): only the server is watched.
        super().__init__(f'{robots} robots', logs, [self.server],
                         [self.server, *self.worlds.values()])
        self.probes = {r: CommandProbe(self.node, f'/{r}/policy_node') for r in self.robots}

    def wait_for_actions(self) -> None:
        self.wait_until(lambda: all(any(r.kind == 'action' for r in p.records)
                                    for p in self.probes.values()), 180,
                        'not every robot acted')


def run(name: str, robots: int, max_batch: int, fault: str, args: argparse.Namespace,
        logs: Path) -> dict:
    fleet = Fleet(robots, max_batch, args, logs)
    try:
        fleet.wait_for_actions()
        fleet.spin(args.warmup)
        if fault == 'disappear':
            fleet.worlds['r4'].kill()
        elif fault == 'flood':
            fleet.procs.append(subprocess.Popen([sys.executable, '-c', FLOOD,
                                                 '/r4/image_raw']))
        before = dict(fleet.diagnostics.status)
        worlds = [w.pid for w in fleet.worlds.values()]
        groups = {'server': [fleet.server.pid], 'worlds': worlds, 'probe': [os.getpid()],
                  'other': [p.pid for p in fleet.procs[1 + len(worlds):]]}
        used = {pid: process_cpu_s(pid) for pids in groups.values() for pid in pids}
        since, cpu = fleet.now(), cpu_times()
        fleet.spin(args.duration)
        idle = cpu_idle_share(cpu, cpu_times())
        cores_used = cpu_shares(groups, used, args.duration)
        after = dict(fleet.diagnostics.status)
        per_robot = {r: dict(fleet.diagnostics.robot(r)) for r in fleet.robots}
    finally:
        fleet.close()
    served = int(after.get('batched_steps', 0)) - int(before.get('batched_steps', 0))
    rows = {}
    for robot, probe in fleet.probes.items():
        figures = probe.figures(PERIOD_S, since)
        status = per_robot[robot]
        inference = float(status.get('latency_p50_ms', 'nan'))
        targets = BUSY if fault == 'flood' else IDLE
        misses = [] if fault == 'disappear' and robot == 'r4' else missed_targets(
            figures, PERIOD_S, inference, 1.0 / args.camera_hz, targets)
        rows[robot] = {**{k: round(v, 3) if isinstance(v, float) else v
                          for k, v in figures.items()},
                       'inference_p50_ms': inference,
                       'reuse_rate': float(status.get('policy_reuse_rate', 'nan')),
                       'dropped_frames': int(status.get('dropped_frames', 0)),
                       # In the node, at the tick's start (before publishing): the thread's wake.
                       'node_tick_lateness_p99_ms': float(status.get('tick_lateness_p99_ms',
                                                                     'nan')),
                       'status': status.get('message', ''), 'missed_targets': misses,
                       'unjudged_targets': unjudged_targets(figures)}
    judged_names = [n for n in rows if not (fault and n == 'r4')]  # the others are judged
    judged = [rows[n] for n in judged_names]
    return {
        'name': name, 'robots': robots, 'max_batch': max_batch, 'fault': fault,
        'duration_s': args.duration,
        'cpu_idle_share': round(idle, 3),
        'cores_used': cores_used,
        'steps_per_s': round(served / args.duration, 2),
        'mean_batch': float(after.get('mean_batch', 'nan')),
        'min_command_rate_hz': min(r['command_rate_hz'] for r in judged),
        'max_lateness_p99_ms': max(r['lateness_p99_ms'] for r in judged),
        'max_lateness_max_ms': max(r['lateness_max_ms'] for r in judged),
        'max_frame_to_command_p50_ms': max(r['frame_to_command_p50_ms'] for r in judged),
        'max_first_action_p50_ms': max(r['first_action_p50_ms'] for r in judged),
        'max_inference_p50_ms': max(r['inference_p50_ms'] for r in judged),
        'max_missed_share': max(r['missed_share'] for r in judged),
        'skipped_ticks': sum(r['skipped_ticks'] for r in judged),
        'unjudged_targets': sorted({u for r in judged for u in r['unjudged_targets']}),
        'robots_missing_targets': [n for n in judged_names if rows[n]['missed_targets']],
        'per_robot': rows,
    }


def print_table(rows: list[dict]) -> None:
    print('| run | CPU idle | steps/s served | mean batch | commands/s (min robot) '
          '| tick lateness p99 / max (worst robot) | skipped ticks (all robots) '
          '| inference p50 (worst) | frame to command p50 (worst) | first action p50 (worst) '
          '| missed ticks (worst) | robots missing a target |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        missing = ', '.join(r['robots_missing_targets']) or 'none'
        if r['unjudged_targets']:
            missing += f' ({"; ".join(r["unjudged_targets"])})'
        print(f'| {r["name"]} | {r["cpu_idle_share"]:.0%} | {r["steps_per_s"]:.1f} '
              f'| {r["mean_batch"]:.2f} | {r["min_command_rate_hz"]:.2f} '
              f'| {r["max_lateness_p99_ms"]:.1f} / {r["max_lateness_max_ms"]:.1f} ms '
              f'| {r["skipped_ticks"]} | {r["max_inference_p50_ms"]:.1f} ms '
              f'| {r["max_frame_to_command_p50_ms"]:.1f} ms '
              f'| {r["max_first_action_p50_ms"]:.1f} ms | {r["max_missed_share"]:.1%} '
              f'| {missing} |')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--robots', type=int, action='append',
                        help='N mock robots (repeatable; default 1, 2, 4, 8)')
    parser.add_argument('--faults', action='append', choices=('disappear', 'flood', 'none'),
                        help='fault scenarios with 4 robots (default both; none: skip)')
    parser.add_argument('--modes', default='batched,one', help='batched, one (at a time) or '
                        'both, comma-separated')
    parser.add_argument('--duration', type=float, default=30.0, help='measured seconds each')
    parser.add_argument('--warmup', type=float, default=8.0,
                        help='seconds after every robot acted before measuring')
    parser.add_argument('--camera-hz', type=float, default=29.97)
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='a policy_node parameter over config/policy.yaml')
    parser.add_argument('--json', default=str(ROOT / 'docs' / 'multi_robot' / 'cpu.json'))
    args = parser.parse_args(argv)
    os.environ.update(ros_env(own_domain=True))
    logs = Path('build/multi-robot-logs')
    logs.mkdir(parents=True, exist_ok=True)
    kinds = (('batched', 'batched', 8), ('one', 'one at a time', 1))
    modes = [(name, batch) for key, name, batch in kinds if key in args.modes.split(',')]
    label = ' '.join(args.param)
    plan = [(f'N={n} {mode}{" " + label if label else ""}', n, batch, '')
            for n in args.robots or (1, 2, 4, 8) for mode, batch in modes]
    faults = [f for f in args.faults or ('disappear', 'flood') if f != 'none']
    plan += [(f'N=4 batched, r4 {f}', 4, 8, f) for f in faults]

    import rclpy
    rclpy.init()
    rows: list[dict] = []
    failed: list[dict] = []
    try:
        for name, n, batch, fault in plan:
            print(f'== {name}: {args.warmup:g} s warm-up, {args.duration:g} s measured',
                  flush=True)
            try:
                rows.append(run(name, n, batch, fault, args, logs))
            except RuntimeError as exc:  # reported, and the other runs go on
                print(f'{name}: {exc}', flush=True)
                failed.append({'name': name, 'error': str(exc)})
                continue
            print_table(rows[-1:])
    finally:
        rclpy.try_shutdown()
    print()
    print_table(rows)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        'what': 'one policy_node serving N mock robots (separate processes), the embedded '
                'default model, config/policy.yaml, batched (max_batch 8) vs one at a time '
                '(max_batch 1); figures per robot from an independent subscriber '
                '(docs/TIMING.md), targets of docs/TIMING.md',
        'cores': os.cpu_count(), 'camera_hz': args.camera_hz, 'params': args.param,
        'rows': rows, 'failed_runs': failed}, indent=1) + '\n')
    print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
