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


"""Pictures: the bench and training figures, the demo's captioned recordings (no ROS)."""

import json

import cv2
import numpy as np
from PIL import Image
import pytest

from flashvla_ros.bench.run import main as bench_main
from flashvla_ros.bench.run import plot_size
from flashvla_ros.ros.demo import FrameSink
from flashvla_ros.sim.tasks import Episode
from flashvla_ros.train.cli import main as train_main
from flashvla_ros.train.plots import plot_losses
from flashvla_ros.viz.figures import moving_mean_ci, wilson_ci
from flashvla_ros.viz.video import FrameWriter, Viewer, annotate, wrap


def config(name, success, diff=None):
    part = {'median': 8.0, 'mean': 9.0, 'p99': 15.0}
    return {'name': name, 'options': {}, 'success': success,
            'per_group': {'reach': 1.0, 'pick_place': success, 'push': success / 2},
            'paired_diff': diff,
            'latency_ms': {p: part for p in ('vision', 'prefill', 'decode', 'head', 'total')},
            'flops_per_step': {'vision': 8e7, 'prefill': 1.4e8, 'decode': 1e7, 'head': 1e6,
                               'select': 0.0, 'total': 2.31e8},
            'reuse_rate': 0.0, 'flops_vs_full_7b_shapes': 1.0, 'steps': 100,
            'fidelity': {'token_match': 1.0, 'mean_abs_diff': 0.0}}


REPORT = {'model': 'synthetic', 'episodes': 20, 'seed': 1_000_000, 'max_steps': 80,
          'command': 'flashvla-bench ...',
          'expert': {'success': 1.0, 'per_group': {'reach': 1.0, 'pick_place': 1.0,
                                                   'push': 1.0}},
          'configs': [config('none', 0.8),
                      config('flashvla', 0.9, {'mean': 0.1, 'ci95': [-0.05, 0.25]})]}


def png_size(path):
    with Image.open(path) as im:
        assert im.format == 'PNG'
        return im.size


