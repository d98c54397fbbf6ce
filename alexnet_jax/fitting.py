"""A config fitted to your own images (data.fit), and the line a run starts with about its data.

`fit(config, mesh)` takes from an image folder or a prepared directory what a config cannot
know in advance: the classes, the evaluation split, a batch no larger than the training set,
and the image size. The size follows one rule, the same for a folder and for the directory
`prepare` writes from it (which records the side of the files it read):

  * a full-size recipe (stored side 128 or more: paper, owt, caffe, ...) keeps its geometry
    exactly, and every image is read at its sizes;
  * a recipe for small images (`small`) reads images whose shorter side S is 128 or more by
    the paper's rule (256, crops of 224, conv1 11x11 at stride 4), and smaller ones at their
    own side S, enlarged only to the least the net reads, with crops in the recipe's
    proportion (32/36);
  * a transferred net (transfer.source) keeps its source's geometry: the images are read at
    the side it was trained on.
"""
from __future__ import annotations

import ml_collections

from alexnet_jax import datasets
from alexnet_jax import model as model_lib
from alexnet_jax import sharding

DEFAULT_EVAL_SPLIT = 'validation'  # config.py's data.eval_split.


def fit(config: ml_collections.ConfigDict, mesh) -> ml_collections.ConfigDict:
  """`config` itself, or with data.fit a copy fitted to its data (see the module doc).
  `model.num_classes` 0 takes the data's class count; any other count must be the data's."""
  if not config.data.fit:
    return config
  c = ml_collections.ConfigDict(config.to_dict())
  found = datasets.survey(c.data)
  where = repr(c.data.path)
  if len(found.classes) < 2:
    raise datasets.DataError(f'data.path: {where} has one class ({found.classes[0]}); a '
                             'classifier needs two or more')
  given = c.model.num_classes
  if given and given != len(found.classes):
    raise datasets.DataError(
        f'model.num_classes: {given}, but {where} has {len(found.classes)} classes '
        f'({classes_line(found.classes)}); leave it out to take the data\'s')
  c.model.num_classes = len(found.classes)
  c.data.eval_split = datasets.eval_split(c.data.eval_split, found.counts,
                                          default=DEFAULT_EVAL_SPLIT, where=where)
  if not c.transfer.source:
    _fit_geometry(c, found.image_side)
  data_parallel = sharding.data_size(mesh)
  train = found.counts['train'] - found.counts['train'] % data_parallel
  c.batch_size = max(data_parallel, min(c.batch_size, train))
  return c


def _fit_geometry(c: ml_collections.ConfigDict, side: int) -> None:
  stored, crop = c.data.image_size, c.model.image_size
  if stored >= datasets.LARGE_IMAGE_SIDE:
    return  # A full-size recipe: its geometry is never fitted.
  if side >= datasets.LARGE_IMAGE_SIDE:  # The paper's rule (s4, s1).
    c.data.image_size, c.model.image_size = datasets.PAPER_SIDE, 224
    c.model.update(conv1_kernel=11, conv1_stride=4, conv1_padding=0, conv1_ceil_mode=True)
    return
  side = max(side, -(-_smallest_crop(c.model) * stored // crop))  # Enlarged if need be.
  c.data.image_size, c.model.image_size = side, max(1, round(side * crop / stored))


def _smallest_crop(model_config) -> int:
  """The smallest crop side the net of `model_config` reads to fc6 with every layer."""
  for side in range(model_config.conv1_kernel, 1024):
    try:
      model_lib.ModelSpec.from_config(dict(model_config.to_dict(), image_size=side))
      return side
    except ValueError:
      continue
  raise datasets.DataError('model: no crop up to 1024 pixels reaches fc6 with this net')


def classes_line(classes, shown: int = 6) -> str:
  """'cat, coffee, rocket', or the first few and how many more."""
  names = list(classes)
  more = f', ... ({len(names)} in all)' if len(names) > shown else ''
  return ', '.join(names[:shown]) + more


def describe(config: ml_collections.ConfigDict, classes, train_examples: int,
             eval_examples: int) -> str:
  """The run's data in one line: classes, examples per split, image size and crop, batch."""
  d = config.data
  where = f'{datasets.resolved_source(d)} {d.path}' if d.path else d.source
  side = d.image_size
  return (f'data: {where}: {len(classes)} classes ({classes_line(classes)}); '
          f'{train_examples} {d.train_split} and {eval_examples} {d.eval_split} examples '
          f'(evaluated); images read at {side}x{side}, crops of {config.model.image_size}; '
          f'batch {config.batch_size}')
