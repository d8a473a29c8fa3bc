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
Long runs of the real node graph that print what a robot would have lived through (not a test).

    python scripts/soak.py                     # mock world, 30 Hz camera, new task every 20 s,
                                               # 10 minutes, the embedded default model
    python scripts/soak.py --image-bombs 60    # 60 s of 30 Hz healthy JPEG frames interleaved
                                               # with 30 Hz PNG bombs / corrupt JPEGs

It prints commands/s, holds (zero-motion commands seen by an independent subscriber and the
node's own count), starved ticks, watchdog holds, rejected frames and the policy node's RSS at
the start, at the end and at its peak; then it interrupts the node and checks the final hold.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import signal
import sys
import time

import cv2
import numpy as np

from flashvla_ros.policy.actions import MOTION
from flashvla_ros.ros.processes import (
    DiagnosticsWatch,
    resolve_model,
    ros_env,
    start_policy,
    start_world,
    stop_processes,
)
from flashvla_ros.sim.tasks import Episode

COMMANDS = '/policy_node/commands'


def rss_mb(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return float('nan')


def bad_images() -> list[tuple[str, bytes]]:
    """Small files that declare huge images, and JPEGs the decoder reports as damaged."""
    out = []
    for side in (8000, 12000):
        _, png = cv2.imencode('.png', np.full((side, side), 128, np.uint8))
        out.append(('png', png.tobytes()))
    frame = cv2.cvtColor(Episode(0).observe(), cv2.COLOR_RGB2BGR)
    _, jpeg = cv2.imencode('.jpg', frame)
    data = jpeg.tobytes()
    corrupt = bytearray(data)
    corrupt[len(data) // 2:len(data) // 2 + 30] = bytes(range(30))
    return [*out, ('jpeg', bytes(corrupt)), ('jpeg', data[:len(data) // 2])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', help='checkpoint directory (default: the embedded model)')
    parser.add_argument('--minutes', type=float, default=10.0)
    parser.add_argument('--camera-hz', type=float, default=30.0)
    parser.add_argument('--task-every', type=float, default=20.0, help='new task every s')
    parser.add_argument('--image-bombs', type=float, default=0.0, metavar='SECONDS',
                        help='instead: compressed camera with bombs for this long')
    parser.add_argument('--json', help='also write the summary here')
    args = parser.parse_args(argv)
    os.environ.update(ros_env(own_domain=True))
    try:
        model = resolve_model(args.model)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    bombs = args.image_bombs > 0
    duration = args.image_bombs if bombs else args.minutes * 60

    import rclpy
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import Float64MultiArray
    from std_srvs.srv import Trigger

    from flashvla_ros.ros.convert import rgb_to_compressed

    logs = Path('build/soak-logs')
    logs.mkdir(parents=True, exist_ok=True)
    procs = [] if bombs else [start_world('', 0, logs, '-p', f'camera_rate_hz:={args.camera_hz}',
                                          '-p', 'max_steps:=1000000')]
    policy = start_policy(model, logs, [], *(['image_transport:=compressed',
                                              'instruction:=pick up the red block']
                                             if bombs else []))
    procs.append(policy)

    rclpy.init()
    node = rclpy.create_node('flashvla_soak')
    # An action goes out on ~/commands and ~/raw_action, a hold on ~/commands only (the array
    # alone cannot tell: the policy may command zero motion itself).
    seen = {'commands': 0, 'raw': 0, 'last': None}

    def on_command(msg: Float64MultiArray) -> None:
        seen['commands'] += 1
        seen['last'] = list(msg.data)

    def holds_seen() -> int:
        return seen['commands'] - seen['raw']

    node.create_subscription(Float64MultiArray, COMMANDS, on_command, 10)
    node.create_subscription(Float64MultiArray, '/policy_node/raw_action',
                             lambda msg: seen.update(raw=seen['raw'] + 1), 10)
    status = DiagnosticsWatch(node).status  # the policy node's newest entry
    camera = node.create_publisher(CompressedImage, 'image_raw/compressed', 10)
    reset = node.create_client(Trigger, '/mock_world/reset')

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.01)

    print(f'waiting for the node ({model}); logs in {logs}/', flush=True)
    while status.get('lifecycle_state') != 'active' or (seen['commands'] < 5 and not bombs):
        spin(0.1)
        if policy.poll() is not None:
            print('policy_node exited during start-up')
            return 1
    frame = Episode(0).observe()
    bad = bad_images() if bombs else []
    spin(2.0 if bombs else 10.0)  # warm-up, then the baseline
    rss = {'start': rss_mb(policy.pid)}
    rss['peak'] = rss['start']
    base = {'commands': seen['commands'], 'holds': holds_seen()}
    base_node = {k: int(status.get(k, 0)) for k in ('holds', 'starved_ticks', 'commands',
                                                    'rejected_frames', 'watchdog_holds')}
    start = next_task = next_bomb = next_print = time.monotonic()
    tasks = 0
    period = 1.0 / args.camera_hz
    while time.monotonic() - start < duration:
        now = time.monotonic()
        if bombs and now >= next_bomb:  # a healthy frame and a bad one, each at camera rate
            stamp = node.get_clock().now().to_msg()
            camera.publish(rgb_to_compressed(frame, stamp))
            fmt, data = bad[int((now - start) / period) % len(bad)]
            camera.publish(CompressedImage(format=fmt, data=data))
            next_bomb += period
        if not bombs and now >= next_task:
            if reset.service_is_ready():
                reset.call_async(Trigger.Request())
                tasks += 1
            next_task += args.task_every
        spin(0.005)
        if now >= next_print:  # once a second: memory and a status line
            next_print += 1.0
            rss['peak'] = max(rss['peak'], rss_mb(policy.pid))
            print(f'\r[{now - start:6.1f} s] {status.get("message", "")[:60]:60} | '
                  f'{status.get("command_hz", "0")} Hz | holds {holds_seen() - base["holds"]} | '
                  f'RSS {rss_mb(policy.pid):7.1f} MB', end='', flush=True)
        if policy.poll() is not None:
            print('\npolicy_node exited')
            break
    elapsed = time.monotonic() - start
    rss['end'] = rss_mb(policy.pid)
    spin(1.2)  # diagnostics that cover the whole run
    node_counts = {k: int(status.get(k, 0)) - v for k, v in base_node.items()}
    before_exit = seen['commands']
    policy.send_signal(signal.SIGINT)
    policy.wait(20)
    spin(0.5)
    final = seen['last'] if seen['commands'] > before_exit else None
    summary = {
        'mode': 'image bombs' if bombs else 'soak',
        'seconds': round(elapsed, 1),
        'camera_hz': args.camera_hz,
        'tasks_changed': tasks,
        'commands_per_s': round((seen['commands'] - base['commands']) / elapsed, 2),
        'holds_seen': holds_seen() - base['holds'],
        'node': node_counts,
        'latency_p50_ms': status.get('latency_p50_ms'),
        'latency_p99_ms': status.get('latency_p99_ms'),
        'rss_mb': {k: round(v, 1) for k, v in rss.items()},
        'final_hold': final is not None and not any(final[MOTION]),
        'exit_code': policy.returncode,
    }
    stop_processes(procs)
    node.destroy_node()
    rclpy.try_shutdown()
    print('\n' + json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
