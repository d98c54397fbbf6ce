"""The paper's optimizer (s3): eps inside the momentum buffer across drops, the code's bias
treatment, run 145's per-layer rates and freezing, the plateau rule, and transfer learning's
rates."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import alexnet_jax
from alexnet_jax import config as config_lib
from alexnet_jax import optim
from alexnet_jax import recipes
from helpers import small_config


def numpy_paper_sgd(w, v, g, lr, *, wd=5e-4, momentum=0.9, lr_mult=1.0, decay=True):
  """paper s3: v <- 0.9 v - 0.0005 eps w - eps grad; w <- w + v."""
  v = momentum * v - (wd * lr * w if decay else 0) - lr * lr_mult * g
  return w + v, v


def step_at(tx, config, state, params, grads, epoch, lr):
  """One update at `epoch` with the schedule's rate `lr`: (params, state, updates)."""
  state = optim.with_rates(state, optim.rates_at(config, params, epoch, lr))
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state, updates


@pytest.mark.parametrize('bias_lr_multiplier,bias_weight_decay', [(1.0, True), (2.0, False)])
def test_update_rule_matches_the_paper_across_a_learning_rate_drop(bias_lr_multiplier,
                                                                   bias_weight_decay):
  config = config_lib.optim_fields()
  config.bias_lr_multiplier = bias_lr_multiplier
  config.bias_weight_decay = bias_weight_decay
  tx = optim.create(config)
  rng = np.random.default_rng(0)
  params = {'fc6': {'kernel': rng.normal(size=(3, 4)).astype(np.float32),
                    'bias': rng.normal(size=(4,)).astype(np.float32)}}
  state = tx.init(params)
  ref = {k: (params['fc6'][k].astype(np.float64), np.zeros_like(params['fc6'][k], np.float64))
         for k in ('kernel', 'bias')}
  lrs = [0.01, 0.01, 0.01, 0.001, 0.001, 0.0001]  # Two drops, the momentum buffer kept.
  for epoch, lr in enumerate(lrs):
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    params, state, updates = step_at(tx, config, state, params, grads, epoch, lr)
    # The train step adds the momentum buffer itself (in place): it must be the update.
    jax.tree.map(np.testing.assert_array_equal, optim.momentum_buffer(state), updates)
    for k in ('kernel', 'bias'):
      is_bias = k == 'bias'
      ref[k] = numpy_paper_sgd(*ref[k], grads['fc6'][k], lr,
                               lr_mult=bias_lr_multiplier if is_bias else 1.0,
                               decay=bias_weight_decay or not is_bias)
      np.testing.assert_allclose(params['fc6'][k], ref[k][0], rtol=1e-5, atol=1e-7)


def test_optax_sgd_takes_another_step_right_after_a_drop():
  """optax's sgd keeps eps outside the momentum buffer (v <- 0.9 v + g; w <- w - eps v): after
  eps drops from 0.01 to 0.001, the paper's step is -0.009 g - 0.001 g = -0.01 g, sgd's
  -0.001 * 1.9 g. Hence optim.py's own update."""
  config = config_lib.optim_fields()
  config.weight_decay = 0.0
  params, grads = {'w': np.zeros(3, np.float32)}, {'w': np.ones(3, np.float32)}
  tx, state = optim.create(config), optim.create(config).init(params)
  sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=0.01, momentum=0.9)
  sgd_state = sgd.init(params)
  for epoch, lr in enumerate((0.01, 0.001)):
    _, state, ours = step_at(tx, config, state, params, grads, epoch, lr)
    sgd_state.hyperparams['learning_rate'] = jnp.asarray(lr)
    theirs, sgd_state = sgd.update(grads, sgd_state, params)
  np.testing.assert_allclose(ours['w'], -0.01, rtol=1e-6)
  np.testing.assert_allclose(theirs['w'], -0.0019, rtol=1e-6)


def model_rates(config, epoch, lr):
  """{'conv1/kernel': eps, ...} of the small net's parameters."""
  _, params = nnx.split(alexnet_jax.create_model(small_config()), nnx.Param)
  rates = jax.tree_util.tree_leaves_with_path(optim.rates_at(config, params, epoch, lr))
  return {f'{path[0].key}/{path[1].key}': eps for path, eps in rates}


def test_bias_options_reach_the_models_own_parameters():
  """The rates and the decay see nnx's state paths (`...['fc6']['bias'].value`)."""
  config = config_lib.optim_fields()
  config.bias_lr_multiplier, config.bias_weight_decay = 2.0, False
  _, params = nnx.split(alexnet_jax.create_model(small_config()), nnx.Param)
  tx = optim.create(config)
  grads = jax.tree.map(jnp.ones_like, params)
  state = optim.with_rates(jax.jit(tx.init)(params),
                           optim.rates_at(config, params, 0, config.base_lr))
  updates, _ = jax.jit(tx.update)(grads, state, params)
  lr, wd = config.base_lr, config.weight_decay
  np.testing.assert_allclose(updates['fc6']['bias'][...], -2 * lr, rtol=1e-6)
  np.testing.assert_allclose(updates['fc6']['kernel'][...],
                             -lr * (1 + wd * params['fc6']['kernel'][...]), rtol=1e-5)


