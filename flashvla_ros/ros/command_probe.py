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
are compared with the node's stamps. An arrival is when the subscriber's middleware received
the message (its `received_timestamp`), not when this process's Python callback ran: a probe
that listens to several robots handles their messages one after another, and must not count
its own queueing as the node's lateness (about 0.6 ms per message here). Where rclpy gives no
message info (Humble), or where the nodes run on simulated time (`use_sim_time`: a world in
lockstep), the node clock's time in the callback stands in.
"""

from __future__ import annotations

from rclpy.node import Node
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import TimeReference

from ..control.timing import CommandRecord, command_figures

TIMING_QOS = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE)
try:  # subscription callbacks that take the message info (rclpy after Humble)
    from rclpy.subscription import MessageInfo  # noqa: F401
    MESSAGE_INFO = True
except ImportError:
    MESSAGE_INFO = False


def seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class CommandProbe:
    """Record every ~/command_timing message of `policy` (a node name) as it arrives."""

    def __init__(self, node: Node, policy: str = '/policy_node') -> None:
        self.node = node
        self.records: list[CommandRecord] = []
        # The middleware's receive time is the wall clock's: no match for simulated stamps.
        info = MESSAGE_INFO and not node.get_parameter('use_sim_time').value
        self.subscription = node.create_subscription(
            TimeReference, f'{policy}/command_timing',
            self._on_timing_info if info else self._on_timing, TIMING_QOS)

    def _on_timing_info(self, msg: TimeReference, info) -> None:
        self._on_timing(msg, info['received_timestamp'])

    def _on_timing(self, msg: TimeReference, received_ns: int = 0) -> None:
        arrival = (received_ns or self.node.get_clock().now().nanoseconds) * 1e-9
        self.records.append(CommandRecord(arrival, seconds(msg.header.stamp),
                                          seconds(msg.time_ref), msg.source,
                                          msg.header.frame_id))

    def figures(self, period_s: float, since: float = 0.0) -> dict[str, float]:
        """Compute the timing figures of the commands that arrived after `since` (probe clock)."""
        return command_figures([r for r in self.records if r.arrival >= since], period_s)
