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
import importlib.resources
import hashlib
import importlib.util
import os

import numpy as np
from PIL import Image

from alexnet_jax import images
from alexnet_jax import preprocess
from alexnet_jax import records

SOURCES = ('digits', 'prepared', 'folder', 'tfds', 'auto')
EVAL_SPLITS = ('validation', 'test')  # An image folder's val/ is its 'validation'.
# Pixel statistics of an image folder read directly come from this many of its training
# images, spread evenly over it.
FOLDER_STATS_SAMPLE = 256
DIGITS_TEST_FRACTION = 0.2  # A fixed 80/20 split of scikit-learn's 1797 digits.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm')
FOLDER_SPLITS = ('train', 'validation', 'val', 'test')
# A run stops on bad examples only past data.max_bad_fraction of the split AND this many (or
# half of a split smaller than 20): a damaged file or two in a small folder are skipped.
MIN_BAD_TO_STOP = 10
# More bad examples than this in a row is not bad luck but bad data: one line, not a search.
MAX_BAD_IN_A_ROW = 64

# The one rule for image sizes (data.fit and prepare's default --size): images whose shorter
# side is at least LARGE_IMAGE_SIDE are stored at the paper's PAPER_SIDE (s4); smaller ones
# keep their own side, which a small net reads without resampling.
LARGE_IMAGE_SIDE = 128
PAPER_SIDE = 256
IMAGE_SIDE_SAMPLE = 16  # Files whose headers give a folder's typical image side.

# ImageNet's RGB statistics: defined with the preprocessing record that uses them.
IMAGENET_EIGVAL = preprocess.IMAGENET_EIGVAL
IMAGENET_EIGVEC = preprocess.IMAGENET_EIGVEC
IMAGENET_MEAN_RGB = preprocess.IMAGENET_MEAN_RGB
IMAGENET_STD_RGB = preprocess.IMAGENET_STD_RGB


class DataError(ValueError):
  """A data configuration or directory that cannot work (one line)."""


def stored_side(image_side: int) -> int:
  """The side images whose shorter side is `image_side` are stored at (the rule above)."""
  return PAPER_SIDE if image_side >= LARGE_IMAGE_SIDE else image_side


def bad_example_limit(examples: int, max_fraction: float) -> float:
  """How many distinct bad examples a split of `examples` may hold before a run stops:
  data.max_bad_fraction of it, but never fewer than MIN_BAD_TO_STOP - 1 (or, in a split of
  under 20, half of it)."""
  return max(max_fraction * examples, min(MIN_BAD_TO_STOP - 1, examples // 2))


class BadExample(Exception):
  """One example that cannot be used: `where` it is (shard and record, or file), and why."""

  def __init__(self, where: str, why: str):
    super().__init__(f'{where}: {why}')
    self.where, self.why = where, why


@dataclasses.dataclass(frozen=True)
class Item:
  """One example in a set of files: where its bytes are, its label and a name for reports."""
  name: str
  label: int
  path: str = ''  # A file; or, with `size` > 0, a tar archive holding the bytes at `offset`.
  offset: int = 0
  size: int = -1
  tfds_index: int = -1  # A record of a tfds data source instead.


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
    s = records.pixel_statistics(image_sum, rgb_sum, rgb_outer, len(images_u8))
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

  def where(self, i: int) -> str:
    return f'example {i}'


class Checked:
  """A source whose bad examples never stop a run.

  `read(i)` gives (image, label, bad). Training (`replace`): a bad example's place is taken by
  the next good one (i + 1, i + 2, ..., wrapping around), a pure function of i, so the same
  batches on every run, resume and process count; `bad` says how many were passed over. Its
  names come from `describe`. Evaluation: a bad example comes back as a blank image with
  bad=1, to be masked out and counted beside the error rates.
  """

  def __init__(self, source, *, replace: bool):
    self.source, self.replace = source, replace

  def __len__(self) -> int:
    return len(self.source)

  def read(self, i: int):
    n = len(self.source)
    for passed in range(min(n, MAX_BAD_IN_A_ROW)):
      try:
        image, label = self.source[(i + passed) % n]
        return image, label, passed
      except BadExample as e:
        if not self.replace:
          return None, 0, 1
        last = e
    raise DataError(f'data: {min(n, MAX_BAD_IN_A_ROW)} bad examples in a row, the last '
                    f'{last}; the data is damaged, not an example')

  def describe(self, i: int) -> str:
    """`where: why` of bad example `i` (read again, in this process)."""
    try:
      self.source[i]
      return f'{self.source.where(i)}: reads now'
    except BadExample as e:
      return str(e)


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images (1797, 8, 8) in 0..16, labels): scikit-learn's digits file, read once per
  process (both splits come from it) without importing scikit-learn, which takes 2 s, a
  tenth of the embedded default's whole run. `load_digits` reads the same file."""
  spec = importlib.util.find_spec('sklearn')
  if spec is None or not spec.submodule_search_locations:
    raise DataError('data.source=digits needs scikit-learn (pip install scikit-learn)')
  path = os.path.join(spec.submodule_search_locations[0], 'datasets', 'data', 'digits.csv.gz')
  table = np.loadtxt(path, delimiter=',', dtype=np.float64)
  return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int32)


