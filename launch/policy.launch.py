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
Launch the VLA policy node, and optionally the mock world, with one YAML parameter file.

    ros2 launch flashvla_ros policy.launch.py model:=/path/to/openvla-7b device:=cuda \
        dtype:=bfloat16 quantize:=int4 use_mock_world:=false

Launch arguments left empty keep the YAML file's value.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = {
    'model': ('', 'Checkpoint directory (Hugging Face OpenVLA layout); empty: YAML value.'),
    'config': (PathJoinSubstitution([FindPackageShare('flashvla_ros'), 'config', 'policy.yaml']),
               'Parameter file for policy_node.'),
    'device': ('', 'cpu, cuda or cuda:N; empty: YAML value.'),
    'dtype': ('', 'float32, bfloat16 or float16; empty: YAML value.'),
    'quantize': ('', 'none, int8 or int4 (weight-only, needs torchao); empty: YAML value.'),
    'namespace': ('', 'Namespace of both nodes.'),
    'use_mock_world': ('true', 'Also start the Gazebo-free mock world and close the loop.'),
    'use_sim_time': ('false', 'Use /clock time.'),
}


def nodes(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    sim_time = arg('use_sim_time').lower() == 'true'
    overrides = {'use_sim_time': sim_time}
    overrides.update({k: arg(k) for k in ('model', 'device', 'dtype', 'quantize')
                      if arg(k)})
    actions = [Node(package='flashvla_ros', executable='policy_node', name='policy_node',
                    namespace=arg('namespace'), output='screen',
                    parameters=[arg('config'), overrides])]
    if arg('use_mock_world').lower() == 'true':
        actions.append(Node(package='flashvla_ros', executable='mock_world', name='mock_world',
                            namespace=arg('namespace'), output='screen',
                            parameters=[{'use_sim_time': sim_time}],
                            remappings=[('commands', 'policy_node/commands')]))
    return actions


def generate_launch_description():
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=text)
          for name, (default, text) in ARGUMENTS.items()),
        OpaqueFunction(function=nodes),
    ])
