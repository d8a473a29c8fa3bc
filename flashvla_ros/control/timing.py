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

- command rate: actions per second of an episode's commanding time on the node's clock (its
  first to its last action's planned tick, plus one period); the gap before an episode's
  first action is start-up.
- skipped ticks: planned ticks right after an action of an episode that sent nothing (a gap
  of k periods in the planned stamps is k - 1 of them). The node skipped them (its thread
  was a period late) or found nothing queued (starved): from outside the two look alike, and
  a robot waited for its next command either way. After a hold the node sends nothing until
  the next action by design: those ticks are not skipped.
- tick lateness: arrival minus the tick's planned time (includes the transport, ~0.3 ms); a
  skipped tick's is the arrival of the next command minus the skipped tick's planned time.
- interval deviation: how far the time between two consecutive commands is from the period
  (a missed tick shows as one period); what a robot's controller sees without any stamps.
- frame to command: arrival minus the source frame's stamp, for every action and for the
  first action of each chunk (a chunk's later actions are a period older each by design).
- missed ticks: planned ticks after an episode's first action that sent nothing (starved or
  skipped, or idle after a hold), as a share of all planned ticks from there on.

A percentile is judged against its target only on enough samples: at least `TAIL_SAMPLES`
beyond it (p99: 1000 ticks). On fewer, the p99 of a short run is nearly its maximum, and one
phase of the camera against the ticks can decide it; such a target is reported as too short
to judge, neither met nor missed.
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
TAIL_SAMPLES = 10  # samples beyond a percentile for its estimate to be judged


def enough_samples(count: int, percentile: float) -> bool:
    """Return whether `count` samples leave `TAIL_SAMPLES` beyond `percentile` (99: 1000)."""
    return count * (100 - percentile) >= TAIL_SAMPLES * 100


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
    skipped_ms: list[float] = []  # each skipped tick's lateness
    for rs in episodes.values():
        acts = [r for r in rs if r.kind == 'action']
        if not acts:
            continue
        actions += len(acts)
        commanding_s += acts[-1].planned - acts[0].planned + period_s
        after = [r for r in rs if r.planned >= acts[0].planned]
        for a, b in pairwise(after):
            gap = max(0, round((b.planned - a.planned) / period_s) - 1)
            missed += gap
            if a.kind == 'action':
                skipped_ms += [(b.arrival - a.planned - k * period_s) * 1e3
                               for k in range(1, gap + 1)]
        planned_ticks += round((after[-1].planned - after[0].planned) / period_s) + 1
        previous = None
        for a in acts:
            if a.source != previous:
                first_actions.append((a.arrival - a.source) * 1e3)
            previous = a.source
    lateness = [(r.arrival - r.planned) * 1e3 for r in records] + skipped_ms
    late = percentiles(lateness)
    gaps = percentiles([abs(b.arrival - a.arrival - period_s) * 1e3
                        for a, b in pairwise(records)])
    frame = percentiles([(r.arrival - r.source) * 1e3 for r in records if r.kind == 'action'])
    first = percentiles(first_actions)
    return {
        'commands': actions,
        'ticks': len(lateness),  # the lateness samples: every command and skipped tick
        'skipped_ticks': len(skipped_ms),
        'holds': sum(r.kind == 'hold' for r in records),
        'episodes': len(episodes),
        'command_rate_hz': actions / commanding_s if commanding_s else 0.0,
        'lateness_p50_ms': late['p50'], 'lateness_p99_ms': late['p99'],
        'lateness_max_ms': late['max'],
        'interval_deviation_p50_ms': gaps['p50'], 'interval_deviation_p99_ms': gaps['p99'],
        'interval_deviation_max_ms': gaps['max'],
        'frame_to_command_p50_ms': frame['p50'], 'frame_to_command_p99_ms': frame['p99'],
        'first_action_p50_ms': first['p50'], 'chunks': len(first_actions),
        'missed_ticks': missed,
        'missed_share': missed / planned_ticks if planned_ticks else 0.0,
    }


def unjudged_targets(figures: dict[str, float]) -> list[str]:
    """Say which percentile targets the run is too short to judge ([]: none)."""
    ticks, chunks = int(figures['ticks']), int(figures['chunks'])
    return ([] if enough_samples(ticks, 99) else [f'too short to judge p99 ({ticks} ticks)']) \
        + ([] if enough_samples(chunks, 50) else
           [f'too short to judge frame to first action p50 ({chunks} chunks)'])


def missed_targets(figures: dict[str, float], period_s: float, inference_p50_ms: float,
                   camera_period_s: float, targets: Targets = IDLE) -> list[str]:
    """
    Say which targets the figures miss, each with the number and its bound ([]: none).

    A skipped tick misses the targets: a robot waited a period for that command. Percentiles
    are judged on enough samples only (`unjudged_targets`).
    """
    misses = []
    rate = targets.rate_share / period_s
    if not figures['command_rate_hz'] >= rate:
        misses.append(f'command rate {figures["command_rate_hz"]:.2f}/s < {rate:.2f}/s')
    if figures['skipped_ticks']:
        misses.append(f'skipped ticks {figures["skipped_ticks"]} > 0')
    bounds = [('lateness_max_ms', targets.lateness_max_ms)]
    if enough_samples(int(figures['ticks']), 99):
        bounds.insert(0, ('lateness_p99_ms', targets.lateness_p99_ms))
    for key, bound in bounds:
        if not figures[key] <= bound:
            misses.append(f'tick {key[:-3].replace("_", " ")} {figures[key]:.1f} ms > '
                          f'{bound:g} ms')
    bound = inference_p50_ms + camera_period_s * 1e3 + targets.frame_margin_ms
    if enough_samples(int(figures['chunks']), 50) and not figures['first_action_p50_ms'] <= bound:
        misses.append(f'frame to first action p50 {figures["first_action_p50_ms"]:.1f} ms > '
                      f'{bound:.1f} ms (inference p50 + camera period + '
                      f'{targets.frame_margin_ms:g} ms)')
    if not figures['missed_share'] <= targets.missed_share:
        misses.append(f'missed ticks {figures["missed_share"]:.1%} > '
                      f'{targets.missed_share:.0%} after first commands')
    return misses
