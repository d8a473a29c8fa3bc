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
flashvla-bag: record, play and inspect rosbag2 files without rosbag2 (rosbags + rclpy).

    flashvla-bag record OUT --topic /image_raw --topic /instruction [--duration 10]
    flashvla-bag play BAG [--rate 0.5] [--topic /image_raw] [--loop]
    flashvla-bag info BAG

Messages travel as the CDR bytes rclpy serialises (raw subscriptions, serialized publishing),
so a bag round-trips byte for byte. MCAP is the default format; `--format sqlite3` writes the
Humble default. Both use metadata version 8, the newest that Humble reads.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
import sys
import time

import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

FORMATS = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
SENSOR_TYPES = {'sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage',
                'sensor_msgs/msg/JointState'}


def message_class(type_name: str):
    """Import the rclpy class for 'pkg/msg/Name'."""
    pkg, kind, name = type_name.split('/')
    return getattr(importlib.import_module(f'{pkg}.{kind}'), name)


def qos_for(type_name: str) -> QoSProfile:
    """Return the recording QoS: best effort for sensor streams, so any publisher matches."""
    return qos_profile_sensor_data if type_name in SENSOR_TYPES else QoSProfile(depth=10)


# Playback is reliable, like `ros2 bag play`: it matches best-effort and reliable
# subscribers alike, and a reliable subscriber then gets every message.
PLAY_QOS = QoSProfile(depth=100)


class BagWriter:
    """A rosbag2 writer keyed by topic; messages are serialized bytes with ns timestamps."""

    def __init__(self, path: str | Path, fmt: str = 'mcap') -> None:
        if fmt not in FORMATS:
            raise ValueError(f'unknown bag format {fmt!r}; use one of {sorted(FORMATS)}')
        self.writer = Writer(Path(path), version=8, storage_plugin=FORMATS[fmt])
        self.typestore = get_typestore(Stores.ROS2_HUMBLE)
        self.connections: dict[str, object] = {}
        self.writer.open()

    def write(self, topic: str, type_name: str, stamp_ns: int, data: bytes) -> None:
        if topic not in self.connections:
            self.connections[topic] = self.writer.add_connection(
                topic, type_name, typestore=self.typestore)
        self.writer.write(self.connections[topic], stamp_ns, data)

    def close(self) -> None:
        self.writer.close()


def record(out: str, topics: list[str], duration: float, fmt: str) -> int:
    rclpy.init()
    node = Node('flashvla_bag_recorder')
    writer = BagWriter(out, fmt)
    counts = dict.fromkeys(topics, 0)
    pending = set(topics)

    def subscribe(topic: str, type_name: str) -> None:
        def on_message(data: bytes) -> None:
            writer.write(topic, type_name, node.get_clock().now().nanoseconds, data)
            counts[topic] += 1
        node.create_subscription(message_class(type_name), topic, on_message, qos_for(type_name),
                                 raw=True)

    end = time.monotonic() + duration
    try:
        while time.monotonic() < end:
            if pending:  # subscribe once a topic's type is known
                for name, types in node.get_topic_names_and_types():
                    if name in pending:
                        subscribe(name, types[0])
                        pending.discard(name)
            rclpy.spin_once(node, timeout_sec=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        writer.close()
        node.destroy_node()
        rclpy.try_shutdown()
    print(f'recorded {counts} to {out}' + (f'; never seen: {sorted(pending)}' if pending else ''))
    return 0


def read_messages(path: str | Path, topics: list[str] | None = None):
    """Yield (topic, type_name, stamp_ns, raw bytes) in time order."""
    with Reader(Path(path)) as reader:
        conns = [c for c in reader.connections if not topics or c.topic in topics]
        for conn, stamp, data in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, stamp, bytes(data)


class Player:
    """
    Publish a bag's messages from an existing node, with their original timing.

    Messages sent before discovery has matched a subscriber are lost (best effort) or never
    delivered (a volatile reliable subscriber gets no history): `wait_for_subscribers` first.
    """

    def __init__(self, node: Node, path: str | Path, topics: list[str] | None = None) -> None:
        self.path, self.topics = Path(path), topics
        self.publishers: dict[str, object] = {}
        with Reader(self.path) as reader:
            for c in reader.connections:
                if not topics or c.topic in topics:
                    self.publishers[c.topic] = node.create_publisher(
                        message_class(c.msgtype), c.topic, PLAY_QOS)
        if topics and set(topics) - set(self.publishers):
            raise ValueError(f'{path}: no topic {sorted(set(topics) - set(self.publishers))}')

    def wait_for_subscribers(self, timeout_s: float, settle_s: float = 0.3) -> bool:
        """Wait (bounded) until every topic has a subscriber, then `settle_s` for the match."""
        deadline = time.monotonic() + timeout_s
        while not self.matched() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle_s)
        return self.matched()

    def matched(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in self.publishers.values())

    def play(self, rate: float = 1.0) -> int:
        """Publish every message once at `rate` times the recorded speed; return the count."""
        if rate <= 0:
            raise ValueError('rate must be positive')
        sent, start, first = 0, time.monotonic(), None
        for topic, _, stamp, data in read_messages(self.path, self.topics):
            first = stamp if first is None else first
            delay = start + (stamp - first) * 1e-9 / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.publishers[topic].publish(data)
            sent += 1
        return sent

    def flush(self, timeout_s: float = 5.0) -> bool:
        """
        Wait (bounded) until every subscriber has acknowledged every message sent.

        A reliable message still in the writer's history when the process exits is never
        delivered: without this, the last frame of a bag was lost now and then.
        """
        deadline = time.monotonic() + timeout_s
        return all(p.wait_for_all_acked(Duration(seconds=max(0.0, deadline - time.monotonic())))
                   for p in self.publishers.values())


