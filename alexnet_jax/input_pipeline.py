"""The paper's data augmentation (s4) and the grain pipeline that feeds the mesh.

Host side (grain workers): decode, random crop, and the draws of the horizontal flip and the
PCA lighting noise, batched as uint8 crops plus a flip flag and one RGB offset per image.
Device side (inside the jitted step, `normalize`): reflect the flagged crops, subtract the
mean, add the lighting offset, optionally divide by 1.1 (the code's). Shipping uint8 keeps
host work and host-to-device traffic 4x smaller; `data.normalize_on_host=True` does the float
work in the workers instead.

Order and randomness depend only on (seed, global example position): every epoch is a fresh
seeded permutation, the global batch g holds positions g*B .. g*B+B-1, each process reads the
rows of it that its devices hold (`sharding.process_batch_rows`), and each example's crop,
flip and lighting come from a generator seeded with (seed, position). So any number of
processes or workers, under any load, gives the same global batches, and restoring the
iterator state (a step count) replays exactly what an uninterrupted run would have seen.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator

import grain
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax import datasets
from alexnet_jax import model as model_lib
from alexnet_jax import sharding

class InputError(RuntimeError):
  """The input pipeline, or one of its worker processes, failed (one line)."""


def input_error(e: Exception, when: str) -> InputError:
  """What a run reports when its input pipeline raised `e` (in a worker or here)."""
  reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
  return InputError(f'data: the input pipeline failed {when}: {reason}')


# ---- Augmentation ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Augment:
  """Random crop, flip and PCA lighting of one (S, S, 3) uint8 image (paper s4)."""
  crop: int
  flip: bool = True
  lighting_std: float = 0.1  # alpha_i ~ N(0, 0.1).
  eigval: tuple[float, ...] = datasets.IMAGENET_EIGVAL
  eigvec: tuple[tuple[float, ...], ...] = datasets.IMAGENET_EIGVEC

  def lighting(self, rng: np.random.Generator) -> np.ndarray:
    """sum_i alpha_i * lambda_i * p_i, as an RGB offset in 0-255 units.

    lambda_i is the standard deviation along eigenvector p_i (the square root of the
    eigenvalue), as the code's per-axis scales are: the noise's covariance is then
    lighting_std^2 times the pixels' covariance.
    """
    alpha = rng.normal(0.0, self.lighting_std, 3)
    return (np.asarray(self.eigvec) @ (alpha * np.sqrt(self.eigval))).astype(np.float32)

  def __call__(self, image: np.ndarray, rng: np.random.Generator):
    """(crop, flip, lighting offset). The crop is not yet reflected: `normalize` applies
    `flip`, on the device, where a reflection is nearly free (a reversed 3-byte-pixel copy
    costs numpy as much as a whole JPEG decode)."""
    s = image.shape[0]
    top, left = (int(v) for v in rng.integers(0, s - self.crop + 1, size=2))
    flip = np.bool_(self.flip and rng.random() < 0.5)
    crop = np.ascontiguousarray(image[top:top + self.crop, left:left + self.crop])
    light = (self.lighting(rng) if self.lighting_std > 0 else np.zeros(3, np.float32))
    return crop, flip, light


def center_crop(image: np.ndarray, crop: int) -> np.ndarray:
  top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
  return image[top:top + crop, left:left + crop]


def ten_views(images_NHWC, crop: int):
  """(B, S, S, 3) -> (B, 10, crop, crop, 3): the four corners and the center, then the
  same five reflected (paper s4). Works on numpy and jax arrays (inside jit too)."""
  s = images_NHWC.shape[1]
  c = (s - crop) // 2
  starts = ((0, 0), (0, s - crop), (s - crop, 0), (s - crop, s - crop), (c, c))
  xp = jnp if isinstance(images_NHWC, jax.Array) else np
  views = [images_NHWC[:, t:t + crop, l:l + crop] for t, l in starts]
  views += [v[:, :, ::-1] for v in views]
  return xp.stack(views, axis=1)


def mean_for(stats: datasets.Stats, mode: str, crop: int) -> np.ndarray:
  """What `normalize` subtracts: the center crop of the per-pixel mean image (the code's
  choice), or the per-channel mean; (crop, crop, 3) or (3,) float32."""
  if mode == 'image':
    if stats.mean_image is None:
      raise datasets.DataError("data.mean: 'image' needs a per-pixel mean image (a prepared "
                               "dataset or digits); use 'rgb'")
    return np.asarray(center_crop(stats.mean_image, crop), np.float32)
  if mode == 'rgb':
    return np.asarray(stats.mean_rgb, np.float32)
  raise datasets.DataError(f"data.mean: must be 'image' or 'rgb', got {mode!r}")


def normalize(images_u8, lighting, mean, divide: float = 1.0, flip=None):
  """Reflect where `flip`, then (x - mean + lighting) / divide in float32; jnp inside jit,
  numpy on the host. `mean` is that of unreflected crops: the code subtracts the mean
  image's center crop from every crop, reflected or not."""
  xp = jnp if isinstance(images_u8, jax.Array) else np
  if flip is not None:
    images_u8 = xp.where(flip[:, None, None, None], images_u8[:, :, ::-1], images_u8)
  x = images_u8.astype(xp.float32) - mean + lighting[:, None, None, :]
  return x / divide if divide != 1.0 else x


