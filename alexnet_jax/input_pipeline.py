"""The paper's data augmentation (s4) and the grain pipeline that feeds the mesh.

Host side (grain workers): decode, random crop, and the draws of the horizontal flip and the
PCA lighting noise, batched as uint8 crops plus a flip flag and one RGB offset per image.
Device side (inside the jitted step, `preprocess.normalize`): reflect the flagged crops, add
the lighting offset, then the record's scaling, channel order, mean and std (and the code's
1.1 for noisy crops). Shipping uint8 keeps host work and host-to-device traffic 4x smaller;
`data.normalize_on_host=True` does the float work in the workers instead, with the same
function.

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
import logging
import os
import signal
from typing import Any, Iterator

import grain
from absl import flags
import jax
import numpy as np

from alexnet_jax import datasets
from alexnet_jax import preprocess
from alexnet_jax import sharding

log = logging.getLogger(__name__)


class InputError(RuntimeError):
  """The input pipeline, or one of its worker processes, failed (one line)."""


def input_error(e: Exception, when: str) -> InputError:
  """What a run reports when its input pipeline raised `e` (in a worker or here)."""
  reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
  return InputError(f'data: the input pipeline failed {when}: {reason}')


# ---- Augmentation ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Augment:
  """Random crop, flip and PCA lighting of one (S, S, 3) uint8 canvas, as the record says
  (paper s4)."""
  preprocessing: preprocess.Preprocessing

  def __call__(self, image: np.ndarray, rng: np.random.Generator):
    """(crop, flip, lighting offset, (top, left)). The crop is not yet reflected: `normalize`
    applies `flip`, on the device, where a reflection is nearly free (a reversed 3-byte-pixel
    copy costs numpy as much as a whole JPEG decode); the position places a whole mean image
    under it (Caffe)."""
    p = self.preprocessing
    s = image.shape[0]
    top, left = (int(v) for v in rng.integers(0, s - p.crop + 1, size=2))
    flip = np.bool_(p.flip and rng.random() < 0.5)
    crop = np.ascontiguousarray(image[top:top + p.crop, left:left + p.crop])
    light = p.lighting(rng) if p.lighting_std > 0 else np.zeros(3, np.float32)
    return crop, flip, light, np.asarray((top, left), np.int32)


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
  """(example index, position) -> augmented example; randomness from (seed, position). A
  bad example is replaced by the next good one (datasets.Checked); `index` and `bad` say
  which and how many, for the run to name and count them."""

  def __init__(self, source, augment: Augment, seed: int):
    self.source = datasets.Checked(source, replace=True)
    self.augment, self.seed = augment, seed

  def __call__(self, index_position):
    index, position = index_position
    image, label, bad = self.source.read(index)
    crop, flip, light, offset = self.augment(image,
                                             np.random.default_rng([self.seed, position]))
    return {'image': crop, 'flip': flip, 'lighting': light, 'offset': offset,
            'label': np.int32(label), 'index': np.int32(index), 'bad': np.int32(bad)}


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

  def __init__(self, preprocessing: preprocess.Preprocessing):
    self.preprocessing = preprocessing

  def __call__(self, batch):
    p = self.preprocessing
    image = preprocess.normalize(batch['image'], p, p.arrays(), lighting=batch['lighting'],
                                 flip=batch['flip'], offsets=batch['offset'], train=True)
    return dict(batch, image=image, lighting=np.zeros_like(batch['lighting']),
                flip=np.zeros_like(batch['flip']))


class EvalBatch:
  """Step -> this process's rows of that evaluation batch, stacked. Plain numpy, built in
  one call like the training batches: nothing lives in shared memory that a stopped worker
  could leave behind."""

  def __init__(self, example: EvalExample, positions: GlobalPositions):
    self.example, self.positions = example, positions

  def __call__(self, step: int):
    b = self.positions.local_batch
    examples = [self.example(self.positions[i][0]) for i in range(step * b, (step + 1) * b)]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class EvalExample:
  """Example index -> center crop (or the whole image for 10 views), with a mask that is
  False on the padding and on bad examples, which `bad` flags (and `index` names) to be
  counted and named."""

  def __init__(self, source, crop: int | None, examples: int, side: int):
    self.source = datasets.Checked(source, replace=False)
    self.crop, self.examples, self.side = crop, examples, side

  def __call__(self, index: int):
    valid = index < self.examples  # The last batch is padded with copies of example 0.
    image, label, bad = self.source.read(index if valid else 0)
    if image is None:
      image = np.zeros((self.side, self.side, 3), np.uint8)
    image = preprocess.center_crop(image, self.crop) if self.crop else image
    return {'image': np.ascontiguousarray(image), 'label': np.int32(label),
            'mask': np.bool_(valid and not bad), 'bad': np.bool_(valid and bad),
            'index': np.int32(index if valid else 0)}


def _in_own_memory(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A worker's batch copied out of grain's shared memory, which is then released at once:
  a block still referenced when the interpreter exits is never unlinked ('leaked
  shared_memory objects'). One copy of a batch costs milliseconds next to a step."""
  return {k: np.array(v) for k, v in batch.items()}


