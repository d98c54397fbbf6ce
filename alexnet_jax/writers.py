"""Where the run's numbers go: metrics.jsonl, TensorBoard (tensorboardX: no TensorFlow), a
progress bar and a PNG of the curves."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def tensorboard_tag(key: str) -> str:
  """metrics.jsonl's key -> a grouped TensorBoard tag: train_loss -> train/loss,
  val_top1_error -> val/top1_error, final_... -> final/..., lr -> train/lr, data/... as is."""
  if '/' in key:
    return key
  group, _, rest = key.partition('_')
  if group in ('train', 'val', 'final') and rest:
    return f'{group}/{rest}'
  return f'train/{key}'


def kernel_grid(kernel: np.ndarray, *, per_row: int = 16, zoom: int = 4,
                gap: int = 2, tower_gap: int = 8) -> np.ndarray:
  """(towers, kh, kw, 3, out) conv1 kernels -> an RGB uint8 image, one block per tower, each
  kernel scaled to the full 0-255 range on its own (the paper's figure 3)."""
  towers, kh, kw, _, out = kernel.shape
  rows = -(-out // per_row)
  cell_h, cell_w = kh * zoom + gap, kw * zoom + gap
  height = towers * rows * cell_h + (towers - 1) * tower_gap + gap
  canvas = np.full((height, per_row * cell_w + gap, 3), 255, np.uint8)
  for t in range(towers):
    for k in range(out):
      w = kernel[t, :, :, :, k]
      w = (w - w.min()) / max(float(np.ptp(w)), 1e-12)  # Each kernel on its own scale.
      tile = np.kron((255 * w).astype(np.uint8), np.ones((zoom, zoom, 1), np.uint8))
      top = gap + t * (rows * cell_h + tower_gap) + (k // per_row) * cell_h
      left = gap + (k % per_row) * cell_w
      canvas[top:top + kh * zoom, left:left + kw * zoom] = tile
  return canvas


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch when it
  is installed (1.1-1.5 s a start, measured here) only to accept its tensors, and we give it
  numpy. While it loads, `import torch` fails as if torch were absent."""
  if 'torch' in sys.modules or 'tensorboardX' in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules['torch'] = None
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules['torch']
  return SummaryWriter


class Writer:
  """Appends {'step': s, name: value, ...} lines to workdir/metrics.jsonl and the same
  scalars to TensorBoard event files in workdir/tensorboard. `reevaluating` a finished run
  replaces its final records (`final_*`) rather than adding a second set."""

  def __init__(self, workdir: str, resume_step: int = 0, *, enabled: bool = True,
               reevaluating: bool = False):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.nonfinite_steps = 0
    self.enabled = enabled  # Off on every process but the first of a multi-process run.
    if not enabled:
      return
    kept = []
    if os.path.exists(self.path):
      # Lines past the resumed checkpoint describe steps that will be run again; a line cut
      # short by a killed process is dropped. Replaced in one rename: a kill loses nothing.
      with open(self.path) as f:
        for line in f:
          try:
            row = json.loads(line)
            if row['step'] <= resume_step and not (
                reevaluating and any(k.startswith('final_') for k in row)):
              kept.append(row)
          except (ValueError, KeyError):
            pass
      with open(self.path + '.tmp', 'w') as f:
        f.writelines(json.dumps(row) + '\n' for row in kept)
      os.replace(self.path + '.tmp', self.path)
    self._file = open(self.path, 'a')
    # A new event file per (re)start, which first purges every event at or after the step
    # the run resumes with: each reader then shows each step once. Reevaluating purges the
    # last step too (events are purged by step, not by tag), and writes its other records
    # again. The suffix keeps two starts in one second (and one process) from sharing a file.
    self._tb = _summary_writer_class()(
        os.path.join(workdir, 'tensorboard'),
        purge_step=resume_step if reevaluating else resume_step + 1, flush_secs=10,
        filename_suffix=f'.{time.time_ns()}')
    if reevaluating:
      for row in kept:
        if row['step'] == resume_step:
          self._add_scalars(row['step'], {k: v for k, v in row.items() if k != 'step'})

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._file.write(json.dumps({'step': step, **scalars}) + '\n')
    self._file.flush()
    self._add_scalars(step, scalars)
    self._tb.flush()  # What a killed run logged before its checkpoint is never logged again.

  def _add_scalars(self, step: int, scalars: dict[str, float]) -> None:
    for k, v in scalars.items():
      if v is not None:
        self._tb.add_scalar(tensorboard_tag(k), v, step)

  def text(self, tag: str, text: str, step: int) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, step)

  def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
    if self.enabled:
      self._tb.add_image(tag, image_hwc, step, dataformats='HWC')

  def count_nonfinite(self, step: int) -> None:
    self.nonfinite_steps += 1
    self.write(step, {'nonfinite_steps': self.nonfinite_steps})

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()


class Progress:
  """A terminal progress bar with ETA and the latest metrics."""

  def __init__(self, total: int, initial: int = 0, enabled: bool = True):
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    self.bar = tqdm(total=total, initial=initial, unit='step', dynamic_ncols=True,
                    disable=not enabled, file=sys.stderr)
    self.shown = {}

  def update(self, step: int, metrics: dict[str, float]) -> None:
    self.bar.n = step
    self.shown.update(
        {'loss': f'{metrics["loss"]:.3f}', 'err': f'{metrics["top1_error"]:.3f}',
         'img/s': f'{metrics["images_per_s"]:.0f}' if 'images_per_s' in metrics else '-'})
    self._refresh()

  def show_eval(self, val: dict[str, float]) -> None:
    """The newest validation error, shown at once (the last epoch's is the final one)."""
    self.shown['val_err'] = f'{val["top1_error"]:.3f}'
    self._refresh()

  def _refresh(self) -> None:
    self.bar.set_postfix(self.shown, refresh=False)
    self.bar.refresh()

  def close(self) -> None:
    self.bar.close()


def plot(history_path: str, png_path: str) -> None:
  """Loss and top-1 error curves (train and validation) against steps, as a PNG."""
  # The Figure API without pyplot (no GUI backend, no global state) and a fixed layout:
  # tight_layout drew the figure twice, and the plot took 1.4 s of every run's end.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  with open(history_path) as f:
    rows = [json.loads(l) for l in f]
  series = lambda key: [(r['step'], r[key]) for r in rows if r.get(key) is not None]
  fig = Figure(figsize=(14, 4))
  axes = fig.subplots(1, 3)
  for ax, (title, keys) in zip(axes, [
      ('loss', ('train_loss', 'val_loss')),
      ('top-1 error', ('train_top1_error', 'val_top1_error')),
      ('learning rate', ('lr',))]):
    for key in keys:
      points = series(key)
      if points:
        ax.plot(*zip(*points), label=key, marker='o' if key.startswith('val') else None)
    ax.set_title(title)
    ax.set_xlabel('step')
    if title == 'learning rate':
      ax.set_yscale('log')
    ax.legend()
  fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.92, wspace=0.25)
  fig.savefig(png_path, dpi=80)
