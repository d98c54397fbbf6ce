"""The experiments that measure speed: benchmark.py's PyTorch baseline is our net, and each
command runs end to end with a table whose numbers agree with each other."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import alexnet_jax
from alexnet_jax import backends
from alexnet_jax import config as config_lib
from alexnet_jax import ops
from alexnet_jax import preprocess
from alexnet_jax import train, weights
import benchmark
import helpers
from helpers import small_config
from torch_alexnet import TorchAlexNet


@pytest.mark.parametrize('config', [
    small_config(),
    small_config('owt'),
    benchmark.model_config('digits', 'float32')[0],
    # Ceil-mode windows smaller than their stride: pool1's 30 columns give 10 windows, not
    # 11 (an 11th would start past the edge and see only padding).
    small_config(pool_window=2, pool_stride=3, pool_ceil_mode=True),
], ids=['paper_topology', 'owt_topology', 'digits', 'ceil_pool_window_below_stride'])
def test_the_pytorch_baseline_computes_our_logits(config):
  net = alexnet_jax.create_model(config, seed=3)
  theirs = TorchAlexNet(net.spec)
  # Our export names layers as their weights' owners do (torchvision's `features.0`, ...).
  name = {key: layer for layer, key in weights.layer_keys(net.spec).items()}
  ours = {tuple(k.rsplit('.', 1)): v for k, v in weights.state_dict(net).items()}
  theirs.load_state_dict({f'{name[key]}.{kind}': torch.from_numpy(v)
                          for (key, kind), v in ours.items()}, strict=True)
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
  record = preprocess.Preprocessing(size=63, crop=63, std=(64.0,), mean=(128.0,) * 3)
  step = train.make_train_step(graphdef, tx, seed=0, num_classes=10, preprocessing=record)
  batch = {'image': rng.integers(0, 256, (8, 63, 63, 3), dtype=np.uint8),
           'label': np.arange(8, dtype=np.int32), 'flip': np.zeros(8, bool),
           'lighting': np.zeros((8, 3), np.float32)}
  new, metrics = step(state, batch, record.arrays())
  assert float(metrics['finite']) == 1 and np.isfinite(float(metrics['loss']))
  leaves = jax.tree.leaves((new.params, new.opt_state))
  assert all(l.dtype == jnp.float32 for l in leaves if jnp.issubdtype(l.dtype, jnp.floating))
  moved = [np.abs(np.asarray(a) - b).max() for a, b in zip(jax.tree.leaves(new.params), before)]
  assert min(moved) > 0  # Every layer learned, in float32.


@pytest.mark.slow
def test_the_benchmark_prints_its_table(tmp_path):
  """... and writes it where --output says, leaving the tracked record alone."""
  before = (helpers.REPO / 'experiments' / 'BENCHMARKS.md').read_bytes()
  env = helpers.python_env(XLA_FLAGS='')  # The real CPU device, as a user runs it.
  out = helpers.run_python('experiments/benchmark.py', '--models=digits', '--batches=32',
                           '--repeats=1', '--steps=1', f'--output={tmp_path / "table.md"}', env=env,
                           timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert (helpers.REPO / 'experiments' / 'BENCHMARKS.md').read_bytes() == before
  assert (tmp_path / 'table.md').read_text().startswith('| model')
  rows = [l for l in out.stdout.splitlines() if l.startswith('| digits')]
  assert [r.split('|')[3].strip() for r in rows] == ['train', 'train, host-normalized',
                                                     'inference']
  cells = [c.strip() for c in rows[0].split('|')]
  # ours / PyTorch is the ratio of the two medians beside it; each spread holds its median.
  ours, theirs = float(cells[4]), float(cells[6])
  assert float(cells[8].rstrip('x')) == pytest.approx(ours / theirs, abs=0.006), rows[0]
  for median, spread in ((ours, cells[5]), (theirs, cells[7])):
    low, high = (float(v) for v in spread.split('-'))
    assert low <= median <= high, rows[0]
  assert float(cells[9]) > 0 and float(cells[10]) > 0, rows[0]  # First steps, apart.
  # Which kernels ours computed with: what a model on this CPU gets.
  assert f'kernels {backends.for_platforms(frozenset({"cpu"})).name};' in out.stdout


@pytest.mark.slow
def test_the_convolution_lowerings_are_timed_per_layer():
  """experiments/conv_lowering.py on the small net at batch 2: a row per layer and part,
  with XLA's and the matrix products' times, and oneDNN's where the CPU backend is in use."""
  before = (helpers.REPO / 'experiments' / 'BENCHMARKS.md').read_bytes()
  out = helpers.run_python('experiments/conv_lowering.py', '--nets=small', '--batches=2',
                           '--dtypes=float32', '--repeats=1')
  assert out.returncode == 0, out.stderr[-2000:]
  rows = [[c.strip() for c in l.split('|')[1:-1]] for l in out.stdout.splitlines()
          if l.startswith('| small')]
  # conv1 (stride 1 in the small net) has all three parts, like conv2..conv5.
  assert [(r[3], r[4]) for r in rows] == [
      (layer, part) for layer in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
      for part in ('forward', 'input grad', 'kernel grad')]
  onednn = backends.for_platforms(frozenset({'cpu'})) is not ops.PORTABLE
  assert all(float(r[i]) > 0 for r in rows for i in ((5, 6, 7) if onednn else (5, 6))), rows
  assert (helpers.REPO / 'experiments' / 'BENCHMARKS.md').read_bytes() == before


@pytest.mark.slow
def test_the_input_benchmark_reads_the_prepared_format(tmp_path):
  """A tiny run of experiments/benchmark_input.py: it prepares ArrayRecord shards and times
  our pipeline and the PyTorch-style one on them; the tracked record is left alone."""
  before = (helpers.REPO / 'experiments' / 'BENCHMARKS.md').read_bytes()
  run = helpers.run_python('experiments/benchmark_input.py', '--images=24', '--batch=8',
                           '--batches=2', '--repeats=1', '--workers=0')
  assert run.returncode == 0, run.stderr[-3000:]
  rows = [[c.strip() for c in l.split('|')[1:-1]] for l in run.stdout.splitlines()
          if l.startswith('| ') and l.split('|')[2].strip() == '0']
  assert [r[0] for r in rows] == ['ours (uint8 + flip + lighting offset)',
                                  'ours (float, on host)', 'PyTorch-style']
  assert all(float(r[2].replace(',', '')) > 0 for r in rows)
  assert (helpers.REPO / 'experiments' / 'BENCHMARKS.md').read_bytes() == before
