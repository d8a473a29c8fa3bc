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


"""The training curves: loss.png from a run's history or its saved train_log.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..viz.figures import agg_figure, moving_mean_ci, save_png

LOSS_CURVES = (('action_loss', 'action tokens: soft-target cross-entropy, nats', 'tab:red'),
               ('vision_loss', 'vision aux: objects BCE + 10 x offsets MSE + focus', 'tab:green'),
               ('state_loss', 'state aux: position MSE, in (0.5 m)^2', 'tab:blue'))
DIFFUSION_LABELS = {'action_loss': 'action: DiT noise-prediction MSE',
                    'state_loss': 'state aux: position MSE + first-4-actions MSE'}


def plot_losses(history: list[dict], path: Path, size=(1200, 480), title: str = '',
                diffusion: bool = False) -> None:
    """
    Draw the training curves with matplotlib (Agg) into a PNG of `size` pixels.

    Left: the three losses per optimizer step (log scale), as the moving mean over about 1%
    of the run with its 95% CI band. Right: action-token accuracy (same smoothing) and the
    learning-rate schedule.
    """
    steps = np.array([r['step'] for r in history])
    window = max(1, len(history) // 100)
    at = steps[window - 1:]  # a trailing window ends at this step
    fig = agg_figure(*size)
    ax_loss, ax_acc = fig.subplots(1, 2, gridspec_kw={'width_ratios': [3, 2]})
    for key, label, colour in LOSS_CURVES:
        label = DIFFUSION_LABELS.get(key, label) if diffusion else label
        values = np.maximum([r[key] for r in history], 1e-6)
        mean, lo, hi = moving_mean_ci(values, window)
        ax_loss.plot(at, mean, color=colour, lw=1.3, label=label)
        ax_loss.fill_between(at, np.maximum(lo, 1e-6), hi, color=colour, alpha=0.25, lw=0)
    ax_loss.set_yscale('log')
    ax_loss.set_xlabel('optimizer step')
    ax_loss.set_ylabel('loss (log scale)')
    ax_loss.set_title(f'losses: moving mean of {window} steps, 95% CI band' if window > 1
                      else 'losses per step')
    ax_loss.legend(fontsize=8, loc='best')
    ax_loss.grid(alpha=0.3, which='both')
    mean, lo, hi = moving_mean_ci(np.array([r['token_accuracy'] for r in history]) * 100,
                                  window)
    ax_acc.plot(at, mean, color='k', lw=1.3, label='action-token accuracy (exact bin)'
                + (': none, a diffusion head' if diffusion else ''))
    ax_acc.fill_between(at, lo, hi, color='k', alpha=0.2, lw=0)
    ax_acc.set_ylim(0, 100)
    ax_acc.set_xlabel('optimizer step')
    ax_acc.set_ylabel('teacher-forced token accuracy, %')
    ax_acc.grid(alpha=0.3)
    ax_lr = ax_acc.twinx()
    ax_lr.plot(steps, [r['lr'] for r in history], color='tab:orange', ls='--', lw=1,
               label='learning rate')
    ax_lr.set_ylabel('learning rate')
    ax_lr.set_ylim(bottom=0)
    lines = ax_acc.get_legend_handles_labels()
    more = ax_lr.get_legend_handles_labels()
    ax_acc.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc='lower right')
    ax_acc.set_title('accuracy and schedule')
    if title:
        fig.suptitle(title, fontsize=11)
    save_png(fig, path)


def plot_log(log_path: Path, png: Path | None = None) -> Path:
    """Re-draw the curves of a saved train_log.json (beside it as loss.png by default)."""
    summary = json.loads(Path(log_path).read_text())
    png = png or Path(log_path).with_name('loss.png')
    plot_losses(summary['history'], png, title=run_title(summary),
                diffusion=summary['config'].get('head') == 'diffusion')
    return png


def run_title(summary: dict) -> str:
    cfg = summary['config']
    return (f'{cfg["steps"]} steps, batch {cfg["batch"]}, peak lr {cfg["lr"]:g}, on '
            f'{summary["samples"]} samples of {summary["episodes"]} episodes '
            f'({summary["seconds"] / 60:.1f} min, {summary["device"]})')
