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
The control loop's timing through real processes, measured from outside (a benchmark).

    python scripts/measure_node_timing.py                  # the four scenarios below
    python scripts/measure_node_timing.py --scenario default --duration 30

Each scenario starts the mock world (a 29.97 Hz camera) and `policy_node` with the shipped
`config/policy.yaml` as separate processes; this process is the independent subscriber: it
records `~/command_timing` (docs/TIMING.md) and reads the node's inference p50 from
`/diagnostics`. Scenarios: `default` and `default-dit` (the embedded models), each on idle
cores and beside a CPU hog (another process spinning at normal priority: `+hog`). The
camera runs at 29.97 Hz, not 30: on one host clock a 30 Hz camera keeps one phase against the
10 Hz ticks for the whole run, and frame-to-command latency depends on that phase (48 to 75 ms
p50 in runs of the same code); a real camera's clock drifts, and 29.97 Hz sweeps every phase
once every 33 s. After a
warm-up it measures for `--duration` seconds, prints the figures beside the targets and
writes them to `--json` (default docs/latency/node_timing.json). `--exits N` then stops the
node N times from outside (SIGINT and SIGTERM in turn, while it commands) and reports the holds
that followed each signal, when the hold arrived and when the process had exited.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

from flashvla_ros.control.timing import BUSY, IDLE, missed_targets, unjudged_targets
from flashvla_ros.ros.processes import (
    DiagnosticsWatch,
    ros_env,
    start_policy,
    start_world,
    stop_processes,
)

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ('default', 'default+hog', 'default-dit', 'default-dit+hog')
HOG = 'while True: pass'