def test_wilson_interval_and_moving_ci():
    lo, hi = wilson_ci(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_ci(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    mean, lo, hi = moving_mean_ci([1.0, 3.0, 1.0, 3.0], 2)
    assert mean.tolist() == [2.0, 2.0, 2.0]
    assert hi[0] - mean[0] == pytest.approx(1.96 * np.std([1, 3], ddof=1) / np.sqrt(2))


def test_bench_report_renders_a_png_of_the_planned_size(tmp_path, capsys):
    saved = tmp_path / 'bench.json'
    saved.write_text(json.dumps(REPORT))
    assert bench_main(['--report', str(saved), '--plot', str(tmp_path / 'b.png')]) == 0
    assert png_size(tmp_path / 'b.png') == plot_size(2)
    assert '| flashvla |' in capsys.readouterr().out


def test_training_curves_from_a_history_and_from_a_saved_log(tmp_path):
    rng = np.random.default_rng(0)
    history = [{'step': s, 'loss': 3.0, 'action_loss': 5 / s + 0.1 * rng.random(),
                'vision_loss': 0.5 / s, 'state_loss': 0.0, 'token_accuracy': 1 - 1 / s,
                'lr': 1e-3} for s in range(1, 301)]  # a zero loss must not break the log axis
    plot_losses(history, tmp_path / 'loss.png', size=(900, 360))
    assert png_size(tmp_path / 'loss.png') == (900, 360)
    log = tmp_path / 'run' / 'train_log.json'
    log.parent.mkdir()
    log.write_text(json.dumps({'config': {'steps': 300, 'batch': 4, 'lr': 1e-3},
                               'seconds': 60.0, 'samples': 100, 'episodes': 5,
                               'device': 'cpu', 'history': history}))
    train_main(['--plot-log', str(log)])
    assert png_size(log.parent / 'loss.png') == (1200, 480)


def test_annotate_keeps_the_scene_and_wraps_the_caption():
    frame = Episode(1_000_000, 'pick_place').observe()
    out = annotate(frame, 'put the red block in the blue zone', 'episode 1', width=160)
    assert out.shape[1] == 160 and out.shape[0] > 160 and out.dtype == np.uint8
    assert np.array_equal(out[:160], cv2.resize(frame, (160, 160), interpolation=cv2.INTER_AREA))
    lines = wrap('put the red block in the blue zone', 100, 0.3)
    assert len(lines) >= 2 and ' '.join(lines) == 'put the red block in the blue zone'


def frames(n, size=(64, 48)):
    w, h = size
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[:, :, 0] = 40 * (i % 6)
        f[h // 4:h // 2, (4 * i) % w:(4 * i) % w + 8] = (255, 255, 0)
        yield f


def test_gif_writer(tmp_path):
    with FrameWriter(tmp_path / 'a.gif', fps=10) as w:
        for f in frames(12):
            w.write(f)
    with Image.open(tmp_path / 'a.gif') as im:
        assert (im.format, im.size, im.n_frames) == ('GIF', (64, 48), 12)
        assert im.info['duration'] == 100 and im.info['loop'] == 0
        im.seek(3)
        first = np.asarray(im.convert('RGB'))
    assert np.abs(first.astype(int) - list(frames(4))[3]).max() <= 8  # palette rounding
    other = FrameWriter(tmp_path / 'b.gif')
    other.write(next(frames(1)))
    with pytest.raises(ValueError, match='differs from the first'):
        other.write(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r'\.mp4 or \.gif'):
        FrameWriter(tmp_path / 'c.avi')


def test_mp4_writer(tmp_path):
    with FrameWriter(tmp_path / 'a.mp4', fps=20) as w:
        for f in frames(15):
            w.write(f)
    cap = cv2.VideoCapture(str(tmp_path / 'a.mp4'))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == 15
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(20)
    cap.release()


def test_demo_record_writes_captioned_frames_and_view_needs_a_display(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    viewer, why = Viewer.open('test')
    assert viewer is None and 'no display' in why
    sink = FrameSink(view=True, record=str(tmp_path / 'demo.gif'), fps=20.0, width=224)
    assert 'no window (no display' in capsys.readouterr().out
    ep = Episode(1_000_000, 'reach')
    results = []
    # Frames at 20 Hz, one early (dropped) and a gap of 3 frame times (the last one repeated).
    for i, t in enumerate((0.0, 0.05, 0.06, 0.10, 0.15, 0.30)):
        if i == 5:
            results.append({'success': True, 'steps': 3, 'family': 'reach'})
        sink.frame(ep.observe(), ep.instruction, results, since_result_s=0.0, now=100 + t)
    sink.close()
    assert 'recorded 7 frames' in capsys.readouterr().out
    with Image.open(tmp_path / 'demo.gif') as im:
        assert im.size[0] == 224 and im.size[1] > 224
        # Pillow merges identical frames into a longer one: the same 6 x 50 ms in all.
        durations, bands = [], []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info['duration'])
            bands.append(np.asarray(im.convert('RGB'))[224:].astype(int))
    assert sum(durations) == 350 and len(bands) == 2 and durations[-1] == 150
    # Before and after the episode's result: its success shows in green.
    green = [((b[..., 1] > 170) & (b[..., 0] < 140)).sum() for b in bands]
    assert green[0] == 0 and green[1] > 20
    empty = FrameSink(view=False, record=str(tmp_path / 'none.mp4'), fps=20.0)
    empty.close()
    assert 'no camera frame arrived' in capsys.readouterr().out
    assert not (tmp_path / 'none.mp4').exists()


def test_annotate_has_one_size_whatever_the_text():
    frame = Episode(1_000_001, 'push').observe()
    shapes = {annotate(frame, caption, status, width=192, success=ok).shape
              for caption, status, ok in [('reach', '', None),
                                          ('put the yellow block in the purple zone',
                                           'episode 12: success after 31 steps | 11/12', True),
                                          ('a b c d e f g h i j k l m n o p q r s t u v w x y z'
                                           * 3, 'x ' * 80, False)]}
    assert len(shapes) == 1
