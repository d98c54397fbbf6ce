"""Converts a dataset once into the prepared format that training reads fast.

    python -m alexnet_jax.prepare --source=folder --input=~/photos --output=~/data/photos
    python -m alexnet_jax.prepare --source=ilsvrc --input=~/ILSVRC2012 --output=~/data/in1k
    python -m alexnet_jax.prepare --source=tfds --input=~/tensorflow_datasets \
        --tfds_name=imagenet2012 --output=~/data/in1k

As the paper did (s4), every image is rescaled so its shorter side is `--size` and its
central size x size square kept. By default the size is the one training reads the images at
(alexnet_jax/fitting.py): 256 for ImageNet and for images of 128 pixels or more, else the
images' own side, so a folder and its prepared directory train the same net. The output directory holds, per split, ArrayRecord shards
of checksummed examples (the image, its label and its original file name; the format is
`alexnet_jax/records.py`'s), and `metadata.json` with the class names, counts, per-channel
mean/std, the eigen-decomposition of the RGB covariance over the training split (for PCA
lighting), the files skipped as unreadable or too large (`--max_image_pixels`), plus
`mean_image.npy` (the per-pixel mean of the training split). Images are stored as JPEG
(`--format=jpeg`, `--quality`) or raw uint8 (`--format=raw`).

Sources:
  folder  `input/<split>/<class>/*.{jpg,jpeg,png,...}`; classes are train's sorted folders.
  ilsvrc  `input/ILSVRC2012_img_train.tar` (a tar of per-class tars) and
          `input/ILSVRC2012_img_val.tar`; labels are positions in tensorflow-datasets' sorted
          `labels.txt`, validation labels from its `validation_labels.txt`.
  tfds    any tensorflow-datasets image dataset prepared under `input` (array_record),
          read with `tfds.data_source`: TensorFlow is not needed.

Shards are written atomically and an interrupted run (even kill -9) resumes: finished shards
are kept, partial ones redone.
"""
from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import tarfile
from typing import Any, Sequence

import numpy as np

from alexnet_jax import datasets
from alexnet_jax import images
from alexnet_jax import records

Item = datasets.Item
log = logging.getLogger(__name__)


class PrepareError(ValueError):
  """A problem with the input that stops the conversion (one line)."""


# ---- Listing the examples of each source -----------------------------------------------------


def list_folder(root: str) -> tuple[list[str], dict[str, list[Item]]]:
  """Classes and per-split items of `root/<split>/<class>/<image>` (datasets.list_folder)."""
  try:
    return datasets.list_folder(root)
  except datasets.DataError as e:
    raise PrepareError(str(e).replace('data.path:', '--input:', 1)) from None


def _tar_members(path: str, base: int = 0, fileobj=None):
  """(name, absolute offset, size) of every file in a tar, without extracting anything."""
  with tarfile.open(path if fileobj is None else None, mode='r:', fileobj=fileobj) as tar:
    for m in tar:
      if m.isfile():
        yield m.name, base + m.offset_data, m.size


def list_ilsvrc(root: str) -> tuple[list[str], dict[str, list[Item]]]:
  """Classes and items of the raw ILSVRC-2012 train and validation tars."""
  try:
    return _list_ilsvrc(root)
  except (tarfile.TarError, OSError) as e:
    raise PrepareError(f'--input: cannot read the ILSVRC tars in {root!r} ({e})') from None


