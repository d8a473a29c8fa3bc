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
    python scripts/measure_load.py --synthetic 1.6B   # real vision towers + a 1 B Llama, bf16

Each load runs in its own process, which reports its RSS before loading, its peak (VmHWM)
and its RSS after, and the peak of anonymous memory that loading added (sampled). Loading is
tensor by tensor into the target dtype: the anonymous peak is the weights in that dtype plus
one tensor; VmHWM also counts the memory-mapped file's clean, reclaimable pages.
"""

import argparse
import json
from pathlib import Path
import subprocess
import sys
import tempfile
import time

from safetensors.torch import save_file
import torch

from flashvla_ros.policy.config import OpenVLAConfig
from flashvla_ros.policy.openvla import OpenVLA
from flashvla_ros.policy.presets import TINY_NORM_STATS
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
model, report = load_model(sys.argv[1], dtype=sys.argv[2])
dt = time.perf_counter() - t
done.set()
sampler.join()
n = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
print(json.dumps({'dtype': sys.argv[2], 'seconds': round(dt, 2), 'weights_mb': round(n),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--tiny', action='store_true')
    parser.add_argument('--synthetic', action='store_true')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        if args.tiny:
            runs.append(('tiny', make_tiny(Path(tmp) / 'tiny', dtype='bfloat16')))
        if args.synthetic:
            t = time.perf_counter()
            runs.append(('synthetic-1.6B', synthetic(Path(tmp) / 'synthetic')))
            print(f'wrote synthetic checkpoint in {time.perf_counter() - t:.1f} s')
        for name, path in runs:
            size = sum(f.stat().st_size for f in path.glob('*.safetensors')) / 2**20
            for dtype in ('bfloat16', 'float32'):
                out = subprocess.run([sys.executable, '-c', CHILD, str(path), dtype],
                                     capture_output=True, text=True, check=True)
                print(name, f'file {size:.0f} MB', out.stdout.strip())


if __name__ == '__main__':
    main()
