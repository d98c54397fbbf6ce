"""A trained model, ready to use, with the preprocessing it was trained on: from a work
directory, one checkpoint, or imported weights.

`load(reference)` is what evaluate, predict, features and transfer learning share. A reference
is one of
  * a work directory (`WORKDIR`, holding `checkpoints/`): its newest good checkpoint;
  * one checkpoint (`WORKDIR/checkpoints/STEP`);
  * a state-dict file (`.npz` or `.pth`, see alexnet_jax.weights), with the config it needs.
Checkpoints carry their config, class names and preprocessing record, so nothing else is
needed to use them; they are only read, never cleaned up or set aside. A weights file's record
is the JSON beside it (`weights.preprocessing_path`), else the one its config describes.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re

import ml_collections
import numpy as np
from flax import nnx

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import config as config_lib
from alexnet_jax import datasets
from alexnet_jax import evaluation
from alexnet_jax import model as model_lib
from alexnet_jax import preprocess
from alexnet_jax import sharding
from alexnet_jax import weights as weights_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Trained:
  net: model_lib.AlexNet
  config: ml_collections.ConfigDict
  classes: tuple[str, ...]
  preprocessing: preprocess.Preprocessing  # How its images become inputs.
  source: str  # What was loaded, for reports.

  @property
  def crop(self) -> int:
    return self.preprocessing.crop

  def class_names(self) -> tuple[str, ...]:
    return class_names(self.classes)

  def probabilities(self, views: int, *, average: bool = True):
    """A jitted uint8 batch (center crops, or whole canvases for 10 views) -> softmax."""
    return evaluation.probabilities_fn(self.net, self.preprocessing, views, average=average)


def imagenet_classes(classes) -> bool:
  """Whether `classes` are ILSVRC-2012's 1000 WordNet ids."""
  return len(classes) == 1000 and all(re.fullmatch(r'n\d{8}', c) for c in classes)


def class_names(classes: tuple[str, ...]) -> tuple[str, ...]:
  """Human-readable names: ImageNet's for its 1000 WordNet ids, else the classes as they are
  (an image folder's folder names)."""
  return imagenet_names() if imagenet_classes(classes) else tuple(classes)


@functools.cache
def imagenet_names() -> tuple[str, ...]:
  """The 1000 ILSVRC-2012 class names in label order (sorted WordNet ids), from the list
  torchvision ships (`_IMAGENET_CATEGORIES`), stored with the package."""
  with open(os.path.join(os.path.dirname(__file__), 'imagenet_class_names.txt')) as f:
    return tuple(line.rstrip('\n') for line in f)


def _data_stats(config) -> datasets.Stats | None:
  try:
    return datasets.open_source(config.data, config.data.train_split)[1]
  except (datasets.DataError, OSError):
    return None


def _record_from_config(config, what: str) -> preprocess.Preprocessing:
  """The record a config describes, with its data's statistics when the data is at hand;
  without them, the kind's own numbers ('torchvision', 'caffe') or, for 'data', ImageNet's
  per-channel mean (said in a warning)."""
  stats = _data_stats(config)
  if stats is None:
    if config.data.preprocessing == 'data':
      log.warning('%s: no preprocessing record and the training data is not at hand: using '
                  "ImageNet's per-channel mean", what)
    stats = datasets.Stats(classes=())
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.mean = 'rgb'
  return preprocess.from_config(config.data, config.model.image_size, stats)


def _old_run_record(run_config, workdir: str, what: str) -> preprocess.Preprocessing:
  """The record of a checkpoint written before records were saved with the model: rebuilt
  from its config and the mean.npy its run wrote beside the checkpoints (the lighting's
  eigenvectors, for training only, from its data when at hand, else ImageNet's)."""
  mean_file = os.path.join(workdir, 'mean.npy')  # What runs wrote before records existed.
  stats = _data_stats(run_config)
  if not os.path.isfile(mean_file):
    if stats is None:
      raise ValueError(f'checkpoint: {what} predates saved preprocessing records, and neither '
                       f'its {mean_file} nor its training data is at hand to rebuild it')
    return preprocess.from_config(run_config.data, run_config.model.image_size, stats)
  d = run_config.data
  stats = stats or datasets.Stats(classes=())
  return preprocess.Preprocessing(size=d.image_size, crop=run_config.model.image_size,
                                  mean=np.load(mean_file).astype(np.float32),
                                  std=(float(d.divide),), flip=d.flip,
                                  lighting_std=d.lighting_std, eigval=tuple(stats.eigval),
                                  eigvec=tuple(map(tuple, stats.eigvec)))


