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
Shared fixtures and helpers of the tests.

One tiny checkpoint per session (the real make-tiny code), ROS probes, the command limits of
the control tests, a scripted clock, and waiting on conditions.
"""

import os
from pathlib import Path
import time

import pytest
from ros_harness import Probe, Processes, ros_environment

from flashvla_ros.control.safety import SafetyLimits
from flashvla_ros.policy import load_policy
from flashvla_ros.tools.make_tiny import make_tiny

LIMITS = SafetyLimits.from_lists([1.0] * 7, [-0.05] * 6 + [0.0], [0.05] * 6 + [1.0])


class ScriptedClock:
    """A clock that moves only when a test sets `t`: ages and schedules without waiting."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def wait_for(predicate, timeout: float = 5.0):
    """Wait until `predicate()` is true (another thread makes it so); fail after `timeout`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(0.002)
    raise AssertionError('condition not reached')


def settle(worker) -> None:
    """
    Wait until the inference worker has looked at the present state and found nothing due.

    What a "nothing happens" check asserts after this is decided, not a matter of time.
    """
    with worker.lock:
        looks = worker.looks
        worker.lock.notify_all()
    wait_for(lambda: worker.looks > looks)


@pytest.fixture(scope='session')
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp('tiny') / 'openvla-tiny', seed=0, dtype='float32')


@pytest.fixture(scope='session')
def tiny_policy(tiny_dir):
    return load_policy(str(tiny_dir))


@pytest.fixture(scope='module')
def probe():
    import rclpy
    os.environ.update(ros_environment())
    rclpy.init()
    node = rclpy.create_node('test_probe')
    yield Probe(node)
    node.destroy_node()
    rclpy.shutdown()


@pytest.fixture
def procs(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.stop_all()


@pytest.fixture
def fresh_probe(probe):
    """Each test listens from scratch (subscriptions persist; recordings do not)."""
    probe.spin(0.3)  # take what earlier tests' nodes left in the reader queues
    probe.messages.clear()
    yield
