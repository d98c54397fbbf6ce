"""The model: the paper's layers, parameter counts, init, LRN, each recipe's net, and one-line
errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import alexnet_jax
from alexnet_jax import model as model_lib
from alexnet_jax import ops
from alexnet_jax import sharding
from helpers import small_config

# docs/paper.md s1.
PAPER_LAYER_PARAMS = {'conv1': 34_944, 'conv2': 307_456, 'conv3': 885_120, 'conv4': 663_936,
                      'conv5': 442_624, 'fc6': 37_752_832, 'fc7': 16_781_312,
                      'fc8': 4_097_000}


def abstract_model(config, mesh=None):
  """The model's structure and shapes, without drawing 61M random numbers."""
  spec = alexnet_jax.ModelSpec.from_config(config)
  mesh = mesh or sharding.single_device_mesh()
  return nnx.eval_shape(lambda: model_lib.AlexNet(spec, mesh=mesh, key=jax.random.key(0)))


def test_paper_parameters_per_layer():
  m = abstract_model(alexnet_jax.model_config('paper'))
  counted = sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert counted == m.spec.param_count() == 60_965_224
  for layer, expected in PAPER_LAYER_PARAMS.items():
    p = m.layer(layer)
    assert p.kernel.size + p.bias.size == expected, layer
  # Two towers of 48, 128, 192, 192, 128 conv filters and 2048 fc units; fc8 split 2 x 500.
  assert m.conv1.kernel.shape == (2, 11, 11, 3, 48)
  assert m.conv2.kernel.shape == (2, 5, 5, 48, 128)  # Own tower only.
  assert m.conv3.kernel.shape == (2, 3, 3, 256, 192)  # Both towers.
  assert m.conv4.kernel.shape == (2, 3, 3, 192, 192)
  assert m.conv5.kernel.shape == (2, 3, 3, 192, 128)
  assert m.fc6.kernel.shape == (2, 9216, 2048)
  assert m.fc7.kernel.shape == (2, 4096, 2048)
  assert m.fc8.kernel.shape == (2, 4096, 500)


@pytest.mark.parametrize('size,pads', [(224, (0, 3)), (227, (0, 0))])
def test_reaches_6x6x256_before_fc6(size, pads):
  config = alexnet_jax.model_config('paper')
  config.image_size = size
  spec = alexnet_jax.ModelSpec.from_config(config)
  assert spec.conv1_pads == pads
  m = abstract_model(config)
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  shapes = {p: jax.eval_shape(lambda m, x, p=p: m.features(x, p), m, images).shape
            for p in ('conv1', 'conv2', 'conv5', 'pool5', 'fc7', 'logits')}
  assert shapes == {'conv1': (2, 55, 55, 96), 'conv2': (2, 27, 27, 256),
                    'conv5': (2, 13, 13, 256), 'pool5': (2, 6, 6, 256), 'fc7': (2, 4096),
                    'logits': (2, 1000)}


def test_init_statistics():
  """N(0, 0.01^2) weights; biases 1 on conv2, conv4, conv5, fc6, fc7, else 0 (paper s3)."""
  m = alexnet_jax.create_model('paper', seed=3)
  ones = {'conv2', 'conv4', 'conv5', 'fc6', 'fc7'}
  for layer in model_lib.LAYERS:
    w = np.asarray(m.layer(layer).kernel[...])
    b = np.asarray(m.layer(layer).bias[...])
    # The std of n normal draws is within 5/sqrt(2n) of the truth (5 sigma).
    assert abs(w.std() - 0.01) < 0.01 * 5 / np.sqrt(2 * w.size), layer
    assert abs(w.mean()) < 0.01 * 5 / np.sqrt(w.size), layer
    np.testing.assert_array_equal(b, 1.0 if layer in ones else 0.0, err_msg=layer)
  # The two towers are drawn independently.
  assert not np.allclose(m.conv1.kernel[0], m.conv1.kernel[1])