def test_run_145s_rates_epoch_by_epoch():
  """:cuda_convnet's schedule as run 145's log and final layer-params file have it: weights
  0.01 / 10 at 25, 51, 79; biases 0.02 throughout; conv1's weights at 1e-5 from 67 and the
  whole of conv1 at 0 from 72 (docs/paper.md s3)."""
  config = recipes.config('cuda_convnet').optim
  expect = {0: (0.01, 0.02, 0.01, 0.02), 25: (1e-3, 0.02, 1e-3, 0.02),
            66: (1e-4, 0.02, 1e-4, 0.02), 67: (1e-4, 0.02, 1e-5, 0.02),
            72: (1e-4, 0.02, 0.0, 0.0), 79: (1e-5, 0.02, 0.0, 0.0), 90: (1e-5, 0.02, 0.0, 0.0)}
  for epoch, (weights, biases, conv1_weights, conv1_bias) in expect.items():
    lr = optim.manual_lr(config.base_lr, epoch, config.manual_drop_epochs)
    rates = model_rates(config, epoch, lr)
    assert rates.pop('conv1/kernel') == pytest.approx(conv1_weights), epoch
    assert rates.pop('conv1/bias') == pytest.approx(conv1_bias), epoch
    for name, eps in rates.items():
      assert eps == pytest.approx(biases if name.endswith('bias') else weights), (epoch, name)


def test_a_frozen_array_keeps_its_value_and_momentum_bit_for_bit():
  config = config_lib.optim_fields()
  config.freeze = (('fc6', 1),)
  tx = optim.create(config)
  rng = np.random.default_rng(1)
  params = {'fc6': {'kernel': rng.normal(size=(3, 4)).astype(np.float32)},
            'fc7': {'kernel': rng.normal(size=(4, 2)).astype(np.float32)}}
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  params, state, _ = step_at(tx, config, tx.init(params), params, grads, 0, 0.01)
  momentum = np.asarray(state.momentum['fc6']['kernel'])
  assert np.any(momentum)
  frozen, state, updates = step_at(tx, config, state, params, grads, 1, 0.01)
  np.testing.assert_array_equal(updates['fc6']['kernel'], 0)
  np.testing.assert_array_equal(frozen['fc6']['kernel'], params['fc6']['kernel'])
  np.testing.assert_array_equal(state.momentum['fc6']['kernel'], momentum)
  assert np.all(frozen['fc7']['kernel'] != params['fc7']['kernel'])


@pytest.mark.parametrize('field,value,message', [
    ('freeze', (('conv9', 3),), "optim.freeze: no layer 'conv9' in this net"),
    ('freeze', (('conv1',),), "optim.freeze: each entry is ('layer', epoch)"),
    ('layer_lr_multipliers', (('conv1', 5, -1.0),),
     "optim.layer_lr_multipliers: each entry is ('layer', epoch, multiplier >= 0)")])
def test_a_malformed_layer_schedule_fails_in_one_line(field, value, message):
  config = config_lib.optim_fields()
  config[field] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    optim.check(config, config_lib.LAYERS)


def test_plateau_divides_by_ten_at_most_three_times():
  p = optim.Plateau(0.01, patience=2, threshold=1e-3, max_drops=3)
  drops = [p.update(e) for e in [0.5, 0.4, 0.4, 0.3999, 0.35, 0.36, 0.37, 0.37, 0.37,
                                 0.37, 0.37, 0.37, 0.37, 0.37]]
  assert drops == [False, False, False, True, False, False, True, False, True, False, False,
                   False, False, False]
  assert p.lr == pytest.approx(1e-5) and p.drops == 3
  q = optim.Plateau(0.01)
  q.restore(json.loads(json.dumps(p.state())))
  assert q.state() == p.state()
  assert [optim.manual_lr(0.01, e, (25, 51, 79)) for e in (0, 24, 25, 50, 51, 79, 90)] == \
      pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-5, 1e-5])


def test_finetuning_scales_the_pretrained_layers_rates():
  config = config_lib.optim_fields()
  config.pretrained_lr_multiplier = 0.1
  rates = model_rates(config, 0, config.base_lr)
  assert rates['fc8/kernel'] == rates['fc8/bias'] == pytest.approx(config.base_lr)
  assert rates['conv2/kernel'] == rates['fc7/bias'] == pytest.approx(0.1 * config.base_lr)
