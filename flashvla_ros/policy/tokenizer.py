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
Llama-style tokenizers: load a checkpoint's files, or build a new one in the same format.

Loading goes through transformers' `AutoTokenizer` on the checkpoint's own files (never the
network). Building makes what OpenVLA's Llama-2 tokenizer is: byte-fallback BPE over
Metaspace ('▁') pieces, `<unk>`/`<s>`/`</s>` at 0-2, the 256 byte tokens at 3-258, and an
added `<PAD>` right after the base vocabulary. The last 256 base ids are the action tokens.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

from .errors import CheckpointError
from .instruction import PROMPT

SPACE = '▁'
SPECIALS = ('<unk>', '<s>', '</s>')
PAD = '<PAD>'
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json')
LLAMA2_SPACE_ID = 29871  # OpenVLA appends this empty '▁' token when the prompt lacks it


def load_tokenizer(path: str | Path):
    """Load the transformers tokenizer of a checkpoint directory, from local files only."""
    # Deferred: importing transformers costs seconds and only loading needs it.
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(path).expanduser()
    if not (path / 'tokenizer.json').is_file() and not (path / 'tokenizer.model').is_file():
        raise CheckpointError(
            f'{path}: no tokenizer files (expected tokenizer.json or tokenizer.model with '
            'tokenizer_config.json, as in the Hugging Face layout)'
        )
    # AutoTokenizer reads config.json and warns that "openvla" is no transformers model type.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        # trust_remote_code=False, never None: a hub checkpoint's config.json names its own
        # classes in `auto_map` (OpenVLA's do), and with None transformers would stop and ask
        # "Do you wish to run the custom code? [y/N]" on the terminal. The tokenizer is a stock
        # Llama one; remote code is never consulted.
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                             trust_remote_code=False)
    except Exception as exc:  # transformers raises many types; the user needs the path
        raise CheckpointError(f'{path}: cannot load the tokenizer: {exc}') from exc
    finally:
        hf_logging.set_verbosity(verbosity)


def instruction_corpus() -> list[str]:
    """Return a small English corpus of robot instructions in OpenVLA's prompt format."""
    verbs = ['pick up', 'put', 'place', 'move', 'push', 'open', 'close', 'reach', 'grasp', 'lift',
             'stack', 'turn on', 'wipe', 'slide']
    colours = ['red', 'green', 'blue', 'yellow', 'purple', 'orange', 'black', 'white']
    objects = ['block', 'cube', 'cup', 'bowl', 'plate', 'drawer', 'sponge', 'bottle', 'can',
               'ball', 'zone', 'box', 'lid', 'spoon']
    places = ['on the plate', 'in the bowl', 'to the left', 'to the right', 'forward',
              'backward', 'into the box', 'next to the cup', 'on top of the block']
    corpus = []
    for verb, colour, obj, place in itertools.product(verbs, colours, objects, places):
        corpus.append(PROMPT.format(f'{verb} the {colour} {obj} {place}'))
    return corpus


def build_llama_tokenizer(
    corpus: list[str], vocab_size: int | None = None, merges: int = 2000,
    space_token_id: int | None = None, action_tokens: int = 256,
) -> Tokenizer:
    """
    Train byte-fallback BPE on `corpus` and lay its vocabulary out as Llama-2 does.

    Ids: specials, 256 bytes, merged pieces, then ('▁' + single characters) starting at
    `space_token_id` (29871 reproduces Llama-2), then reserved fillers up to `vocab_size`.
    Without `vocab_size`, the vocabulary is as small as the corpus allows plus
    `action_tokens` reserved ids at its end: OpenVLA's action tokens, generalised.
    """
    trainer_tok = Tokenizer(models.BPE(unk_token='<unk>'))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme='first')
    # Newlines are not pieces in Llama-2: they go through byte fallback (<0x0A>).
    text = [line.replace('\n', ' ') for line in corpus]
    trainer = BpeTrainer(vocab_size=merges, show_progress=False, special_tokens=[])
    trainer_tok.train_from_iterator(text, trainer)
    trained = json.loads(trainer_tok.to_str())['model']
    pairs = [tuple(m.split(' ')) if isinstance(m, str) else tuple(m) for m in trained['merges']]
    chars = sorted(t for t in trained['vocab'] if len(t) == 1 and t != SPACE)

    vocab: dict[str, int] = {}
    for token in [*SPECIALS, *(f'<0x{b:02X}>' for b in range(256))]:
        vocab[token] = len(vocab)
    for a, b in pairs:
        vocab.setdefault(a + b, len(vocab))
    start = len(vocab) if space_token_id is None else space_token_id
    if vocab_size is None:
        vocab_size = start + 1 + len(chars) + action_tokens
    if start < len(vocab) or start + 1 + len(chars) > vocab_size - action_tokens:
        raise ValueError(f'vocab_size {vocab_size} too small for {len(vocab)} pieces + characters')
    fillers = (f'<|reserved_{i}|>' for i in itertools.count())
    while len(vocab) < start:
        vocab[next(fillers)] = len(vocab)
    for token in [SPACE, *chars]:
        vocab[token] = len(vocab)
    while len(vocab) < vocab_size:
        vocab[next(fillers)] = len(vocab)

    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=pairs, unk_token='<unk>', fuse_unk=True, byte_fallback=True)
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=SPACE, prepend_scheme='first', split=False
    )
    tok.decoder = decoders.Sequence([
        decoders.Replace(SPACE, ' '), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(' ', 1, 0),
    ])
    tok.post_processor = processors.TemplateProcessing(
        single='<s> $A', pair='<s> $A <s> $B', special_tokens=[('<s>', 1)]
    )
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIALS])
    tok.add_special_tokens([AddedToken(PAD, normalized=False, special=True)])
    return tok


def save_tokenizer_files(tok: Tokenizer, out_dir: Path, model_max_length: int) -> None:
    """Write the three files transformers' `LlamaTokenizer` loads, as OpenVLA ships them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / 'tokenizer.json'))
    special = {'bos_token': '<s>', 'eos_token': '</s>', 'unk_token': '<unk>', 'pad_token': PAD}
    config = {
        'tokenizer_class': 'LlamaTokenizer',
        'add_bos_token': True,
        'add_eos_token': False,
        'legacy': False,
        'model_max_length': model_max_length,
        'padding_side': 'right',
        'clean_up_tokenization_spaces': False,
        **special,
    }
    (out_dir / 'tokenizer_config.json').write_text(json.dumps(config, indent=2) + '\n')
    (out_dir / 'special_tokens_map.json').write_text(json.dumps(special, indent=2) + '\n')
