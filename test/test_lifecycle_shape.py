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
The lifecycle node's shape, seen from another process.

Inputs and outputs exist only while the node is configured; /diagnostics and ~/reset in every
state. An accepted parameter change takes effect; a refused one says why and changes nothing.
One policy_node process serves every check.
"""

import numpy as np
import pytest
from ros_harness import (
    COMMANDS,
    RAW,
    change_state,
    get_parameter,
    listen_once,
    policy_args,
    set_parameter,
)

rclpy = pytest.importorskip('rclpy', reason='real rclpy (pip wheels) is part of make test')
pytestmark = pytest.mark.usefixtures('fresh_probe')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from flashvla_ros.ros.convert import rgb_to_image  # noqa: E402

CONFIGURE, CLEANUP, ACTIVATE, DEACTIVATE, INACTIVE_SHUTDOWN = 1, 2, 3, 4, 6  # Transition ids
OUTPUTS = (COMMANDS, RAW, '/policy_node/delta_twist_cmds', '/policy_node/gripper_cmd')
INPUTS = ('/image_raw', '/instruction', '/joint_states')
TASK = 'pick up the red block'


def test_topics_follow_the_lifecycle_and_parameters_apply_after_validation(probe, procs,
                                                                           tiny_dir):
    listen_once(probe, DiagnosticArray, '/diagnostics')
    procs.start('policy_node', *policy_args(tiny_dir, 'autostart:=false'))
    node = probe.node

    def diag(key: str, value: str, what: str) -> dict[str, str]:
        return probe.wait_for(lambda: (probe.diagnostics() or {}).get(key) == value
                              and probe.diagnostics(), 10, what, procs)

    def interface() -> tuple[list[int], list[int]]:
        return ([node.count_publishers(t) for t in OUTPUTS],
                [node.count_subscribers(t) for t in INPUTS])

    def wait_interface(count: int, what: str) -> None:
        expected = ([count] * len(OUTPUTS), [count] * len(INPUTS))
        probe.wait_for(lambda: interface() == expected, 10, what, procs)

    # Unconfigured: diagnostics and ~/reset answer (so the node is discovered), nothing else.
    diag('lifecycle_state', 'unconfigured', 'an unconfigured node')
    reset = probe.call(Trigger, '/policy_node/reset', Trigger.Request())
    assert not reset.success and reset.message == 'not configured (unconfigured)', reset
    probe.spin(0.3)
    assert interface() == ([0] * len(OUTPUTS), [0] * len(INPUTS))
    assert 'camera_publishers' not in probe.diagnostics()

    assert change_state(probe, CONFIGURE)
    wait_interface(1, 'the inputs and outputs of a configured node')
    diag('fault', 'no instruction', 'an inactive node without instruction')

    # An accepted change takes effect: the task (a new episode) and the runner's limits.
    assert set_parameter(probe, 'instruction', TASK).successful
    diag('instruction', TASK, 'the new instruction')
    assert set_parameter(probe, 'max_image_age_s', 0.3).successful
    camera = node.create_publisher(Image, '/image_raw', 10)
    probe.wait_for(camera.get_subscription_count, 10, 'the camera subscription', procs)
    frame = np.zeros((48, 64, 3), np.uint8)
    for _ in range(3):
        camera.publish(rgb_to_image(frame, node.get_clock().now().to_msg()))
        probe.spin(0.1)
    node.destroy_publisher(camera)
    stale = diag('fault', 'camera stale: no valid frame for over 0.3 s', 'the new image age')
    assert int(stale['frames']) >= 1 and stale['episode'] == '1', stale

    # A refused change says why and changes nothing: neither the parameter nor the node.
    refused = set_parameter(probe, 'instruction', 'pick up\x1b[2J the cup')
    assert not refused.successful and "control characters ['U+001B']" in refused.reason
    refused = set_parameter(probe, 'action_lower', [0.1] * 7)
    assert not refused.successful and 'action_lower > action_upper' in refused.reason
    assert get_parameter(probe, 'instruction').string_value == TASK
    assert list(get_parameter(probe, 'action_lower').double_array_value) == \
        [-0.05] * 3 + [-0.25] * 3 + [0.0]
    probe.spin(1.1)  # a fresh diagnostics message
    kept = probe.diagnostics()
    assert (kept['instruction'], kept['episode']) == (TASK, '1'), kept

    # Activate and deactivate leave the topic interface as it is; cleanup removes it.
    for transition in (ACTIVATE, DEACTIVATE):
        assert change_state(probe, transition)
    assert interface() == ([1] * len(OUTPUTS), [1] * len(INPUTS))
    assert change_state(probe, CLEANUP)
    wait_interface(0, 'no inputs or outputs after cleanup')
    diag('lifecycle_state', 'unconfigured', 'an unconfigured node after cleanup')
    assert 'camera_publishers' not in probe.diagnostics()

    # Configured again: one of each (nothing left over); shutdown removes them too.
    assert change_state(probe, CONFIGURE)
    wait_interface(1, 'the inputs and outputs of a node configured again')
    assert change_state(probe, INACTIVE_SHUTDOWN)
    wait_interface(0, 'no inputs or outputs after shutdown')
    diag('lifecycle_state', 'finalized', 'a finalized node')
    assert probe.call(Trigger, '/policy_node/reset', Trigger.Request()).message == \
        'not configured (finalized)'
