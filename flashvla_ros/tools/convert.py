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


"""flashvla-convert: turn a CogACT run directory into this package's checkpoint layout, once."""

from __future__ import annotations

import argparse
import sys

from ..policy import PolicyError
from ..policy.cogact_checkpoint import convert_cogact
from ..policy.dit import DIT_SIZES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--cogact', required=True,
                        help='CogACT run directory: checkpoints/*.pt, config.json, '
                             'dataset_statistics.json')
    parser.add_argument('--out', required=True, help='checkpoint directory to write')
    parser.add_argument('--tokenizer', default=None,
                        help='directory with the Llama-2 tokenizer files to copy beside it')
    parser.add_argument('--base-config', default=None,
                        help="an OpenVLA config.json with the VLM's shapes, when CogACT's "
                             'base VLM is not a known one')
    parser.add_argument('--size', default='DiT-B', choices=sorted(DIT_SIZES),
                        help='the action head (CogACT does not record it)')
    parser.add_argument('--chunk', type=int, default=16, help='actions per prediction')
    parser.add_argument('--ema', action='store_true', help='use the EMA copy of the head')
    parser.add_argument('--dtype', default='bfloat16',
                        help='stored dtype of the VLM (default bfloat16); the action head is '
                             'always stored float32, as CogACT runs it')
    args = parser.parse_args(argv)
    try:
        out = convert_cogact(args.cogact, args.out, tokenizer_dir=args.tokenizer,
                             base_config=args.base_config, size=args.size, chunk=args.chunk,
                             use_ema=args.ema, dtype=args.dtype)
    except (PolicyError, ValueError) as exc:
        print(f'flashvla-convert: error: {exc}', file=sys.stderr)
        return 2
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
