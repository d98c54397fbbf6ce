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
from alexnet_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from alexnet_jax import inference  # pylint: disable=g-import-not-at-top,wrong-import-position
from alexnet_jax.writers import kernel_grid  # pylint: disable=g-import-not-at-top,wrong-import-position


def define_flags():
  """Flags, defined when run as a script (tests import this module)."""
  flags.DEFINE_string('workdir', None, 'A work directory or checkpoint (see evaluate).')
  flags.DEFINE_string('output', None, 'The PNG to write (required).')
  flags.DEFINE_integer('zoom', 4, 'Pixels per kernel weight.')


def main(argv):
  f = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not f.workdir or not f.output:
    raise app.UsageError('give --workdir and --output')
  try:
    trained = inference.load(f.workdir)
  except ValueError as e:
    cli.fail(str(e))
  except inference.checkpoint_lib.CheckpointError as e:
    raise SystemExit(f'error: {e}') from None
  kernel = np.asarray(jax.device_get(trained.net.layer('conv1').kernel[...]))
  Image.fromarray(kernel_grid(kernel, zoom=f.zoom)).save(f.output)
  print(f'{kernel.shape[0]} x {kernel.shape[-1]} conv1 kernels of {trained.source} -> '
        f'{f.output}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
