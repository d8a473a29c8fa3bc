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
Camera frames for people: a caption under the image, .mp4/.gif files, and a live window.

Used by `flashvla-demo --view/--record` and `scripts/record_gif.py`; nothing here needs ROS.
"""

from __future__ import annotations

import os
from pathlib import Path
import sys

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
VIDEO_SUFFIXES = ('.mp4', '.gif')


def wrap(text: str, width_px: int, scale: float) -> list[str]:
    """Break `text` into lines that fit `width_px` at this font scale."""
    lines: list[str] = []
    for word in text.split():
        trial = f'{lines[-1]} {word}' if lines else word
        if lines and cv2.getTextSize(trial, FONT, scale, 1)[0][0] <= width_px:
            lines[-1] = trial
        else:
            lines.append(word)
    return lines or ['']


def annotate(rgb: np.ndarray, caption: str, status: str = '', width: int | None = None,
             success: bool | None = None, band_lines: int = 3) -> np.ndarray:
    """
    Return the frame resized to `width` with a caption band under it (the scene stays whole).

    `caption` (the instruction) is wrapped to fit, `status` (episode, successes) below it,
    green when `success` is True, red when False. The band always has `band_lines` lines, so
    that every frame of a recording has the same size; the caption gives way to the status.
    """
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    if width and width != rgb.shape[1]:
        height = round(rgb.shape[0] * width / rgb.shape[1])
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA
                         if width < rgb.shape[1] else cv2.INTER_NEAREST)
    w = rgb.shape[1]
    scale = max(0.35, w / 520)
    line_h = int(cv2.getTextSize('Ag', FONT, scale, 1)[0][1] * 1.7) + 3
    colour = {True: (90, 220, 90), False: (240, 110, 90)}.get(success, (200, 200, 200))
    below = [(line, colour) for line in (wrap(status, w - 8, scale) if status else [])]
    text = wrap(caption, w - 8, scale)
    room = max(1, band_lines - len(below))
    if len(text) > room:  # say that words were cut
        text = [*text[:room - 1], text[room - 1] + ' ...']
    lines = ([(line, (240, 240, 240)) for line in text] + below)[:band_lines]
    band = np.full((line_h * band_lines + line_h // 2, w, 3), 24, np.uint8)
    for i, (line, tone) in enumerate(lines):
        cv2.putText(band, line, (4, line_h * (i + 1)), FONT, scale, tone, 1, cv2.LINE_AA)
    return np.concatenate([rgb, band], axis=0)


class FrameWriter:
    """
    Write RGB frames to an .mp4 (OpenCV's MPEG-4 encoder) or an animated .gif (Pillow).

    Every frame must have the first one's size. A GIF is kept in memory as palette images
    (about 60 kB a frame at 224 px: prefer .mp4 for long recordings) and written on close();
    Pillow merges identical consecutive frames into one longer frame.
    """

    def __init__(self, path: str | Path, fps: float = 10.0) -> None:
        self.path = Path(path).expanduser()
        self.suffix = self.path.suffix.lower()
        if self.suffix not in VIDEO_SUFFIXES:
            raise ValueError(f'{self.path}: --record writes {" or ".join(VIDEO_SUFFIXES)}')
        if fps <= 0:
            raise ValueError('fps must be positive')
        if self.suffix == '.gif':
            try:
                from PIL import Image  # noqa: F401  (a matplotlib dependency: the plot extra)
            except ImportError as exc:
                raise ImportError("writing a .gif needs Pillow: pip install 'flashvla_ros[plot]'"
                                  ' (or write an .mp4)') from exc
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self.frames = 0
        self.size: tuple[int, int] | None = None
        self._video = None
        self._gif: list = []

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        if self.size is None:
            self.size = (w, h)
            if self.suffix == '.mp4':
                self._video = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*'mp4v'),
                                              self.fps, (w, h))
                if not self._video.isOpened():
                    raise RuntimeError(f'{self.path}: OpenCV cannot write MPEG-4 here; '
                                       'record a .gif instead')
        elif (w, h) != self.size:
            raise ValueError(f'frame {w}x{h} differs from the first one, {self.size[0]}x'
                             f'{self.size[1]}')
        if self._video is not None:
            self._video.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        else:
            from PIL import Image
            old = not hasattr(Image, 'Quantize')  # Pillow < 9.1 (Ubuntu 22.04 has 9.0)
            self._gif.append(Image.fromarray(np.ascontiguousarray(rgb)).quantize(
                colors=128, method=Image.MEDIANCUT if old else Image.Quantize.MEDIANCUT,
                dither=Image.NONE if old else Image.Dither.NONE))
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file; return its path, or None when no frame came (nothing written)."""
        if self._video is not None:
            self._video.release()
            self._video = None
        elif self._gif:
            self._gif[0].save(str(self.path), save_all=True, append_images=self._gif[1:],
                              duration=round(1000 / self.fps), loop=0, optimize=True)
            self._gif = []
        return self.path if self.frames else None

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def display_problem() -> str | None:
    """Why no window can open here (no X11/Wayland display), or None when one may."""
    if sys.platform.startswith('linux') and not (os.environ.get('DISPLAY')
                                                 or os.environ.get('WAYLAND_DISPLAY')):
        return 'no display (neither DISPLAY nor WAYLAND_DISPLAY is set)'
    return None


class Viewer:
    """
    A window showing frames: OpenCV's when its build has a GUI, else matplotlib's.

    Use `Viewer.open(title)`, which returns (viewer or None, why not). Closing the window
    stops the viewing only.
    """

    def __init__(self, title: str, kind: str, handle=None) -> None:
        self.title, self.kind, self.handle = title, kind, handle
        self.closed = False

    @classmethod
    def open(cls, title: str) -> tuple[Viewer | None, str]:
        problem = display_problem()
        if problem:
            return None, problem
        try:
            cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
            return cls(title, 'opencv'), 'OpenCV window'
        except cv2.error:
            pass  # opencv-python-headless: no GUI in this build
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            return None, ('this OpenCV has no GUI (opencv-python-headless) and matplotlib is '
                          "missing: pip install 'flashvla_ros[plot]'")
        backend = plt.get_backend().lower()
        if backend in ('agg', 'pdf', 'ps', 'svg', 'cairo', 'template') or 'inline' in backend:
            return None, (f'this OpenCV has no GUI and matplotlib found no GUI backend '
                          f'({backend}): install python3-tk (or PyQt)')
        plt.ion()
        fig = plt.figure(title)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_axis_off()
        return cls(title, 'matplotlib', (plt, fig, ax, None)), f'matplotlib window ({backend})'

    def show(self, rgb: np.ndarray) -> None:
        if self.closed:
            return
        if self.kind == 'opencv':
            cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            cv2.waitKey(1)
            if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                self.closed = True
            return
        plt, fig, ax, image = self.handle
        if not plt.fignum_exists(fig.number):
            self.closed = True
            return
        if image is None or image.get_array().shape != rgb.shape:
            ax.clear()
            ax.set_axis_off()
            image = ax.imshow(rgb)
            self.handle = (plt, fig, ax, image)
        else:
            image.set_data(rgb)
        fig.canvas.draw_idle()
        fig.canvas.flush_events()

    def close(self) -> None:
        if self.kind == 'opencv':
            cv2.destroyWindow(self.title)
        elif self.handle is not None:
            self.handle[0].close(self.handle[1])
        self.closed = True
