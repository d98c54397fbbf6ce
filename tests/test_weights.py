"""PyTorch-layout weights: round trips, torchvision parity, and clear errors."""
import jax
import numpy as np
import pytest
from flax import nnx

import alexnet_jax
from alexnet_jax import sharding
from alexnet_jax import weights
from helpers import small_config


def params_equal(a, b):
  for x, y in zip(jax.tree.leaves(nnx.state(a, nnx.Param)),
                  jax.tree.leaves(nnx.state(b, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('variant', sorted(alexnet_jax.RECIPES))
def test_npz_round_trip_keeps_values_and_sharding(variant, tmp_path):
  config = small_config(variant)
  mesh = sharding.make_mesh(config.towers)
  source = alexnet_jax.create_model(config, seed=1, mesh=mesh)
  weights.export_state_dict(source, tmp_path / 'w.npz')
  target = alexnet_jax.create_model(config, seed=2, mesh=mesh)
  weights.import_state_dict(target, tmp_path / 'w.npz')
  params_equal(source, target)
  assert target.conv2.kernel[...].sharding == source.conv2.kernel[...].sharding


def test_paper_layout_is_caffes():
  m = alexnet_jax.create_model('paper')
  sd = weights.state_dict(m)
  assert {k: v.shape for k, v in sd.items()} == {
      'conv1.weight': (96, 3, 11, 11), 'conv1.bias': (96,),
      'conv2.weight': (256, 48, 5, 5), 'conv2.bias': (256,),  # groups=2
      'conv3.weight': (384, 256, 3, 3), 'conv3.bias': (384,),
      'conv4.weight': (384, 192, 3, 3), 'conv4.bias': (384,),  # groups=2
      'conv5.weight': (256, 192, 3, 3), 'conv5.bias': (256,),  # groups=2
      'fc6.weight': (4096, 9216), 'fc6.bias': (4096,),
      'fc7.weight': (4096, 4096), 'fc7.bias': (4096,),
      'fc8.weight': (1000, 4096), 'fc8.bias': (1000,)}
  # Tower-major channels: tower 1's first conv2 filter is output channel 128.
  np.testing.assert_array_equal(sd['conv2.weight'][128],
                                np.asarray(m.conv2.kernel[1, :, :, :, 0]).transpose(2, 0, 1))
  # fc6 reads a (C, H, W) flatten: column c*36 + h*6 + w is our row (h*6 + w)*256 + c.
  c, h, w = 130, 2, 5
  np.testing.assert_array_equal(sd['fc6.weight'][:2048, c * 36 + h * 6 + w],
                                np.asarray(m.fc6.kernel[0, (h * 6 + w) * 256 + c]))


def test_mismatches_are_one_line_messages_naming_the_key(tmp_path):
  m = alexnet_jax.create_model(small_config())
  sd = weights.state_dict(m)
  cases = [
      ({k: v for k, v in sd.items() if k != 'fc7.bias'}, "missing key 'fc7.bias'"),
      ({**sd, 'fc9.weight': sd['fc8.weight']}, "unexpected key 'fc9.weight'"),
      ({**sd, 'conv2.weight': sd['conv2.weight'][:, :3]}, "'conv2.weight' has shape"),
  ]
  for tensors, message in cases:
    with pytest.raises(ValueError, match=message) as e:
      weights.load_state_dict(m, tensors)
    assert '\n' not in str(e.value)
  # Weights of another variant name the first differing key.
  with pytest.raises(ValueError, match="missing key 'features.0.weight'"):
    weights.load_state_dict(alexnet_jax.create_model(small_config('owt')), sd)
  (tmp_path / 'bad.npz').write_bytes(b'not a zip file')
  with pytest.raises(ValueError, match='not a readable .npz'):
    weights.import_state_dict(m, tmp_path / 'bad.npz')
  with pytest.raises(FileNotFoundError, match='no file'):
    weights.import_state_dict(m, tmp_path / 'absent.npz')
  with pytest.raises(ValueError, match='must end in'):
    weights.export_state_dict(m, tmp_path / 'w.h5')
