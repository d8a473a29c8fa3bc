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

"""Errors the policy runtime raises; each names what to fix."""


class PolicyError(Exception):
    """Base class of every error the policy runtime raises on purpose."""


class CheckpointError(PolicyError):
    """A checkpoint directory, file, key or shape is missing or does not match its config."""


class InputError(PolicyError, ValueError):
    """An observation or instruction the policy cannot accept (wrong shape, dtype, length)."""


class NonFiniteOutputError(PolicyError):
    """The model produced NaN or inf; its output must never reach the robot."""
