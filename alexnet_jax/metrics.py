"""Where the run's numbers go: JSONL, TensorBoard event files, a progress bar and a PNG."""
from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time


def _crc32c_table():
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
  return _varint(number << 3 | wire) + payload


def _event(step: int, *, tag: str | None = None, value: float = 0.0,
           file_version: str | None = None) -> bytes:
  """A tensorflow.Event protobuf: wall_time (1), step (2), file_version (3), summary (5)."""
  msg = _field(1, 1, struct.pack('<d', time.time())) + _field(2, 0, _varint(step))
  if file_version is not None:
    raw = file_version.encode()
    msg += _field(3, 2, _varint(len(raw)) + raw)
  if tag is not None:
    raw = tag.encode()
    summary_value = _field(1, 2, _varint(len(raw)) + raw) + _field(2, 5, struct.pack('<f', value))
    summary = _field(1, 2, _varint(len(summary_value)) + summary_value)
    msg += _field(5, 2, _varint(len(summary)) + summary)
  return msg


class TensorBoardFile:
  """Scalars as a TensorBoard event file (TFRecord framing), with no TensorFlow or torch."""

  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    name = f'events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}'
    self.path = os.path.join(directory, name)
    self._file = open(self.path, 'ab')
    self._write(_event(0, file_version='brain.Event:2'))

  def _write(self, record: bytes) -> None:
    header = struct.pack('<Q', len(record))
    self._file.write(header + struct.pack('<I', _masked_crc32c(header)) + record +
                     struct.pack('<I', _masked_crc32c(record)))

  def scalar(self, tag: str, value: float, step: int) -> None:
    self._write(_event(step, tag=tag, value=float(value)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class Writer:
  """Appends {'step': s, name: value, ...} lines to workdir/metrics.jsonl and the same
  scalars to TensorBoard event files in workdir/tensorboard."""

  def __init__(self, workdir: str, resume_step: int = 0, *, enabled: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.nonfinite_steps = 0
    self.enabled = enabled  # Off on every process but the first of a multi-process run.
    if not enabled:
      return
    if os.path.exists(self.path):
      # Lines past the resumed checkpoint describe steps that will be run again; a line cut
      # short by a killed process is dropped. Replaced in one rename: a kill loses nothing.
      kept = []
      with open(self.path) as f:
        for line in f:
          try:
            if json.loads(line)['step'] <= resume_step:
              kept.append(line)
          except (ValueError, KeyError):
            pass
      with open(self.path + '.tmp', 'w') as f:
        f.writelines(kept)
      os.replace(self.path + '.tmp', self.path)
    self._file = open(self.path, 'a')
    # A new event file per (re)start; TensorBoard shows the latest value of a repeated step.
    self._tb = TensorBoardFile(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._file.write(json.dumps({'step': step, **scalars}) + '\n')
    self._file.flush()
    for k, v in scalars.items():
      if v is not None:
        self._tb.scalar(k, v, step)
    self._tb.flush()

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
    self.last_eval = {}

  def update(self, step: int, metrics: dict[str, float]) -> None:
    self.bar.n = step
    shown = {'loss': f'{metrics["loss"]:.3f}', 'err': f'{metrics["top1_error"]:.3f}',
             'img/s': f'{metrics["images_per_s"]:.0f}'}
    if self.last_eval:
      shown['val_err'] = f'{self.last_eval["top1_error"]:.3f}'
    self.bar.set_postfix(shown, refresh=False)
    self.bar.refresh()

  def show_eval(self, val: dict[str, float]) -> None:
    self.last_eval = val

  def close(self) -> None:
    self.bar.close()


def plot(history_path: str, png_path: str) -> None:
  """Loss and top-1 error curves (train and validation) against steps, as a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  with open(history_path) as f:
    rows = [json.loads(l) for l in f]
  series = lambda key: [(r['step'], r[key]) for r in rows if r.get(key) is not None]
  fig, axes = plt.subplots(1, 3, figsize=(14, 4))
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
  fig.tight_layout()
  fig.savefig(png_path, dpi=80)
  plt.close(fig)
