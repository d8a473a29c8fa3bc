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
Figures drawn with matplotlib's Agg renderer: no display, no pyplot state, same on CI.

matplotlib is the `plot` extra (`pip install 'flashvla_ros[plot]'`, or Ubuntu's
python3-matplotlib): only the developer tools draw, never the node.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

INSTALL_HINT = ("matplotlib is needed for figures: pip install 'flashvla_ros[plot]' "
                '(or matplotlib alone; on Ubuntu/ROS: apt install python3-matplotlib)')


def agg_figure(width_px: int, height_px: int, dpi: int = 100) -> Any:
    """Make a matplotlib Figure of exactly width_px x height_px on the Agg canvas (no pyplot)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    try:
        fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout='constrained')
    except TypeError:  # matplotlib < 3.6 (Ubuntu 22.04 ships 3.5)
        fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi,
                     constrained_layout=True)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: Path) -> None:
    """Write the figure at its own size (no tight bounding box: the size is the one asked)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=fig.dpi, format='png')


def wilson_ci(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sound near 0% and 100%, unlike p +- z*se)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def moving_mean_ci(values, window: int, z: float = 1.96):
    """Trailing moving mean of `values` and the 95% CI of each window's mean: (mean, lo, hi)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    window = max(1, min(window, len(v)))
    kernel = np.ones(window) / window
    mean = np.convolve(v, kernel, mode='valid')
    sq = np.convolve(v * v, kernel, mode='valid')
    std = np.sqrt(np.maximum(sq - mean * mean, 0.0) * window / max(1, window - 1))
    half = z * std / math.sqrt(window)
    return mean, mean - half, mean + half