def _list_ilsvrc(root: str):
  wnids = datasets.imagenet_labels()
  index = {w: i for i, w in enumerate(wnids)}
  train_tar = os.path.join(root, 'ILSVRC2012_img_train.tar')
  val_tar = os.path.join(root, 'ILSVRC2012_img_val.tar')
  if not os.path.isfile(train_tar) and not os.path.isfile(val_tar):
    raise PrepareError(f'--input: {root!r} holds neither ILSVRC2012_img_train.tar nor '
                       'ILSVRC2012_img_val.tar')
  out = {}
  if os.path.isfile(train_tar):
    items = []
    with open(train_tar, 'rb') as f:
      for class_tar, offset, size in sorted(_tar_members(train_tar)):
        wnid = os.path.basename(class_tar).split('.')[0]
        if wnid not in index:
          raise PrepareError(f'--input: {class_tar!r} in {train_tar!r} is not an ILSVRC class')
        f.seek(offset)
        inner = [m for m in _tar_members('', offset, fileobj=_Window(f, offset, size))]
        if not inner:
          raise PrepareError(f'--input: class archive {class_tar!r} holds no images')
        items += [Item(f'{wnid}/{name}', index[wnid], train_tar, off, sz)
                  for name, off, sz in sorted(inner)]
    out['train'] = items
  if os.path.isfile(val_tar):
    labels = datasets.imagenet_validation_labels()
    items = []
    for name, offset, size in sorted(_tar_members(val_tar)):
      stem = os.path.splitext(os.path.basename(name))[0]
      if not stem.startswith('ILSVRC2012_val_') or not stem[15:].isdigit():
        raise PrepareError(f'--input: {name!r} in {val_tar!r} is not an ILSVRC2012_val_N file')
      number = int(stem[15:])
      items.append(Item(name, index[labels[number - 1]], val_tar, offset, size))
    out['validation'] = items
  return wnids, out


class _Window:
  """A read-only file view of `size` bytes at `offset` of `f` (a member of a tar)."""

  def __init__(self, f, offset: int, size: int):
    self.f, self.start, self.size, self.pos = f, offset, size, 0

  def read(self, n: int = -1) -> bytes:
    n = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
    self.f.seek(self.start + self.pos)
    data = self.f.read(n)
    self.pos += len(data)
    return data

  def seek(self, pos: int, whence: int = 0) -> int:
    self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else self.size + pos)
    return self.pos

  def tell(self) -> int:
    return self.pos


