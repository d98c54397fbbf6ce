"""Every config file with every recipe loads as the command lines load it and validates: the
net builds with the recipe's parameter count, the optimizer is valid, the batch splits over
the mesh; and the files change nothing of the recipe but the data's place."""
import re

import pytest
from absl import flags

import alexnet_jax
from alexnet_jax import config as config_lib
from alexnet_jax import recipes
from alexnet_jax import sharding
from alexnet_jax import train
import helpers

def specs():
  yield 'digits.py', 'small'
  for name in recipes.RECIPES:
    yield f'paper.py:{name}', name
    yield f'folder.py:{name}', name
  yield 'transfer.py:head', 'paper'
  yield 'transfer.py:finetune,owt', 'owt'


@pytest.mark.parametrize('spec,recipe', list(specs()))
def test_every_config_loads_and_validates(spec, recipe):
  config = helpers.load_config(spec)
  assert config.recipe == recipe
  own_images = spec.startswith(('folder', 'transfer'))
  if own_images:  # The class count is the data's (0 until fitted): one fc8 for any count.
    assert config.data.fit and not config.model.fc8_per_tower
    assert config.model.num_classes == 0
    config.model.num_classes = 2
  train.check_config(config, sharding.make_mesh(config.model.towers))
  params = alexnet_jax.ModelSpec.from_config(config.model).param_count()
  if own_images:
    assert params <= recipes.get(recipe).params
  else:
    assert params == recipes.get(recipe).params
  if spec.startswith(('transfer', 'digits')):
    return  # Transfer learning sets its own rates and epochs, the digits their epochs.
  # The file sets where the data is and how it is read, never the recipe's own fields.
  want = recipes.config(recipe)
  for name in recipes.get(recipe).changes:
    section, _, field = name.rpartition('.')
    ours = config[section][field] if section else config[field]
    theirs = want[section][field] if section else want[field]
    if name not in ('data.mean', 'model.fc8_per_tower', 'data.source', 'model.num_classes'):
      assert ours == theirs, (spec, name)


def test_transfer_modes_set_the_rates():
  head, finetune = (helpers.load_config(f'transfer.py:{m}') for m in ('head', 'finetune'))
  assert head.optim.pretrained_lr_multiplier == 0.0 and head.optim.new_layers == ('fc8',)
  assert finetune.optim.pretrained_lr_multiplier == 0.1


def test_overrides_reach_the_loaded_config():
  config = helpers.load_config('paper.py:cuda_convnet', 'optim.base_lr=0.02',
                               'model.num_classes=10')
  assert config.optim.base_lr == 0.02 and config.model.num_classes == 10
  assert config.optim.bias_lr_multiplier == 2.0 and config.data.lighting_rescale


def test_an_unknown_recipe_or_mode_is_refused():
  with pytest.raises(flags.IllegalFlagValueError, match="unknown recipe 'vgg'"):
    helpers.load_config('paper.py:vgg')
  with pytest.raises(flags.IllegalFlagValueError, match="the mode must be 'head' or"):
    helpers.load_config('transfer.py:both')


def test_every_field_of_the_schema_has_a_comment():
  """config.py comments each field once: on its line, or on the lines just above it."""
  lines = (helpers.REPO / 'alexnet_jax' / 'config.py').read_text().splitlines()
  for i, line in enumerate(lines):
    stripped = line.strip()
    if stripped.startswith('c.') and ' = ' in stripped and 'ConfigDict' not in stripped \
        and '_fields()' not in stripped:
      assert '#' in line or lines[i - 1].strip().startswith('#'), line
  assert config_lib.base_config().to_dict().keys() >= {'model', 'data', 'optim', 'eval',
                                                        'checkpoint', 'distributed'}


@pytest.mark.slow
def test_help_lists_every_flag_the_command_takes(tmp_path):
  """--help, not only --helpfull, lists the shared flags: the model's and --config."""
  wanted = {'main': ('--config', '--workdir'),
            'evaluate': ('--workdir', '--checkpoint', '--weights', '--config', '--ensemble'),
            'predict': ('--workdir', '--checkpoint', '--weights', '--config'),
            'features': ('--workdir', '--checkpoint', '--weights', '--config')}
  runs = {c: helpers.Process('-m', f'alexnet_jax.{c}', '--help', log=tmp_path / c)
          for c in wanted}  # Side by side: each is mostly imports.
  for command, flags_wanted in wanted.items():
    runs[command].popen.wait(timeout=120)
    out = runs[command].output()
    assert runs[command].returncode == 0 and 'Traceback' not in out, out[-2000:]
    for flag in flags_wanted:
      assert re.search(rf'^\s+{flag}:', out, re.M), (command, flag, out[-3000:])
