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

"""A hung inference step on a real node: deactivate and activate stay bounded, one worker."""

import threading
import time

import pytest

rclpy = pytest.importorskip('rclpy', reason='real rclpy (pip wheels) is part of make test')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from flashvla_ros.ros.convert import rgb_to_image  # noqa: E402
from flashvla_ros.ros.policy_node import PolicyNode  # noqa: E402
from flashvla_ros.sim.tasks import Episode  # noqa: E402

SUCCESS = TransitionCallbackReturn.SUCCESS


def test_a_hung_step_then_deactivate_and_activate(probe, tiny_dir):
    node = PolicyNode(parameter_overrides=[Parameter('model', value=str(tiny_dir)),
                                           Parameter('autostart', value=False)])
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    probe.listen(Float64MultiArray, '/policy_node/commands')
    probe.listen(DiagnosticArray, '/diagnostics')
    camera = probe.node.create_publisher(Image, '/image_raw', qos_profile_sensor_data)
    task = probe.node.create_publisher(String, '/instruction', 10)
    episode = Episode(3)
    hang = threading.Event()
    try:
        assert node.trigger_configure() == SUCCESS
        served = node.worker.predict_batch

        def hung(requests):  # a device that stops answering, until the test lets it go
            hang.wait()
            return served(requests)

        node.worker.predict_batch = hung
        assert node.trigger_activate() == SUCCESS

        def feed() -> bool:
            task.publish(String(data=episode.instruction))
            camera.publish(rgb_to_image(episode.observe(), node.get_clock().now().to_msg()))
            probe.spin(0.05)
            return node.worker.stuck() == '' and node.robots[0].runner.status()['busy']

        probe.wait_for(feed, 20, 'the step to start')
        start = time.monotonic()
        assert node.trigger_deactivate() == SUCCESS
        assert time.monotonic() - start < 3.0  # bounded, although the step never returned
        assert 'did not stop: a step has been running' in node.worker.stuck()
        node._publish_diagnostics()
        probe.wait_for(lambda: 'did not stop' in (probe.diagnostics() or {}).get('message', ''),
                       5, 'the diagnostics to say why')
        start = time.monotonic()
        assert node.trigger_activate() == SUCCESS
        assert time.monotonic() - start < 1.0  # it takes the same thread back: no wait
        assert [t.name for t in threading.enumerate()].count('flashvla-inference') == 1
        reply = probe.call(Trigger, '/policy_node/reset', Trigger.Request())  # still answers
        assert reply.success
        hang.set()  # the device answers again: commands resume from the same worker
        since = len(probe.messages['/policy_node/commands'])
        probe.wait_for(lambda: feed() or len(probe.messages['/policy_node/commands']) > since,
                       30, 'commands after the hang')
        assert [t.name for t in threading.enumerate()].count('flashvla-inference') == 1
    finally:
        hang.set()
        node.trigger_shutdown()
        executor.shutdown()
        node.destroy_node()
        spinner.join(5)
