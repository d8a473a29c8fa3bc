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


"""How a chunk's actions become commands; shared by the runner and the benchmark."""

from __future__ import annotations

import numpy as np

from .safety import GRIPPER


def adaptive_ensemble(candidates: np.ndarray, alpha: float) -> np.ndarray:
    """
    Blend predictions for one step, oldest first, newest last (CogACT's adaptive ensemble).

    Weights exp(alpha * cos(a_k, a_newest)), normalised. A binary gripper (every candidate 0
    or 1) is re-binarised at 0.5, as CogACT deploys it.
    """
    a = np.asarray(candidates, dtype=np.float64)
    ref = a[-1]
    cos = a @ ref / (np.linalg.norm(a, axis=1) * np.linalg.norm(ref) + 1e-7)
    w = np.exp(alpha * cos)
    blended = (w / w.sum()) @ a
    if np.isin(a[:, GRIPPER], (0.0, 1.0)).all():
        blended[GRIPPER] = float(blended[GRIPPER] > 0.5)
    return blended
