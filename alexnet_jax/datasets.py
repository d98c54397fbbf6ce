"""Random-access image sources that grain reads by index, and their pixel statistics.

Every source yields `(image (S, S, 3) uint8, label int)` with S = `data.image_size` (256 for
ImageNet, as the paper stores it); crops to the net's input happen in `input_pipeline`.

  digits    scikit-learn's 1797 real 8x8 digits (the embedded default, no download).
  prepared  the output of `python -m alexnet_jax.prepare` (the fast path for real data).
  folder    `path/<split>/<class>/*.jpg` read and resized on the fly.
  tfds      a tensorflow-datasets dataset prepared under `path`, read with tfds.data_source.
  auto      `prepared` if `path` holds a prepared dataset's metadata, else `folder`.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import os


import numpy as np
from PIL import Image

from alexnet_jax import images
from alexnet_jax import prepare

SOURCES = ('digits', 'prepared', 'folder', 'tfds', 'auto')
EVAL_SPLITS = ('validation', 'test')  # An image folder's val/ is its 'validation'.
# Pixel statistics of an image folder read directly come from this many of its training
# images, spread evenly over it.
FOLDER_STATS_SAMPLE = 256
DIGITS_TEST_FRACTION = 0.2  # A fixed 80/20 split of scikit-learn's 1797 digits.

# ImageNet's RGB statistics in 0-255 units (docs/paper.md s4): the code's per-axis lighting scales
# (square roots of the covariance's eigenvalues) and eigenvectors (columns).
IMAGENET_EIGVAL = (19.72**2, 37.09**2, 121.78**2)
IMAGENET_EIGVEC = ((0.4180, -0.7126, -0.5635),
                   (-0.8170, -0.0235, -0.5762),
                   (0.3973, 0.7012, -0.5920))
IMAGENET_MEAN_RGB = (123.68, 116.78, 103.94)
IMAGENET_STD_RGB = (58.39, 57.12, 57.38)


class DataError(ValueError):
  """A data configuration or directory that cannot work (one line)."""


@dataclasses.dataclass(frozen=True)
class Stats:
  """Pixel statistics of a training split (0-255 units)."""
  classes: tuple[str, ...]
  mean_rgb: tuple[float, ...] = IMAGENET_MEAN_RGB
  std_rgb: tuple[float, ...] = IMAGENET_STD_RGB
  eigval: tuple[float, ...] = IMAGENET_EIGVAL
  eigvec: tuple[tuple[float, ...], ...] = IMAGENET_EIGVEC
  mean_image: np.ndarray | None = dataclasses.field(default=None, compare=False)

  @classmethod
  def of_images(cls, classes, images_u8: np.ndarray, chunk: int = 256) -> Stats:
    """Statistics of (N, S, S, 3) uint8 images, summed in chunks to bound memory."""
    image_sum = np.zeros(images_u8.shape[1:], np.float64)
    rgb_sum, rgb_outer = np.zeros(3), np.zeros((3, 3))
    for start in range(0, len(images_u8), chunk):
      block = images_u8[start:start + chunk]
      pixels = block.reshape(-1, 3).astype(np.float64)
      image_sum += block.sum(0, dtype=np.float64)
      rgb_sum += pixels.sum(0)
      rgb_outer += pixels.T @ pixels
    s = prepare.pixel_statistics(image_sum, rgb_sum, rgb_outer, len(images_u8))
    return cls.from_metadata(classes, s, image_sum / len(images_u8))

  @classmethod
  def from_metadata(cls, classes, meta: dict, mean_image: np.ndarray | None) -> Stats:
    return cls(classes=tuple(classes), mean_rgb=tuple(meta['mean_rgb']),
               std_rgb=tuple(meta['std_rgb']), eigval=tuple(meta['eigval']),
               eigvec=tuple(map(tuple, meta['eigvec'])),
               mean_image=None if mean_image is None else mean_image.astype(np.float32))


class ArraySource:
  """An in-memory source: images (N, S, S, 3) uint8 and labels (N,)."""

  def __init__(self, images_u8: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images_u8, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int):
    return self.images[i], int(self.labels[i])


@functools.lru_cache(maxsize=1)
def _sklearn_digits():
  """Read once per process: both splits come from it."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  return load_digits()