# The fields that make each recipe's net what docs/paper.md says it is (s1, s2, s6).
FIDELITY = {
    'paper': dict(towers=2, conv_filters=(96, 256, 384, 384, 256), fc_units=(4096, 4096),
                  image_size=224, conv1_ceil_mode=True, pool_window=3, pool_stride=2,
                  lrn=True, lrn_size=5, lrn_alpha=1e-4, lrn_beta=0.75, lrn_k=2.0,
                  lrn_alpha_over_n=True, lrn_across_towers=False, lrn1_before_relu=False,
                  extra_norm2=False, dropout_rate=0.5, dropout_inverted=False,
                  dropout_before_fc=False, cross_tower=True, fc8_per_tower=True,
                  conv_padding=(2, 1, 1, 1), init='gaussian', weight_std=(0.01,) * 8,
                  bias_init=(0., 1., 0., 1., 1., 1., 1., 0.)),
    # Run 145 as coded: s2.1-s2.5, s2.7 and s2.8 (s2.6 is the optimizer's).
    'cuda_convnet': dict(image_size=224, conv1_ceil_mode=True, lrn_alpha_over_n=True,
                         lrn_k=2.0, lrn1_before_relu=True, extra_norm2=True,
                         weight_std=(0.01, 0.01, 0.03, 0.03, 0.03, 0.01, 0.01, 0.01),
                         fc8_per_tower=False, dropout_inverted=False, pool_ceil_mode=True),
    'caffe': dict(image_size=227, conv1_ceil_mode=False, lrn_k=1.0, lrn_across_towers=True,
                  lrn1_before_relu=False, dropout_inverted=True, fc8_per_tower=False,
                  weight_std=(0.01, 0.01, 0.01, 0.01, 0.01, 0.005, 0.005, 0.01),
                  bias_init=(0., 0.1, 0., 0.1, 0.1, 0.1, 0.1, 0.)),
    'owt': dict(towers=1, conv_filters=(64, 192, 384, 256, 256), conv1_padding=2,
                conv1_ceil_mode=False, adaptive_pool=6, lrn=False, dropout_inverted=True,
                dropout_before_fc=True, init='pytorch', weights_layout='torchvision'),
}


@pytest.mark.parametrize('recipe', sorted(FIDELITY))
def test_recipe_fidelity_switches(recipe):
  spec = alexnet_jax.ModelSpec.from_config(alexnet_jax.model_config(recipe))
  assert {k: getattr(spec, k) for k in FIDELITY[recipe]} == FIDELITY[recipe]


def within_map_loop(a, size=5, scale=1e-3, beta=0.75, k=1.0):
  """cuda-convnet's within-map normalization, one pixel at a time (zero padded)."""
  out = np.empty_like(a)
  _, h, w, _ = a.shape
  r = size // 2
  for y in range(h):
    for x in range(w):
      window = a[:, max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].astype(np.float64)
      s = (window ** 2).sum((1, 2))
      out[:, y, x] = a[:, y, x] / (k + scale / size**2 * s) ** beta
  return out


def test_within_map_norm_matches_the_formula():
  a = np.random.default_rng(3).normal(0, 20, (2, 7, 6, 3)).astype(np.float32)
  np.testing.assert_allclose(model_lib.within_map_norm(jnp.asarray(a)), within_map_loop(a),
                             rtol=1e-5)


