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
The control loop's timing as a robot sees it, from the commands alone, and its targets.

One definition for every place that reports it (docs/TIMING.md): the timing benchmark through
real processes, flashvla-demo's summary and the slow-tier guard all feed it what an
independent subscriber received on `~/command_timing` (one record per command: its arrival,
the tick's planned time, the source frame's stamp, hold or action, the episode).

- command rate: actions per second of an episode's commanding time (first to last action of
  each episode, plus one period); the gap before an episode's first action is start-up.
- tick lateness: arrival minus the tick's planned time (includes the transport, ~0.3 ms).
- interval deviation: how far the time between two consecutive commands is from the period
  (a missed tick shows as one period); what a robot's controller sees without any stamps.
- frame to command: arrival minus the source frame's stamp, for every action and for the
  first action of each chunk (a chunk's later actions are a period older each by design).
- missed ticks: planned ticks after an episode's first action that sent nothing (starved or
  skipped), as a share of all planned ticks from there on.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise

import numpy as np


@dataclass(frozen=True)
class CommandRecord:
    arrival: float  # when the subscriber received it, s (same clock as the node's stamps)
    planned: float  # the tick's planned time, s
    source: float  # stamp of the camera frame the action came from, s (0: a hold)
    kind: str  # 'action' or 'hold'
    episode: str


@dataclass(frozen=True)
class Targets:
    """Issue 23's targets for a 10 Hz tick on 2 cores (docs/TIMING.md)."""

    rate_share: float = 0.99  # commands per second at least this share of the control rate
    lateness_p99_ms: float = 5.0
    lateness_max_ms: float = 20.0
    frame_margin_ms: float = 15.0  # first action <= inference p50 + camera period + this
    missed_share: float = 0.01


IDLE = Targets()
BUSY = Targets(lateness_p99_ms=10.0)  # one core kept busy by another process


def percentiles(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {'p50': float('nan'), 'p99': float('nan'), 'max': float('nan')}
    v = np.asarray(values_ms)
    return {'p50': float(np.percentile(v, 50)), 'p99': float(np.percentile(v, 99)),
            'max': float(v.max())}


def command_figures(records: list[CommandRecord], period_s: float) -> dict[str, float]:
    """Compute the figures defined above from one subscriber's records, in arrival order."""
    episodes: dict[str, list[CommandRecord]] = defaultdict(list)
    for r in records:
        episodes[r.episode].append(r)
    actions = commanding_s = missed = planned_ticks = 0
    first_actions: list[float] = []
    for rs in episodes.values():
        acts = [r for r in rs if r.kind == 'action']
        if not acts:
            continue
        actions += len(acts)
        commanding_s += acts[-1].arrival - acts[0].arrival + period_s
        after = [r for r in rs if r.planned >= acts[0].planned]
        for a, b in pairwise(after):
            missed += max(0, round((b.planned - a.planned) / period_s) - 1)
        planned_ticks += round((after[-1].planned - after[0].planned) / period_s) + 1
        previous = None
        for a in acts:
            if a.source != previous:
                first_actions.append((a.arrival - a.source) * 1e3)
            previous = a.source
    late = percentiles([(r.arrival - r.planned) * 1e3 for r in records])
    gaps = percentiles([abs(b.arrival - a.arrival - period_s) * 1e3
                        for a, b in pairwise(records)])
    frame = percentiles([(r.arrival - r.source) * 1e3 for r in records if r.kind == 'action'])
    first = percentiles(first_actions)
    return {
        'commands': actions,
        'holds': sum(r.kind == 'hold' for r in records),
        'episodes': len(episodes),
        'command_rate_hz': actions / commanding_s if commanding_s else 0.0,
        'lateness_p50_ms': late['p50'], 'lateness_p99_ms': late['p99'],
        'lateness_max_ms': late['max'],
        'interval_deviation_p50_ms': gaps['p50'], 'interval_deviation_p99_ms': gaps['p99'],
        'interval_deviation_max_ms': gaps['max'],
        'frame_to_command_p50_ms': frame['p50'], 'frame_to_command_p99_ms': frame['p99'],
        'first_action_p50_ms': first['p50'],
        'missed_ticks': missed,
        'missed_share': missed / planned_ticks if planned_ticks else 0.0,
    }


def missed_targets(figures: dict[str, float], period_s: float, inference_p50_ms: float,
                   camera_period_s: float, targets: Targets = IDLE) -> list[str]:
    """Say which targets the figures miss, each with the number and its bound ([]: none)."""
    misses = []
    rate = targets.rate_share / period_s
    if not figures['command_rate_hz'] >= rate:
        misses.append(f'command rate {figures["command_rate_hz"]:.2f}/s < {rate:.2f}/s')
    for key, bound in (('lateness_p99_ms', targets.lateness_p99_ms),
                       ('lateness_max_ms', targets.lateness_max_ms)):
        if not figures[key] <= bound:
            misses.append(f'tick {key[:-3].replace("_", " ")} {figures[key]:.1f} ms > '
                          f'{bound:g} ms')
    bound = inference_p50_ms + camera_period_s * 1e3 + targets.frame_margin_ms
    if not figures['first_action_p50_ms'] <= bound:
        misses.append(f'frame to first action p50 {figures["first_action_p50_ms"]:.1f} ms > '
                      f'{bound:.1f} ms (inference p50 + camera period + '
                      f'{targets.frame_margin_ms:g} ms)')
    if not figures['missed_share'] <= targets.missed_share:
        misses.append(f'missed ticks {figures["missed_share"]:.1%} > '
                      f'{targets.missed_share:.0%} after first commands')
    return misses