def _checkpoint_location(path: str) -> tuple[str, int | None]:
  """(checkpoints directory, step or None for the newest) of a workdir or checkpoint path."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return os.path.join(path, 'checkpoints'), None
  name = os.path.basename(path)
  if name.isdigit() and os.path.isdir(path):
    return os.path.dirname(path), int(name)
  raise ValueError(f'checkpoint: {path!r} is neither a work directory (with checkpoints/) nor '
                   'a checkpoint (checkpoints/STEP)')


WEIGHTS_SUFFIXES = ('.npz', '.pth', '.pt')


def _weights_record(reference: str, config) -> preprocess.Preprocessing:
  """A weights file's record: the JSON beside it, else the one its config describes."""
  if config is None:
    raise ValueError(f'weights: {reference!r} needs --config to say which net it is')
  if not os.path.isfile(reference):
    raise ValueError(f'weights: no such file {reference!r}')
  beside = weights_lib.preprocessing_path(reference)
  if os.path.isfile(beside):
    with open(beside) as f:
      return preprocess.Preprocessing.from_json(f.read())
  return _record_from_config(config, reference)


def _checkpoint_record(meta: dict, run_config, directory: str,
                       source: str) -> preprocess.Preprocessing:
  if 'preprocessing' in meta:
    return preprocess.Preprocessing.from_dict(meta['preprocessing'])
  return _old_run_record(run_config, os.path.dirname(directory), source)


def _read_newest(reference: str, read):
  """(checkpoints directory, step, read(checkpoints, step)) for the checkpoint `reference`
  names, or a work directory's newest one that reads (a damaged one is reported and the one
  before it tried)."""
  directory, step = _checkpoint_location(reference)
  ckpts = checkpoint_lib.Checkpoints(directory, read_only=True)
  try:
    steps = [step] if step is not None else list(reversed(ckpts.steps()))
    if not steps:
      raise ValueError(f'checkpoint: no checkpoints in {directory!r}')
    for i, s in enumerate(steps):
      try:
        return directory, s, read(ckpts, s)
      except checkpoint_lib.CheckpointError as e:
        if i == len(steps) - 1:
          raise
        log.warning('%s; trying the previous one', e)
  finally:
    ckpts.close()


def run_config(reference: str) -> ml_collections.ConfigDict:
  """The config of the run that wrote the checkpoint `reference` names (a work directory's
  newest that reads), in today's schema."""
  _, _, meta = _read_newest(reference, lambda ckpts, s: ckpts.read_meta(s))
  return config_lib.from_saved(meta['config'])


def preprocessing_of(reference: str, *, config=None) -> preprocess.Preprocessing:
  """The record of the model `reference` names (as `load` takes it), without its weights."""
  if reference.endswith(WEIGHTS_SUFFIXES):
    return _weights_record(reference, config)
  directory, s, meta = _read_newest(reference, lambda ckpts, s: ckpts.read_meta(s))
  return _checkpoint_record(meta, config_lib.from_saved(meta['config']), directory,
                            f'{directory}/{s}')


# What a config given with a checkpoint says about the data: where it is, not how to read it
# (the image size and preprocessing stay the model's).
DATA_LOCATION_FIELDS = ('source', 'path', 'tfds_name', 'train_split', 'eval_split', 'workers',
                        'prefetch', 'max_image_pixels')


def load(reference: str, *, config: ml_collections.ConfigDict | None = None, mesh=None,
         seed: int = 0) -> Trained:
  """The model `reference` names (see the module doc). `config` is needed for weights files;
  for checkpoints it overrides nothing but says where the data is when given (other data to
  evaluate on, read at the model's image size and preprocessing)."""
  if reference.endswith(WEIGHTS_SUFFIXES):
    record = _weights_record(reference, config)
    mesh = mesh or sharding.make_mesh(config.model.towers)
    net = model_lib.create_model(config.model, mesh=mesh, seed=seed)
    weights_lib.import_state_dict(net, reference)
    return Trained(net, config, _data_classes(config), record, reference)

  def restore(ckpts, s):
    run_config = config_lib.from_saved(ckpts.read_meta(s)['config'])
    net = model_lib.create_model(run_config.model, seed=seed,
                                 mesh=mesh or sharding.make_mesh(run_config.model.towers))
    state, meta = ckpts.restore(s, checkpoint_lib.abstract_train_state(
        net, run_config.optim, net.mesh))
    return run_config, net, state, meta

  directory, s, (run_config, net, state, meta) = _read_newest(reference, restore)
  nnx.update(net, state.params)
  source = f'{directory}/{s}'
  record = _checkpoint_record(meta, run_config, directory, source)
  if config is not None:  # Other data than the run's own, read as the run read its own.
    for field in DATA_LOCATION_FIELDS:
      run_config.data[field] = config.data[field]
    run_config.data.fit = True  # A prepared directory stored at another size is resized.
  classes = tuple(meta['classes']) if 'classes' in meta else _data_classes(run_config)
  return Trained(net, run_config, classes, record, source)


def _data_classes(config) -> tuple[str, ...]:
  """The classes of a model whose checkpoint does not name them (a weights file): its
  training data's when at hand; else, for 1000 classes, ILSVRC-2012's WordNet ids in sorted
  order, the labels of torchvision's, Caffe's and every ImageNet run's weights; else '0', '1',
  ... (unknown)."""
  try:
    return tuple(datasets.open_source(config.data, config.data.train_split)[1].classes)
  except (datasets.DataError, OSError):
    if config.model.num_classes == 1000:
      return tuple(datasets.imagenet_labels())
    return tuple(str(i) for i in range(config.model.num_classes))
