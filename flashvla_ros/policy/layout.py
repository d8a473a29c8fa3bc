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
OpenVLA's sequence layout, worked out once: model, training, FLOPs and accelerators read it.

    [BOS] [visual 0 .. N-1] [prompt after BOS ... '▁'] [action 0 .. A-1]
      0      1 .. N             N+1 .. N+P-1              N+P .. N+P+A-1   (rotary positions)

The prefill is BOS, the visual tokens and the prompt (P tokens, BOS included); the action
tokens follow it. A token keeps its rotary position when accelerators drop others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SequenceLayout:
    visual: int  # visual tokens (patches) after BOS
    prompt: int  # prompt tokens, BOS included
    actions: int = 0  # tokens generated after the prefill

    @property
    def visual_span(self) -> slice:
        return self.visual_present(self.visual)

    @staticmethod
    def visual_present(present: int) -> slice:
        """Return where `present` visual tokens sit once selections dropped others: after BOS."""
        return slice(1, 1 + present)

    @staticmethod
    def text_present(present: int) -> slice:
        """Return where the prompt after BOS (and any action tokens) sits after them."""
        return slice(1 + present, None)

    @property
    def prefill(self) -> int:
        """Tokens of the prefill: BOS, the visual tokens, the rest of the prompt."""
        return self.visual + self.prompt

    @property
    def text_tokens(self) -> int:
        """Prefill tokens that are not visual (BOS and the prompt): what no pruning drops."""
        return self.prompt

    @property
    def length(self) -> int:
        """Positions the whole step needs: the prefill and every action token."""
        return self.prefill + self.actions

    def positions(self, device: torch.device | str = 'cpu') -> torch.Tensor:
        """Rotary positions of the prefill, in order."""
        return torch.arange(self.prefill, device=device)

    def assemble(self, text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Embedded text [B, P(+A), D] and patches [B, N, D] -> the sequence, BOS first."""
        return torch.cat([text[:, :1], patches, text[:, 1:]], dim=1)

    def keep_visual(self, present: int, kept: torch.Tensor, tokens: int) -> torch.Tensor:
        """
        Index over `tokens` current tokens that keeps BOS, the visual tokens at `kept`.

        `kept` indexes the `present` visual tokens still in the sequence (ascending); the text
        after them is kept whole.
        """
        device = kept.device
        visual, text = self.visual_present(present), self.text_present(present)
        return torch.cat([torch.arange(visual.start, device=device), kept + visual.start,
                          torch.arange(text.start, tokens, device=device)])