def list_tfds(data_dir: str, name: str) -> tuple[list[str], dict[str, list[Item]]]:
  """Classes and items of a tensorflow-datasets dataset prepared under `data_dir`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(data_dir):
    raise PrepareError(f'--input: no directory {data_dir!r}')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    classes = list(builder.info.features['label'].names)
  except Exception as e:  # tfds raises many types for a missing or unprepared dataset.
    raise PrepareError(f'--tfds_name: cannot read {name!r} under {data_dir!r} ({e})'.replace(
        '\n', ' ')) from None
  splits = {}
  for split in list(builder.info.splits) or ['train', 'validation', 'test']:
    try:
      splits[split] = len(tfds.data_source(name, split=split, data_dir=data_dir))
    except Exception:  # pylint: disable=broad-except  # A split that is not on disk.
      continue
  if not splits:
    raise PrepareError(f'--tfds_name: {name!r} under {data_dir!r} has no readable split')
  return classes, {s: [Item(f'{s}[{i}]', -1, tfds_index=i) for i in range(n)]
                   for s, n in splits.items()}


# ---- Converting one shard (in a worker process) ----------------------------------------------


@functools.lru_cache(maxsize=4)
def _tfds_source(name: str, split: str, data_dir: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.data_source(name, split=split, data_dir=data_dir)


def _load(item: Item, size: int, tfds_spec: tuple[str, str, str] | None, max_pixels: int):
  """(image (size, size, 3) uint8, label) of one item; raises images.BadImage."""
  if item.tfds_index >= 0:
    name, split, data_dir = tfds_spec
    record = _tfds_source(name, split, data_dir)[item.tfds_index]
    label = int(record['label'])
    if label < 0:  # e.g. imagenet2012's test split: no labels to train or evaluate on.
      raise images.BadImage('unlabeled example')
    return images.array_resized(np.asarray(record['image']), size), label
  with open(item.path, 'rb') as f:
    if item.size >= 0:
      f.seek(item.offset)
      data = f.read(item.size)
    else:
      data = f.read()
  return images.load_resized(data, size, max_pixels), item.label


def convert_shard(task: tuple) -> tuple[str, int, int]:
  """Writes one shard, then its stats file (names, skipped files, pixel sums), which marks it
  done; returns (split, examples, skipped)."""
  out_dir, split, shard, items, size, fmt, quality, tfds_spec, max_pixels = task
  names, bad = [], []
  image_sum = np.zeros((size, size, 3), np.float64)
  rgb_sum, rgb_outer = np.zeros(3), np.zeros((3, 3))

  def examples():
    nonlocal image_sum, rgb_sum, rgb_outer
    for item in items:
      try:
        image, label = _load(item, size, tfds_spec, max_pixels)
      except Exception as e:  # pylint: disable=broad-except  # No single file stops the run.
        reason = str(e).splitlines()[0] if str(e) else ''
        bad.append(f'{item.name}: {type(e).__name__}: {reason}'[:300])
        continue
      encoded = images.encode_jpeg(image, quality) if fmt == 'jpeg' else image.tobytes()
      names.append(item.name)
      pixels = image.reshape(-1, 3).astype(np.float64)
      image_sum += image
      rgb_sum += pixels.sum(0)
      rgb_outer += pixels.T @ pixels
      yield records.encode(records.Example(item.name, label, encoded))

  records.write_shard(records.shard_path(out_dir, split, shard), examples())
  records.save_stats(records.stats_path(out_dir, split, shard),
                     names=np.asarray(names, dtype=str), bad=np.asarray(bad, dtype=str),
                     image_sum=image_sum, rgb_sum=rgb_sum, rgb_outer=rgb_outer)
  return split, len(names), len(bad)


# ---- The whole conversion --------------------------------------------------------------------


def prepare(source: str, input_path: str, output: str, *, size: int = 0, fmt: str = 'jpeg',
            quality: int = 90, shard_size: int = 1024, workers: int | None = None,
            tfds_name: str = 'imagenet2012', progress: bool = True,
            max_image_pixels: int = images.MAX_IMAGE_PIXELS) -> dict[str, Any]:
  """Converts `input_path` into `output`; returns the metadata written. `size` 0: the side
  training reads these images at (see the module doc)."""
  input_path = os.path.expanduser(input_path)
  output = os.path.expanduser(output)
  if fmt not in ('jpeg', 'raw'):
    raise PrepareError(f"--format: must be 'jpeg' or 'raw', got {fmt!r}")
  if not 1 <= quality <= 100:
    raise PrepareError(f'--quality: must be in 1..100, got {quality}')
  if size < 0 or shard_size < 1:
    raise PrepareError('--size must be >= 0 (0: by the images) and --shard_size positive')
  if not os.path.exists(input_path):
    raise PrepareError(f'--input: no such path {input_path!r}')
  listers = {'folder': list_folder, 'ilsvrc': list_ilsvrc,
             'tfds': lambda p: list_tfds(p, tfds_name)}
  if source not in listers:
    raise PrepareError(f'--source: must be one of {tuple(listers)}, got {source!r}')
  classes, splits = listers[source](input_path)
  # The files' own side, recorded so that training fits a config to it as to the folder.
  image_side = datasets.image_side(splits.get('train', [])) if source == 'folder' else None
  if not size:
    size = datasets.stored_side(image_side) if image_side else datasets.PAPER_SIDE
  os.makedirs(output, exist_ok=True)
  _check_settings(output, {'storage': records.FORMAT, 'source': source, 'size': size,
                           'format': fmt, 'quality': quality,
                           'max_image_pixels': max_image_pixels,
                           'shard_size': shard_size, 'items': {
                               s: hashlib.sha256('\n'.join(f'{i.name}\t{i.label}' for i in items)
                                                 .encode()).hexdigest()
                               for s, items in splits.items()}})
  tasks = []
  for split, items in splits.items():
    spec = (tfds_name, split, input_path) if source == 'tfds' else None
    for shard, start in enumerate(range(0, len(items), shard_size)):
      if not os.path.exists(records.stats_path(output, split, shard)):
        tasks.append((output, split, shard, items[start:start + shard_size], size, fmt,
                      quality, spec, max_image_pixels))
  _run(tasks, workers, progress, total=sum(len(t[3]) for t in tasks))
  meta = {'format': fmt, 'quality': quality, 'image_size': size, 'source': source,
          'classes': classes, 'num_classes': len(classes)}
  if image_side:
    meta['source_image_side'] = image_side
  return _write_metadata(output, meta, splits, shard_size, size)


SETTINGS = 'prepare_settings.json'


def _check_settings(output: str, settings: dict) -> None:
  """Refuses to resume into `output` with other settings or inputs: shards would mix."""
  path = os.path.join(output, SETTINGS)
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    for key in settings:
      if before.get(key) != settings[key]:
        what = {'items': 'the input files', 'storage': 'an older storage format'}.get(
            key, f'--{key}')
        raise PrepareError(f'--output: {output!r} was prepared with different {what}; '
                           'use a new --output directory')
  else:
    with open(path + '.tmp', 'w') as f:
      json.dump(settings, f)
    os.replace(path + '.tmp', path)


def _run(tasks: Sequence[tuple], workers: int | None, progress: bool, total: int) -> None:
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  workers = min(workers or len(os.sched_getaffinity(0)), max(1, len(tasks)))
  bar = tqdm(total=total, unit='img', disable=not progress, desc='prepare')
  if workers == 1:
    for task in tasks:
      convert_shard(task)
      bar.update(len(task[3]))
  else:
    # A process pool that fails loudly: a worker killed (say by the OOM killer) raises
    # BrokenProcessPool here instead of hanging the run, and finished shards stay done.
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      futures = {pool.submit(convert_shard, task): task for task in tasks}
      try:
        for future in concurrent.futures.as_completed(futures):
          future.result()
          bar.update(len(futures[future][3]))
      except concurrent.futures.process.BrokenProcessPool:
        raise PrepareError('a worker process died (out of memory?); run the same command '
                           'again to resume with fewer --workers') from None
  bar.close()


def _write_metadata(output, meta, splits, shard_size, size):
  meta = dict(meta, splits={})
  train_sums = None
  for split, items in splits.items():
    shards = -(-len(items) // shard_size)
    counts, bad = [], []
    sums = [0, 0, 0]
    for shard in range(shards):
      with np.load(records.stats_path(output, split, shard)) as stats:
        counts.append(len(stats['names']))
        bad += stats['bad'].tolist()
        if split == 'train':
          sums = [s + stats[k] for s, k in zip(sums, ('image_sum', 'rgb_sum', 'rgb_outer'))]
    meta['splits'][split] = {'count': sum(counts), 'shards': shards, 'shard_counts': counts,
                             'skipped': len(bad), 'skipped_files': bad}
    if bad:
      log.warning('prepare: skipped %d unreadable file(s) of %s: %s%s', len(bad), split,
                  '; '.join(bad[:20]), ' ...' if len(bad) > 20 else '')
    if split == 'train':
      train_sums = (sums, sum(counts))
  if train_sums and train_sums[1]:
    (image_sum, rgb_sum, rgb_outer), n = train_sums
    np.save(os.path.join(output, records.MEAN_IMAGE), (image_sum / n).astype(np.float32))
    meta.update(records.pixel_statistics(image_sum, rgb_sum, rgb_outer, n))
  records.write_metadata(output, meta)
  return records.read_metadata(output)


def main(argv):
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not f.input or not f.output:
    raise app.UsageError('give --input and --output')
  try:
    meta = prepare(f.source, f.input, f.output, size=f.size, fmt=f.format, quality=f.quality,
                   shard_size=f.shard_size, workers=f.workers, tfds_name=f.tfds_name,
                   max_image_pixels=f.max_image_pixels)
  except PrepareError as e:
    raise SystemExit(f'error: {e}') from None
  for split, s in meta['splits'].items():
    print(f'{split}: {s["count"]} images in {s["shards"]} shards, {s["skipped"]} skipped')


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum('source', 'folder', ['folder', 'ilsvrc', 'tfds'], 'What --input holds.')
  flags.DEFINE_string('input', None, 'Image folder root, ILSVRC tar directory or tfds data_dir.')
  flags.DEFINE_string('output', None, 'Directory for the prepared shards.')
  flags.DEFINE_integer('size', 0, 'Side of the stored images (shorter side, center crop); 0: '
                       'the side training reads them at (256, or a small folder\'s own).')
  flags.DEFINE_string('format', 'jpeg', 'jpeg or raw (uint8).')
  flags.DEFINE_integer('quality', 90, 'JPEG quality.')
  flags.DEFINE_integer('shard_size', 1024, 'Images per shard.')
  flags.DEFINE_integer('workers', None, 'Processes (default: every core).')
  flags.DEFINE_string('tfds_name', 'imagenet2012', 'With --source=tfds: the dataset name.')
  flags.DEFINE_integer('max_image_pixels', images.MAX_IMAGE_PIXELS,
                       'Files whose header declares more pixels are skipped, undecoded.')


if __name__ == '__main__':
  from alexnet_jax import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main)
