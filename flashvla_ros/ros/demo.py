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
flashvla-demo: the closed loop on this machine, with a live status line and a summary.

Starts a world (the mock tabletop, or LIBERO with `--world libero [--suite libero_object]`:
libero_world and the policy node with config/libero.yaml) and the policy node as real ROS 2
processes, watches `/diagnostics` and the episode results, and stops after `--episodes`
episodes or `--duration` seconds. `--view` shows the world's camera (`/image_raw`) in a
window, `--record FILE` writes it to an .mp4 or .gif, both with the instruction, the episode
and the successes under the image.
`--robots N`: N mock worlds (namespaces r1..rN, each its own process and seeds) against one
policy node that serves them all with one model, batching their inferences; the summary has
each robot's episodes and timing, and the batches (the view shows r1's camera).
"""

from __future__ import annotations

import argparse
from collections import Counter
import json
import os
from pathlib import Path
import sys
import time

from .processes import (
    DiagnosticsWatch,
    config_file,
    resolve_model,
    robot_names,
    ros_env,
    start_policy,
    start_world,
    stop_processes,
)

CAMERA_HZ = 30.0  # the world's camera, as the timing targets assume (docs/TIMING.md)
RECORD_FPS = 20.0  # a recording keeps wall-clock time at this rate
LOG_STATUS_S = 10.0  # not a terminal (a log, CI): the status line this often, or on change


class FrameSink:
    """The camera frames of the loop, captioned, to a window (--view) and a file (--record)."""

    def __init__(self, view: bool, record: str | None, fps: float, width: int = 448) -> None:
        from ..viz.video import FrameWriter, Viewer

        self.width, self.fps = width, fps
        self.start: float | None = None
        self.writer = FrameWriter(record, fps) if record else None
        self.viewer = None
        if view:
            self.viewer, how = Viewer.open('flashvla-demo: /image_raw')
            print(f'--view: {how}' if self.viewer else
                  f'--view: no window ({how}); the demo goes on without it'
                  + ('' if record else ' (--record FILE writes the frames to a file)'))

    def frame(self, rgb, instruction: str, results: list[dict], since_result_s: float,
              now: float | None = None) -> None:
        """
        Caption a camera frame, show it and record it.

        The recording keeps wall-clock time at `fps`: a frame is written as often as the
        time since the first one asks (none when it came early, repeated after a gap of
        up to 2 s), so a loop that drops frames does not play back fast.
        """
        from ..viz.video import annotate

        now = time.monotonic() if now is None else now
        self.start = now if self.start is None else self.start

        wins = sum(r['success'] for r in results)
        status = f'episode {len(results) + 1} | successes {wins}/{len(results)}'
        success = None
        if results and since_result_s < 1.0:  # the world pauses between episodes
            last = results[-1]
            success = bool(last['success'])
            status = (f'episode {len(results)}: ' + ('success' if success else 'failed')
                      + f' after {last["steps"]} steps | successes {wins}/{len(results)}')
        shown = annotate(rgb, instruction, status, width=self.width, success=success)
        if self.writer is not None:
            due = int((now - self.start) * self.fps + 1e-6) + 1 - self.writer.frames
            for _ in range(min(due, round(2 * self.fps))):
                self.writer.write(shown)
        if self.viewer is not None:
            self.viewer.show(shown)

    def close(self) -> None:
        if self.viewer is not None:
            self.viewer.close()
        if self.writer is not None:
            path = self.writer.close()
            print(f'recorded {self.writer.frames} frames to {path}' if path else
                  f'--record: no camera frame arrived; {self.writer.path} not written')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--model', help='checkpoint directory (default: the embedded model)')
    parser.add_argument('--world', choices=('mock', 'libero'), default='mock',
                        help='the world: the mock tabletop, or LIBERO (the libero extra; the '
                             'policy node gets config/libero.yaml)')
    parser.add_argument('--suite', default='libero_object', help='--world libero: the suite')
    parser.add_argument('--render', choices=('openvla', 'fast'), default='openvla',
                        help="--world libero: LIBERO's render, or a cheaper one")
    parser.add_argument('--control', choices=('ee', 'joint'), default='ee',
                        help="drive the world's robot by the end-effector commands, or by "
                             'joint targets from the inverse kinematics '
                             '(config/joints_<world>.yaml)')
    parser.add_argument('--episodes', type=int, default=3, help='stop after this many')
    parser.add_argument('--duration', type=float, default=None,
                        help='stop after seconds (default: 60, LIBERO 900)')
    parser.add_argument('--seed', type=int, default=0,
                        help="first mock-world episode seed (LIBERO: the environment's seed)")
    parser.add_argument('--max-steps', type=int, default=None,
                        help="commands per episode (default: 80, LIBERO the suite's)")
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--robots', type=int, default=0, metavar='N',
                        help='N mock robots against one policy node (0: one robot, no '
                             'namespace)')
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='a policy_node parameter, e.g. -p inference_timing:=asap')
    parser.add_argument('--view', action='store_true',
                        help='show the camera frames in a window (needs a display)')
    parser.add_argument('--record', metavar='FILE',
                        help='write the camera frames to FILE (.mp4 or .gif)')
    parser.add_argument('--record-width', type=int, default=448,
                        help='width of the shown/recorded frames in pixels (the camera: 224)')
    args = parser.parse_args(argv)
    if args.record and not args.record.lower().endswith(('.mp4', '.gif')):
        parser.error('--record writes an .mp4 or a .gif')
    libero = args.world == 'libero'
    if args.duration is None:
        args.duration = 900.0 if libero else 60.0  # LIBERO: slow steps, episodes of 100s
    try:
        model = resolve_model(args.model)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    sink = FrameSink(args.view, args.record, RECORD_FPS, args.record_width) \
        if args.view or args.record else None
    os.environ.update(ros_env())

    import rclpy
    from std_msgs.msg import String

    from .command_probe import CommandProbe

    logs = Path('build/demo-logs')
    logs.mkdir(parents=True, exist_ok=True)
    robots = robot_names(args.robots)
    names = robots or ['']
    world_args = ['-p', f'camera_rate_hz:={CAMERA_HZ}', '-p', f'control:={args.control}']
    if args.max_steps is not None or not libero:
        world_args += ['-p', f'max_steps:={80 if args.max_steps is None else args.max_steps}']
    # LIBERO steps slower than real time on a CPU: one world runs in lockstep (it publishes
    # /clock, the policy node follows it); several keep real time (one /clock each would clash).
    lockstep = libero and not robots
    if libero:
        world_args += ['-p', f'suite:={args.suite}', '-p', f'render:={args.render}',
                       '-p', f'lockstep:={str(lockstep).lower()}']
    # LIBERO: every robot on OpenVLA's environment seed; the mock: seeds apart.
    procs = [start_world(robot, args.seed + (0 if libero else 1000 * i), logs, *world_args,
                         world=args.world)
             for i, robot in enumerate(names)]
    policy_params = ['use_sim_time:=true'] if lockstep else []
    if libero and not any(p.startswith('unnorm_key:=') for p in args.param):
        # A model with statistics for several suites (the embedded libero one): the suite's,
        # as the bench picks them.
        from ..sim.openvla_protocol import unnorm_key
        keys = list(json.loads((Path(model) / 'config.json').read_text()).get('norm_stats', {}))
        if len(keys) > 1:
            policy_params.append(f'unnorm_key:={unnorm_key(args.suite, keys)}')
    procs.append(start_policy(model, logs, robots, f'device:={args.device}', *policy_params,
                              *args.param,
                              params_file=config_file('libero.yaml') if libero else None,
                              more_params_files=(config_file(f'joints_{args.world}.yaml'),)
                              if args.control == 'joint' else ()))
    rclpy.init()
    # In lockstep the commands' stamps are simulated time: the monitor reads the same clock.
    from rclpy.parameter import Parameter
    node = rclpy.create_node('flashvla_demo_monitor', parameter_overrides=[
        Parameter('use_sim_time', Parameter.Type.BOOL, lockstep)])
    diagnostics = DiagnosticsWatch(node)
    # The commands' timing, seen from outside the node, per robot.
    probes = {r: CommandProbe(node, f'/{r}/policy_node' if r else '/policy_node')
              for r in names}
    results: dict[str, list[dict]] = {r: [] for r in names}
    result_times: list[float] = []

    def on_result(msg: String, robot: str) -> None:
        results[robot].append(json.loads(msg.data))
        if robot == names[0]:
            result_times.append(time.monotonic())

    for robot in names:
        node.create_subscription(String, f'/{robot}/{args.world}_world/episode_result'
                                 if robot else f'/{args.world}_world/episode_result',
                                 lambda msg, robot=robot: on_result(msg, robot), 10)
    if sink is not None:
        from rclpy.qos import QoSDurabilityPolicy, QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from .convert import image_to_rgb

        instruction = ['']
        prefix = f'/{names[0]}' if names[0] else ''

        def on_image(msg: Image) -> None:
            since = time.monotonic() - result_times[-1] if result_times else 1e9
            sink.frame(image_to_rgb(msg), instruction[0], results[names[0]], since)

        node.create_subscription(
            String, f'{prefix}/instruction', lambda m: instruction.__setitem__(0, m.data),
            QoSProfile(depth=1, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL))
        node.create_subscription(Image, f'{prefix}/image_raw', on_image,
                                 qos_profile_sensor_data)
    print(f'closed loop: {len(names)} {args.world} world(s) + one policy node ({model}); '
          f'logs in {logs}/')
    start = time.monotonic()
    show = StatusPrinter(sys.stdout.isatty())
    try:
        while time.monotonic() - start < args.duration and \
                min(len(r) for r in results.values()) < args.episodes:
            rclpy.spin_once(node, timeout_sec=0.25)
            if any(p.poll() is not None for p in procs):
                print(f'\na node exited; see {logs}/')
                break
            elapsed = time.monotonic() - start
            show(elapsed, status_line(elapsed, diagnostics, results),
                 (diagnostics.status.get('message'), str(results)))
    except KeyboardInterrupt:
        pass
    finally:
        status = dict(diagnostics.status)  # the last entries while commanding
        robot_status = {r: dict(diagnostics.robot(r)) for r in robots}
        stop_processes(procs)
        node.destroy_node()
        rclpy.try_shutdown()
    if show.terminal:
        print()  # ends the line rewritten in place
    if sink is not None:
        sink.close()
    if robots:
        summarize_robots(results, status, robot_status, probes)
    else:
        summarize(results[''], status, probes[''])
    if lockstep and len(result_times) > 1:  # from the first episode's end: no start-up
        steps = sum(r['steps'] for r in results[''][1:])
        wall = result_times[-1] - result_times[0]
        print(f'lockstep: the loop ran on {args.world}_world\'s /clock, so the timing above '
              f'is in simulated time; {steps} world steps took {wall:.0f} s of wall clock '
              f'({steps / wall:.1f} steps/s, episode starts included)')
    return 0


class StatusPrinter:
    """
    The live status line, rewritten in place on a terminal.

    Elsewhere (a log, CI) it is a line of its own every `LOG_STATUS_S`, or when the node's
    message or the episodes change, not 4 a second.
    """

    def __init__(self, terminal: bool) -> None:
        self.terminal = terminal
        self.last_s = -float('inf')
        self.last_state: object = None

    def __call__(self, elapsed: float, line: str, state: object) -> None:
        """Show `line`; `state` (the node's message, the episodes) says what a change is."""
        if self.terminal:
            print('\r' + line[:150].ljust(150), end='', flush=True)
        elif state != self.last_state or elapsed - self.last_s >= LOG_STATUS_S:
            print(line, flush=True)
            self.last_s, self.last_state = elapsed, state


def status_line(elapsed: float, diagnostics: DiagnosticsWatch,
                results: dict[str, list[dict]]) -> str:
    """Return the live line: the node's state and figures, and the episodes so far."""
    status = diagnostics.status
    if '' in results:
        done = results['']
        wins = sum(r['success'] for r in done)
        return (f'[{elapsed:5.1f} s] {status.get("message", "starting")}'
                f' | control {float(status.get("command_hz", 0)):4.1f} Hz'
                f' | inference p50 {float(status.get("latency_p50_ms", 0)):5.1f} ms'
                f' | reuse {float(status.get("policy_reuse_rate", 0)):4.0%}'
                f' | episode {len(done) + 1}: {status.get("instruction", "")!r}'
                f' | success {wins}/{len(done)}')
    robots = ' '.join(f'{r} {sum(x["success"] for x in done)}/{len(done)}'
                      for r, done in results.items())
    return (f'[{elapsed:5.1f} s] {status.get("message", "starting")}'
            f' | mean batch {float(status.get("mean_batch", 0)):4.2f}'
            f' | successes {robots}')


def verdict(misses: list[str], unjudged: list[str]) -> str:
    """Say what the targets say: missed (which), met, or met as far as the run can tell."""
    if misses:
        short = f' ({"; ".join(unjudged)})' if unjudged else ''
        return 'MISSES its timing targets: ' + '; '.join(misses) + short
    if unjudged:
        return 'meets the timing targets it can judge (docs/TIMING.md); ' + '; '.join(unjudged)
    return 'meets its timing targets (docs/TIMING.md)'


def summarize(results: list[dict], status: dict[str, str], probe) -> None:
    """Print the episodes, the policy's figures and the loop's timing against its targets."""
    from ..control.timing import missed_targets, unjudged_targets

    families = Counter(r['family'] for r in results)
    wins = Counter(r['family'] for r in results if r['success'])
    print(f'episodes: {len(results)}, succeeded: {sum(wins.values())}')
    for family, n in sorted(families.items()):
        print(f'  {family}: {wins[family]}/{n}')
    for key in ('accel', 'accel_options', 'chunk_steps', 'chunk_steps_from',
                'policy_reuse_rate', 'policy_kept_tokens',
                'policy_flops_saved', 'latency_p50_ms', 'latency_p99_ms', 'inferences',
                'dropped_frames', 'holds', 'clamped_values', 'rejected_inputs'):
        if key in status:
            print(f'  {key}: {status[key]}')
    period = 1.0 / float(status.get('control_rate_hz', 10.0))
    # From the first action on: the hold sent at activation, before any instruction, is
    # start-up (the benchmark likewise measures after a warm-up).
    first = next((r.arrival for r in probe.records if r.kind == 'action'), float('inf'))
    f = probe.figures(period, since=first)
    if not f['commands']:
        print('timing: no command arrived')
        return
    inference = float(status.get('latency_p50_ms', 'nan'))
    print(f'timing, measured by this process on ~/command_timing (docs/TIMING.md), '
          f'{f["commands"]} commands from the first action on:')
    print(f'  commands per second while commanding (node clock): {f["command_rate_hz"]:.2f} '
          f'(control rate {1 / period:g} Hz)')
    print(f'  tick lateness (arrival - planned tick) p50 / p99 / max, {f["ticks"]} ticks: '
          f'{f["lateness_p50_ms"]:.1f} / {f["lateness_p99_ms"]:.1f} / '
          f'{f["lateness_max_ms"]:.1f} ms; skipped ticks (no command, counted late until '
          f'the next one): {f["skipped_ticks"]}')
    print(f'  intervals between commands, off the period by p50 / p99 / max: '
          f'{f["interval_deviation_p50_ms"]:.1f} / {f["interval_deviation_p99_ms"]:.1f} / '
          f'{f["interval_deviation_max_ms"]:.1f} ms')
    print(f'  frame to command p50 / p99: {f["frame_to_command_p50_ms"]:.1f} / '
          f'{f["frame_to_command_p99_ms"]:.1f} ms; first action of a chunk p50 '
          f'{f["first_action_p50_ms"]:.1f} ms (inference p50 {inference:.1f} ms)')
    print(f'  missed ticks after an episode\'s first command: {f["missed_ticks"]} '
          f'({f["missed_share"]:.1%}); holds: {f["holds"]}')
    print('  ' + verdict(missed_targets(f, period, inference, 1.0 / CAMERA_HZ),
                         unjudged_targets(f)))


def summarize_robots(results: dict[str, list[dict]], status: dict[str, str],
                     robot_status: dict[str, dict[str, str]], probes: dict) -> None:
    """Print each robot's episodes and timing against the targets, then the batches."""
    from ..control.timing import missed_targets, unjudged_targets

    period = 1.0 / float(status.get('control_rate_hz', 10.0))
    print('| robot | episodes | succeeded | commands/s | tick lateness p99 / max '
          '| skipped ticks | inference p50 | frame to first action p50 | missed ticks | reuse '
          '| targets |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for robot, done in results.items():
        probe, mine = probes[robot], robot_status.get(robot, {})
        first = next((r.arrival for r in probe.records if r.kind == 'action'), float('inf'))
        f = probe.figures(period, since=first)
        inference = float(mine.get('latency_p50_ms', 'nan'))
        misses = missed_targets(f, period, inference, 1.0 / CAMERA_HZ) if f['commands'] \
            else ['no command arrived']
        unjudged = unjudged_targets(f) if f['commands'] else []
        print(f'| {robot} | {len(done)} | {sum(r["success"] for r in done)} '
              f'| {f["command_rate_hz"]:.2f} | {f["lateness_p99_ms"]:.1f} / '
              f'{f["lateness_max_ms"]:.1f} ms | {f["skipped_ticks"]} | {inference:.1f} ms '
              f'| {f["first_action_p50_ms"]:.1f} ms | {f["missed_share"]:.1%} '
              f'| {float(mine.get("policy_reuse_rate", "nan")):.0%} '
              f'| {"; ".join(misses + unjudged) or "all met"} |')
    print(f'one model served {status.get("batched_steps", 0)} steps in '
          f'{status.get("batches", 0)} forwards: {float(status.get("mean_batch", 0)):.2f} '
          f'robots per batch (max_batch {status.get("max_batch", "?")}, window '
          f'{status.get("batch_window_s", "?")} s); accel {status.get("accel", "?")}')


if __name__ == '__main__':
    sys.exit(main())
