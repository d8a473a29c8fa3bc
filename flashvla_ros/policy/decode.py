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
Greedy decoding as functions (gpt-fast style), one path for both KV caches.

    out = prefill(llm, sequence, positions, plan, probes, after_layer)   # fills the caches
    tokens = decode_action(llm, plan, llm.logits(out[0]), next_position, n, draft, record)

`decode_one` is the one-token step and `verify_draft` the pass that checks a guess of the whole
action at once, speculative-decoding style: each has one shape with the static cache, and both
are what `compile` compiles. The greedy tokens stay on the device until the action is
complete: one host sync per action (one more to count a draft's confirmed tokens), and a
NaN/inf anywhere is remembered on the device and raised at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from .errors import NonFiniteOutputError
from .flops import StepRecord
from .llama import AfterLayer, Llama

# A pass with its model and plan bound (and maybe compiled): tokens and their positions in,
# logits. decode_one: [B, 1] and [1] -> [B, vocab]; verify_draft: [B, T] and [T] -> [B, T, V].
DecodeOne = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Draft:
    """
    A guess of the whole action, with how many guesses to take as confirmed (`accept`).

    `accept` replays a recorded decision on other weights (bench/replay.py): the same passes
    run, whatever this model would have confirmed. A plain list of tokens is verified.
    """

    tokens: list[int]
    accept: int | None = None


def prefill(llm: Llama, sequence: torch.Tensor, positions: torch.Tensor, plan: Sequence[int],
            probes: dict[int, Collection[str]] | None = None,
            after_layer: AfterLayer | None = None,
            tokens_per_layer: dict[int, int] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Run the prefill into emptied KV caches, with the hooks' callbacks (see `Llama.run`)."""
    llm.reset_cache()
    return llm.run(sequence, positions, plan, probes, after_layer, tokens_per_layer)


def decode_one(llm: Llama, plan: Sequence[int], token: torch.Tensor,
               position: torch.Tensor) -> torch.Tensor:
    """Feed one token per row [B, 1] at `position` [1]; return its logits [B, vocab]."""
    return llm(llm.embed(token), position, plan)


def verify_draft(llm: Llama, plan: Sequence[int], fed: torch.Tensor,
                 positions: torch.Tensor) -> torch.Tensor:
    """Feed the tokens `fed` [B, T] at `positions` [T]; return the logits of each [B, T, V]."""
    return llm(llm.embed(fed), positions, plan, last_only=False)


def record_call(record: StepRecord, fed: int, cached: int) -> None:
    """Count one decode forward: `fed` tokens, `cached` decoded tokens already in the cache."""
    record.decode_calls.append((fed, cached))
    record.head_positions += fed


def decode_action(llm: Llama, plan: Sequence[int], first: torch.Tensor, next_position: int,
                  n: int, draft: list[int] | Draft | None, record: StepRecord,
                  step: DecodeOne | None = None, verify: DecodeOne | None = None) -> list[int]:
    """
    Greedy-decode `n` action tokens after the prefill; `first` holds its last logits [1, V].

    With a `draft` (a guess of all n tokens, e.g. the previous action's) the guesses are
    verified in one forward pass: every token is still the model's own greedy choice, a wrong
    guess only costs the tokens after it, decoded one by one as without a draft. `step` and
    `verify` are the passes to use (default: `decode_one` and `verify_draft` on this model and
    plan).
    """
    forced = draft.accept if isinstance(draft, Draft) else None
    guess = draft.tokens if isinstance(draft, Draft) else draft
    (ids,), (finite,) = decode_rows(llm, plan, first, next_position, n,
                                    None if guess is None else [guess], [record], step, verify,
                                    forced)
    if not finite:
        raise NonFiniteOutputError('the language model produced NaN/inf logits')
    return ids


def decode_rows(llm: Llama, plan: Sequence[int], first: torch.Tensor,
                next_position: int | torch.Tensor, n: int, drafts: list[list[int]] | None,
                records: list[StepRecord],
                step: DecodeOne | None = None, verify: DecodeOne | None = None,
                forced: int | None = None) -> tuple[list[list[int]], list[bool]]:
    """
    Greedy-decode `n` tokens in each of B rows together (one robot each); `first` is [B, V].

    Return each row's tokens and whether all its logits were finite (a NaN in one robot's row
    is that robot's fault only). `next_position` may differ per row ([B]: prompts of other
    lengths, padded: [B, 1]). `drafts` (one per row, all of n tokens) are verified in one
    pass; decoding goes on one by one from the first wrong guess of any row, so a row whose
    guess was longer right decodes its confirmed tokens again (the same greedy choices).
    `forced`: how many guesses count as confirmed (a replay, see `Draft`).
    """
    device, rows = first.device, first.shape[0]
    step = step or partial(decode_one, llm, plan)
    tokens = torch.empty(rows, n, dtype=torch.long, device=device)
    tokens[:, 0] = first.argmax(-1)
    finite = torch.isfinite(first).all(-1)
    done = 1
    if drafts is not None and n > 1 and all(len(d) == n for d in drafts):
        fed = torch.tensor([d[:n - 1] for d in drafts], device=device)
        fed[:, 0] = tokens[:, 0]
        positions = next_position + torch.arange(n - 1, device=device)  # [n-1] or [B, n-1]
        logits = (verify or partial(verify_draft, llm, plan))(fed, positions)
        for record in records:
            record_call(record, n - 1, 0)
        finite = finite & torch.isfinite(logits).all(-1).all(-1)
        predicted = logits.argmax(-1)  # [B, n - 1]
        right = predicted[:, :-1] == fed[:, 1:]
        accepted = int(torch.cumprod(right.long(), 1).sum(1).min()) if forced is None \
            else min(forced, n - 2)  # guesses confirmed in a row, in every row
        tokens[:, 1:2 + accepted] = predicted[:, :1 + accepted]
        done = 2 + accepted
        llm.truncate_cache(n - done)  # the entries after the first wrong guess
    for i in range(done, n):
        position = next_position + i - 1 if isinstance(next_position, torch.Tensor) \
            else torch.tensor([next_position + i - 1], device=device)
        for record in records:
            record_call(record, 1, i - 1)
        logits = step(tokens[:, i - 1:i], position)
        finite = finite & torch.isfinite(logits).all(-1)
        tokens[:, i] = logits.argmax(-1)
    flat = torch.cat([tokens.flatten(), finite.long()]).tolist()  # one transfer
    return [flat[r * n:(r + 1) * n] for r in range(rows)], [bool(f) for f in flat[rows * n:]]
