"""experiments/benchmark.py: its PyTorch baseline is our net, and the command runs end to end."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import alexnet_jax
from alexnet_jax import config as config_lib
from alexnet_jax import train, weights
import benchmark
import helpers
from helpers import small_config
from torch_alexnet import TorchAlexNet


@pytest.mark.parametrize('config', [
    small_config(),
    benchmark.model_config('digits', 'float32')[0],
], ids=['paper_topology', 'digits'])
def test_the_pytorch_baseline_computes_our_logits(config):
  net = alexnet_jax.create_model(config, seed=3)
  theirs = TorchAlexNet(net.spec)
  theirs.load_state_dict({k: torch.from_numpy(v) for k, v in weights.state_dict(net).items()},
                         strict=True)
  theirs.eval()
  size = net.spec.image_size
  x = np.random.default_rng(0).normal(0, 1, (4, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    want = theirs(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  np.testing.assert_allclose(np.asarray(net(x)), want, rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_trains_with_float32_parameters_and_optimizer_state():
  config = small_config(compute_dtype='bfloat16')
  net = alexnet_jax.create_model(config)
  rng = np.random.default_rng(0)
  # bfloat16 logits are the float32 net's (same seed, same weights) to bfloat16 precision.
  x = rng.normal(0, 1, (4, 63, 63, 3)).astype(np.float32)
  f32 = alexnet_jax.create_model(small_config())
  np.testing.assert_allclose(np.asarray(net(x)), np.asarray(f32(x)), rtol=0.1, atol=0.05)
  graphdef, state, tx = train.init_state(net, config_lib.optim_fields())
  before = [np.asarray(p) for p in jax.tree.leaves(state.params)]
  step = train.make_train_step(graphdef, tx, seed=0, num_classes=10, divide=64.0)
  batch = {'image': rng.integers(0, 256, (8, 63, 63, 3), dtype=np.uint8),
           'label': np.arange(8, dtype=np.int32), 'flip': np.zeros(8, bool),
           'lighting': np.zeros((8, 3), np.float32)}
  new, metrics = step(state, batch, jnp.full((63, 63, 3), 128.0))
  assert float(metrics['finite']) == 1 and np.isfinite(float(metrics['loss']))
  leaves = jax.tree.leaves((new.params, new.opt_state))
  assert all(l.dtype == jnp.float32 for l in leaves if jnp.issubdtype(l.dtype, jnp.floating))
  moved = [np.abs(np.asarray(a) - b).max() for a, b in zip(jax.tree.leaves(new.params), before)]
  assert min(moved) > 0  # Every layer learned, in float32.


@pytest.mark.slow
def test_the_benchmark_prints_its_table():
  env = helpers.python_env(XLA_FLAGS='')  # The real CPU device, as a user runs it.
  out = helpers.run_python('experiments/benchmark.py', '--models=digits', '--repeats=1',
                           '--steps=1', '--no-record', env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  rows = [l for l in out.stdout.splitlines() if l.startswith('| digits')]
  assert [r.split('|')[3].strip() for r in rows] == ['train', 'train, host-normalized',
                                                     'inference']
  ratio = rows[0].split('|')[6].strip()
  assert ratio.endswith('x') and float(ratio[:-1]) > 0, rows[0]