class _WorkersIgnoreCtrlC:
  """grain's multiprocess iterable, whose worker processes start (at the first `next`) with
  SIGINT ignored, which they inherit: Ctrl-C then reaches the main process alone, which
  checkpoints and stops, and no worker prints a KeyboardInterrupt traceback. A Ctrl-C in the
  moment the workers start is ignored."""

  def __init__(self, iterable):
    self._iterable, self._it = iterable, None

  def __iter__(self):
    self._it = None
    return self

  def __next__(self):
    if self._it is not None:
      return next(self._it)
    try:
      previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # Not the main thread: its signals are not ours to set.
      previous = None
    try:
      self._it = iter(self._iterable)
      return next(self._it)
    finally:
      if previous is not None:
        signal.signal(signal.SIGINT, previous)

  def close(self) -> None:
    if self._it is not None and hasattr(self._it, 'close'):
      self._it.close()


def _iterate(ds: grain.MapDataset, workers: int, prefetch: int, threads: int | None = None):
  """`threads` reader threads per process (default: `prefetch`); decoding releases the GIL."""
  if workers > 0 and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags; notebooks never parse them.
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads or max(1, prefetch),
                                            prefetch_buffer_size=max(1, prefetch)))
  if workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                      per_worker_buffer_size=max(1, prefetch)))
    it = _WorkersIgnoreCtrlC(it.map(_in_own_memory))
  return it


class Batches:
  """This process's training batches from step `step` on; restartable at any step.

  The state is the number of batches consumed, with what identifies the stream (seed, global
  batch; the examples: their count and, for a folder, their files): small JSON for the
  checkpoint, valid whatever the number of workers of the run that restores it, since every
  batch is determined by its step alone. Restoring the state of a stream with another seed
  or batch is an error, not silently different batches; of other examples (bad files removed
  or fixed, new ones added), the stream goes on from the same step over the examples there
  are now, in the order they determine.
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

  def set_state(self, state: dict) -> tuple[int, int] | None:
    """Restores `state`; (examples then, examples now) if the examples changed, else None."""
    for key in ('seed', 'global_batch'):
      if state.get(key, self.identity[key]) != self.identity[key]:
        raise datasets.DataError(f'data: the saved input state has {key}={state[key]}, this '
                                 f'run {self.identity[key]}; resume with the same {key}')
    self.close()
    self.step = int(state['step'])
    if any(state.get(k, v) != v for k, v in self.identity.items()):
      return int(state['examples']), self.identity['examples']
    return None

  def close(self) -> None:
    """Stops the worker processes, if any (they also stop when the iterator is collected)."""
    if self._it is not None and hasattr(self._it, 'close'):
      self._it.close()
    self._it = None


def train_dataset(source, augment: Augment, *, global_batch: int, seed: int,
                  workers: int = 0, prefetch: int = 2, epochs: int | None = None,
                  normalize_on_host: bool = False, rows: tuple[int, int] | None = None,
                  threads: int | None = None) -> Batches:
  """Rows `rows` (default: all, on one process) of each global training batch, as a
  restartable iterator: uint8 crops, or with `normalize_on_host` the net's float input."""
  positions = GlobalPositions(len(source), global_batch, rows=rows, seed=seed, shuffle=True,
                              epochs=epochs)
  example = TrainExample(source, augment, seed)

  def make(step):
    ds = grain.MapDataset.source(StepRows(positions, step)).map(TrainBatch(example))
    if normalize_on_host:
      ds = ds.map(HostNormalize(augment.preprocessing))
    return _iterate(ds, workers, prefetch, threads)

  return Batches(make, {'seed': seed, 'global_batch': global_batch,
                       'examples': len(source), 'files': datasets.fingerprint(source)})


class EvalBatches:
  """Every example once, in order, as padded and masked batches, each time it is iterated.
  Its worker processes start on the first pass and serve every later one: the stream repeats,
  and each pass takes one epoch of it."""

  def __init__(self, dataset: grain.MapDataset, steps: int, workers: int, prefetch: int):
    self._dataset, self.steps, self._it = dataset, steps, None
    self._workers, self._prefetch = workers, prefetch

  def __len__(self) -> int:
    return self.steps

  def __iter__(self):
    if self._it is None:
      self._it = iter(_iterate(self._dataset, self._workers, self._prefetch))
    for _ in range(self.steps):
      yield next(self._it)

  def close(self) -> None:
    if self._it is not None and hasattr(self._it, 'close'):
      self._it.close()
    self._it = None


