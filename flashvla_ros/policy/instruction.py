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
The one rule for an instruction, wherever it comes from (parameter, topic, predict()).

Surrounding whitespace is stripped (OpenVLA's own code only lowercases, so a trailing newline
would change its tokens); what is left must be non-empty, at most MAX_INSTRUCTION_CHARS long
and free of control characters (NUL, escape sequences, embedded newlines). The prompt-length
limit in tokens is the policy's own check on top of this one.

`prompt_tokens` is OpenVLA's prompt around an instruction, for the policy and the trainer alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import unicodedata

from .errors import InputError

MAX_INSTRUCTION_CHARS = 1000
PROMPT = 'In: What action should the robot take to {}?\nOut:'


def check_instruction(text: object) -> str:
    """Return `text` stripped, or raise InputError saying why it cannot be an instruction."""
    if not isinstance(text, str):
        raise InputError(f'instruction must be a string, got {type(text).__name__}')
    if len(text) > MAX_INSTRUCTION_CHARS:  # before any per-character work on a huge string
        raise InputError(f'instruction is {len(text)} characters; '
                         f'the limit is {MAX_INSTRUCTION_CHARS}')
    stripped = text.strip()
    if not stripped:
        raise InputError('instruction is empty' if not text else
                         'instruction is only whitespace')
    controls = sorted({f'U+{ord(c):04X}' for c in stripped if unicodedata.category(c) == 'Cc'})
    if controls:
        raise InputError(f'instruction contains control characters {controls}')
    return stripped


def prompt_tokens(encode: Callable[[str], Sequence[int]], text: str, space_id: int,
                  suffix: Sequence[int] = ()) -> list[int]:
    """
    Token ids of OpenVLA's prompt for a checked instruction: BOS first, then '▁', then `suffix`.

    `encode` is the tokenizer's text -> ids (BOS included). OpenVLA appends the empty '▁' token
    when the prompt does not end in it; `suffix` is the head's (CogACT's cognition token).
    """
    ids = list(encode(PROMPT.format(text.lower())))
    if ids[-1] != space_id:
        ids.append(space_id)
    return [*ids, *suffix]
