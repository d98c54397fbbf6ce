"""A trained model, ready to use: from a work directory, one checkpoint, or imported weights.

`load(reference)` is what evaluate, predict, features and transfer learning share. A reference
is one of
  * a work directory (`WORKDIR`, holding `checkpoints/`): its newest good checkpoint;
  * one checkpoint (`WORKDIR/checkpoints/STEP`);
  * a state-dict file (`.npz` or `.pth`, see alexnet_jax.weights), with the config it needs.
Checkpoints carry their config, class names and input normalization, so nothing else is
needed to use them; they are only read, never cleaned up or set aside.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
from flax import nnx

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import cli
from alexnet_jax import datasets
from alexnet_jax import evaluation
from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import sharding
from alexnet_jax import weights as weights_lib

log = logging.getLogger(__name__)
MEAN_FILE = 'mean.npy'  # The exact mean a run subtracts, written into its work directory.


@dataclasses.dataclass
class Trained:
  net: model_lib.AlexNet
  config: ml_collections.ConfigDict
  classes: tuple[str, ...]
  mean: np.ndarray  # Subtracted from 0-255 crops: (crop, crop, 3) or (3,).
  divide: float
  source: str  # What was loaded, for reports.

  @property
  def crop(self) -> int:
    return self.config.model.image_size

  def class_names(self) -> tuple[str, ...]:
    return class_names(self.classes)


def class_names(classes: tuple[str, ...]) -> tuple[str, ...]:
  """Human-readable names: ImageNet's for its 1000 WordNet ids, else the classes as they are
  (an image folder's folder names)."""
  if len(classes) == 1000 and all(re.fullmatch(r'n\d{8}', c) for c in classes):
    return imagenet_names()
  return tuple(classes)


@functools.cache
def imagenet_names() -> tuple[str, ...]:
  """The 1000 ILSVRC-2012 class names in label order (sorted WordNet ids), from the list
  torchvision ships (`_IMAGENET_CATEGORIES`), stored with the package."""
  with open(os.path.join(os.path.dirname(__file__), 'imagenet_class_names.txt')) as f:
    return tuple(line.rstrip('\n') for line in f)


def config_from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


def _normalization(config, workdir: str | None) -> tuple[np.ndarray, float]:
  """The mean the run subtracted: its saved copy, else recomputed from its data config."""
  path = os.path.join(workdir, MEAN_FILE) if workdir else None
  if path and os.path.isfile(path):
    return np.load(path), float(config.data.divide)
  try:
    _, stats = datasets.open_source(config.data, config.data.train_split)
  except (datasets.DataError, OSError) as e:
    log.warning('no %s and the training data is not at hand (%s): using the ImageNet '
                'per-channel mean', MEAN_FILE, e)
    stats = datasets.Stats(classes=())
  mode = config.data.mean if stats.mean_image is not None else 'rgb'
  return input_pipeline.mean_for(stats, mode, config.model.image_size), \
      float(config.data.divide)


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


def load(reference: str, *, config: ml_collections.ConfigDict | None = None, mesh=None,
         seed: int = 0) -> Trained:
  """The model `reference` names (see the module doc). `config` is needed for weights files;
  for checkpoints it overrides nothing but is used for `data` when given."""
  if reference.endswith(('.npz', '.pth', '.pt')):
    if config is None:
      raise ValueError(f'weights: {reference!r} needs --config to say which net it is')
    if not os.path.isfile(reference):
      raise ValueError(f'weights: no such file {reference!r}')
    mesh = mesh or sharding.make_mesh(config.model.towers)
    net = model_lib.create_model(config.model, mesh=mesh, seed=seed)
    weights_lib.import_state_dict(net, reference)
    mean, divide = _normalization(config, None)
    classes = _data_classes(config)
    return Trained(net, config, classes, mean, divide, reference)

  directory, step = _checkpoint_location(reference)
  ckpts = checkpoint_lib.Checkpoints(directory, read_only=True)
  try:
    steps = [step] if step is not None else list(reversed(ckpts.steps()))
    if not steps:
      raise ValueError(f'checkpoint: no checkpoints in {directory!r}')
    for i, s in enumerate(steps):
      try:
        meta = ckpts.read_meta(s)
        run_config = config_from_json(meta['config'])
        mesh = mesh or sharding.make_mesh(run_config.model.towers)
        net = model_lib.create_model(run_config.model, mesh=mesh, seed=seed)
        state, meta = ckpts.restore(s, checkpoint_lib.abstract_train_state(
            net, run_config.optim, mesh))
        break
      except checkpoint_lib.CheckpointError as e:
        if i == len(steps) - 1:
          raise
        log.warning('%s; trying the previous one', e)
  finally:
    ckpts.close()
  nnx.update(net, state.params)
  if config is not None:  # Evaluate on other data than the run's own.
    run_config.data = config.data
  workdir = os.path.dirname(directory)
  mean, divide = _normalization(run_config, workdir)
  classes = tuple(meta['classes']) if 'classes' in meta else _data_classes(run_config)
  return Trained(net, run_config, classes, mean, divide, f'{directory}/{s}')


def _data_classes(config) -> tuple[str, ...]:
  try:
    return tuple(datasets.open_source(config.data, config.data.train_split)[1].classes)
  except (datasets.DataError, OSError):
    return tuple(str(i) for i in range(config.model.num_classes))


def probabilities_fn(trained: Trained, views: int, *, average: bool = True):
  """A jitted (uint8 images) -> class probabilities, averaged over `views` (1: the images
  are center crops; 10: whole images), or per view (B, views, classes)."""
  graphdef, params = nnx.split(trained.net, nnx.Param)
  mean = jax.device_put(trained.mean, sharding.named(trained.net.mesh, sharding.REPLICATED))
  probabilities = (evaluation.view_probabilities if average else
                   evaluation.per_view_probabilities)

  @jax.jit
  def fn(params, images_u8, mean):
    return probabilities(nnx.merge(graphdef, params), images_u8, mean,
                         divide=trained.divide, crop=trained.crop, views=views)

  return lambda images_u8: fn(params, images_u8, mean)


# ---- The command lines' shared flags ---------------------------------------------------------


def define_model_flags(*, ensemble: bool = False) -> None:
  """--workdir / --checkpoint / --weights (+ --config), and --ensemble where it makes sense."""
  flags.DEFINE_string('workdir', None, 'A training work directory: its newest good checkpoint.')
  flags.DEFINE_string('checkpoint', None, 'One checkpoint: WORKDIR/checkpoints/STEP.')
  flags.DEFINE_string('weights', None, 'A .npz/.pth state dict (needs --config).')
  cli.define_config_flag(
      None, 'The config (file.py:recipe) of --weights; for a checkpoint, its data section '
      "replaces the run's (to use other data).")
  if ensemble:
    flags.DEFINE_list('ensemble', None, 'Several models (work directories, checkpoints or '
                      'weights files), their softmax averaged.')


def models_from_flags(more: list[str] = ()) -> list[Trained]:
  """The models the flags name; `more` (positional arguments) extend --ensemble, so both
  `--ensemble=A,B,C` and `--ensemble A B C` work."""
  f = flags.FLAGS
  single = [r for r in (f.workdir, f.checkpoint, f.weights) if r]
  ensemble = (getattr(f, 'ensemble', None) or []) + list(more)
  if len(single) + bool(ensemble) != 1:
    raise app.UsageError('give exactly one of --workdir, --checkpoint, --weights'
                         + (', --ensemble' if 'ensemble' in f else ''))
  return [load(r, config=f.config) for r in (ensemble or single)]