@functools.lru_cache(maxsize=4)
def digits(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's real 8x8 handwritten digits as (N, S, S, 3) uint8 RGB and int32 labels.

  Each 0..16 grey image is scaled to 0..255, resized bilinearly to `image_size` and repeated
  over the three channels. The train/test split is fixed (seeded), the same everywhere.
  """
  if split not in ('train', 'test'):
    raise DataError(f"data.train_split/eval_split: digits has 'train' and 'test', not {split!r}")
  images, labels = _sklearn_digits()
  order = np.random.default_rng(0).permutation(len(labels))
  n_test = int(round(len(order) * DIGITS_TEST_FRACTION))
  index = order[n_test:] if split == 'train' else order[:n_test]
  grey = (images[index] * (255.0 / 16.0)).astype(np.uint8)
  resized = np.stack([np.asarray(Image.fromarray(g).resize((image_size, image_size),
                                                           Image.BILINEAR)) for g in grey])
  return np.repeat(resized[..., None], 3, axis=-1), labels[index]


@functools.lru_cache(maxsize=4)
def _digits_stats(image_size: int) -> Stats:
  return Stats.of_images(tuple(map(str, range(10))), digits('train', image_size)[0])


class PreparedSource:
  """Examples written by `alexnet_jax.prepare` (records.py), read by index through grain's
  ArrayRecordDataSource (picklable for grain workers). A record that fails its checksum or
  does not decode raises BadExample naming its shard, record and original file. `size`:
  the side to read the stored squares at, resized if it is not theirs (a config fitted to
  the data reads a prepared directory as it reads the folder it came from)."""

  def __init__(self, directory: str, split: str, size: int | None = None):
    self.directory, self.split = directory, split
    meta = read_metadata(directory)
    if split not in meta['splits']:
      raise DataError(f'data.path: {directory!r} has no split {split!r} '
                      f'(it has {", ".join(sorted(meta["splits"]))})')
    info = meta['splits'][split]
    self.format, self.size = meta['format'], meta['image_size']
    self.read_size = size or self.size
    self.starts = np.concatenate([[0], np.cumsum(info['shard_counts'])]).tolist()
    self.shards = [records.Shard(records.shard_path(directory, split, i))
                   for i in range(len(info['shard_counts']))]

  def __len__(self) -> int:
    return self.starts[-1]

  def locate(self, i: int) -> tuple[int, int]:
    shard = bisect.bisect_right(self.starts, i) - 1
    return shard, i - self.starts[shard]

  def where(self, i: int) -> str:
    """`split-NNNNN.array_record record j (original file)`, for reports."""
    shard, j = self.locate(i)
    names = _shard_names(records.stats_path(self.directory, self.split, shard))
    name = f' ({names[j]})' if j < len(names) else ''
    return f'{os.path.basename(self.shards[shard].path)} record {j}{name}'

  def example(self, i: int) -> records.Example:
    """Example `i` as stored (the encoded image), checked; BadExample if damaged."""
    shard, j = self.locate(i)
    try:
      return records.decode(self.shards[shard][j])
    except records.BadRecord as e:
      raise BadExample(self.where(i), str(e)) from None

  def __getitem__(self, i: int):
    """(image (S, S, 3) uint8, label), or BadExample."""
    example = self.example(i)
    try:
      if self.format == 'raw':
        image = np.frombuffer(example.image, np.uint8)
        if image.size != self.size * self.size * 3:
          raise images.BadImage(f'{image.size} bytes, not a {self.size}x{self.size} image')
        image = image.reshape(self.size, self.size, 3)
      else:
        image = images.decode_prepared_jpeg(example.image)
        if image.shape != (self.size, self.size, 3):
          raise images.BadImage(f'decodes to {image.shape}, not ({self.size}, {self.size}, 3)')
    except images.BadImage as e:
      raise BadExample(self.where(i), str(e)) from None
    if self.read_size != self.size:
      image = images.array_resized(image, self.read_size)
    return image, example.label


@functools.lru_cache(maxsize=64)
def _shard_names(stats_file: str) -> tuple[str, ...]:
  """The original file of each record of a shard (its stats file, written by prepare)."""
  try:
    with np.load(stats_file) as stats:
      return tuple(stats['names'].tolist())
  except (OSError, KeyError, ValueError):
    return ()


class FolderSource:
  """`root/<split>/<class>/<image>` decoded and turned into canvases (the preprocessing
  record's resize rule) on every read (prefer `prepare` for large sets)."""

  def __init__(self, root: str, split: str, canvas: preprocess.Preprocessing,
               max_pixels: int = images.MAX_IMAGE_PIXELS):
    classes, splits = list_folder(root)
    if split not in splits:
      raise DataError(f'data.path: {root!r} has no {split!r} folder')
    self.classes, self.items, self.canvas = classes, splits[split], canvas
    self.max_pixels = max_pixels

  def __len__(self) -> int:
    return len(self.items)

  def where(self, i: int) -> str:
    return self.items[i].path

  def fingerprint(self) -> str:
    """Identifies the files (names and labels, not contents), for a resumed run to notice
    that examples were added, removed or renamed."""
    names = '\n'.join(f'{item.name}\t{item.label}' for item in self.items)
    return hashlib.sha256(names.encode()).hexdigest()[:16]

  def __getitem__(self, i: int):
    """(canvas, label), or BadExample: a file that is unreadable, empty, not an image,
    truncated, or declares more than `max_pixels`."""
    item = self.items[i]
    try:
      with open(item.path, 'rb') as f:
        return self.canvas.load(f.read(), self.max_pixels), item.label
    except (OSError, images.BadImage) as e:
      raise BadExample(item.path, str(e) or type(e).__name__) from None


def sampled_stats(source, classes, where: str) -> Stats:
  """Pixel statistics (mean image, per-channel mean, lighting's eigenvectors) of up to
  FOLDER_STATS_SAMPLE of a training split's images spread evenly over it, as `prepare`
  computes them for all: a folder or a tfds dataset read as it is (once per process)."""
  step = max(1, len(source) // FOLDER_STATS_SAMPLE)
  sample = []
  for i in range(0, len(source), step)[:FOLDER_STATS_SAMPLE]:
    try:
      sample.append(source[i][0])
    except BadExample:  # Skipped here; named and counted when training reads it.
      continue
  if not sample:
    raise DataError(f'data.path: none of the images sampled in {where} can be read')
  return Stats.of_images(tuple(classes), np.stack(sample))


@functools.lru_cache(maxsize=4)  # Read once per process.
def _folder_stats(root: str, split: str, canvas: preprocess.Preprocessing) -> Stats:
  folder = FolderSource(root, split, canvas)
  return sampled_stats(folder, folder.classes, f'{root!r}/{split}')


@functools.lru_cache(maxsize=4)
def _tfds_stats(name: str, split: str, data_dir: str | None, size: int) -> Stats:
  source = TfdsSource(name, split, data_dir, size)
  return sampled_stats(source, source.classes(), f'{name} {split}')


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

  def where(self, i: int) -> str:
    return f'{self.name} {self.split}[{i}]'

  def __getitem__(self, i: int):
    try:
      record = self.source[i]
      image = np.asarray(record['image'])
      if image.ndim not in (2, 3) or 0 in image.shape:
        raise ValueError(f'an image of shape {image.shape}')
      return images.array_resized(image, self.size), int(record['label'])
    except Exception as e:  # pylint: disable=broad-except  # tfds's decoders raise many types.
      raise BadExample(self.where(i), str(e).splitlines()[0][:200] if str(e) else
                       type(e).__name__) from None

  def classes(self) -> tuple[str, ...]:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return tuple(tfds.builder(self.name, data_dir=self.data_dir).info.features['label'].names)


def imagenet_labels() -> list[str]:
  """The 1000 ILSVRC-2012 WordNet ids in tensorflow-datasets' (sorted) order."""
  return _tfds_resource('labels.txt')


def imagenet_validation_labels() -> list[str]:
  """The WordNet id of each of the 50,000 validation images, in file-number order."""
  return _tfds_resource('validation_labels.txt')


def _tfds_resource(name: str) -> list[str]:
  try:
    path = importlib.resources.files('tensorflow_datasets') / 'datasets' / 'imagenet2012' / name
    return path.read_text().split()
  except (ImportError, OSError) as e:
    raise DataError(f'ImageNet labels come from tensorflow-datasets: pip install '
                    f'tensorflow-datasets ({e})') from None


def read_metadata(directory: str) -> dict:
  if not os.path.isdir(directory):
    raise DataError(f'data.path: no directory {directory!r}')
  try:
    return records.read_metadata(directory)
  except records.FormatError as e:
    raise DataError(str(e)) from None


def list_folder(root: str) -> tuple[list[str], dict[str, list[Item]]]:
  """Classes and per-split items of `root/<split>/<class>/<image>` (classes: train's sorted
  folders; `val/` is the 'validation' split), or a one-line DataError naming data.path."""
  if not os.path.isdir(root):
    raise DataError(f'data.path: no directory {root!r}')
  splits = [s for s in FOLDER_SPLITS if os.path.isdir(os.path.join(root, s))]
  if 'val' in splits and 'validation' in splits:
    raise DataError(f'data.path: {root!r} has both val/ and validation/; keep one')
  if 'train' not in splits:
    raise DataError(f'data.path: {root!r} has no train/ folder (expected '
                    'root/<split>/<class>/<image>)')
  classes = sorted(d for d in os.listdir(os.path.join(root, 'train'))
                   if os.path.isdir(os.path.join(root, 'train', d)))
  if not classes:
    raise DataError(f'data.path: {os.path.join(root, "train")!r} has no class folders')
  out = {}
  for split in splits:
    items = []
    for c in sorted(os.listdir(os.path.join(root, split))):
      folder = os.path.join(root, split, c)
      if not os.path.isdir(folder):
        continue
      if c not in classes:
        raise DataError(f'data.path: class folder {folder!r} is not a class of train/')
      files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
      if not files:
        raise DataError(f'data.path: class folder {folder!r} holds no images')
      items += [Item(os.path.join(split, c, f), classes.index(c), os.path.join(folder, f))
                for f in files]
    out[split_named(split)] = items
  return classes, out


def resolved_source(data) -> str:
  """`data.source`, with 'auto' resolved by what `data.path` holds."""
  if data.source != 'auto':
    return data.source
  path = os.path.expanduser(data.path)
  return 'prepared' if records.is_prepared(path) else 'folder'


@dataclasses.dataclass(frozen=True)
class Survey:
  """What an image folder or a prepared directory holds, before any config is fitted to it."""
  classes: tuple[str, ...]
  counts: dict[str, int]  # Examples per split ('train', 'validation', 'test').
  # Typical shorter side of its images: of the files themselves, also for a prepared
  # directory (recorded by prepare; its stored side for directories that predate that).
  image_side: int
  prepared: bool


def image_side(items: list[Item]) -> int | None:
  """The median shorter side of up to IMAGE_SIDE_SAMPLE files spread evenly over `items`,
  read from their headers (nothing decoded); None if none of them opens."""
  sides = []
  for item in items[::max(1, len(items) // IMAGE_SIDE_SAMPLE)][:IMAGE_SIDE_SAMPLE]:
    try:
      with Image.open(item.path) as im:
        sides.append(min(im.size))
    except OSError:
      continue
  return int(np.median(sides)) if sides else None


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
    return Survey(tuple(meta['classes']), counts,
                  meta.get('source_image_side', meta['image_size']), True)
  classes, splits = list_folder(path)
  side = image_side(splits['train'])
  if side is None:
    raise DataError(f'data.path: none of the images sampled in {path!r}/train can be read')
  return Survey(tuple(classes), {s: len(v) for s, v in splits.items()}, side, False)


def split_named(name: str) -> str:
  """A split as the data calls it: an image folder's `val/` is its 'validation'."""
  return 'validation' if name == 'val' else name


def eval_split(requested: str, available, *, default: str | None, where: str,
               field: str = 'data.eval_split') -> str:
  """The split to evaluate: `requested` if the data has it; the `default` (None: none was
  chosen), when the data lacks it, falls back to the first of EVAL_SPLITS the data has; a
  split named on purpose and missing is a one-line error naming those there are."""
  requested = split_named(requested)
  if available is None or requested in available:
    return requested
  if requested == default:
    for split in EVAL_SPLITS:
      if split in available:
        return split
    raise DataError(f'data.path: {where} has no evaluation split: add validation/, val/ or '
                    'test/ beside train/')
  raise DataError(f'{field}: {where} has no split {requested!r}; it has '
                  f'{", ".join(sorted(available))}')


class Relabeled:
  """A source whose labels are mapped through `labels` (its classes matched to a model's)."""

  def __init__(self, source, labels: list[int]):
    self.source, self.labels = source, labels

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int):
    image, label = self.source[i]
    return image, self.labels[label]

  def where(self, i: int) -> str:
    return self.source.where(i)


def available_splits(data) -> tuple[str, ...] | None:
  """The splits the data of a config's `data` section has ('validation' for a folder's val/);
  None for tfds (a split there is found when it is opened)."""
  path = os.path.expanduser(data.path) if data.path else ''
  source = resolved_source(data) if path else data.source
  if source == 'digits':
    return ('train', 'test')
  if source == 'tfds':
    return None
  if not path or not os.path.isdir(path):
    raise DataError(f'data.path: no such directory {path!r}' if path else
                    f'data.path: the {source!r} source needs a path')
  if source == 'prepared':
    return tuple(read_metadata(path)['splits'])
  return tuple(list_folder(path)[1])


def fingerprint(source) -> str:
  """A source's `fingerprint()` if it has one (an image folder), else ''."""
  return source.fingerprint() if hasattr(source, 'fingerprint') else ''


def open_source(data, split: str):
  """(source, stats) for `data` (the config's data section) and a split name."""
  if data.source not in SOURCES:
    raise DataError(f'data.source: must be one of {SOURCES}, got {data.source!r}')
  path = os.path.expanduser(data.path) if data.path else ''
  source = resolved_source(data) if path else data.source
  if data.preprocessing not in preprocess.KINDS:
    raise DataError(f'data.preprocessing: must be one of {preprocess.KINDS}, got '
                    f'{data.preprocessing!r}')
  if source != 'folder' and data.preprocessing != 'data':
    # Only files read as they are can be resized the owners' way.
    raise DataError(f'data.preprocessing: {data.preprocessing!r} resizes images its own way, '
                    f'but the {source!r} source holds central squares; read the images from '
                    'a folder (data.source=folder), or use the squares '
                    '(data.preprocessing=data)')
  if source == 'digits':
    x, y = digits(split, data.image_size)
    return ArraySource(x, y), _digits_stats(data.image_size)
  if source == 'tfds':  # tfds's own default data_dir when no path is given.
    source = TfdsSource(data.tfds_name, split, path or None, data.image_size)
    if split == data.train_split:  # Its own statistics, never ImageNet's assumed.
      return source, _tfds_stats(data.tfds_name, split, path or None, data.image_size)
    return source, Stats(classes=source.classes())
  if not path:
    raise DataError(f'data.path: the {source!r} source needs a path')
  if not os.path.exists(path):
    raise DataError(f'data.path: no such directory {path!r}')
  if source == 'prepared':
    meta = read_metadata(path)
    stored = meta['image_size']
    if stored != data.image_size and not data.fit:
      raise DataError(f'data.image_size: {data.image_size} but {path!r} stores '
                      f'{stored}x{stored} images')
    mean_file = os.path.join(path, records.MEAN_IMAGE)
    mean_image = np.load(mean_file) if os.path.isfile(mean_file) else None
    if mean_image is not None and stored != data.image_size:  # Resized as the images are.
      mean_image = np.stack([np.asarray(Image.fromarray(channel, 'F').resize(
          (data.image_size,) * 2, Image.BILINEAR)) for channel in
                             np.moveaxis(mean_image.astype(np.float32), -1, 0)], axis=-1)
    stats = (Stats.from_metadata(meta['classes'], meta, mean_image) if 'eigval' in meta
             else Stats(classes=tuple(meta['classes'])))
    return PreparedSource(path, split, data.image_size), stats
  canvas = preprocess.canvas_of(data)
  folder = FolderSource(path, split, canvas, data.max_image_pixels)
  if split == data.train_split:
    return folder, _folder_stats(path, split, canvas)
  return folder, Stats(classes=tuple(folder.classes))
