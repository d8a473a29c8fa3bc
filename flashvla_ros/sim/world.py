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
The kinematic tabletop world: state, one step per command, headless OpenCV rendering.

Coordinates are metres on a square table seen from above; x points right and y points away
from the robot (up in the image). A command is OpenVLA's 7-D action: end-effector deltas
(dx, dy, dz, droll, dpitch, dyaw) and an absolute gripper command (`gripper_closed`; NaN
leaves the gripper as it is, as a hold sent before any gripper command does). The table is flat, so
dz and the rotations are accepted and ignored. An open gripper hovers: it passes over blocks
and grasps the one under it when it closes. An empty closed gripper is a pusher: blocks it
runs into move with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..policy.actions import ACTION_DIM, GRIPPER, MOTION, XY, gripper_closed

TABLE_SIZE = 0.5  # metres per image side
MAX_STEP = 0.02  # metres one command may move the end effector (larger deltas are clipped)
BLOCK_HALF = 0.02  # blocks are 4 cm squares
ZONE_HALF = 0.05  # zones are 10 cm squares
EE_RADIUS = 0.015
GRASP_RADIUS = 0.02  # how close the gripper centre must be to a block's centre to grasp it
MARGIN = 0.06  # objects start at least this far from the table's edge

BLOCK_COLOURS = {
    'red': (220, 40, 40), 'green': (40, 170, 60), 'blue': (40, 80, 220), 'yellow': (230, 200, 30),
}
ZONE_COLOURS = {'purple': (150, 70, 170), 'orange': (240, 140, 40)}
TABLE_RGB = (190, 170, 140)
EE_RGB = (40, 40, 40)


@dataclass
class Block:
    colour: str
    pos: np.ndarray


@dataclass
class Zone:
    colour: str
    pos: np.ndarray

    def contains(self, p: np.ndarray) -> bool:
        return bool(np.all(np.abs(p - self.pos) <= ZONE_HALF))


@dataclass
class WorldState:
    ee: np.ndarray
    gripper_closed: bool
    blocks: list[Block]
    zones: list[Zone]
    held: int | None = None
    steps: int = 0
    start_blocks: list[np.ndarray] = field(default_factory=list)

    def block(self, colour: str) -> Block:
        return next(b for b in self.blocks if b.colour == colour)

    def zone(self, colour: str) -> Zone:
        return next(z for z in self.zones if z.colour == colour)


def random_state(rng: np.random.Generator, n_blocks: int = 3) -> WorldState:
    """Blocks, zones and the gripper at random positions that do not overlap."""
    placed: list[tuple[np.ndarray, float]] = []

    def free_spot(radius: float) -> np.ndarray:
        for _ in range(1000):
            p = rng.uniform(MARGIN, TABLE_SIZE - MARGIN, size=2)
            if all(np.linalg.norm(p - q) > radius + r + 0.02 for q, r in placed):
                placed.append((p, radius))
                return p
        raise RuntimeError('could not place objects without overlap')

    zones = [Zone(c, free_spot(ZONE_HALF * 1.42)) for c in ZONE_COLOURS]
    colours = rng.choice(list(BLOCK_COLOURS), size=n_blocks, replace=False)
    blocks = [Block(str(c), free_spot(BLOCK_HALF * 1.42)) for c in colours]
    ee = free_spot(EE_RADIUS)
    return WorldState(ee=ee, gripper_closed=False, blocks=blocks, zones=zones,
                      start_blocks=[b.pos.copy() for b in blocks])


def step(state: WorldState, action: np.ndarray) -> None:
    """Apply one command: move (clipped), grasp/release, push with an empty closed gripper."""
    action = np.asarray(action, dtype=np.float64)
    shaped = action.shape == (ACTION_DIM,)
    gripper_kept = shaped and np.isnan(action[GRIPPER])  # "no gripper command"
    if not shaped or not np.isfinite(action[MOTION]).all() \
            or not (gripper_kept or np.isfinite(action[GRIPPER])):
        raise ValueError(f'a command is 6 finite motions and a finite or NaN (keep) gripper, '
                         f'got {action!r}')
    delta = np.clip(action[XY], -MAX_STEP, MAX_STEP)
    ee = np.clip(state.ee + delta, 0.0, TABLE_SIZE)
    moved = ee - state.ee
    state.ee = ee
    close = state.gripper_closed if gripper_kept else gripper_closed(action[GRIPPER])
    if close and not state.gripper_closed:
        nearest = _nearest_block(state)
        if nearest is not None:
            state.held = nearest
    elif not close:
        state.held = None
    state.gripper_closed = bool(close)
    if state.held is not None:
        state.blocks[state.held].pos = state.ee.copy()
    elif state.gripper_closed:
        _push(state, moved)
    state.steps += 1


def _nearest_block(state: WorldState) -> int | None:
    dists = [np.linalg.norm(b.pos - state.ee) for b in state.blocks]
    i = int(np.argmin(dists))
    return i if dists[i] <= GRASP_RADIUS else None


def _push(state: WorldState, moved: np.ndarray) -> None:
    """Blocks the closed, empty gripper overlaps move along with it."""
    if not moved.any():
        return
    for b in state.blocks:
        gap = np.abs(state.ee - b.pos)
        if np.all(gap < BLOCK_HALF + EE_RADIUS):
            b.pos = np.clip(b.pos + moved, BLOCK_HALF, TABLE_SIZE - BLOCK_HALF)


def to_pixels(p: np.ndarray, size: int) -> tuple[int, int]:
    s = size / TABLE_SIZE
    return int(round(p[0] * s)), int(round((TABLE_SIZE - p[1]) * s))


# Object classes of `label_map` (what is drawn on top wins, as in the image).
LABELS = ('table', *ZONE_COLOURS, *BLOCK_COLOURS, 'gripper')


def render(state: WorldState, size: int = 224) -> np.ndarray:
    """Draw the scene as the overhead camera sees it: HxWx3 uint8 RGB."""
    return _draw(state, size, np.empty((size, size, 3), np.uint8), TABLE_RGB,
                 {**ZONE_COLOURS, **BLOCK_COLOURS}, EE_RGB, (255, 255, 255), cv2.LINE_AA)


def label_map(state: WorldState, size: int = 224) -> np.ndarray:
    """Draw the same scene with class indices (LABELS) instead of colours: HxW uint8."""
    ids = {name: (i,) for i, name in enumerate(LABELS)}
    img = np.empty((size, size, 1), np.uint8)
    gripper = ids['gripper']
    return _draw(state, size, img, ids['table'], ids, gripper, gripper, cv2.LINE_8)[..., 0]


def _draw(state, size, img, table, colours, ee, ee_centre, line) -> np.ndarray:
    img[:] = table
    s = size / TABLE_SIZE
    for z in state.zones:
        (x, y), h = to_pixels(z.pos, size), int(round(ZONE_HALF * s))
        cv2.rectangle(img, (x - h, y - h), (x + h, y + h), colours[z.colour], 2)
    order = sorted(range(len(state.blocks)), key=lambda i: i == state.held)
    for i in order:
        b = state.blocks[i]
        (x, y), h = to_pixels(b.pos, size), int(round(BLOCK_HALF * s))
        cv2.rectangle(img, (x - h, y - h), (x + h, y + h), colours[b.colour], -1)
    (x, y), r = to_pixels(state.ee, size), int(round(EE_RADIUS * s))
    cv2.circle(img, (x, y), r, ee, -1 if state.gripper_closed else 2, line)
    cv2.circle(img, (x, y), 2, ee_centre, -1)
    return img
