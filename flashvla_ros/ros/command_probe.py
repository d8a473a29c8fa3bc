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
A policy node's timing measured from outside: a subscriber to its `~/command_timing`.

Used by flashvla-demo, scripts/measure_node_timing.py and the slow-tier guard; the figures
and their definitions are `control.timing`'s. The subscriber's node must run in another
process than the policy node and on the same machine (or with synchronised clocks): arrivals
are read from its own clock and compared with the node's stamps.
"""

from __future__ import annotations

from rclpy.node import Node
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import TimeReference

from ..control.timing import CommandRecord, command_figures

TIMING_QOS = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE)


def seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class CommandProbe:
    """Record every ~/command_timing message of `policy` (a node name) as it arrives."""

    def __init__(self, node: Node, policy: str = '/policy_node') -> None:
        self.node = node
        self.records: list[CommandRecord] = []
        self.subscription = node.create_subscription(
            TimeReference, f'{policy}/command_timing', self._on_timing, TIMING_QOS)

    def _on_timing(self, msg: TimeReference) -> None:
        arrival = self.node.get_clock().now().nanoseconds * 1e-9
        self.records.append(CommandRecord(arrival, seconds(msg.header.stamp),
                                          seconds(msg.time_ref), msg.source,
                                          msg.header.frame_id))

    def figures(self, period_s: float, since: float = 0.0) -> dict[str, float]:
        """Compute the timing figures of the commands that arrived after `since` (probe clock)."""
        return command_figures([r for r in self.records if r.arrival >= since], period_s)