def play(path: str, rate: float, topics: list[str] | None, loop: bool,
         wait_subscribers_s: float = 3.0, ros_args: list[str] | None = None) -> int:
    if rate <= 0:
        raise ValueError('--rate must be positive')
    rclpy.init(args=['flashvla-bag', *(ros_args or [])])  # `--ros-args -r a:=b` remaps
    node = Node('flashvla_bag_player')
    sent = 0
    try:
        player = Player(node, path, topics)
        if not player.wait_for_subscribers(wait_subscribers_s):
            print(f'flashvla-bag: no subscriber on every topic after {wait_subscribers_s:g} s; '
                  'playing anyway (early messages may be lost)', file=sys.stderr)
        while True:
            sent += player.play(rate)
            if not loop:
                break
        if not player.flush():
            print('flashvla-bag: not every message was acknowledged by its subscribers',
                  file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    print(f'played {sent} messages from {path}')
    return 0


def info(path: str) -> int:
    with Reader(Path(path)) as reader:
        print(f'bag: {path}')
        print(f'duration: {reader.duration * 1e-9:.3f} s, messages: {reader.message_count}')
        for c in reader.connections:
            print(f'  {c.topic}  {c.msgtype}  {c.msgcount} messages')
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    rec = sub.add_parser('record', help='record topics to a new bag directory')
    rec.add_argument('out')
    rec.add_argument('--topic', action='append', required=True, help='topic (repeatable)')
    rec.add_argument('--duration', type=float, default=10.0, help='seconds to record')
    rec.add_argument('--format', default='mcap', choices=sorted(FORMATS))
    ply = sub.add_parser('play', help='publish a bag with its original timing')
    ply.add_argument('bag')
    ply.add_argument('--rate', type=float, default=1.0, help='playback speed factor')
    ply.add_argument('--topic', action='append', help='only these topics (repeatable)')
    ply.add_argument('--loop', action='store_true')
    ply.add_argument('--wait-subscribers', type=float, default=3.0, metavar='S',
                     help='wait up to S seconds for a subscriber on every topic first')
    inf = sub.add_parser('info', help='topics, types, counts, duration')
    inf.add_argument('bag')
    argv = sys.argv[1:] if argv is None else argv
    ros_args = argv[argv.index('--ros-args'):] if '--ros-args' in argv else []
    args = parser.parse_args(argv[:len(argv) - len(ros_args)])
    if args.command == 'record':
        return record(args.out, args.topic, args.duration, args.format)
    if args.command == 'play':
        return play(args.bag, args.rate, args.topic, args.loop, args.wait_subscribers, ros_args)
    return info(args.bag)


if __name__ == '__main__':
    sys.exit(main())
