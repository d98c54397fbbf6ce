"""The named recipes: each one complete set of changes to `config.base_config()`.

A recipe says what it reproduces (a layer file, a solver, a text) and how many parameters
its full-size net has there; `docs/paper.md` holds the figures they are checked against.
Config files pick one by name, as their argument: `--config=configs/paper.py:cuda_convnet`
(`--config=configs/paper.py:list`, or `python -m alexnet_jax.recipes`, lists them).

The ablations change run 145 (cuda_convnet) as their layer files do, each under run 145's
schedule, so that each changes one thing; a figure published for one says where it comes
from and on which data (`Published`, docs/paper.md s5).
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

import ml_collections

from alexnet_jax import config as config_lib

# cuda-convnet's style, shared by run 145 and its ablations' layer files (s2, s5.1).
_CUDA_CONVNET = {
    'model.lrn1_before_relu': True,  # s2.3
    'model.extra_norm2': True,  # s2.4
    'model.weight_std': (0.01, 0.01, 0.03, 0.03, 0.03, 0.01, 0.01, 0.01),  # s2.5
    'model.fc8_per_tower': False,  # s2.7
    'model.pool_ceil_mode': True,  # s5.1
    'optim.bias_lr_multiplier': 2.0,  # s2.6
    'optim.bias_weight_decay': False,  # s2.6
    'optim.schedule': 'manual',  # Run 145's log: eps / 10 at epochs 25, 51, 79; stop at 91 (s3).
    'optim.manual_drop_epochs': (25, 51, 79),
    'num_epochs': 91,
    'data.lighting_rescale': True,  # Training crops with colour noise divided by 1.1 (s4).
    # The rest of run 145's log and final layer-params file (docs/paper.md s3): biases at
    # 0.02 throughout; colour noise off and conv1 at 1e-5 from epoch 67; conv1 frozen from 72.
    'optim.bias_lr_follows_schedule': False,
    'data.lighting_end_epoch': 67,
    'optim.layer_lr_multipliers': (('conv1', 67, 0.1),),
    'optim.freeze': (('conv1', 72),),
}


ILSVRC_2012_VAL = 'ILSVRC-2012 validation'


@dataclasses.dataclass(frozen=True)
class Published:
  """A published figure for an ablation (docs/paper.md s5): its (top-1, top-5) change in
  points, 10 views, against the `versus` recipe's net; where the figure comes from (the
  paper's text, run logs) and on which data; `layer_file`: whether it was measured on this
  very net (the recipe is the layer file of the run it comes from)."""
  change: tuple[float | None, float | None]
  source: str
  data: str
  layer_file: bool
  versus: str = 'cuda_convnet'

  def describe(self) -> str:
    top1, top5 = (f'{v:+.2f}' if v is not None else 'n/a' for v in self.change)
    return f'{top1} / {top5}: {self.source} ({self.data})'


@dataclasses.dataclass(frozen=True)
class Recipe:
  name: str
  summary: str  # One line: what the recipe is.
  source: str  # What it reproduces.
  params: int  # Parameters of its full-size net, as its source has them.
  changes: Mapping[str, Any]  # 'section.field' (or a top-level field) -> value.
  published: Published | None = None  # An ablation's published figure.

  def apply(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with this recipe's changes (and its name in `config.recipe`)."""
    for name, value in self.changes.items():
      *sections, field = name.split('.')
      target = config
      for section in sections:
        target = target[section]
      if field not in target:
        raise KeyError(f'recipe {self.name}: no field {name!r} in the config')
      target[field] = value
    config.recipe = self.name
    return config


def _recipe(name, summary, source, params, changes, published=None) -> Recipe:
  return Recipe(name, summary, source, params, dict(changes), published)