def eval_dataset(source, *, global_batch: int, crop: int | None, workers: int = 0,
                 prefetch: int = 2, rows: tuple[int, int] | None = None) -> EvalBatches:
  """Every example once, in order, rows `rows` of each global batch; the last batch is
  padded and carries `mask` False on the padding (and on bad examples, flagged `bad`).
  `crop=None` keeps whole images."""
  n = len(source)
  steps = -(-n // global_batch)
  positions = GlobalPositions(steps * global_batch, global_batch, rows=rows, seed=0,
                              shuffle=False, epochs=1)
  side = datasets.Checked(source, replace=True).read(0)[0].shape[0] if n else 0
  ds = grain.MapDataset.source(range(steps)).repeat().map(
      EvalBatch(EvalExample(source, crop, n, side), positions))
  return EvalBatches(ds, steps, workers, prefetch)


class BadExamples:
  """The bad examples a run meets in `source`: each named once (a warning line, and a line of
  the run's list at `path`, which persists across resumes; no list if `path` is None). For
  training also counted (`count`): the distinct examples found bad, over every process, and
  the run stopped once there are more than `datasets.bad_example_limit` allows for the split.
  One bad file read in every epoch is one bad example, however long the run."""

  def __init__(self, source, path: str | None):
    self.source, self.path = datasets.Checked(source, replace=True), path
    self.found = set()  # Indices of the distinct bad examples counted.
    self.named = set()
    if path and os.path.isfile(path):
      with open(path) as f:
        self.named = set(f.read().splitlines())

  @property
  def total(self) -> int:
    return len(self.found)

  def name(self, batch: dict[str, np.ndarray]) -> None:
    """Names the bad examples this process's rows of `batch` passed over."""
    flagged = batch['bad'] > 0
    for index, bad in zip(batch['index'][flagged], batch['bad'][flagged]):
      for k in range(int(bad)):
        line = self.source.describe((int(index) + k) % len(self.source))
        if line not in self.named:
          self.named.add(line)
          log.warning('data: skipped a bad example, %s', line)
          if self.path:
            with open(self.path, 'a') as f:
              f.write(line + '\n')

  def state(self) -> dict[str, list[int]]:
    """What a checkpoint keeps, so that a resumed run counts on from it."""
    return {'found': sorted(self.found)}

  def restore(self, state: dict) -> None:
    self.found = set(state.get('found', ()))  # Checkpoints before distinct counts: none.

  def count(self, rows, max_fraction: float) -> bool:
    """Adds one step's (index, bad examples passed over there) rows of every process;
    whether any example was newly found bad. InputError (the run stops, exit 1) past the
    split's limit."""
    n = len(self.source)
    before = len(self.found)
    for index, bad in rows:
      self.found.update((int(index) + k) % n for k in range(int(bad)))
    if len(self.found) > datasets.bad_example_limit(n, max_fraction):
      raise InputError(
          f'data: {len(self.found)} of the {n} training examples are bad (listed in '
          f'{self.path}), more than data.max_bad_fraction={max_fraction:g} allows; fix or '
          'remove them, or raise data.max_bad_fraction')
    return len(self.found) > before


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


def global_batches(dataset, mesh, global_batch: int | None = None, *,
                   bad_examples: BadExamples | None = None,
                   when: str = 'while reading') -> Iterator[dict[str, jax.Array]]:
  """`dataset`'s batches as global arrays; the bad examples each skipped named by
  `bad_examples` first. Whatever a worker raises becomes an InputError saying `when`."""
  batches = iter(dataset)
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except Exception as e:  # pylint: disable=broad-except  # Whatever a worker raised.
      raise input_error(e, when) from e
    if bad_examples is not None:
      bad_examples.name(batch)
    yield to_global(batch, mesh, global_batch)


# ---- From the config -------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
  """What the training loop needs of the data: iterables, statistics, the preprocessing."""
  train: Batches  # This process's training batches (restartable).
  # Whole canvases, every example once, padded and masked: 1 view (the centre crop, cut in the
  # step) and 10 views read the same stream, served by one set of workers.
  eval: EvalBatches
  train_source: Any  # What the training batches are read from (to name bad examples).
  eval_source: Any  # Likewise for the evaluation batches.
  stats: datasets.Stats
  preprocessing: preprocess.Preprocessing  # How pixels become inputs; saved with the model.
  train_examples: int
  eval_examples: int

  def close(self) -> None:
    """Stops every worker process (and frees their shared memory)."""
    self.train.close()
    self.eval.close()


def create(config, mesh=None, *, inputs_of: preprocess.Preprocessing | None = None) -> Data:
  """The train and eval pipelines of `config` (sections `data`, `model`, and `batch_size`),
  reading the rows of each batch that this process's devices of `mesh` hold (default: all
  rows, on one process). `inputs_of`: a pretrained net's record, whose scaling, channel order,
  mean and std the inputs keep (transfer learning); else the data's own."""
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
  try:
    preprocessing = preprocess.from_config(data, crop, stats)
    if inputs_of is not None:
      preprocessing = preprocessing.with_inputs_of(inputs_of)
  except ValueError as e:  # A bad data field: a data error like the others.
    raise datasets.DataError(str(e)) from None
  rows = None if mesh is None else sharding.process_batch_rows(mesh, config.batch_size)
  train = train_dataset(train_source, Augment(preprocessing), global_batch=config.batch_size,
                        seed=config.seed, workers=data.workers, prefetch=data.prefetch,
                        normalize_on_host=data.normalize_on_host, rows=rows)
  evaluation = eval_dataset(eval_source, global_batch=config.batch_size, crop=None,
                            workers=data.workers, prefetch=data.prefetch, rows=rows)
  return Data(train, evaluation, train_source, eval_source, stats, preprocessing,
              len(train_source), len(eval_source))
