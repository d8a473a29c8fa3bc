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
Launch the VLA policy node, and optionally a world node, with one YAML parameter file.

    ros2 launch flashvla_ros policy.launch.py model:=/path/to/openvla-7b device:=cuda \
        dtype:=bfloat16 quantize:=int4 world:=none
    ros2 launch flashvla_ros policy.launch.py robots:=[r1,r2]   # one model, two robots
    ros2 launch flashvla_ros policy.launch.py world:=libero suite:=libero_object \
        model:=/path/to/openvla-7b-finetuned-libero-object
    ros2 launch flashvla_ros policy.launch.py world:=libero control:=joint   # joint targets

Launch arguments left empty keep the YAML file's value. `world`: mock (the Gazebo-free
tabletop), libero (LIBERO's `suite`; config/libero.yaml unless `config:=` names another file)
or none; `use_mock_world:=false` is the older spelling of world:=none. With `robots`, one
policy node serves every robot under its namespace, and one world per robot runs there (each
its own process and seed). `control:=joint` drives the world's robot by the policy node's
joint outputs (inverse kinematics) instead of its end-effector commands: the world tracks
`~/joint_trajectory`, and config/joints_<world>.yaml is layered over the parameter file.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare
import yaml

ARGUMENTS = {
    'model': ('', 'Checkpoint directory (Hugging Face OpenVLA layout); empty: YAML value.'),
    'config': ('', 'Parameter file for policy_node; empty: config/policy.yaml, with '
                   'world:=libero config/libero.yaml.'),
    'device': ('', 'cpu, cuda or cuda:N; empty: YAML value.'),
    'dtype': ('', 'float32, bfloat16 or float16; empty: YAML value.'),
    'quantize': ('', 'none, int8 or int4 (weight-only, needs torchao); empty: YAML value.'),
    'namespace': ('', 'Namespace of both nodes.'),
    'robots': ('', 'Robot namespaces served by one model, e.g. [r1,r2]; empty: YAML value.'),
    'world': ('mock', 'World node closing the loop: mock, libero or none.'),
    'suite': ('libero_object', 'world:=libero: the LIBERO suite.'),
    'render': ('openvla', "world:=libero: openvla (LIBERO's render) or fast."),
    'center_crop': ('false', "world:=libero: OpenVLA's centre crop of the frame, for "
                             'checkpoints trained with crops (its LIBERO fine-tunes).'),
    'lockstep': ('auto', 'world:=libero: the world publishes /clock, one control period per '
                         'step, and the policy node runs on it (use_sim_time); auto: with one '
                         'robot (worlds of several robots would each publish a /clock).'),
    'control': ('ee', "How the world's robot is driven: ee (the end-effector commands) or "
                      'joint (joint targets by inverse kinematics, config/joints_<world>.yaml).'),
    'use_mock_world': ('true', 'Deprecated: false is world:=none.'),
    'use_sim_time': ('false', 'Use /clock time.'),
}
# Each world's node, and the policy's parameter file when `config` is empty.
WORLDS = {'mock': 'mock_world', 'libero': 'libero_world'}
CONFIGS = {'mock': ('config', 'policy.yaml'), 'libero': ('config', 'libero.yaml')}


def nodes(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    world = arg('world')
    if world not in (*WORLDS, 'none'):
        raise ValueError(f'world:={world}: choose mock, libero or none')
    if arg('use_mock_world').lower() != 'true' and world == 'mock':
        world = 'none'
    config = arg('config') or PathJoinSubstitution(
        [FindPackageShare('flashvla_ros'), *CONFIGS.get(world, CONFIGS['mock'])]).perform(context)
    sim_time = arg('use_sim_time').lower() == 'true'
    control = arg('control')
    if control not in ('ee', 'joint') or (control == 'joint' and world == 'none'):
        raise ValueError(f'control:={control}: ee, or joint with world:=mock or libero')
    configs = [config]
    if control == 'joint':  # the joint path's parameters for this world's robot
        configs.append(PathJoinSubstitution(
            [FindPackageShare('flashvla_ros'), 'config', f'joints_{world}.yaml']).perform(context))
    robots = robot_names(arg('robots'), config)
    lockstep = world == 'libero' and (arg('lockstep').lower() == 'true' or (
        arg('lockstep').lower() == 'auto' and len(robots) <= 1))
    overrides = {'use_sim_time': sim_time or lockstep}
    overrides.update({k: arg(k) for k in ('model', 'device', 'dtype', 'quantize')
                      if arg(k)})
    if arg('robots'):
        overrides['robots'] = robots
    namespace = arg('namespace')
    actions = [Node(package='flashvla_ros', executable='policy_node', name='policy_node',
                    namespace=namespace, output='screen',
                    parameters=[*configs, overrides])]
    if world == 'none':
        return actions
    params = {'suite': arg('suite'), 'render': arg('render'), 'lockstep': lockstep,
              'center_crop': arg('center_crop').lower() == 'true'} if world == 'libero' else {}
    params['control'] = control
    for i, robot in enumerate(robots or ['']):
        seed = {} if world == 'libero' else {'seed': 1000 * i}  # LIBERO: OpenVLA's env seed
        actions.append(Node(
            package='flashvla_ros', executable=WORLDS[world], name=WORLDS[world],
            namespace='/'.join(filter(None, [namespace, robot])), output='screen',
            parameters=[{'use_sim_time': sim_time and not lockstep, **seed, **params}],
            remappings=[('commands', 'policy_node/commands'),
                        ('joint_trajectory', 'policy_node/joint_trajectory')]))
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
