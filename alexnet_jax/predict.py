"""Top-5 classes of your own images.

  python -m alexnet_jax.predict --workdir=DIR photo1.jpg photo2.png ...
  python -m alexnet_jax.predict --weights=alexnet.pth --config=configs/paper.py:owt cat.jpg

Each image is prepared as in evaluation (shorter side to the stored size, the central square,
then the center crop, or the 10 views with --views=10) and gets one line: the top classes
with human-readable names (ImageNet's for ImageNet models, the folder names for image-folder
models) and probabilities. An unreadable file gets one line saying why; the rest go on.
"""
from __future__ import annotations

import sys

from absl import app
from absl import flags
import jax
import numpy as np

from alexnet_jax import cli
from alexnet_jax import images
from alexnet_jax import inference
from alexnet_jax import preprocess
from alexnet_jax import sharding


def define_flags():
  """The command line's flags (defined only when run as a program, so that tests and
  notebooks can import this module beside the others)."""
  cli.define_model_flags()
  flags.adopt_module_key_flags(cli)  # --help lists the model flags too.
  flags.DEFINE_integer('top', 5, 'How many classes to show per image.')
  flags.DEFINE_enum('views', '1', ['1', '10'], '1 (center crop) or the paper\'s 10 views.')


def read(path: str, preprocessing: preprocess.Preprocessing) -> np.ndarray:
  """A file as the canvas its crops come from, or images.BadImage / OSError."""
  with open(path, 'rb') as f:
    return preprocessing.load(f.read())


def predict(trained: inference.Trained, paths: list[str], *, top: int = 5,
            views: int = 1) -> list[str]:
  """One line per path: `path: name p, name p, ...` or `path: cannot read (why)`."""
  record = trained.preprocessing
  decoded, lines = {}, {}
  for path in paths:
    try:
      image = read(path, record)
    except (OSError, images.BadImage) as e:
      lines[path] = f'{path}: cannot read ({e})'
      continue
    decoded[path] = image if views == 10 else preprocess.center_crop(image, record.crop)
  if decoded:
    batch = np.stack(list(decoded.values()))
    data_parallel = sharding.data_size(trained.net.mesh)
    padded = -(-len(batch) // data_parallel) * data_parallel  # Rows split over the devices.
    batch = np.concatenate([batch, np.repeat(batch[:1], padded - len(batch), 0)])
    batch = jax.device_put(batch, sharding.named(trained.net.mesh, sharding.BATCH))
    probs = np.asarray(jax.device_get(trained.probabilities(views)(batch)))
    names = trained.class_names()
    for path, p in zip(decoded, probs):
      best = np.argsort(-p)[:top]
      lines[path] = f'{path}: ' + ', '.join(f'{names[k]} {p[k]:.3f}' for k in best)
  return [lines[path] for path in paths]


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('give one or more image files')
  try:
    (trained,) = cli.models_from_flags()
  except ValueError as e:
    cli.fail(str(e))
  except inference.checkpoint_lib.CheckpointError as e:
    raise SystemExit(f'error: {e}') from None
  print(f'preprocessing: {trained.preprocessing.summary()}')
  lines = predict(trained, paths, top=flags.FLAGS.top, views=int(flags.FLAGS.views))
  for line in lines:
    print(line)
  sys.stdout.flush()
  failed = sum(': cannot read (' in line for line in lines)
  if failed:  # The others were predicted; a script must still see that some were not.
    raise SystemExit(f'error: {failed} of {len(paths)} files could not be read')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
