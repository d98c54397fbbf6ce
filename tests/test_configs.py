"""Every config file and variant loads as the command line loads it, and validates: the net
builds (with the parameter count its source gives), the optimizer is valid, the batch splits
over the mesh."""
import pytest
from absl import flags

import alexnet_jax
from alexnet_jax import sharding
from alexnet_jax import train
import helpers

# configs/<file>:<variant> -> the net's parameters (paper.md s1, s5 and s6; the folder nets
# have a 2-class fc8: 60,965,224 - 4,097,000 + 4096 * 2 + 2).
CONFIGS = {
    'digits.py': 1_796_458,
    'paper.py': 60_965_224, 'paper.py:cuda_convnet': 60_965_224,
    'paper.py:one_tower': 40_702_632, 'paper.py:owt': 61_100_840,
    'paper.py:caffe': 60_965_224,
    'folder.py': 56_876_418, 'folder.py:cuda_convnet': 56_876_418,
    'transfer.py:head': 56_876_418, 'transfer.py:finetune': 56_876_418,
}


@pytest.mark.parametrize('spec', sorted(CONFIGS))
def test_every_config_loads_and_validates(spec):
  config = helpers.load_config(spec)
  train.check_config(config, sharding.make_mesh(config.model.towers))
  model = alexnet_jax.ModelSpec.from_config(config.model)
  assert model.param_count() == CONFIGS[spec]
  variant = spec.partition(':')[2]
  if spec.startswith('paper.py'):
    assert model.variant == (variant or 'paper') and config.num_epochs == 90
    assert config.batch_size == 128 and config.optim.base_lr == 0.01
  if spec.startswith('transfer.py'):
    assert config.optim.pretrained_lr_multiplier == (0.0 if variant == 'head' else 0.1)
    assert config.optim.new_layers == ('fc8',)


def test_overrides_reach_the_loaded_config():
  config = helpers.load_config('paper.py:cuda_convnet', 'optim.base_lr=0.02',
                               'model.num_classes=10')
  assert config.optim.base_lr == 0.02 and config.model.num_classes == 10
  assert config.optim.bias_lr_multiplier == 2.0 and config.data.divide == 1.1


def test_an_unknown_variant_or_mode_is_refused():
  with pytest.raises(flags.IllegalFlagValueError, match='unknown variant'):
    helpers.load_config('paper.py:vgg')
  with pytest.raises(flags.IllegalFlagValueError,
                     match="transfer: mode must be 'head' or 'finetune'"):
    helpers.load_config('transfer.py:both')