# ---- The grain pipeline ----------------------------------------------------------------------


def _rows_or_whole_batch(rows, global_batch: int) -> tuple[int, int]:
  if rows is None:
    if jax.process_count() > 1:
      raise ValueError('input: with several processes, pass the rows this process reads '
                       '(sharding.process_batch_rows)')
    return 0, global_batch
  start, stop = rows
  if not 0 <= start < stop <= global_batch:
    raise ValueError(f'input: rows {rows} are not within a batch of {global_batch}')
  return start, stop


@functools.lru_cache(maxsize=2)  # The current epoch's and, at a boundary, the next one's.
def _permutation(seed: int, epoch: int, examples: int) -> np.ndarray:
  """The order of `epoch`: a pure function, safe for grain's reader threads to share."""
  order = np.random.default_rng([seed, epoch]).permutation(examples)
  order.flags.writeable = False
  return order


class GlobalPositions:
  """Local index -> (example index, global position) for one process (see module doc)."""

  def __init__(self, examples: int, global_batch: int, *, rows: tuple[int, int] | None,
               seed: int, shuffle: bool, epochs: int | None):
    self.first_row, stop = _rows_or_whole_batch(rows, global_batch)
    self.examples, self.global_batch = examples, global_batch
    self.local_batch = stop - self.first_row
    self.seed, self.shuffle = seed, shuffle
    steps = (examples * epochs) // global_batch if epochs else 1 << 40
    self.length = steps * self.local_batch

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, i: int) -> tuple[int, int]:
    step, row = divmod(i, self.local_batch)
    position = step * self.global_batch + self.first_row + row
    epoch, k = divmod(position, self.examples)
    if not self.shuffle:
      return k, position
    return int(_permutation(self.seed, epoch, self.examples)[k]), position


class TrainExample:
  """(example index, position) -> augmented example; randomness from (seed, position)."""

  def __init__(self, source, augment: Augment, seed: int):
    self.source, self.augment, self.seed = source, augment, seed

  def __call__(self, index_position):
    index, position = index_position
    image, label = self.source[index]
    crop, flip, light = self.augment(image, np.random.default_rng([self.seed, position]))
    return {'image': crop, 'flip': flip, 'lighting': light, 'label': np.int32(label)}


class TrainBatch:
  """A step's (index, position) rows -> the stacked batch. Working a batch per call keeps
  grain's per-element bookkeeping out of the hot loop."""

  def __init__(self, example: TrainExample):
    self.example = example

  def __call__(self, rows):
    examples = [self.example(row) for row in rows]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class StepRows:
  """Step -> this process's (index, position) rows of that global batch."""

  def __init__(self, positions: GlobalPositions, start: int):
    self.positions, self.start = positions, start
    self.steps = positions.length // positions.local_batch - start

  def __len__(self) -> int:
    return self.steps

  def __getitem__(self, step: int):
    b = self.positions.local_batch
    first = (self.start + step) * b
    return [self.positions[i] for i in range(first, first + b)]


class HostNormalize:
  """A whole batch's float work in the worker (data.normalize_on_host), in one numpy pass."""

  def __init__(self, mean: np.ndarray, divide: float):
    self.mean, self.divide = mean, divide

  def __call__(self, batch):
    image = normalize(batch['image'], batch['lighting'], self.mean, self.divide,
                      batch['flip'])
    return dict(batch, image=image, lighting=np.zeros_like(batch['lighting']),
                flip=np.zeros_like(batch['flip']))


def _example_index(index_position: tuple[int, int]) -> int:
  return index_position[0]


class EvalExample:
  """Example index -> center crop (or the whole image for 10 views), with a valid mask."""

  def __init__(self, source, crop: int | None, examples: int):
    self.source, self.crop, self.examples = source, crop, examples

  def __call__(self, index: int):
    valid = index < self.examples  # The last batch is padded with copies of example 0.
    image, label = self.source[index if valid else 0]
    image = center_crop(image, self.crop) if self.crop else image
    return {'image': np.ascontiguousarray(image), 'label': np.int32(label),
            'mask': np.bool_(valid)}


