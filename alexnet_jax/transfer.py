"""Transfer learning: a trained net with new layers (fc8) for your images' classes.

`transfer.source` names the trained model as `inference.load` takes it. A run of this project
(a work directory or one checkpoint) carries its config, so its net is rebuilt from it
(`with_source_net`): the recipe, every size and the image geometry it was trained at, whatever
the config file's recipe says; only the class count (the data's), the new fc8's layout, the
compute dtype and the dropout rate are this config's. A state-dict file (.npz, .pth) carries
no config: the recipe given (`configs/transfer.py:MODE,RECIPE`) says which net it is.
"""
from __future__ import annotations

import logging

import jax
import ml_collections
from flax import nnx

from alexnet_jax import inference
from alexnet_jax import recipes

log = logging.getLogger(__name__)

# Model fields a transferred net takes from this config rather than from its source.
OWN_MODEL_FIELDS = ('num_classes', 'fc8_per_tower', 'compute_dtype', 'dropout_rate')
# Data fields that make the images what the source net read: the canvas and how it is made.
SOURCE_DATA_FIELDS = ('image_size', 'preprocessing')


def from_weights_file(config) -> bool:
  return config.transfer.source.endswith(inference.WEIGHTS_SUFFIXES)


def with_source_net(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the net and image geometry of the run `transfer.source` names (see the
  module doc); `config` itself without a source or for a state-dict file. A field this
  config sets to something else than the source's (a command-line override) is a one-line
  error: the pretrained layers fix it."""
  if not config.transfer.source or from_weights_file(config):
    return config
  saved = inference.run_config(config.transfer.source)
  defaults = recipes.own_images(recipes.config(config.recipe))
  c = ml_collections.ConfigDict(config.to_dict())
  for section, fields in (('model', [f for f in saved.model if f not in OWN_MODEL_FIELDS]),
                          ('data', SOURCE_DATA_FIELDS)):
    for field in fields:
      ours, theirs = config[section][field], saved[section][field]
      if ours != defaults[section][field] and ours != theirs:
        raise ValueError(f'{section}.{field}: {ours!r}, but the net of {config.transfer.source} '
                         f'has {theirs!r}; a transferred net keeps its source\'s')
      c[section][field] = theirs
  c.recipe = saved.recipe
  return c


def source_config(config) -> ml_collections.ConfigDict | None:
  """The config a weights file named by `transfer.source` is read with (checkpoints carry
  their own)."""
  if not from_weights_file(config):
    return None
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.num_classes = config.transfer.source_num_classes
  return c


def source_preprocessing(config):
  """The source net's preprocessing record, whose input scaling the new run keeps."""
  return inference.preprocessing_of(config.transfer.source, config=source_config(config))


def pretrained_params(config, params, mesh):
  """(`params` with every layer outside `config.optim.new_layers` taken from the model that
  `config.transfer.source` names (same architecture, any class count), what was loaded)."""
  try:
    pretrained = inference.load(config.transfer.source, config=source_config(config),
                                mesh=mesh)
  except ValueError as e:
    if not from_weights_file(config):
      raise
    raise ValueError(f'{e} (is it a {config.recipe!r} net? name its recipe as '
                     'configs/transfer.py:MODE,RECIPE)') from None
  _, source = nnx.split(pretrained.net, nnx.Param)
  new_layers = tuple(config.optim.new_layers)

  def take(path, ours, theirs):
    layer = path[0].key
    if layer in new_layers:
      return ours
    if ours.shape != theirs.shape:
      raise ValueError(f'transfer.source: layer {layer} is {theirs.shape} in '
                       f'{pretrained.source}, this net needs {ours.shape}')
    return jax.device_put(theirs, ours.sharding)

  try:
    merged = jax.tree_util.tree_map_with_path(take, params, source)
  except ValueError as e:
    if str(e).startswith('transfer.source'):
      raise
    raise ValueError(f'transfer.source: {pretrained.source} is another architecture than '
                     f'this {config.recipe!r} net') from None
  return merged, pretrained.source
