"""The paper's figure 3: a trained model's conv1 kernels, tower 0's above tower 1's.

  python experiments/figure3_kernels.py --workdir=/runs/alexnet --output=conv1_kernels.png

Each 11x11x3 kernel (or whatever conv1's size is) is scaled to the full 0-255 range on its own,
as the paper's figure shows them, and drawn enlarged; a gap separates the towers, so the
paper's observation (one tower's kernels colour-agnostic, the other's colour-specific) can
be checked by eye. Any model `alexnet_jax.inference.load` takes works.
"""
from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
import jax
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alexnet_jax import inference  # pylint: disable=g-import-not-at-top,wrong-import-position


def kernel_grid(kernel: np.ndarray, *, per_row: int = 16, zoom: int = 4,
                gap: int = 2, tower_gap: int = 8) -> np.ndarray:
  """(towers, kh, kw, 3, out) conv1 kernels -> an RGB uint8 image, one block per tower."""
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


def define_flags():
  """Flags, defined when run as a script (tests import this module)."""
  flags.DEFINE_string('workdir', None, 'A work directory or checkpoint (see evaluate).')
  flags.DEFINE_string('output', 'conv1_kernels.png', 'The PNG to write.')
  flags.DEFINE_integer('zoom', 4, 'Pixels per kernel weight.')


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.workdir:
    raise app.UsageError('give --workdir')
  trained = inference.load(f.workdir)
  kernel = np.asarray(jax.device_get(trained.net.layer('conv1').kernel[...]))
  Image.fromarray(kernel_grid(kernel, zoom=f.zoom)).save(f.output)
  print(f'{kernel.shape[0]} x {kernel.shape[-1]} conv1 kernels of {trained.source} -> '
        f'{f.output}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