def _iterate(ds: grain.MapDataset, workers: int, prefetch: int, threads: int | None = None):
  """`threads` reader threads per process (default: `prefetch`); decoding releases the GIL."""
  if workers > 0 and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags; notebooks never parse them.
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads or max(1, prefetch),
                                            prefetch_buffer_size=max(1, prefetch)))
  if workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                      per_worker_buffer_size=max(1, prefetch)))
  return it


class Batches:
  """This process's training batches from step `step` on; restartable at any step.

  The state is the number of batches consumed, with what identifies the stream (seed, global
  batch, dataset size): small JSON for the checkpoint, valid whatever the number of workers
  of the run that restores it, since every batch is determined by its step alone. Restoring
  the state of another stream is an error, not silently different batches.
  """

  def __init__(self, make, identity: dict[str, int], step: int = 0):
    self._make, self.identity, self.step, self._it = make, identity, step, None

  def __iter__(self):
    return self

  def __next__(self):
    if self._it is None:
      self._it = iter(self._make(self.step))
    batch = next(self._it)
    self.step += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {'step': self.step, **self.identity}

  def set_state(self, state: dict[str, int]) -> None:
    for key, value in self.identity.items():
      if state.get(key, value) != value:
        raise datasets.DataError(f'data: the saved input state has {key}={state[key]}, this '
                                 f'run {value}; resume with the same {key}')
    self.close()
    self.step = int(state['step'])

  def close(self) -> None:
    """Stops the worker processes, if any (they also stop when the iterator is collected)."""
    if self._it is not None and hasattr(self._it, 'close'):
      self._it.close()
    self._it = None


def train_dataset(source, augment: Augment, *, global_batch: int, seed: int,
                  workers: int = 0, prefetch: int = 2, epochs: int | None = None,
                  host_mean: np.ndarray | None = None, divide: float = 1.0,
                  rows: tuple[int, int] | None = None,
                  threads: int | None = None) -> Batches:
  """Rows `rows` (default: all, on one process) of each global training batch, as a
  restartable iterator."""
  positions = GlobalPositions(len(source), global_batch, rows=rows, seed=seed, shuffle=True,
                              epochs=epochs)
  example = TrainExample(source, augment, seed)

  def make(step):
    ds = grain.MapDataset.source(StepRows(positions, step)).map(TrainBatch(example))
    if host_mean is not None:
      ds = ds.map(HostNormalize(host_mean, divide))
    return _iterate(ds, workers, prefetch, threads)

  return Batches(make, {'seed': seed, 'global_batch': global_batch,
                       'examples': len(source)})


