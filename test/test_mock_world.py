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

"""The mock world's policy reset in a namespace, with real rclpy nodes in one process."""

import os
import time

import pytest
from ros_harness import ros_environment

rclpy = pytest.importorskip('rclpy', reason='real rclpy (pip wheels) is part of make test')

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from flashvla_ros.ros.mock_world_node import MockWorld  # noqa: E402


class ResetServer(Node):
    """Stands where the policy node's `~/reset` is: counts the calls it gets."""

    def __init__(self, namespace: str) -> None:
        super().__init__('policy_node', namespace=namespace)
        self.calls = 0
        self.create_service(Trigger, '~/reset', self._on_reset)

    def _on_reset(self, request, response):
        self.calls += 1
        response.success = True
        return response


@pytest.fixture
def executor():
    os.environ.update(ros_environment())
    rclpy.init()
    ex = SingleThreadedExecutor()
    yield ex
    for node in ex.get_nodes():
        node.destroy_node()
    ex.shutdown()
    rclpy.shutdown()


def spin_until(executor, predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.02)
    return predicate()


def call_reset(executor, client) -> None:
    assert spin_until(executor, client.service_is_ready)
    future = client.call_async(Trigger.Request())
    assert spin_until(executor, future.done)


def test_reset_reaches_the_policy_in_the_same_namespace(executor):
    world = MockWorld(namespace='robot1')
    beside = ResetServer('robot1')  # what `namespace:=robot1` launches
    elsewhere = ResetServer('')  # /policy_node/reset: another graph's policy
    probe = Node('probe')
    for node in (world, beside, elsewhere, probe):
        executor.add_node(node)
    world_reset = probe.create_client(Trigger, '/robot1/mock_world/reset')
    assert spin_until(executor, world.policy_reset.service_is_ready)
    call_reset(executor, world_reset)  # next episode
    assert spin_until(executor, lambda: beside.calls == 1)
    call_reset(executor, world_reset)
    assert spin_until(executor, lambda: beside.calls == 2)
    executor.spin_once(timeout_sec=0.2)
    assert elsewhere.calls == 0 and world.policy_resets == 2 and world.episodes == 3


def test_missing_reset_service_is_logged_not_skipped_silently(executor, capfd):
    world = MockWorld(namespace='robot2')
    probe = Node('probe')
    for node in (world, probe):
        executor.add_node(node)
    world_reset = probe.create_client(Trigger, '/robot2/mock_world/reset')
    for _ in range(3):
        call_reset(executor, world_reset)
    log = capfd.readouterr().err
    # Throttled: one warning for three episodes without a policy to reset.
    assert log.count("policy reset service 'policy_node/reset' (namespace '/robot2') is not "
                     'available') == 1, log
    assert world.policy_resets == 0 and world.episodes == 4
