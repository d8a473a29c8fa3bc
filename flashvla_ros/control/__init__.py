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
The control side, free of ROS: between the policy and the robot's commands.

One inference worker for every robot (`worker.py`), each robot's runner (`runner.py`: its
camera slot, just-in-time start, tick, holds, watchdog), the chunk executor the bench shares
(`chunks.py`), the tick's thread (`ticker.py`), safety limits, and the timing figures.
"""
