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
    ros2 launch flashvla_ros policy.launch.py robots:=[r1,r2]   # one model, two robots

Launch arguments left empty keep the YAML file's value. With `robots`, one policy node serves
every robot under its namespace, and `use_mock_world` starts one mock world per robot there
(each its own process and seed).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare
import yaml

ARGUMENTS = {
    'model': ('', 'Checkpoint directory (Hugging Face OpenVLA layout); empty: YAML value.'),
    'config': (PathJoinSubstitution([FindPackageShare('flashvla_ros'), 'config', 'policy.yaml']),
               'Parameter file for policy_node.'),
    'device': ('', 'cpu, cuda or cuda:N; empty: YAML value.'),
    'dtype': ('', 'float32, bfloat16 or float16; empty: YAML value.'),
    'quantize': ('', 'none, int8 or int4 (weight-only, needs torchao); empty: YAML value.'),
    'namespace': ('', 'Namespace of both nodes.'),
    'robots': ('', 'Robot namespaces served by one model, e.g. [r1,r2]; empty: YAML value.'),
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
    robots = robot_names(arg('robots'), arg('config'))
    if arg('robots'):
        overrides['robots'] = robots
    namespace = arg('namespace')
    actions = [Node(package='flashvla_ros', executable='policy_node', name='policy_node',
                    namespace=namespace, output='screen',
                    parameters=[arg('config'), overrides])]
    if arg('use_mock_world').lower() == 'true':
        for i, robot in enumerate(robots or ['']):
            actions.append(Node(
                package='flashvla_ros', executable='mock_world', name='mock_world',
                namespace='/'.join(filter(None, [namespace, robot])), output='screen',
                parameters=[{'use_sim_time': sim_time, 'seed': 1000 * i}],
                remappings=[('commands', 'policy_node/commands')]))
    return actions


def robot_names(argument: str, config: str) -> list[str]:
    """Return the robots: the launch argument (YAML list text), else the parameter file's."""
    if argument:
        names = yaml.safe_load(argument)
        if not isinstance(names, list):
            raise ValueError(f'robots:={argument}: give a list, e.g. robots:=[r1,r2]')
        return [str(n) for n in names]
    with open(config) as f:
        params = yaml.safe_load(f) or {}
    return list(params.get('policy_node', {}).get('ros__parameters', {}).get('robots') or [])


def generate_launch_description():
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=text)
          for name, (default, text) in ARGUMENTS.items()),
        OpaqueFunction(function=nodes),
    ])