def eval_dataset(source, *, global_batch: int, crop: int | None, workers: int = 0,
                 prefetch: int = 2, rows: tuple[int, int] | None = None):
  """Every example once, in order, rows `rows` of each global batch; the last batch is
  padded and carries `mask` False on the padding. `crop=None` keeps whole images."""
  n = len(source)
  steps = -(-n // global_batch)
  positions = GlobalPositions(steps * global_batch, global_batch, rows=rows, seed=0,
                              shuffle=False, epochs=1)
  ds = (grain.MapDataset.source(positions).map(_example_index)
        .map(EvalExample(source, crop, n)).batch(positions.local_batch))
  return _iterate(ds, workers, prefetch)


def to_global(batch: dict[str, np.ndarray], mesh,
              global_batch: int | None = None) -> dict[str, jax.Array]:
  """This process's rows -> global arrays split over the mesh's data axis.

  `global_batch` defaults to the rows given times the process count, which is right when the
  processes read disjoint rows; pass it when a tower pair spans processes.
  """
  out = sharding.named(mesh, sharding.BATCH)
  if global_batch is None:
    global_batch = len(batch['label']) * jax.process_count()
  return {k: jax.make_array_from_process_local_data(out, v, (global_batch,) + v.shape[1:])
          for k, v in batch.items()}


def global_batches(dataset, mesh,
                   global_batch: int | None = None) -> Iterator[dict[str, jax.Array]]:
  for batch in dataset:
    yield to_global(batch, mesh, global_batch)


# ---- From the config -------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
  """What the training loop needs of the data: iterables, statistics and the mean."""
  train: Batches  # This process's training batches (restartable).
  eval: Any  # Center crops, every example once, padded and masked.
  eval_whole: Any  # The same with whole images, for 10-view evaluation.
  stats: datasets.Stats
  mean: np.ndarray
  divide: float  # What evaluation crops are divided by.
  train_divide: float  # What training crops are divided by (data.lighting_rescale).
  train_examples: int
  eval_examples: int


def train_divide(data) -> float:
  """What training crops are divided by: data.divide, times 1 + lighting_std when the code's
  rescaling of noisy crops is on and there is noise (s4: 1.1); evaluation's is data.divide."""
  if data.lighting_rescale and data.lighting_std > 0:
    return data.divide * (1.0 + data.lighting_std)
  return data.divide


# Images whose shorter side is at least this are read by the paper's rule, whatever the recipe:
# stored at 256, crops of 224, conv1 11x11 at stride 4 (s4, s1).
LARGE_IMAGE_SIDE = 128


def fit_config(config, mesh) -> ml_collections.ConfigDict:
  """`config` itself, or with data.fit a copy with the class count, the image sizes, the
  evaluation split and a batch no larger than the training set taken from the data.

  Images at least LARGE_IMAGE_SIDE on their shorter side are read by the paper's rule. Smaller
  ones keep their side (a prepared directory's stored side), enlarged only to what the net
  needs, and the crop keeps the recipe's crop-to-image ratio (224/256, 32/36).
  """
  if not config.data.fit:
    return config
  c = ml_collections.ConfigDict(config.to_dict())
  found = datasets.survey(c.data)
  if len(found.classes) < 2:
    raise datasets.DataError(f'data.path: {c.data.path!r} has one class '
                             f'({found.classes[0]}); a classifier needs two or more')
  c.data.eval_split = next((s for s in datasets.EVAL_SPLITS if s in found.counts), '')
  if not c.data.eval_split:
    raise datasets.DataError(f'data.path: {c.data.path!r} has no evaluation split: add '
                             'validation/, val/ or test/ beside train/')
  c.model.num_classes = len(found.classes)
  stored, crop = c.data.image_size, c.model.image_size
  side = found.image_side
  if side >= max(LARGE_IMAGE_SIDE, stored):  # The paper's rule; a prepared side stays.
    stored, crop = (side, round(side * 224 / 256)) if found.prepared else (256, 224)
    c.model.update(conv1_kernel=11, conv1_stride=4, conv1_padding=0, conv1_ceil_mode=True)
  elif found.prepared or side < stored:
    if not found.prepared:  # Enlarged, if need be, to the least the net reads.
      side = max(side, -(-_smallest_crop(c.model) * stored // crop))
    stored, crop = side, max(1, round(side * crop / stored))
  # Else images between the recipe's side and LARGE_IMAGE_SIDE: read at the recipe's sizes.
  c.data.image_size, c.model.image_size = stored, crop
  data_parallel = sharding.data_size(mesh)
  train = found.counts['train'] - found.counts['train'] % data_parallel
  c.batch_size = max(data_parallel, min(c.batch_size, train))
  return c


def _smallest_crop(model_config) -> int:
  """The smallest crop side the net of `model_config` reads to fc6 with every layer."""
  for side in range(model_config.conv1_kernel, 1024):
    try:
      model_lib.ModelSpec.from_config(dict(model_config.to_dict(), image_size=side))
      return side
    except ValueError:
      continue
  raise datasets.DataError('model: no crop up to 1024 pixels reaches fc6 with this net')


def create(config, mesh=None) -> Data:
  """The train and eval pipelines of `config` (sections `data`, `model`, and `batch_size`),
  reading the rows of each batch that this process's devices of `mesh` hold (default: all
  rows, on one process)."""
  data = config.data
  crop = config.model.image_size
  if crop > data.image_size:
    raise datasets.DataError(f'model.image_size: crops of {crop} do not fit in the stored '
                             f'{data.image_size}x{data.image_size} images (data.image_size)')
  if data.lighting_std < 0:
    raise datasets.DataError(f'data.lighting_std: must be >= 0, got {data.lighting_std}')
  train_source, stats = datasets.open_source(data, data.train_split)
  eval_source, _ = datasets.open_source(data, data.eval_split)
  if len(train_source) < config.batch_size:
    raise datasets.DataError(f'batch_size: {config.batch_size} is larger than the '
                             f'{len(train_source)} training examples')
  mean = mean_for(stats, data.mean, crop)
  rows = None if mesh is None else sharding.process_batch_rows(mesh, config.batch_size)
  augment = Augment(crop, data.flip, data.lighting_std, stats.eigval, stats.eigvec)
  train = train_dataset(train_source, augment, global_batch=config.batch_size,
                        seed=config.seed, workers=data.workers, prefetch=data.prefetch,
                        host_mean=mean if data.normalize_on_host else None,
                        divide=train_divide(data), rows=rows)
  evaluation = {c: eval_dataset(eval_source, global_batch=config.batch_size, crop=c,
                                workers=data.workers, prefetch=data.prefetch, rows=rows)
                for c in (crop, None)}
  return Data(train, evaluation[crop], evaluation[None], stats, mean, data.divide,
              train_divide(data), len(train_source), len(eval_source))
