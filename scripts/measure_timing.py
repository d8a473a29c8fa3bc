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
Measure when inference starts: as soon as possible vs just in time, in one run.

    .venv/bin/python scripts/measure_timing.py [--model default-dit] [--seconds 15]

The real PolicyRunner and policy in-process, a camera thread rendering the mock world at 20 Hz
(the world moves with the commands) and control ticks at 10 Hz, as the node runs them. The
modes alternate (asap, just in time, asap, ...) so that both see the same machine load; it
prints, per mode, the inference latency, the frame-to-command latency (frame capture to the
tick that sends its action; with chunks, also of each chunk's first action alone, the one the
start's timing decides) and the starved ticks. Torch's CPU threads are set as the node sets
them (`--cpu-threads`, the node's `cpu_threads`).

A camera is not synchronised with the control timer, and the frame-to-command latency depends
on where frames fall between ticks: round r starts the camera r / rounds of a camera period
after the ticks (both modes alike), and the report gives each phase's median too.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np

from flashvla_ros.accel.registry import accelerate, parse_accel
from flashvla_ros.control.chunks import MODEL_STEPS, ChunkExecution
from flashvla_ros.control.runner import PolicyRunner, RunnerSettings
from flashvla_ros.control.safety import SafetyLimits
from flashvla_ros.control.worker import InferenceWorker
from flashvla_ros.policy import load_policy, set_cpu_threads
from flashvla_ros.policy.presets import model_path
from flashvla_ros.sim.tasks import FAMILIES, Episode

CAMERA_HZ, CONTROL_HZ = 20.0, 10.0


def run_mode(policy, chunks: ChunkExecution, seconds: float, seed: int,
             phase_s: float = 0.0) -> dict:
    limits = SafetyLimits.from_lists([1.0] * 7, [-1.0] * 7, [1.0] * 7)
    worker = InferenceWorker(policy.predict_batch)
    runner = PolicyRunner(policy, RunnerSettings(limits, max_image_age_s=0.5,
                                                 max_action_age_s=0.5, max_command_gap_s=2.0,
                                                 chunks=chunks, control_period_s=1.0 / CONTROL_HZ),
                          worker)
    episode = [Episode(seed, FAMILIES[seed % 3])]
    lock = threading.Lock()
    running = True

    start = time.monotonic()

    def camera() -> None:
        period, due = 1.0 / CAMERA_HZ, start + phase_s
        time.sleep(max(0.0, due - time.monotonic()))
        while running:
            with lock:
                frame = episode[0].observe()
            runner.submit_frame(frame)
            due += period
            time.sleep(max(0.0, due - time.monotonic()))

    runner.set_instruction(episode[0].instruction)
    worker.start()
    cam = threading.Thread(target=camera, daemon=True)
    cam.start()
    ticks, due, end = 0, start, start + seconds
    first_rows, last_frame = [], None  # frame-to-command of each chunk's first action
    while time.monotonic() < end:
        tick = runner.tick()
        ticks += 1
        if tick.kind == 'action':
            if tick.frame is not last_frame:
                first_rows.append(runner.e2e_ms[-1])
                last_frame = tick.frame
            with lock:
                episode[0].step(tick.command)
                if episode[0].done:  # next episode, same instruction rules as the node
                    episode[0] = Episode(seed + ticks, FAMILIES[(seed + ticks) % 3])
                    runner.set_instruction(episode[0].instruction)
        due += 1.0 / CONTROL_HZ
        time.sleep(max(0.0, due - time.monotonic()))
    running = False
    cam.join()
    worker.stop()
    return {'ticks': ticks, 'starved': runner.counters.starved_ticks,
            'boundary_stalls': runner.counters.boundary_stalls,
            'inference_ms': list(runner.latencies_ms), 'e2e_ms': list(runner.e2e_ms),
            'first_row_e2e_ms': first_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='')
    parser.add_argument('--accel', default='flashvla', help="as flashvla-bench's --accel")
    parser.add_argument('--seconds', type=float, default=15.0, help='per mode and round')
    parser.add_argument('--rounds', type=int, default=8,
                        help='rounds per mode, each at its own camera phase')
    parser.add_argument('--chunk-steps', type=int, default=MODEL_STEPS,
                        help="actions of each chunk to run (0: all; -1: the model's advice)")
    parser.add_argument('--cpu-threads', type=int, default=0,
                        help="torch's CPU threads, as the node's cpu_threads (0: its default)")
    parser.add_argument('--json', help='write the numbers here')
    args = parser.parse_args()
    threads = set_cpu_threads(args.cpu_threads)
    policy = accelerate(load_policy(str(model_path(args.model))), *parse_accel(args.accel))
    policy.warm_up()
    modes = {'asap': False, 'just_in_time': True}
    results: dict[str, dict] = {m: {'ticks': 0, 'starved': 0, 'boundary_stalls': 0,
                                    'inference_ms': [], 'e2e_ms': [],
                                    'first_row_e2e_ms': []} for m in modes}
    phases: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds):
        phase_s = r / args.rounds / CAMERA_HZ
        for mode, jit in modes.items():
            chunks = ChunkExecution(steps=args.chunk_steps, just_in_time=jit)
            out = run_mode(policy, chunks.for_model(policy.cfg.execution),
                           args.seconds, seed=1_000_000 + r, phase_s=phase_s)
            for k, v in out.items():
                results[mode][k] += v
            phases[mode].append(float(np.median(out['e2e_ms'])))
    report = {}
    phase_labels = [f'{1e3 * k / args.rounds / CAMERA_HZ:.1f} ms' for k in range(args.rounds)]
    for mode, r in results.items():
        report[mode] = {
            'inference_p50_ms': float(np.median(r['inference_ms'])),
            'frame_to_command_p50_ms': float(np.median(r['e2e_ms'])),
            'frame_to_command_p90_ms': float(np.percentile(r['e2e_ms'], 90)),
            'first_action_frame_to_command_p50_ms': float(np.median(r['first_row_e2e_ms'])),
            'starved_per_150_ticks': 150.0 * r['starved'] / max(1, r['ticks']),
            'starved_ticks': r['starved'],
            'starved_after_first_command': r['boundary_stalls'],  # the rest: episode starts
            'ticks': r['ticks'],
            'frame_to_command_p50_ms_per_camera_phase': dict(zip(
                phase_labels, phases[mode], strict=True))}
        print(f'{mode:13s} inference p50 {report[mode]["inference_p50_ms"]:6.1f} ms | '
              f'frame-to-command p50 {report[mode]["frame_to_command_p50_ms"]:6.1f} ms, '
              f'p90 {report[mode]["frame_to_command_p90_ms"]:6.1f} ms, first action of a chunk '
              f'p50 {report[mode]["first_action_frame_to_command_p50_ms"]:6.1f} ms | starved '
              f'{r["starved"]} in {r["ticks"]} ticks, {r["boundary_stalls"]} of them after the '
              "episode's first command | "
              'p50 per camera phase ' + ', '.join(f'{v:.0f}' for v in phases[mode]))
    target = report['just_in_time']['inference_p50_ms'] + 1e3 / CAMERA_HZ + 10.0
    print(f'{threads} CPU thread(s) for inference')
    print(f'target (inference p50 + one camera period + 10 ms): {target:.1f} ms')
    if args.json:
        with open(args.json, 'w') as f:
            record = {'args': vars(args), 'cpu_threads': threads, **report, 'target_ms': target}
            json.dump(record, f, indent=1)


if __name__ == '__main__':
    main()