RECIPES = {r.name: r for r in (
    _recipe('paper', 'the net, data and training of the paper\'s text',
            'the paper, sections 3-5 (docs/paper.md s1, s3, s4)', 60_965_224, {}),
    _recipe('cuda_convnet', 'run 145 as coded and trained: every difference of s2 switched on, '
            'its whole schedule (s3)',
            'cuda-convnet layers-145.cfg, layer-params-145.cfg, convdata.py, run 145\'s log',
            60_965_224, _CUDA_CONVNET),
    _recipe('one_tower', 'one tower with half the kernels (conv5 and the fc layers kept)',
            'cuda-convnet layers-145-half.cfg (the paper\'s footnote 2)', 59_798_312,
            {**_CUDA_CONVNET, 'model.towers': 1,
             'model.conv_filters': (48, 128, 192, 192, 256)},
            Published((1.7, 1.2), 'the paper\'s text; run 145-half\'s log against run '
                      '145-2010\'s', 'ILSVRC-2010 test', layer_file=True)),
    _recipe('no_lrn', 'run 145 without its normalization layers',
            'cuda-convnet layers-148.cfg (run 148: 42.03 / 19.36)', 60_965_224,
            {**_CUDA_CONVNET, 'model.lrn': False, 'model.extra_norm2': False},
            Published((1.4, 1.2), 'the paper\'s text; run 148\'s log against run 145\'s',
                      ILSVRC_2012_VAL, layer_file=True)),
    _recipe('no_overlap', 'run 145 with non-overlapping 2x2 stride-2 pooling',
            'cuda-convnet layers-147.cfg (run 147: 41.06 / 18.51)', 60_965_224,
            {**_CUDA_CONVNET, 'model.pool_window': 2, 'model.conv_padding': (1, 1, 1, 0)},
            Published((0.4, 0.3), 'the paper\'s text; run 147\'s log against run 145\'s',
                      ILSVRC_2012_VAL, layer_file=True)),
    _recipe('no_cross_tower', 'run 145 with no cross-tower links before fc8, widened',
            'cuda-convnet layers-150.cfg (run 150: 41.83 / 19.33)', 60_714_408,
            {**_CUDA_CONVNET, 'model.cross_tower': False,
             'model.conv_filters': (96, 320, 384, 384, 256), 'model.fc_units': (8192, 4096)},
            Published((1.17, 1.12), 'not in the paper: run 150\'s log against run 145\'s',
                      ILSVRC_2012_VAL, layer_file=True)),
    _recipe('no_conv4', 'run 145 without conv4 (conv3 feeds conv5)',
            'the paper\'s discussion (docs/paper.md s5): removing any middle layer costs about 2% '
            'top-1 (no layer file)', 60_301_288, {**_CUDA_CONVNET, 'model.skip_conv4': True},
            Published((2.0, None), 'the paper\'s text ("about 2%"), no layer file',
                      'data not stated', layer_file=False)),
    _recipe('caffe', 'Caffe\'s bvlc_alexnet, net and solver',
            'Caffe models/bvlc_alexnet train_val.prototxt and solver.prototxt (s6)', 60_965_224,
            {'model.image_size': 227, 'model.conv1_ceil_mode': False, 'model.lrn_k': 1.0,
             'model.lrn_across_towers': True, 'model.dropout_inverted': True,
             'model.fc8_per_tower': False, 'model.pool_ceil_mode': True,
             'model.weight_std': (0.01, 0.01, 0.01, 0.01, 0.01, 0.005, 0.005, 0.01),
             'model.bias_init': (0., 0.1, 0., 0.1, 0.1, 0.1, 0.1, 0.),
             'optim.bias_lr_multiplier': 2.0, 'optim.bias_weight_decay': False,
             # eps / 10 every 100,000 iterations of 256 images, 450,000 in all.
             'optim.schedule': 'manual', 'optim.manual_drop_epochs': (20, 40, 60, 80),
             'batch_size': 256, 'num_epochs': 90, 'data.lighting_std': 0.0,
             'data.preprocessing': 'caffe'}),
    _recipe('owt', 'torchvision\'s AlexNet (one tower, after the "one weird trick" net)',
            'torchvision models/alexnet.py and its reference training: eps 0.01 / 10 every '
            '30 epochs, weight decay 1e-4, batch 256 (its random-resized crops and its SGD, '
            'eps outside the momentum buffer, are not reproduced) (s6)', 61_100_840,
            {'model.towers': 1, 'model.conv_filters': (64, 192, 384, 256, 256),
             'model.conv1_padding': 2, 'model.conv1_ceil_mode': False,
             'model.adaptive_pool': 6, 'model.lrn': False, 'model.dropout_inverted': True,
             'model.dropout_before_fc': True, 'model.fc8_per_tower': False,
             'model.bias_init': (0.,) * 8, 'model.init': 'pytorch',
             'model.weights_layout': 'torchvision', 'optim.weight_decay': 1e-4,
             'optim.schedule': 'manual', 'optim.manual_drop_epochs': (30, 60),
             'batch_size': 256, 'num_epochs': 90, 'data.lighting_std': 0.0,
             'data.preprocessing': 'torchvision'}),
    _recipe('small', 'the paper\'s topology at a quarter width for small images on a CPU',
            'this project: the paper\'s layers and pattern of biases, scaled down, with He '
            'init and unit-variance inputs so that a small net trains in minutes', 1_796_458,
            {'model.width': 0.25, 'model.image_size': 32, 'model.num_classes': 10,
             'model.conv1_kernel': 5, 'model.conv1_stride': 1, 'model.conv1_padding': 2,
             'model.init': 'he', 'model.bias_init': (0., 0.1, 0., 0.1, 0.1, 0.1, 0.1, 0.),
             'data.image_size': 36, 'data.divide': 64.0, 'data.mean': 'rgb',
             # A few thousand images: eps / 10 for the last quarter of 12 epochs.
             'batch_size': 32, 'num_epochs': 12, 'optim.base_lr': 0.02,
             'optim.schedule': 'manual', 'optim.manual_drop_epochs': (9,)}),
)}


