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
Measure checkpoint load time and peak memory (RSS) in fresh processes.

    python scripts/measure_load.py --tiny             # the tiny model
    python scripts/measure_load.py --synthetic        # real vision towers + a 1 B Llama, bf16
    python scripts/measure_load.py --openvla-7b --dir /tmp/openvla7b --loads bfloat16 \
        bfloat16:int8 bfloat16:int4 --json docs/quantization/load_7b.json

--openvla-7b writes OpenVLA-7B's shapes (random bf16 weights in the real layout, 5 GB
shards with an index, 15 GB) to --dir, once, and reuses them. Each load (DTYPE[:QUANTIZE])
runs in its own process, which reports its RSS before loading, its peak (VmHWM) and its RSS
after, and the peak of anonymous memory that loading added (sampled). Loading is tensor by
tensor into the target dtype: the anonymous peak is the weights in that dtype plus one
tensor, and with quantization the quantized weights plus one tensor (`bound_mb`: the issue's
limit, quantized size + the largest shard + 1.5 GB); VmHWM also counts the memory-mapped
file's clean, reclaimable pages.
"""

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import time

from safetensors.torch import save_file
import torch

from flashvla_ros.policy.checkpoint import INDEX
from flashvla_ros.policy.config import OpenVLAConfig
from flashvla_ros.policy.openvla import OpenVLA
from flashvla_ros.policy.presets import TINY_NORM_STATS, openvla_7b_config
from flashvla_ros.tools.make_tiny import make_tiny

CHILD = '''
import json, sys, time
import torch
from flashvla_ros.policy.checkpoint import load_model
def mem(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
import threading
peak_anon = [0.0]
done = threading.Event()
def sample():  # anonymous memory has no kernel high-water mark: sample it
    while not done.is_set():
        peak_anon[0] = max(peak_anon[0], mem('RssAnon'))
        time.sleep(0.002)
base, base_anon = mem('VmRSS'), mem('RssAnon')
sampler = threading.Thread(target=sample)
sampler.start()
t = time.perf_counter()
dtype, _, quantize = sys.argv[2].partition(':')
model, report = load_model(sys.argv[1], dtype=dtype, quantize=quantize or None)
dt = time.perf_counter() - t
done.set()
sampler.join()
from flashvla_ros.policy.quantize import weight_bytes
n = weight_bytes(model) / 2**20
print(json.dumps({'dtype': dtype, 'quantize': quantize or 'none', 'seconds': round(dt, 2),
                  'weights_mb': round(n), 'quantized_layers': report.quantized,
                  'rss_before_mb': round(base), 'peak_rss_mb': round(mem('VmHWM')),
                  'rss_after_mb': round(mem('VmRSS')),
                  'anon_added_peak_mb': round(peak_anon[0] - base_anon),
                  'skipped': len(report.skipped_unused)}))
'''


def synthetic(out: Path) -> Path:
    """Write OpenVLA's real DINOv2-L + SigLIP-so400m towers with a 1 B Llama, random bf16."""
    cfg = OpenVLAConfig.from_dict({
        'timm_model_ids': ['vit_large_patch14_reg4_dinov2.lvd142m',
                           'vit_so400m_patch14_siglip_224'],
        'image_sizes': [224, 224], 'norm_stats': TINY_NORM_STATS,
        'text_config': {'vocab_size': 32064, 'hidden_size': 2048, 'intermediate_size': 5504,
                        'num_hidden_layers': 16, 'num_attention_heads': 16},
    })
    with torch.device('meta'):
        shapes = {k: v.shape for k, v in OpenVLA(cfg).state_dict().items()}
    tensors = {k: torch.randn(s, dtype=torch.bfloat16) * 0.02 for k, s in shapes.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / 'model.safetensors'))
    (out / 'config.json').write_text(json.dumps(cfg.to_dict() | {'vision_tower_specs': None}))
    return out