@functools.lru_cache(maxsize=4)
def digits(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's real 8x8 handwritten digits as (N, S, S, 3) uint8 RGB and int32 labels.

  Each 0..16 grey image is scaled to 0..255, resized bilinearly to `image_size` and repeated
  over the three channels. The train/test split is fixed (seeded), the same everywhere.
  """
  if split not in ('train', 'test'):
    raise DataError(f"data.train_split/eval_split: digits has 'train' and 'test', not {split!r}")
  d = _sklearn_digits()
  order = np.random.default_rng(0).permutation(len(d.target))
  n_test = int(round(len(order) * DIGITS_TEST_FRACTION))
  index = order[n_test:] if split == 'train' else order[:n_test]
  grey = (d.images[index] * (255.0 / 16.0)).astype(np.uint8)
  resized = np.stack([np.asarray(Image.fromarray(g).resize((image_size, image_size),
                                                           Image.BILINEAR)) for g in grey])
  return np.repeat(resized[..., None], 3, axis=-1), d.target[index].astype(np.int32)


@functools.lru_cache(maxsize=4)
def _digits_stats(image_size: int) -> Stats:
  return Stats.of_images(tuple(map(str, range(10))), digits('train', image_size)[0])


class PreparedSource:
  """Records written by `alexnet_jax.prepare`, read by index (picklable for grain workers)."""

  def __init__(self, directory: str, split: str):
    self.directory, self.split = directory, split
    meta = read_metadata(directory)
    if split not in meta['splits']:
      raise DataError(f'data.path: {directory!r} has no split {split!r} '
                      f'(it has {sorted(meta["splits"])})')
    info = meta['splits'][split]
    self.format, self.size = meta['format'], meta['image_size']
    self.starts = np.concatenate([[0], np.cumsum(info['shard_counts'])]).tolist()
    self._shards = None

  def _open(self):
    shards = []
    for shard in range(len(self.starts) - 1):
      data_path, index_path = prepare.shard_paths(self.directory, self.split, shard)
      with np.load(index_path) as index:
        offsets, labels = index['offsets'], index['labels']
      data = (np.memmap(data_path, np.uint8, 'r') if offsets[-1] else np.zeros(0, np.uint8))
      shards.append((data, offsets, labels))
    self._shards = shards

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != '_shards'} | {'_shards': None}

  def __len__(self) -> int:
    return self.starts[-1]

  def record(self, i: int) -> tuple[bytes | np.ndarray, int]:
    if self._shards is None:
      self._open()
    shard = bisect.bisect_right(self.starts, i) - 1
    data, offsets, labels = self._shards[shard]
    j = i - self.starts[shard]
    return data[offsets[j]:offsets[j + 1]], int(labels[j])

  def __getitem__(self, i: int):
    return self.load(i)

  def load(self, i: int):
    """(image, label): (S, S, 3) uint8 (a view of the file for raw records)."""
    record, label = self.record(i)
    if self.format == 'raw':
      return np.asarray(record).reshape(self.size, self.size, 3), label
    return images.decode_prepared_jpeg(record), label


class FolderSource:
  """`root/<split>/<class>/<image>` decoded and resized on every read (prefer `prepare`)."""

  def __init__(self, root: str, split: str, size: int):
    classes, splits = list_folder(root)
    if split not in splits:
      raise DataError(f'data.path: {root!r} has no {split!r} folder')
    self.classes, self.items, self.size = classes, splits[split], size



  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, i: int):
    item = self.items[i]
    with open(item.path, 'rb') as f:
      data = f.read()
    try:
      return images.load_resized(data, self.size), item.label
    except images.BadImage as e:
      raise DataError(f'data: unreadable image {item.path!r} ({e}); run '
                      'alexnet_jax.prepare to skip such files') from None


@functools.lru_cache(maxsize=4)
def _folder_stats(root: str, split: str, size: int) -> Stats:
  """Pixel statistics of up to FOLDER_STATS_SAMPLE of a folder's images, spread evenly over
  it, as `prepare` computes them for all (read once per process)."""
  folder = FolderSource(root, split, size)
  step = max(1, len(folder) // FOLDER_STATS_SAMPLE)
  sample = np.stack([folder[i][0] for i in range(0, len(folder), step)[:FOLDER_STATS_SAMPLE]])
  return Stats.of_images(tuple(folder.classes), sample)


class TfdsSource:
  """A tfds dataset on disk (array_record), resized to `size` on every read."""

  def __init__(self, name: str, split: str, data_dir: str, size: int):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self.name, self.split, self.data_dir, self.size = name, split, data_dir, size
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:  # tfds raises many types for a missing dataset.
      raise DataError(f'data.tfds_name: cannot read {name!r} split {split!r} under '
                      f'{data_dir!r} ({e})'.replace('\n', ' ')) from None

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int):
    record = self.source[i]
    return images.array_resized(np.asarray(record['image']), self.size), int(record['label'])

  def classes(self) -> tuple[str, ...]:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return tuple(tfds.builder(self.name, data_dir=self.data_dir).info.features['label'].names)


def read_metadata(directory: str) -> dict:
  path = os.path.join(directory, prepare.METADATA)
  if not os.path.isdir(directory):
    raise DataError(f'data.path: no directory {directory!r}')
  if not os.path.isfile(path):
    raise DataError(f'data.path: {directory!r} is not a prepared dataset (no '
                    f'{prepare.METADATA}); run python -m alexnet_jax.prepare first')
  with open(path) as f:
    return json.load(f)


def list_folder(root: str):
  """(classes, {split: items}) of an image folder, or a one-line DataError naming data.path."""
  try:
    return prepare.list_folder(root)
  except prepare.PrepareError as e:
    raise DataError(str(e).replace('--input:', 'data.path:', 1)) from None


def resolved_source(data) -> str:
  """`data.source`, with 'auto' resolved by what `data.path` holds."""
  if data.source != 'auto':
    return data.source
  path = os.path.expanduser(data.path)
  return 'prepared' if os.path.isfile(os.path.join(path, prepare.METADATA)) else 'folder'


@dataclasses.dataclass(frozen=True)
class Survey:
  """What an image folder or a prepared directory holds, before any config is fitted to it."""
  classes: tuple[str, ...]
  counts: dict[str, int]  # Examples per split ('train', 'validation', 'test').
  image_side: int  # Shorter side of its images (stored side of a prepared directory).
  prepared: bool


def survey(data) -> Survey:
  """The classes, split sizes and image size of the data `data.path` holds (data.fit)."""
  source = resolved_source(data)
  path = os.path.expanduser(data.path)
  if source not in ('prepared', 'folder'):
    raise DataError(f"data.fit: fits to an image folder or a prepared directory, not the "
                    f"{source!r} source")
  if not path or not os.path.isdir(path):
    raise DataError(f'data.path: no such directory {path!r}' if path else
                    'data.path: give the image folder or prepared directory to train on')
  if source == 'prepared':
    meta = read_metadata(path)
    counts = {s: v['count'] for s, v in meta['splits'].items()}
    return Survey(tuple(meta['classes']), counts, meta['image_size'], True)
  classes, splits = list_folder(path)
  items = splits['train']
  sides = []
  for item in items[::max(1, len(items) // 16)][:16]:  # The headers of a few: no decoding.
    try:
      with Image.open(item.path) as im:
        sides.append(min(im.size))
    except OSError:
      continue
  if not sides:
    raise DataError(f'data.path: none of the images sampled in {path!r}/train can be read')
  return Survey(tuple(classes), {s: len(v) for s, v in splits.items()},
                int(np.median(sides)), False)


def open_source(data, split: str):
  """(source, stats) for `data` (the config's data section) and a split name."""
  if data.source not in SOURCES:
    raise DataError(f'data.source: must be one of {SOURCES}, got {data.source!r}')
  path = os.path.expanduser(data.path) if data.path else ''
  source = resolved_source(data) if path else data.source
  if source == 'digits':
    x, y = digits(split, data.image_size)
    return ArraySource(x, y), _digits_stats(data.image_size)
  if source == 'tfds':  # tfds's own default data_dir when no path is given.
    source = TfdsSource(data.tfds_name, split, path or None, data.image_size)
    return source, Stats(classes=source.classes())
  if not path:
    raise DataError(f'data.path: the {source!r} source needs a path')
  if not os.path.exists(path):
    raise DataError(f'data.path: no such directory {path!r}')
  if source == 'prepared':
    meta = read_metadata(path)
    if meta['image_size'] != data.image_size:
      raise DataError(f'data.image_size: {data.image_size} but {path!r} stores '
                      f'{meta["image_size"]}x{meta["image_size"]} images')
    mean_file = os.path.join(path, prepare.MEAN_IMAGE)
    mean_image = np.load(mean_file) if os.path.isfile(mean_file) else None
    stats = (Stats.from_metadata(meta['classes'], meta, mean_image) if 'eigval' in meta
             else Stats(classes=tuple(meta['classes'])))
    return PreparedSource(path, split), stats
  folder = FolderSource(path, split, data.image_size)
  if split == data.train_split:
    return folder, _folder_stats(path, split, data.image_size)
  return folder, Stats(classes=tuple(folder.classes))