def own_images(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` reading your own images (configs/folder.py, configs/transfer.py): an image
  folder or a prepared directory, its classes, image size and batch fitted to it."""
  config.data.source = 'auto'  # A prepared directory (it has metadata.json), else a folder.
  config.data.path = ''  # Required: the folder's root or the prepared directory.
  config.data.fit = True  # Classes, image size, evaluation split and batch from the data.
  config.model.num_classes = 0  # The data's class count (alexnet_jax/fitting.py).
  config.data.mean = 'rgb'  # Per channel: a folder read directly has no full mean image.
  config.model.fc8_per_tower = False  # One fc8 reading both towers: any class count (s2.7).
  return config


def get(name: str) -> Recipe:
  """The recipe called `name`, or a one-line error naming the closest one."""
  if name not in RECIPES:
    close = difflib.get_close_matches(name, RECIPES, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ''
    raise ValueError(f'recipe: unknown recipe {name!r}{hint}; choose one of '
                     f'{", ".join(RECIPES)}')
  return RECIPES[name]


def config(name: str = 'paper') -> ml_collections.ConfigDict:
  """The whole config of a recipe: `base_config()` with its changes."""
  return get(name).apply(config_lib.base_config())


def model_config(name: str = 'paper') -> ml_collections.ConfigDict:
  """The `model` section of a recipe."""
  return config(name).model


def table() -> str:
  """The recipes as a markdown table: name, what, source, parameters, published change."""
  lines = ['| recipe | what | reproduces | parameters | published change (top-1 / top-5) |',
           '|---|---|---|---|---|']
  lines += [f'| {r.name} | {r.summary} | {r.source} | {r.params:,} | '
            f'{r.published.describe() if r.published else ""} |' for r in RECIPES.values()]
  return '\n'.join(lines)


if __name__ == '__main__':
  print(table())
