"""The paper's optimizer (s3): eps inside the momentum buffer across drops, the code's bias
treatment, the plateau rule, and transfer learning's rates."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import alexnet_jax
from alexnet_jax import config as config_lib
from alexnet_jax import optim
from helpers import small_config


def numpy_paper_sgd(w, v, g, lr, *, wd=5e-4, momentum=0.9, lr_mult=1.0, decay=True):
  """paper s3: v <- 0.9 v - 0.0005 eps w - eps grad; w <- w + v."""
  v = momentum * v - (wd * lr * w if decay else 0) - lr * lr_mult * g
  return w + v, v


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
  for lr in lrs:
    state = optim.set_lr(state, lr)
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    updates, state = tx.update(grads, state, params)
    # The train step adds the momentum buffer itself (in place): it must be the update.
    jax.tree.map(np.testing.assert_array_equal, optim.momentum_buffer(state), updates)
    params = optax.apply_updates(params, updates)
    for k in ('kernel', 'bias'):
      is_bias = k == 'bias'
      ref[k] = numpy_paper_sgd(*ref[k], grads['fc6'][k], lr,
                               lr_mult=bias_lr_multiplier if is_bias else 1.0,
                               decay=bias_weight_decay or not is_bias)
      np.testing.assert_allclose(params['fc6'][k], ref[k][0], rtol=1e-5, atol=1e-7)
  assert float(optim.learning_rate(state)) == pytest.approx(1e-4)  # The last one set.


def test_optax_sgd_takes_another_step_right_after_a_drop():
  """optax's sgd keeps eps outside the momentum buffer (v <- 0.9 v + g; w <- w - eps v): after
  eps drops from 0.01 to 0.001, the paper's step is -0.009 g - 0.001 g = -0.01 g, sgd's
  -0.001 * 1.9 g. Hence optim.py's own chain."""
  config = config_lib.optim_fields()
  config.weight_decay = 0.0
  params, grads = {'w': np.zeros(3, np.float32)}, {'w': np.ones(3, np.float32)}
  sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=0.01, momentum=0.9)
  steps = {}
  for name, tx in (('paper', optim.create(config)), ('sgd', sgd)):
    state = tx.init(params)
    for lr in (0.01, 0.001):
      state.hyperparams['learning_rate'] = jnp.asarray(lr)
      updates, state = tx.update(grads, state, params)
    steps[name] = np.asarray(updates['w'])
  np.testing.assert_allclose(steps['paper'], -0.01, rtol=1e-6)
  np.testing.assert_allclose(steps['sgd'], -0.0019, rtol=1e-6)


def test_bias_options_reach_the_models_own_parameters():
  """The masks see nnx's state paths (`...['fc6']['bias'].value`), not just plain dicts."""
  config = config_lib.optim_fields()
  config.bias_lr_multiplier, config.bias_weight_decay = 2.0, False
  _, params = nnx.split(alexnet_jax.create_model(small_config()), nnx.Param)
  tx = optim.create(config)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
  lr, wd = config.base_lr, config.weight_decay
  np.testing.assert_allclose(updates['fc6']['bias'][...], -2 * lr, rtol=1e-6)
  np.testing.assert_allclose(updates['fc6']['kernel'][...],
                             -lr * (1 + wd * params['fc6']['kernel'][...]), rtol=1e-5)


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


def test_finetuning_scales_the_pretrained_layers_updates():
  config = config_lib.optim_fields()
  config.pretrained_lr_multiplier, config.weight_decay = 0.1, 0.0
  _, params = nnx.split(alexnet_jax.create_model(small_config()), nnx.Param)
  tx = optim.create(config)
  grads = jax.tree.map(jax.numpy.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
  np.testing.assert_allclose(updates['fc8']['kernel'][...], -config.base_lr, rtol=1e-6)
  np.testing.assert_allclose(updates['conv2']['kernel'][...], -0.1 * config.base_lr, rtol=1e-6)