def test_lrn1_before_relu_normalizes_pre_activations():
  """The code's conv1: LRN on the raw conv output, then ReLU; the paper: ReLU, then LRN."""
  config = small_config(lrn1_before_relu=True, lrn_alpha=1.0, lrn_alpha_over_n=False)
  m = alexnet_jax.create_model(config, seed=4)
  x = jax.random.normal(jax.random.key(0), (2, 63, 63, 3))
  got = np.asarray(m.features(x, 'conv1'))  # After the code's LRN and ReLU.
  k, b = np.asarray(m.conv1.kernel[...]), np.asarray(m.conv1.bias[...])
  lo, hi = m.spec.conv1_pads
  pre = [np.asarray(ops.conv(x, k[t], 2, ((lo, hi), (lo, hi))) + b[t]) for t in range(2)]
  want = np.concatenate([np.maximum(lrn_loop(p, 5, 1.0, 0.75, 2.0, False), 0) for p in pre], -1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  paper = alexnet_jax.create_model(small_config(lrn_alpha=1.0, lrn_alpha_over_n=False), seed=4)
  np.testing.assert_allclose(paper.features(x, 'conv1'),  # Paper: ReLU only so far.
                             np.concatenate([np.maximum(p, 0) for p in pre], -1), rtol=1e-5,
                             atol=1e-6)


def dense(x, kernel, bias):
  return np.concatenate([x @ kernel[t] + bias[t] for t in range(kernel.shape[0])], -1)


@pytest.mark.parametrize('variant,inverted', [('paper', False), ('paper', True),
                                              ('owt', True)])
def test_train_mode_dropout_by_hand(variant, inverted):
  """Masks at the right sites, kept units unscaled (paper) or scaled by 1/keep (inverted)."""
  config = small_config(variant, dropout_inverted=inverted)
  mesh = sharding.make_mesh(config.towers)
  m = alexnet_jax.create_model(config, seed=6, mesh=mesh)
  x = jax.random.normal(jax.random.key(0), (4, 63, 63, 3))
  key = jax.random.key(11)
  got = np.asarray(m(x, train=True, dropout_key=key))
  # The masks, drawn as the model draws them: one per site, sorted by site name.
  sites = sorted(m.spec.dropout_sites().items())
  masks = [np.asarray(jax.random.bernoulli(jax.random.fold_in(key, i), 0.5,
                                           (4, m.spec.towers, *shape)))
           for i, (_, shape) in enumerate(sites)]
  scale = 2.0 if inverted else 1.0
  p = {l: (np.asarray(m.layer(l).kernel[...]), np.asarray(m.layer(l).bias[...]))
       for l in ('fc6', 'fc7', 'fc8')}
  relu = lambda v: np.maximum(v, 0)
  if m.spec.dropout_before_fc:  # torchvision: dropout on fc6's and fc7's inputs.
    pool5 = np.asarray(m.features(x, 'pool5'))
    fc6 = relu(dense((pool5 * masks[0][:, 0] * scale).reshape(4, -1), *p['fc6']))
    fc7 = relu(dense(fc6 * masks[1].reshape(4, -1) * scale, *p['fc7']))
  else:  # The paper: dropout on fc6's and fc7's outputs.
    fc6 = np.asarray(m.features(x, 'fc6')) * masks[0].reshape(4, -1) * scale
    fc7 = relu(dense(fc6, *p['fc7'])) * masks[1].reshape(4, -1) * scale
  np.testing.assert_allclose(got, dense(fc7, *p['fc8']), rtol=1e-4, atol=1e-5)
  assert 0.4 < np.mean(np.concatenate([mk.ravel() for mk in masks])) < 0.6


def test_init_of_the_recipes():
  cc = alexnet_jax.create_model(small_config('cuda_convnet', width=1.0))
  for layer, std in (('conv1', 0.01), ('conv3', 0.03), ('conv5', 0.03), ('fc6', 0.01)):
    assert abs(np.asarray(cc.layer(layer).kernel[...]).std() - std) < 0.05 * std, layer
  owt = alexnet_jax.create_model(small_config('owt'))
  for layer in model_lib.LAYERS:
    w = np.asarray(owt.layer(layer).kernel[...])
    # PyTorch's default: U(+-1/sqrt(fan_in)), up to float32 rounding of the bound.
    bound = (1 + 1e-6) / np.sqrt(np.prod(w.shape[1:-1]))
    assert w.max() <= bound and w.min() >= -bound and w.max() > 0.9 * bound, layer
    assert np.abs(np.asarray(owt.layer(layer).bias[...])).max() <= bound, layer
  caffe = alexnet_jax.ModelSpec.from_config(alexnet_jax.model_config('caffe'))
  assert caffe.bias_init == (0., 0.1, 0., 0.1, 0.1, 0.1, 0.1, 0.)
  small = alexnet_jax.create_model('small', seed=2)  # He: std sqrt(2 / fan_in) up to fc7.
  for layer in model_lib.LAYERS:
    w = np.asarray(small.layer(layer).kernel[...])
    std = 0.01 if layer == 'fc8' else np.sqrt(2 / np.prod(w.shape[1:-1]))
    assert abs(w.std() - std) < 0.05 * std, layer


def test_same_seed_same_weights_on_every_mesh():
  config = small_config()
  a = alexnet_jax.create_model(config, seed=7)
  b = alexnet_jax.create_model(config, seed=7, mesh=sharding.make_mesh(2))
  c = alexnet_jax.create_model(config, seed=8)
  for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert not np.array_equal(np.asarray(a.fc6.kernel[...]), np.asarray(c.fc6.kernel[...]))


def lrn_loop(a, n, alpha, beta, k, alpha_over_n):
  """The LRN formula (docs/paper.md s1), one channel at a time."""
  c_total = a.shape[-1]
  out = np.empty_like(a)
  scale = alpha / n if alpha_over_n else alpha
  for i in range(c_total):
    lo, hi = max(0, i - n // 2), min(c_total - 1, i + n // 2)
    s = sum(a[..., j].astype(np.float64) ** 2 for j in range(lo, hi + 1))
    out[..., i] = a[..., i] / (k + scale * s) ** beta
  return out


@pytest.mark.parametrize('alpha_over_n', [True, False])
def test_lrn_matches_the_formula(alpha_over_n):
  a = np.random.default_rng(0).normal(0, 30, (2, 3, 4, 11)).astype(np.float32)
  got = ops.local_response_norm(jnp.asarray(a), size=5, alpha=1e-4, beta=0.75, k=2.0,
                                      alpha_over_n=alpha_over_n)
  np.testing.assert_allclose(got, lrn_loop(a, 5, 1e-4, 0.75, 2.0, alpha_over_n), rtol=1e-5)


def test_adaptive_pool_matches_torch_bins():
  x = np.random.default_rng(1).normal(size=(1, 5, 5, 2)).astype(np.float32)
  got = np.asarray(model_lib.adaptive_avg_pool(jnp.asarray(x), 3))
  # Bins of 5 -> 3: rows [0,2), [1,4), [3,5).
  bins = [(0, 2), (1, 4), (3, 5)]
  want = np.array([[x[0, a:b, c:d].mean((0, 1)) for c, d in bins] for a, b in bins])
  # float32 sums in another order than numpy's: equal to rounding (values are O(0.1)).
  np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-7)


TOWER1_X3 = np.array([1.0, 3.0], np.float32).reshape(2, 1, 1, 1, 1)  # Scales tower 1 only.


def test_tower_locality():
  """Tower 1's conv1 reaches tower 0 only through the cross-tower conv3."""
  mesh = sharding.make_mesh(2)
  m = alexnet_jax.create_model(small_config(), mesh=mesh)
  images = jax.random.normal(jax.random.key(0), (4, 63, 63, 3))
  before = {p: np.asarray(m.features(images, p)) for p in ('conv2', 'conv3')}
  with jax.set_mesh(mesh):  # Eager ops on arrays of an explicit mesh run under it.
    m.conv1.kernel[...] = m.conv1.kernel[...] * TOWER1_X3
  after = {p: np.asarray(m.features(images, p)) for p in ('conv2', 'conv3')}
  half = before['conv2'].shape[-1] // 2
  np.testing.assert_array_equal(after['conv2'][..., :half], before['conv2'][..., :half])
  assert not np.array_equal(after['conv2'][..., half:], before['conv2'][..., half:])
  half3 = before['conv3'].shape[-1] // 2
  assert not np.array_equal(after['conv3'][..., :half3], before['conv3'][..., :half3])


def test_no_cross_tower_keeps_towers_apart_until_fc8():
  mesh = sharding.make_mesh(2)
  m = alexnet_jax.create_model(small_config(cross_tower=False), mesh=mesh)
  assert m.conv3.kernel.shape[-2] == m.conv2.kernel.shape[-1]  # Own tower's channels only.
  images = jax.random.normal(jax.random.key(0), (4, 63, 63, 3))
  before = np.asarray(m.features(images, 'fc7'))
  with jax.set_mesh(mesh):
    m.conv1.kernel[...] = m.conv1.kernel[...] * TOWER1_X3
  after = np.asarray(m.features(images, 'fc7'))
  half = before.shape[-1] // 2
  np.testing.assert_array_equal(after[:, :half], before[:, :half])
  assert not np.array_equal(after[:, half:], before[:, half:])


@pytest.mark.parametrize('variant', sorted(alexnet_jax.RECIPES))
def test_every_recipes_net_builds_and_runs_in_both_modes(variant):
  """Finite logits in evaluation; in training, other outputs (dropout), the same for the same
  key. (Every recipe's parameter count: test_recipes; training steps: test_train.)"""
  m = alexnet_jax.create_model(small_config(variant), mesh=sharding.make_mesh(
      alexnet_jax.ModelSpec.from_config(small_config(variant)).towers))
  images = jax.random.normal(jax.random.key(0), (4, 63, 63, 3))
  logits = m(images)
  assert logits.shape == (4, 10) and np.isfinite(np.asarray(logits)).all()
  train = m(images, train=True, dropout_key=jax.random.key(1))
  assert train.shape == (4, 10) and not np.allclose(np.asarray(train), np.asarray(logits))
  again = m(images, train=True, dropout_key=jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(train), np.asarray(again))


def test_ablation_switches_build_and_change_the_net():
  """Each switch gives a working net (finite float32 logits) that computes something else
  than the paper's net from the same seed, at pool5 or fc7 (at init, fc6-fc8's biases of 1
  and weights of 0.01 leave the logits nearly constant); exact outputs are checked against
  the PyTorch reference in test_sharding."""
  x = np.random.default_rng(0).normal(0, 60, size=(2, 63, 63, 3)).astype(np.float32)
  points = ('pool5', 'fc7')
  paper = alexnet_jax.create_model(small_config(), seed=1)
  base = {p: np.asarray(paper.features(x, p)) for p in points}
  for overrides in (dict(activation='tanh'), dict(lrn=False), dict(pool_window=2),
                    dict(dropout_rate=0.0), dict(dropout_inverted=True),
                    dict(cross_tower=False), dict(num_classes=7, fc8_per_tower=False),
                    dict(width=0.25, conv1_kernel=3, conv1_stride=3),
                    dict(compute_dtype='bfloat16')):
    config = small_config(**overrides)
    net = alexnet_jax.create_model(config, seed=1)
    logits = net(x)
    assert logits.shape == (2, config.num_classes), overrides
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all(), overrides
    if 'num_classes' not in overrides:
      changed = [p for p in points if net.features(x, p).shape != base[p].shape or not
                 np.allclose(np.asarray(net.features(x, p), np.float32), base[p], rtol=1e-3,
                             atol=1e-6)]
      assert changed, overrides


def test_paper_style_dropout_scales_at_test_time():
  """Eval output of a paper-dropout net equals an inverted-dropout net with fc7/fc8 x 0.5."""
  paper = alexnet_jax.create_model(small_config(), seed=1)
  inverted = alexnet_jax.create_model(small_config(dropout_inverted=True), seed=1)
  x = jax.random.normal(jax.random.key(2), (2, 63, 63, 3))
  np.testing.assert_allclose(paper.features(x, 'fc6'), inverted.features(x, 'fc6'))
  # fc7 reads 0.5 * fc6: with ReLU and biases this is not a plain rescale, so check the
  # paper net's fc7 by hand from its own fc6 features.
  fc6 = np.asarray(paper.features(x, 'fc6')) * 0.5
  k, b = np.asarray(paper.fc7.kernel[...]), np.asarray(paper.fc7.bias[...])
  want = np.concatenate([np.maximum(fc6 @ k[t] + b[t], 0) for t in range(2)], -1)
  np.testing.assert_allclose(paper.features(x, 'fc7'), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('overrides,field', [
    (dict(variant='alexnet9'), 'model.variant'),
    (dict(fc_units=(4096,)), 'model.fc_units'),
    (dict(conv_padding=(2, 1, 1, -1)), 'model.conv_padding'),
    (dict(init='xavier'), 'model.init'),
    (dict(weights_layout='onnx'), 'model.weights_layout'),
    (dict(towers=3), 'model.towers'),
    (dict(num_classes=7), 'model.fc8_per_tower'),
    (dict(image_size=20), 'model.image_size'),
    (dict(activation='gelu'), 'model.activation'),
    (dict(dropout_rate=1.0), 'model.dropout_rate'),
    (dict(compute_dtype='int8'), 'model.compute_dtype'),
    (dict(lrn_sizee=5), 'model.lrn_sizee'),
    (dict(conv1_stride=0), 'model.conv1_stride'),
    (dict(pool_stride=0), 'model.pool_stride'),
    (dict(fc_units=(0, 8)), 'model.fc_units'),
    (dict(adaptive_pool=-1), 'model.adaptive_pool'),
])
def test_bad_config_is_one_line_error_naming_the_field(overrides, field):
  config = small_config().to_dict()
  config.update(overrides)
  with pytest.raises(ValueError, match=field.replace('.', r'\.')) as e:
    alexnet_jax.ModelSpec.from_config(config)
  assert '\n' not in str(e.value)


def test_bad_images_and_mesh_are_clear_errors():
  m = alexnet_jax.create_model(small_config(), mesh=sharding.make_mesh(2))
  with pytest.raises(ValueError, match='images: expected'):
    m(jnp.ones((4, 64, 64, 3)))
  with pytest.raises(ValueError, match='not divisible'):
    m(jnp.ones((3, 63, 63, 3)))
  with pytest.raises(ValueError, match='dropout_key'):
    m(jnp.ones((4, 63, 63, 3)), train=True)
  with pytest.raises(ValueError, match='one tower'):
    alexnet_jax.create_model(small_config('owt'), mesh=sharding.make_mesh(2))


def test_a_net_without_conv4_feeds_conv3_into_conv5(tmp_path):
  """The s5 ablation: removing a middle conv layer (conv4)."""
  from alexnet_jax import weights  # pylint: disable=g-import-not-at-top
  full = alexnet_jax.ModelSpec.from_config(alexnet_jax.model_config('paper'))
  config = alexnet_jax.model_config('paper')
  config.skip_conv4 = True
  spec = alexnet_jax.ModelSpec.from_config(config)
  assert 'conv4' not in spec.layers and len(spec.layers) == 7
  assert spec.param_count() == full.param_count() - 663_936 == 60_301_288
  assert spec.kernel_shape('conv5') == (3, 3, 192, 128)  # conv3's 192 per tower go in.
  net = alexnet_jax.create_model(small_config(skip_conv4=True))
  x = np.random.default_rng(0).normal(size=(4, 63, 63, 3)).astype(np.float32)
  assert net(x).shape == (4, 10)
  with pytest.raises(ValueError, match="unknown point 'conv4' for this net"):
    net.features(x, 'conv4')
  path = tmp_path / 'w.npz'
  weights.export_state_dict(net, path)
  assert not any(k.startswith('conv4') for k in np.load(path).files)
  again = weights.import_state_dict(alexnet_jax.create_model(small_config(skip_conv4=True),
                                                             seed=5), path)
  np.testing.assert_allclose(again(x), net(x), rtol=1e-6)
