"""fc7 features of a folder of images, and retrieval by them (the paper's figure 4).

  python -m alexnet_jax.features --workdir=DIR --folder=PHOTOS --output=features.npz \
      --grid=neighbours.png

Every image under --folder (recursively; its parent folder's name is kept as its label) is
prepared as in evaluation, center crop, and its activations at --point (fc7 by default, the
4096 units the paper's figure 4 compares) go to a `.npz` with the file paths. --grid renders
the figure: each row a query image, then the images whose features are nearest to it by
Euclidean distance, nearest first.
"""
from __future__ import annotations

import os

from absl import app
from absl import flags
import jax
import numpy as np
from flax import nnx
from PIL import Image

from alexnet_jax import backends
from alexnet_jax import cli
from alexnet_jax import images
from alexnet_jax import inference
from alexnet_jax import evaluation
from alexnet_jax import model as model_lib
from alexnet_jax import preprocess
from alexnet_jax import sharding

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm')


def image_files(folder: str) -> list[str]:
  """Every image file under `folder`, sorted."""
  if not os.path.isdir(folder):
    raise ValueError(f'features: no such folder {folder!r}')
  paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                 for name in names if name.lower().endswith(IMAGE_SUFFIXES))
  if not paths:
    raise ValueError(f'features: no image files under {folder!r}')
  return paths


def extract(trained: inference.Trained, paths: list[str], *, point: str = 'fc7',
            batch_size: int = 64) -> tuple[np.ndarray, list[str]]:
  """(features (N, D) float32, the paths read); unreadable files are reported and left out."""
  mesh = trained.net.mesh
  record = trained.preprocessing
  graphdef, params = nnx.split(trained.net, nnx.Param)
  arrays = evaluation.replicated(record.arrays(), mesh)

  @backends.jit
  def fn(params, crops_u8, arrays):
    x = preprocess.normalize(crops_u8, record, arrays)
    out = nnx.merge(graphdef, params).features(x, point)
    return out.reshape((out.shape[0], -1))

  crops, kept = [], []
  for path in paths:
    try:
      with open(path, 'rb') as f:
        crops.append(preprocess.center_crop(record.load(f.read()), record.crop))
      kept.append(path)
    except (OSError, images.BadImage) as e:
      print(f'{path}: cannot read ({e}); left out')
  if not crops:
    raise ValueError('features: none of the images could be read')
  step = max(batch_size - batch_size % sharding.data_size(mesh), sharding.data_size(mesh))
  out = []
  for start in range(0, len(crops), step):
    chunk = np.stack(crops[start:start + step])
    n = len(chunk)
    chunk = np.concatenate([chunk, np.repeat(chunk[:1], step - n, 0)])  # A single shape.
    batch = jax.device_put(chunk, sharding.named(mesh, sharding.BATCH))
    out.append(np.asarray(jax.device_get(fn(params, batch, arrays)))[:n])
  return np.concatenate(out).astype(np.float32), kept


def nearest(features: np.ndarray, queries, k: int) -> np.ndarray:
  """(len(queries), k) indices of the nearest other rows by Euclidean distance."""
  f = features.astype(np.float64)
  q = f[np.asarray(queries)]
  d2 = (q ** 2).sum(1)[:, None] - 2 * q @ f.T + (f ** 2).sum(1)[None]
  d2[np.arange(len(q)), np.asarray(queries)] = np.inf  # Not the query itself.
  return np.argsort(d2, axis=1, kind='stable')[:, :k]


def render_grid(paths: list[str], rows: list[list[int]], output: str, *,
                thumb: int = 96, gap: int = 4) -> None:
  """A PNG: one row per list of indices into `paths`, the first (the query) set apart."""
  cols = max(len(r) for r in rows)
  width = cols * (thumb + gap) + 3 * gap
  canvas = Image.new('RGB', (width, len(rows) * (thumb + gap) + gap), (255, 255, 255))
  for i, row in enumerate(rows):
    for j, index in enumerate(row):
      with open(paths[index], 'rb') as f:
        im = Image.fromarray(images.load_resized(f.read(), thumb))
      x = gap + j * (thumb + gap) + (3 * gap if j else 0)  # A wider gap after the query.
      canvas.paste(im, (x, gap + i * (thumb + gap)))
  canvas.save(output)


# ---- Command line ----------------------------------------------------------------------------

def define_flags():
  """The command line's flags (defined only when run as a program, so that tests and
  notebooks can import this module beside the others)."""
  cli.define_model_flags()
  flags.adopt_module_key_flags(cli)  # --help lists the model flags too.
  flags.DEFINE_string('folder', None, 'A folder of images (searched recursively).')
  flags.DEFINE_string('output', 'features.npz', 'Where the features go.')
  flags.DEFINE_enum('point', 'fc7', list(model_lib.FEATURES), 'Which activations.')
  flags.DEFINE_string('grid', None, 'Also render nearest neighbours to this PNG (figure 4).')
  flags.DEFINE_integer('queries', 5, 'Query images in the grid (spread evenly over the folder).')
  flags.DEFINE_integer('neighbours', 6, 'Nearest images shown per query.')
  flags.DEFINE_integer('batch_size', 64, 'Images per forward pass.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if not f.folder:
    raise app.UsageError('give --folder')
  try:
    (trained,) = cli.models_from_flags()
    features, paths = extract(trained, image_files(f.folder), point=f.point,
                              batch_size=f.batch_size)
  except ValueError as e:
    cli.fail(str(e))
  except inference.checkpoint_lib.CheckpointError as e:
    raise SystemExit(f'error: {e}') from None
  labels = [os.path.basename(os.path.dirname(p)) for p in paths]
  np.savez(f.output, features=features, paths=np.asarray(paths), labels=np.asarray(labels))
  print(f'{features.shape[1]}-d {f.point} features of {len(paths)} images -> {f.output}')
  if f.grid:
    queries = np.linspace(0, len(paths) - 1, min(f.queries, len(paths))).round().astype(int)
    neighbours = nearest(features, queries, min(f.neighbours, len(paths) - 1))
    render_grid(paths, [[int(q), *map(int, n)] for q, n in zip(queries, neighbours)], f.grid)
    print(f'nearest neighbours of {len(queries)} images -> {f.grid}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