def openvla_7b(out: Path, shard_bytes: int = 5 * 2**30) -> Path:
    """Write OpenVLA-7B's shapes in its layout, random bf16, in shards; reuse them if there."""
    if (out / INDEX).is_file():
        return out
    cfg = openvla_7b_config()
    with torch.device('meta'):
        shapes = {k: v.shape for k, v in OpenVLA(cfg).state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    groups: list[list[str]] = [[]]
    size = 0
    for key, shape in shapes.items():
        nbytes = shape.numel() * 2
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    weight_map = {}
    for i, keys in enumerate(groups, start=1):
        name = f'model-{i:05d}-of-{len(groups):05d}.safetensors'
        save_file({k: torch.randn(shapes[k], dtype=torch.bfloat16) * 0.02 for k in keys},
                  str(out / name), metadata={'format': 'pt'})
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(s.numel() * 2 for s in shapes.values())
    (out / INDEX).write_text(json.dumps({'metadata': {'total_size': total},
                                         'weight_map': weight_map}))
    (out / 'config.json').write_text(json.dumps(cfg.to_dict()))
    return out


COMPONENTS = (('vision towers', 'vision_backbone.'), ('projector', 'projector.'),
              ('embeddings', 'language_model.model.embed_tokens.'),
              ('decoder layers', 'language_model.model.layers.'),
              ('LM head', 'language_model.lm_head.'), ('DiT-B head (fp32)', 'action_model.'))


def component_sizes() -> list[dict]:
    """
    Work out the weights of CogACT-7B's shapes (OpenVLA-7B plus a DiT-B head) per component.

    bf16: 2 bytes a weight; int8: 1 byte, plus a float32 scale per row (torchao's); int4 as
    CUDA packs it (tinygemm): half a byte, plus a bf16 scale and zero per group of 128, over
    the weight padded to a multiple of 1024 inputs and 8 outputs. Linear weights only are
    quantized; norms, biases and the embedding table stay bf16, the DiT head fp32.
    """
    from flashvla_ros.policy.presets import cogact_7b_config
    with torch.device('meta'):
        model = OpenVLA(cogact_7b_config())
    linear = {f'{n}.weight' for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    rows = []
    for label, prefix in COMPONENTS:
        sizes = {'bfloat16': 0.0, 'int8': 0.0, 'int4': 0.0}
        params = 0
        for name, p in model.named_parameters():
            if not name.startswith(prefix):
                continue
            params += p.numel()
            if prefix == 'action_model.':
                sizes = {k: v + 4 * p.numel() for k, v in sizes.items()}
                continue
            sizes['bfloat16'] += 2 * p.numel()
            quantizable = name in linear
            sizes['int8'] += p.numel() + 4 * p.shape[0] if quantizable else 2 * p.numel()
            padded = -(-p.shape[0] // 8) * 8 * -(-p.shape[-1] // 1024) * 1024
            sizes['int4'] += padded / 2 + 4 * padded / 128 if quantizable else 2 * p.numel()
        rows.append({'component': label, 'params_m': round(params / 1e6, 1),
                     **{k: round(v / 2**30, 3) for k, v in sizes.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tiny', action='store_true')
    parser.add_argument('--synthetic', action='store_true')
    parser.add_argument('--openvla-7b', action='store_true')
    parser.add_argument('--dir', type=Path, help='where --openvla-7b keeps its checkpoint')
    parser.add_argument('--loads', nargs='+', default=['bfloat16', 'float32'],
                        help='DTYPE[:QUANTIZE] per load, e.g. bfloat16:int8')
    parser.add_argument('--json', type=Path, help='write the results here')
    parser.add_argument('--sizes', action='store_true',
                        help="print CogACT-7B's weights per component and precision (GiB)")
    args = parser.parse_args()
    if args.sizes:
        print('| component | parameters (M) | bf16 GiB | int8 GiB | int4 GiB (CUDA packing) |')
        print('|---|---|---|---|---|')
        for r in component_sizes():
            print(f'| {r["component"]} | {r["params_m"]} | {r["bfloat16"]:.2f} | '
                  f'{r["int8"]:.2f} | {r["int4"]:.2f} |')
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        if args.tiny:
            runs.append(('tiny', make_tiny(Path(tmp) / 'tiny', dtype='bfloat16')))
        if args.synthetic:
            t = time.perf_counter()
            runs.append(('synthetic-1.6B', synthetic(Path(tmp) / 'synthetic')))
            print(f'wrote synthetic checkpoint in {time.perf_counter() - t:.1f} s')
        if args.openvla_7b:
            t = time.perf_counter()
            runs.append(('openvla-7b-shapes', openvla_7b(args.dir or Path(tmp) / '7b')))
            print(f'7B-shaped checkpoint ready in {time.perf_counter() - t:.1f} s')
        for name, path in runs:
            files = list(path.glob('*.safetensors'))
            size, shard = (sum(f.stat().st_size for f in files) / 2**20,
                           max(f.stat().st_size for f in files) / 2**20)
            for load in args.loads:
                out = subprocess.run([sys.executable, '-c', CHILD, str(path), load],
                                     capture_output=True, text=True, check=True)
                row = {'checkpoint': name, 'file_mb': round(size), 'largest_shard_mb':
                       round(shard), **json.loads(out.stdout.strip().splitlines()[-1])}
                row['bound_mb'] = round(row['weights_mb'] + shard + 1536)
                print(json.dumps(row), flush=True)
                results.append(row)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({'command': ' '.join(['python', *sys.argv]),
                                         'cpus': os.cpu_count(), 'torch': torch.__version__,
                                         'loads': results}, indent=1) + '\n')


if __name__ == '__main__':
    main()
