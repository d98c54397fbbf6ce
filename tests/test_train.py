"""Training: the paper's update rule, the schedules, the loop, checkpoints and bad input."""
import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import alexnet_jax
from alexnet_jax import optim
from alexnet_jax import train
from conftest import small_config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs'))
import digits  # pylint: disable=g-import-not-at-top,wrong-import-position


# ---- The update rule -------------------------------------------------------------------------


def numpy_paper_sgd(w, v, g, lr, *, wd=5e-4, momentum=0.9, lr_mult=1.0, decay=True):
  """paper s3: v <- 0.9 v - 0.0005 eps w - eps grad; w <- w + v."""
  v = momentum * v - (wd * lr * w if decay else 0) - lr * lr_mult * g
  return w + v, v


@pytest.mark.parametrize('bias_lr_multiplier,bias_weight_decay', [(1.0, True), (2.0, False)])
def test_update_rule_matches_the_paper_across_a_learning_rate_drop(bias_lr_multiplier,
                                                                   bias_weight_decay):
  config = optim.config()
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
  # optax's sgd keeps eps outside the buffer: after the drops it differs from the paper.
  assert float(optim.learning_rate(state)) == pytest.approx(1e-4)


def test_bias_options_reach_the_models_own_parameters():
  """The masks see nnx's state paths (`...['fc6']['bias'].value`), not just plain dicts."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  config = optim.config()
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


def test_loss_and_errors_on_tower_split_logits():
  logits = np.random.default_rng(1).normal(size=(8, 10)).astype(np.float32)
  labels = np.arange(8) % 10
  loss, top1, top5 = jax.jit(train.loss_and_errors, static_argnums=2)(logits, labels, 10)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(loss, -logp[np.arange(8), labels], rtol=1e-5)
  ranks = (logits > logits[np.arange(8), labels][:, None]).sum(-1)
  np.testing.assert_array_equal(top1, ranks >= 1)
  np.testing.assert_array_equal(top5, ranks >= 5)


# ---- The loop ---------------------------------------------------------------------------------


def tiny_config(**overrides):
  c = digits.get_config()
  c.model = small_config()
  c.model.image_size = 32
  c.model.conv1_kernel, c.model.conv1_stride, c.model.conv1_padding = 5, 1, 2
  c.model.width = 0.125
  c.batch_size = 16
  c.num_epochs = 2
  c.steps_per_epoch = 3
  c.progress = False
  c.optim.base_lr = 0.01
  for k, v in overrides.items():
    target = c
    *path, last = k.split('.')
    for p in path:
      target = target[p]
    target[last] = v
  return c


def last_checkpoint_meta(workdir):
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(f'{workdir}/checkpoints/*')
                 if os.path.basename(p).isdigit())
  with open(glob.glob(f'{workdir}/checkpoints/{steps[-1]}/meta/*')[0]) as f:
    return steps, json.load(f)


def test_train_writes_metrics_checkpoints_and_plots(tmp_path):
  final = train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert final['step'] == 6
  for key in ('1view_top1_error', '1view_top5_error', '10view_top1_error', '10view_top5_error'):
    assert 0 <= final[key] <= 1
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in rows if 'val_top1_error' in r] == [3, 6]
  train_rows = [r for r in rows if 'train_loss' in r]
  assert len(train_rows) == 6 and all(r['lr'] == pytest.approx(0.01) and r['images_per_s'] > 0
                                      for r in train_rows)
  assert glob.glob(str(tmp_path / 'tensorboard' / 'events.out.tfevents.*'))
  assert (tmp_path / 'curves.png').stat().st_size > 1000
  steps, meta = last_checkpoint_meta(tmp_path)
  assert steps == [3, 6] and meta['data']['step'] == 6 and len(meta['checksum']) == 64


def test_image_folder_end_to_end(tmp_path):
  from test_data import make_folder  # pylint: disable=g-import-not-at-top
  root = make_folder(tmp_path / 'photos')
  config = tiny_config(**{'data.source': 'folder', 'data.path': str(root),
                          'data.eval_split': 'validation', 'data.mean': 'rgb',
                          'data.divide': 64.0})
  config.model.num_classes = 3
  config.model.fc8_per_tower = False  # 3 classes do not split over 2 towers.
  final = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert final['step'] == 6 and 0 <= final['1view_top1_error'] <= 1


def run_main(workdir, *flags, timeout=300):
  return subprocess.run([sys.executable, '-m', 'alexnet_jax.main', f'--workdir={workdir}',
                         '--config.progress=False', '--config.batch_size=16',
                         '--config.model.width=0.125', '--config.steps_per_epoch=3',
                         *flags], capture_output=True, text=True, timeout=timeout)


def test_resume_in_a_new_process_is_bit_identical(tmp_path):
  straight = run_main(tmp_path / 'a', '--config.num_epochs=2')
  assert straight.returncode == 0, straight.stderr[-2000:]
  first = run_main(tmp_path / 'b', '--config.num_epochs=1')
  assert first.returncode == 0, first.stderr[-2000:]
  second = run_main(tmp_path / 'b', '--config.num_epochs=2')
  assert second.returncode == 0, second.stderr[-2000:]
  assert 'resumed from step 3' in second.stderr
  steps_a, meta_a = last_checkpoint_meta(tmp_path / 'a')
  steps_b, meta_b = last_checkpoint_meta(tmp_path / 'b')
  assert steps_a[-1] == steps_b[-1] == 6
  assert meta_a['checksum'] == meta_b['checksum']  # Every parameter bit equal.
  assert json.load(open(tmp_path / 'a' / 'final_metrics.json')) == \
      json.load(open(tmp_path / 'b' / 'final_metrics.json'))


def abstract_state(config):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  _, params = nnx.split(alexnet_jax.create_model(config.model), nnx.Param)
  return train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=jax.jit(optim.create(config.optim).init)(params))


@pytest.mark.parametrize('overrides,message', [
    ({'batch_size': 15}, 'batch_size: 15 is not a positive multiple'),
    ({'optim.base_lr': 0.0}, 'optim.base_lr: must be positive'),
    ({'model.variant': 'vgg'}, 'model.variant: unknown variant'),
    ({'data.source': 'imagenet21k'}, 'data.source: must be one of'),
    ({'model.image_size': 8}, 'model.image_size'),
    ({'data.source': 'prepared', 'data.path': '/no/such/dir'}, 'data.path: no such directory'),
    ({'model.num_classes': 7, 'model.fc8_per_tower': False}, 'the data has 10 classes'),
])
def test_bad_config_fails_before_training_in_one_line(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message) as e:
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
  assert '\n' not in str(e.value)
  assert not (tmp_path / 'checkpoints').exists()


def test_class_count_must_match_the_checkpoint(tmp_path):
  train.train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path))
  # A checkpoint written by a run with another class count.
  meta_path = glob.glob(str(tmp_path / 'checkpoints' / '3' / 'meta' / '*'))[0]
  meta = json.load(open(meta_path))
  meta['num_classes'] = 5
  json.dump(meta, open(meta_path, 'w'))
  with pytest.raises(ValueError, match='the checkpoint in .* has 5'):
    train.train_and_evaluate(tiny_config(num_epochs=2), str(tmp_path))


def test_tensorboard_event_file_is_valid_tfrecord(tmp_path):
  """Records framed as TFRecords with masked CRC-32C, holding the scalars' tags."""
  import struct  # pylint: disable=g-import-not-at-top
  from alexnet_jax import metrics  # pylint: disable=g-import-not-at-top
  writer = metrics.TensorBoardFile(str(tmp_path))
  writer.scalar('val_top1_error', 0.25, 7)
  writer.close()
  data = open(writer.path, 'rb').read()
  records, i = [], 0
  while i < len(data):
    header = data[i:i + 8]
    assert struct.unpack('<I', data[i + 8:i + 12])[0] == metrics._masked_crc32c(header)
    n = struct.unpack('<Q', header)[0]
    record = data[i + 12:i + 12 + n]
    assert struct.unpack('<I', data[i + 12 + n:i + 16 + n])[0] == metrics._masked_crc32c(record)
    records.append(record)
    i += 16 + n
  assert len(records) == 2 and b'brain.Event:2' in records[0]
  assert b'val_top1_error' in records[1] and struct.pack('<f', 0.25) in records[1]
  # The CRC-32C of '123456789' is 0xE3069283 (the standard check value).
  crc = metrics._masked_crc32c(b'123456789')
  unmasked = ((crc - 0xA282EAD8) & 0xFFFFFFFF)
  assert ((unmasked << 15) | (unmasked >> 17)) & 0xFFFFFFFF == 0xE3069283
