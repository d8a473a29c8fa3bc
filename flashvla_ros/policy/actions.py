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
OpenVLA's action tokens: bins <-> token ids, and q01/q99 un-normalisation.

The convention, generalised by vocabulary size V (the tokenizer's base vocabulary, 32000 for
Llama-2): action bin k is token V - k, so the last `n_bins` ids of the base vocabulary are the
action tokens. Decoding maps token t to bin centre `clip(V - t - 1, 0, n_bins - 2)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CheckpointError

# OpenVLA's action: end-effector deltas x, y, z, roll, pitch, yaw, then the gripper (1 closes).
ACTION_NAMES = ('x', 'y', 'z', 'roll', 'pitch', 'yaw', 'gripper')
ACTION_DIM = len(ACTION_NAMES)
GRIPPER = ACTION_NAMES.index('gripper')  # never normalised, binarised by CogACT, kept by a hold
MOTION = slice(0, GRIPPER)  # the end-effector deltas: what a hold sets to zero
LINEAR = slice(0, 3)  # x, y, z
XY = slice(0, 2)  # x, y: the plane the mock world's table moves in
ANGULAR = slice(3, GRIPPER)  # roll, pitch, yaw
# CogACT's head (vla/cogactvla.py: `np.where(a < 0.5, 0, 1)`): 0.5 itself closes. Its deploy
# script re-binarises an ensemble with `> 0.5`; one rule here, they differ at exactly 0.5 only.
GRIPPER_THRESHOLD = 0.5


def gripper_closed(value: float | np.ndarray) -> bool | np.ndarray:
    """Whether a gripper value (or each of an array) closes; NaN is False: check it first."""
    return value >= GRIPPER_THRESHOLD


def binarize_gripper(value: float | np.ndarray) -> np.ndarray:
    """Gripper values as 1.0 (closed) or 0.0 (open), by `gripper_closed`."""
    return np.where(gripper_closed(np.asarray(value)), 1.0, 0.0)


@dataclass(frozen=True)
class ActionCodec:
    vocab_size: int
    n_bins: int = 256

    @property
    def bins(self) -> np.ndarray:
        return np.linspace(-1.0, 1.0, self.n_bins)

    @property
    def bin_centers(self) -> np.ndarray:
        b = self.bins
        return (b[:-1] + b[1:]) / 2.0

    @property
    def first_action_token(self) -> int:
        return self.vocab_size - self.n_bins

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """Token ids -> normalised actions in [-1, 1] (OpenVLA's clip for stray tokens)."""
        index = np.clip(self.vocab_size - np.asarray(token_ids, dtype=np.int64) - 1,
                        0, self.n_bins - 2)
        return self.bin_centers[index]

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Normalised actions -> token ids (the training-side direction)."""
        bins = np.digitize(np.clip(actions, -1.0, 1.0), self.bins)
        return self.vocab_size - bins

    def is_action_token(self, token_ids: np.ndarray) -> np.ndarray:
        t = np.asarray(token_ids)
        return (t >= self.first_action_token) & (t < self.vocab_size)


@dataclass(frozen=True)
class NormStats:
    """One dataset's action statistics; `mask` false leaves a dimension (the gripper) as is."""

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray

    @property
    def action_dim(self) -> int:
        return len(self.q01)

    @classmethod
    def select(cls, norm_stats: dict[str, Any], unnorm_key: str | None) -> tuple[str, NormStats]:
        """Pick the statistics for `unnorm_key` (may be omitted when there is only one)."""
        keys = sorted(norm_stats)
        if unnorm_key is None:
            if len(keys) != 1:
                raise CheckpointError(
                    f'this checkpoint has statistics for {len(keys)} datasets; choose one with '
                    f'unnorm_key, one of: {keys}'
                )
            unnorm_key = keys[0]
        if unnorm_key not in norm_stats:
            raise CheckpointError(f'unknown unnorm_key {unnorm_key!r}; available: {keys}')
        entry = norm_stats[unnorm_key]
        try:
            stats = entry['action']
            q01 = np.asarray(stats['q01'], dtype=np.float64)
            q99 = np.asarray(stats['q99'], dtype=np.float64)
            mask = np.asarray(stats.get('mask', np.ones_like(q01, dtype=bool)), dtype=bool)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f'norm_stats[{unnorm_key!r}].action needs q01, q99 (and optionally mask): {exc}'
            ) from exc
        if not (q01.ndim == 1 and q01.shape == q99.shape == mask.shape and len(q01) > 0):
            raise CheckpointError(f'norm_stats[{unnorm_key!r}].action: q01/q99/mask shapes differ')
        if not (np.isfinite(q01).all() and np.isfinite(q99).all()):
            raise CheckpointError(f'norm_stats[{unnorm_key!r}].action has non-finite values')
        return unnorm_key, cls(q01=q01, q99=q99, mask=mask)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        return np.where(self.mask, 0.5 * (x + 1.0) * (self.q99 - self.q01) + self.q01, x)

    def normalize(self, a: np.ndarray) -> np.ndarray:
        span = np.where(self.q99 > self.q01, self.q99 - self.q01, 1.0)
        return np.where(self.mask, np.clip(2.0 * (a - self.q01) / span - 1.0, -1.0, 1.0), a)