def cpu_idle_share(before: list[int], after: list[int]) -> float:
    """Idle share of all cores between two readings of /proc/stat's cpu line."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    return (delta[3] + delta[4]) / max(1, sum(delta))


def cpu_times() -> list[int]:
    return [int(x) for x in Path('/proc/stat').read_text().split('\n')[0].split()[1:]]


class ProcessProbe:
    """
    Processes under test, and this process's node that probes them from outside.

    `spin` raises when a `watched` process exits (unless it waits `until` something).
    """

    def __init__(self, name: str, logs: Path, watched: list[subprocess.Popen],
                 procs: list[subprocess.Popen]) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.name, self.logs, self.watched, self.procs = name, logs, watched, procs
        self.node = rclpy.create_node('flashvla_timing_probe')
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.diagnostics = DiagnosticsWatch(self.node)

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def spin(self, seconds: float, until=None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            self.executor.spin_once(timeout_sec=0.01)
            if until is None and any(p.poll() is not None for p in self.watched):
                raise RuntimeError(f'{self.name}: a process exited; see {self.logs}/')

    def wait_until(self, acting, timeout_s: float, what: str) -> None:
        """Spin until `acting()`; raise (naming `what`) when it did not within `timeout_s`."""
        self.spin(timeout_s, acting)
        if not acting():
            raise RuntimeError(f'{self.name}: {what} within {timeout_s:g} s; see {self.logs}/')

    def close(self) -> None:
        stop_processes(self.procs)
        self.executor.shutdown()
        self.node.destroy_node()


class Graph(ProcessProbe):
    """Mock world + policy_node as processes (and a CPU hog), this process as the probe."""

    def __init__(self, name: str, model: str, hog: bool, args: argparse.Namespace,
                 logs: Path) -> None:
        from flashvla_ros.ros.command_probe import CommandProbe

        procs = [subprocess.Popen([sys.executable, '-c', HOG])] if hog else []
        procs.append(start_world('', 0, logs, '-p', f'camera_rate_hz:={args.camera_hz}',
                                 '-p', 'max_steps:=80', log_prefix=f'{name}-'))
        self.policy = start_policy(model, logs, [], *args.param,
                                   params_file=ROOT / 'config' / 'policy.yaml',
                                   log_prefix=f'{name}-')
        procs.append(self.policy)
        super().__init__(name, logs, procs, procs)
        self.probe = CommandProbe(self.node)

    def wait_for_action(self) -> None:
        self.wait_until(lambda: bool(self.probe.records)
                        and self.probe.records[-1].kind == 'action', 120, 'no action')


def run_scenario(name: str, args: argparse.Namespace, logs: Path) -> dict:
    hog = name.endswith('+hog')
    graph = Graph(name, name.split('+')[0], hog, args, logs)
    probe, diagnostics = graph.probe, graph.diagnostics
    try:
        graph.wait_for_action()
        graph.spin(args.warmup)
        since = graph.now()
        cpu = cpu_times()
        graph.spin(args.duration)
        idle = cpu_idle_share(cpu, cpu_times())
        status = dict(diagnostics.status)
    finally:
        graph.close()
    period = 1.0 / 10.0  # config/policy.yaml's control_rate_hz
    figures = probe.figures(period, since)
    inference = float(status.get('latency_p50_ms', 'nan'))
    misses = missed_targets(figures, period, inference, 1.0 / args.camera_hz,
                            BUSY if hog else IDLE)
    return {'scenario': name, 'duration_s': args.duration, 'cpu_idle_share': round(idle, 3),
            **{k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()},
            'inference_p50_ms': inference,
            'inference_p99_ms': float(status.get('latency_p99_ms', 'nan')),
            'node': {k: status.get(k) for k in (
                'tick_lateness_p99_ms', 'tick_lateness_max_ms', 'command_hz', 'starved_ticks',
                'boundary_stalls', 'commanding_ticks', 'watchdog_holds', 'dropped_frames',
                'frames', 'inferences')},
            'missed_targets': misses, 'unjudged_targets': unjudged_targets(figures)}


def run_exits(count: int, args: argparse.Namespace, logs: Path) -> list[dict]:
    """Stop a commanding node `count` times by a signal; what followed each signal."""
    exits = []
    for i in range(count):
        sig = (signal.SIGINT, signal.SIGTERM)[i % 2]
        graph = Graph(f'exit{i}', 'default', False, args, logs)
        try:
            graph.wait_for_action()
            graph.spin(1.0)
            sent, sent_clock = graph.now(), time.monotonic()
            graph.policy.send_signal(sig)
            graph.spin(15, lambda g=graph: g.policy.poll() is not None)
            exited_s = time.monotonic() - sent_clock
            graph.spin(0.5, lambda: False)
            after = [r for r in graph.probe.records if r.arrival >= sent]
            holds = [r for r in after if r.kind == 'hold']
            exits.append({'signal': sig.name, 'holds_after': len(holds),
                          'ends_in_hold': bool(after) and after[-1].kind == 'hold',
                          'hold_after_ms': round((holds[0].arrival - sent) * 1e3, 1)
                          if holds else None,
                          'exit_after_s': round(exited_s, 2),
                          'returncode': graph.policy.returncode})
            print(f'  {exits[-1]}', flush=True)
        finally:
            graph.close()
    return exits


def print_table(rows: list[dict]) -> None:
    print('| scenario | CPU idle | commands/s | tick lateness p50 / p99 / max '
          '| intervals off by p99 / max | inference p50 '
          '| frame to first action p50 | missed ticks | skipped ticks | holds | targets |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f'| {r["scenario"]} | {r["cpu_idle_share"]:.0%} | {r["command_rate_hz"]:.2f} '
              f'| {r["lateness_p50_ms"]:.1f} / {r["lateness_p99_ms"]:.1f} / '
              f'{r["lateness_max_ms"]:.1f} ms | {r["interval_deviation_p99_ms"]:.1f} / '
              f'{r["interval_deviation_max_ms"]:.1f} ms | {r["inference_p50_ms"]:.1f} ms '
              f'| {r["first_action_p50_ms"]:.1f} ms | {r["missed_share"]:.1%} '
              f'| {r["skipped_ticks"]} | {r["holds"]} '
              f'| {"; ".join(r["missed_targets"] + r["unjudged_targets"]) or "all met"} |')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scenario', action='append', choices=SCENARIOS,
                        help='run these (repeatable; default: all four)')
    parser.add_argument('--duration', type=float, default=60.0, help='measured seconds each')
    parser.add_argument('--warmup', type=float, default=10.0,
                        help='seconds after the first action before measuring')
    parser.add_argument('--camera-hz', type=float, default=29.97)
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='a policy_node parameter over config/policy.yaml')
    parser.add_argument('--exits', type=int, default=8, help='signal exits tried (0: none)')
    parser.add_argument('--json', default=str(ROOT / 'docs' / 'latency' / 'node_timing.json'))
    args = parser.parse_args(argv)
    os.environ.update(ros_env(own_domain=True))
    logs = Path('build/timing-logs')
    logs.mkdir(parents=True, exist_ok=True)

    import rclpy
    rclpy.init()
    rows = []
    try:
        for name in args.scenario or SCENARIOS:
            print(f'== {name}: {args.warmup:g} s warm-up, {args.duration:g} s measured',
                  flush=True)
            rows.append(run_scenario(name, args, logs))
            print_table(rows[-1:])
        if args.exits:
            print(f'== {args.exits} signal exits', flush=True)
        exits = run_exits(args.exits, args, logs)
    finally:
        rclpy.try_shutdown()
    print()
    print_table(rows)
    Path(args.json).write_text(json.dumps({
        'what': 'policy_node timing through real processes (mock world, node, independent '
                'subscriber on ~/command_timing), config/policy.yaml, '
                f'{args.camera_hz:g} Hz camera, 10 Hz ticks; docs/TIMING.md',
        'cores': os.cpu_count(), 'params': args.param, 'rows': rows, 'exits': exits},
        indent=1) + '\n')
    print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
