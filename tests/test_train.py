"""Training: the loop's outputs, the schedules inside it, resuming, transfer learning, and what
stops a run (bad config, another net's checkpoints, broken input, NaN)."""
import json
import os
import re
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import alexnet_jax
from alexnet_jax import checkpoint
from alexnet_jax import datasets
from alexnet_jax import evaluation
from alexnet_jax import inference
from alexnet_jax import input_pipeline
from alexnet_jax import optim
from alexnet_jax import prepare
from alexnet_jax import preprocess
from alexnet_jax import train
from alexnet_jax import weights
import helpers
from helpers import train_config


def test_train_writes_metrics_checkpoints_and_plots(tmp_path):
  final = train.train_and_evaluate(train_config(**{'eval.ten_views': True}), str(tmp_path))
  assert final['step'] == 6
  helpers.assert_error_counts(final, 359)  # The digits' test split.
  rows = helpers.metrics_rows(tmp_path)
  assert [r['step'] for r in rows if 'val_top1_error' in r] == [3, 6]
  train_rows = [r for r in rows if 'train_loss' in r]
  assert [r['step'] for r in train_rows] == list(range(1, 7))
  assert all(r['lr'] == 0.02 for r in train_rows)
  # The first step includes compilation and says so; the others report a step time and the
  # rate it gives (the timer's contract is tested on a fake clock below, not by wall time).
  assert 'compile_time_s' in train_rows[0] and 'images_per_s' not in train_rows[0]
  for r in train_rows[1:]:
    assert r['step_time_s'] > 0
    assert r['images_per_s'] == pytest.approx(train_config().batch_size / r['step_time_s'])
  assert json.load(open(tmp_path / 'final_metrics.json')) == final
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  assert (tmp_path / 'curves.png').stat().st_size > 1000
  steps, meta = helpers.last_checkpoint_meta(tmp_path)
  assert steps == [3, 6] and meta['data']['step'] == 6 and len(meta['checksum']) == 64
  # The final 1-view evaluation is the last epoch's validation.
  last_val = [r for r in rows if 'val_top1_error' in r][-1]
  assert final['1view_top1_error'] == last_val['val_top1_error']


def test_step_timer_counts_from_the_last_completed_step_or_idle_end(monkeypatch):
  clock = iter([0.0, 5.0, 5.5, 9.0, 9.25, 10.0])
  monkeypatch.setattr(train.time, 'perf_counter', lambda: next(clock))
  timer = train.StepTimer()                                 # 0.0: the loop starts
  assert timer.done() == {'compile_time_s': 5.0}            # 5.0: compilation + first step
  assert timer.done() == {'step_time_s': 0.5}               # 5.5: a step completed
  timer.idle()                                              # 9.0: evaluation/saving ended
  assert timer.done() == {'step_time_s': 0.25}              # 9.25: not counting evaluation
  assert timer.done() == {'step_time_s': 0.75}


def test_image_folder_end_to_end(tmp_path, photo_folder):
  config = train_config(**{'data.source': 'folder', 'data.path': str(photo_folder),
                           'data.eval_split': 'validation', 'data.mean': 'rgb',
                           'model.num_classes': 3, 'model.fc8_per_tower': False})
  final = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert final['step'] == 6
  helpers.assert_error_counts(final, 6)  # 3 classes of 2 validation photos.
  assert inference.load(str(tmp_path / 'run')).classes == helpers.FOLDER_CLASSES


def test_plateau_schedule_drops_in_the_loop_and_resumes_between_drops(tmp_path, caplog):
  """The paper's schedule with one-step epochs: an improvement of 1.0 in error never comes
  after the first evaluation, so with patience 1 eps drops after epochs 2, 3 and 4, then no
  more (max_drops 3). A run stopped after epoch 3 and resumed takes the same drops and ends
  with the same bits."""
  config = lambda epochs: train_config(**{
      'num_epochs': epochs, 'steps_per_epoch': 1, 'optim.schedule': 'plateau',
      'optim.plateau_patience': 1, 'optim.plateau_threshold': 1.0})
  with caplog.at_level('INFO', logger='alexnet_jax'):
    train.train_and_evaluate(config(6), str(tmp_path / 'straight'))
  # Each drop is one event line (above the progress bar), with a readable rate.
  assert [r.getMessage() for r in caplog.records if 'stopped improving' in r.getMessage()] \
      == [f'validation error stopped improving: learning rate now {lr}'
          for lr in ('0.002', '0.0002', '2e-05')]
  train.train_and_evaluate(config(3), str(tmp_path / 'resumed'))
  train.train_and_evaluate(config(6), str(tmp_path / 'resumed'))
  b = 0.02
  for run in ('straight', 'resumed'):
    lrs = [r['lr'] for r in helpers.metrics_rows(tmp_path / run) if 'train_loss' in r]
    np.testing.assert_allclose(lrs, [b, b, b / 10, b / 100, b / 1000, b / 1000], rtol=1e-6)
  (_, straight), (_, resumed) = (helpers.last_checkpoint_meta(tmp_path / 'straight'),
                                 helpers.last_checkpoint_meta(tmp_path / 'resumed'))
  assert straight['plateau'] == resumed['plateau'] and straight['plateau']['drops'] == 3
  assert straight['checksum'] == resumed['checksum']


@pytest.mark.parametrize('overrides,message', [
    ({'batch_size': 15}, 'batch_size: 15 is not a positive multiple'),
    ({'optim.base_lr': 0.0}, 'optim.base_lr: must be positive'),
    ({'model.init': 'xavier'}, 'model.init: must be one of'),
    ({'data.source': 'imagenet21k'}, 'data.source: must be one of'),
    ({'model.image_size': 8}, 'model.image_size'),
    ({'data.source': 'prepared', 'data.path': '/no/such/dir'}, 'data.path: no such directory'),
    ({'model.num_classes': 7, 'model.fc8_per_tower': False}, 'the data has 10 classes'),
])
def test_bad_config_fails_before_training_in_one_line(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message) as e:
    train.train_and_evaluate(train_config(**overrides), str(tmp_path))
  assert '\n' not in str(e.value)
  assert not (tmp_path / 'checkpoints').exists()


@pytest.mark.parametrize('overrides,message', [
    ({'model.width': 0.25}, r'checkpoint: the checkpoints in .* hold another train state '
                            r'\(opt_state/.*/conv1/bias/value is float32\[2, 6\] there, '
                            r'float32\[2, 12\] here; this config differs from theirs in '
                            r'model\.width\); resume with their settings'),
    ({'model.fc8_per_tower': False}, r'differs from theirs in model\.fc8_per_tower\)'),
])
def test_resuming_with_another_net_fails_in_one_line_and_touches_nothing(tmp_path, overrides,
                                                                         message):
  train.train_and_evaluate(train_config(num_epochs=1), str(tmp_path))
  before = helpers.last_checkpoint_meta(tmp_path)
  files = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
  with pytest.raises(ValueError, match=message) as e:
    train.train_and_evaluate(train_config(**overrides), str(tmp_path))
  assert '\n' not in str(e.value)
  assert helpers.last_checkpoint_meta(tmp_path) == before
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == files


def test_what_leaves_the_state_alone_may_change_on_resume(tmp_path):
  """Dropout, the compute dtype and the rates change no parameter or buffer: the run
  resumes."""
  train.train_and_evaluate(train_config(num_epochs=1), str(tmp_path))
  final = train.train_and_evaluate(train_config(**{
      'model.dropout_rate': 0.3, 'model.compute_dtype': 'bfloat16',
      'optim.bias_lr_multiplier': 2.0}), str(tmp_path))
  assert final['step'] == 6 and helpers.checkpoint_steps(tmp_path) == [3, 6]


def test_a_checkpoint_of_another_class_count_is_refused(tmp_path, photo_folder):
  folder = {'data.source': 'folder', 'data.path': str(photo_folder), 'data.mean': 'rgb',
            'data.eval_split': 'validation', 'model.num_classes': 3,
            'model.fc8_per_tower': False}
  train.train_and_evaluate(train_config(num_epochs=1, **folder), str(tmp_path))
  with pytest.raises(ValueError, match=r'^data: the checkpoints in .* were trained on 3 classes '
                     r'\(cat, coffee, space\), the data has 10 \(0, 1, 2, 3, 4, 5, \.\.\. \(10 '
                     r'in all\)\); a run keeps its classes: to start afresh, use another '
                     r'--workdir or move its checkpoints aside$'):
    train.train_and_evaluate(train_config(**{'model.fc8_per_tower': False}), str(tmp_path))


# ---- Transfer learning ---------------------------------------------------------------------


def transfer_config(photo_folder, source, **overrides):
  """A new 3-class head on the photos, every other layer frozen (configs/transfer.py:head)."""
  return train_config(**{
      'data.source': 'folder', 'data.path': str(photo_folder), 'data.eval_split': 'validation',
      'data.mean': 'rgb', 'num_epochs': 5, 'steps_per_epoch': 10, 'transfer.source': source,
      'optim.base_lr': 0.2, 'optim.pretrained_lr_multiplier': 0.0, 'model.num_classes': 3,
      'model.fc8_per_tower': False, **overrides})


def params_of(reference):
  return nnx.split(inference.load(reference).net, nnx.Param)[1]


def test_transfer_trains_a_new_head_on_photos_and_freezes_the_rest(trained_run, tmp_path,
                                                                   photo_folder):
  final = train.train_and_evaluate(transfer_config(photo_folder, str(trained_run[0])),
                                   str(tmp_path / 'transfer'))
  before, after = params_of(str(trained_run[0])), params_of(str(tmp_path / 'transfer'))
  assert inference.load(str(tmp_path / 'transfer')).classes == helpers.FOLDER_CLASSES
  for layer in ('conv1', 'conv3', 'conv5', 'fc6', 'fc7'):  # Frozen, to the bit.
    for k in ('kernel', 'bias'):
      np.testing.assert_array_equal(after[layer][k][...], before[layer][k][...])
  assert after['fc8']['kernel'][...].shape[-1] == 3
  # The pretrained layers keep seeing inputs scaled as they learned them: the source's mean.
  source, record = (inference.preprocessing_of(str(p)) for p in (trained_run[0],
                                                                   tmp_path / 'transfer'))
  np.testing.assert_array_equal(record.mean, source.mean)
  assert record.std == source.std and record.crop == source.crop
  losses = [r['train_loss'] for r in helpers.metrics_rows(tmp_path / 'transfer') if 'train_loss' in r]
  # It learns, from digit features, to tell cats, coffee and rockets apart: the loss falls
  # from chance (the new head's first loss, about ln 3 = 1.10) and the held-out photos are
  # classified better than chance (measured: all 6 right). A step's loss on a few photos
  # swings (0.02-1.65 in one run), so the mean of the last 40 steps is what falls (measured:
  # 0.33-0.61 from two source nets that differ by summation order alone).
  assert np.mean(losses[10:]) < 0.75 * losses[0]
  assert final['1view_top1_error'] <= 1 / 3


@pytest.mark.parametrize('suffix', ['npz', 'pth'])
def test_transfer_from_a_state_dict_file_copies_every_layer_but_fc8(trained_run, tmp_path,
                                                                   photo_folder, suffix):
  path = tmp_path / f'digits_net.{suffix}'
  weights.export_state_dict(inference.load(str(trained_run[0])).net, path)
  config = transfer_config(photo_folder, str(path), num_epochs=1, steps_per_epoch=2,
                           **{'transfer.source_num_classes': 10})
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  before, after = params_of(str(trained_run[0])), params_of(str(tmp_path / 'run'))
  for layer in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7'):
    for k in ('kernel', 'bias'):
      np.testing.assert_array_equal(after[layer][k][...], before[layer][k][...])
  assert after['fc8']['kernel'][...].shape[-1] == 3
  with pytest.raises(ValueError, match=r"weights: 'conv1.weight' has shape \(12, 3, 5, 5\), "
                                       r"this net needs \(24, 3, 5, 5\)"):
    train.train_and_evaluate(transfer_config(photo_folder, str(path), **{
        'transfer.source_num_classes': 10, 'model.width': 0.25}), str(tmp_path / 'other'))


# ---- Bad examples ----------------------------------------------------------------------------


def photos_config(path, **overrides):
  """3 classes of 36x36 photos (18 training, 6 validation), batches of 4, 2 epochs of 4."""
  return train_config(**{
      'data.source': 'auto', 'data.path': str(path), 'data.eval_split': 'validation',
      'data.image_size': 36, 'model.num_classes': 3, 'model.fc8_per_tower': False,
      'batch_size': 4,
      'steps_per_epoch': 4, 'data.max_bad_fraction': 0.9, **overrides})


def bad_lines(workdir) -> list[str]:
  return (workdir / train.BAD_EXAMPLES_FILE).read_text().splitlines()


def test_damaged_prepared_records_are_skipped_named_counted_and_resume_exactly(
    photo_folder, tmp_path, caplog):
  """A record with flipped bytes and a truncated shard (4 records) in the training split, one
  damaged validation record: the run completes; each bad record it meets is named once (a
  warning and a line of bad_examples.txt) and counted; evaluation counts the one it skips;
  a run stopped and resumed around them ends bit-identical."""
  data = tmp_path / 'prepared'
  prepare.prepare('folder', str(photo_folder), str(data), size=36, shard_size=4, workers=1,
                  progress=False)
  helpers.damage_record(data, 'train', 5)
  with open(data / 'train-00003.array_record', 'r+b') as f:
    f.truncate(1000)
  helpers.damage_record(data, 'validation', 1)

  final = train.train_and_evaluate(photos_config(data, **{'eval.ten_views': True}),
                                   str(tmp_path / 'run'))
  lines = bad_lines(tmp_path / 'run')
  assert lines and len(set(lines)) == len(lines)
  # Only the damaged record (shard 1, record 1), the truncated shard's records (3, 0-3), and
  # the damaged validation record, named once though every evaluation meets it.
  train_lines = [l for l in lines if l.startswith('train-')]
  assert all(re.match(r'train-0000(1\.array_record record 1|3\.array_record record [0-3]) '
                      r'\(train/\w+/\w+\.jpg\): ', l) for l in train_lines), lines
  assert len(lines) == len(train_lines) + 1
  assert any(re.match(r'validation-00000\.array_record record 1 \(val/\w+/\w+\.jpg\): ', l)
             for l in lines), lines
  warned = [r.getMessage() for r in caplog.records if 'skipped a bad example' in r.getMessage()]
  assert sorted(warned) == sorted(f'data: skipped a bad example, {l}' for l in lines)
  counts = [r['data/bad_examples'] for r in helpers.metrics_rows(tmp_path / 'run')
            if 'data/bad_examples' in r]
  # Each distinct training example counted once, though every epoch reads it again.
  assert counts and counts == sorted(counts) and counts[-1] == len(train_lines)
  assert final['1view_skipped'] == final['10view_skipped'] == 1

  stopped = tmp_path / 'stopped'
  train.train_and_evaluate(photos_config(data, num_epochs=1), str(stopped))
  train.train_and_evaluate(photos_config(data), str(stopped))
  assert helpers.last_checkpoint_meta(stopped)[1]['checksum'] == \
      helpers.last_checkpoint_meta(tmp_path / 'run')[1]['checksum']
  assert set(bad_lines(stopped)) == set(lines)  # Listed once, across the resume too.
  # Counted on across the resume, to the same total.
  resumed = [r['data/bad_examples'] for r in helpers.metrics_rows(stopped)
             if 'data/bad_examples' in r]
  assert resumed == sorted(resumed) and resumed[-1] == counts[-1], (resumed, counts)


def test_bad_files_in_a_folder_are_skipped_until_too_many(tmp_path):
  """Garbage, empty and truncated files in an image folder read directly: skipped, named
  and counted; a folder where more than data.max_bad_fraction is bad stops in one line."""
  root = helpers.make_folder(tmp_path / 'photos')
  cat = root / 'train' / 'cat'
  bad = {'garbage.jpg': b'GIF89a, or not' * 40, 'empty.jpg': b'',
         'truncated.jpg': (cat / 'cat_0.jpg').read_bytes()[:1500]}
  for name, data in bad.items():
    (cat / name).write_bytes(data)
  (root / 'val' / 'cat' / 'garbage.jpg').write_bytes(b'\0' * 100)
  final = train.train_and_evaluate(photos_config(root), str(tmp_path / 'run'))
  named = {l.split(': ')[0].rsplit('/', 1)[1] for l in bad_lines(tmp_path / 'run')}
  assert named == set(bad)  # Every bad file was read in the run's 32 draws of 21 files.
  assert final['1view_skipped'] == 1

  for i in range(12):  # 15 bad of 33: mostly bad data, not a bad example.
    (cat / f'garbage_{i}.jpg').write_bytes(b'not an image' * 10)
  with pytest.raises(input_pipeline.InputError, match=r'^data: 1\d of the 33 training examples '
                     r'are bad \(listed in .*bad_examples.txt\), more than '
                     r'data.max_bad_fraction=0.001 allows; fix or remove them, or raise '
                     r'data.max_bad_fraction$') as e:
    train.train_and_evaluate(photos_config(root, num_epochs=4, **{
        'data.max_bad_fraction': 0.001}), str(tmp_path / 'too_many'))
  assert '\n' not in str(e.value)
  assert not helpers.checkpoint_steps(tmp_path / 'too_many')  # In its first epoch.


# ---- Your own photos, as a user meets them --------------------------------------------------


def own_photos_config(path, *overrides):
  """configs/folder.py:small on `path`, at the size `small_photo_run` trains."""
  return helpers.load_config('folder.py:small', f'data.path={path}', 'batch_size=4',
                             'progress=False', 'model.width=0.125', *overrides)


def test_one_bad_file_never_stops_a_run_and_removing_it_resumes(small_photos, small_photo_run,
                                                                tmp_path, caplog):
  """11 epochs over a folder with one file that does not decode: named and counted once,
  never fatal. Removed, the same command resumes: one line says the data changed, the run
  keeps its epochs' length, and what it trains on next is the same on every resume."""
  caplog.set_level('INFO', logger='alexnet_jax')
  workdir, final = small_photo_run
  assert final['step'] == 44  # 11 epochs of 16 files // 4.
  assert bad_lines(workdir) == [f'{small_photos}/train/cat/broken.jpg: Truncated File Read']
  counts = [r['data/bad_examples'] for r in helpers.metrics_rows(workdir)
            if 'data/bad_examples' in r]
  assert counts == [1]  # Once, though all 11 epochs read it.
  fixed = shutil.copytree(small_photos, tmp_path / 'photos')
  (fixed / 'train' / 'cat' / 'broken.jpg').unlink()
  resumed = []
  for copy in ('a', 'b'):
    run = shutil.copytree(workdir, tmp_path / copy)
    caplog.clear()
    resumed.append(train.train_and_evaluate(own_photos_config(fixed, 'num_epochs=13'), str(run)))
    assert ('data: the training examples changed since step 44 (16 then, 15 now); the run '
            'goes on with them') in caplog.messages
  assert resumed[0]['step'] == resumed[1]['step'] == 52  # 4 steps an epoch, as it started.
  assert helpers.last_checkpoint_meta(tmp_path / 'a')[1]['checksum'] == \
      helpers.last_checkpoint_meta(tmp_path / 'b')[1]['checksum']


def test_a_run_refuses_data_of_other_classes_in_one_line(small_photo_run, other_small_photos,
                                                         tmp_path):
  run = shutil.copytree(small_photo_run[0], tmp_path / 'run')
  with pytest.raises(ValueError, match=r'^data: the checkpoints in .* were trained on 3 '
                     r'classes \(cat, coffee, space\), the data has 3 \(astronaut, cells, '
                     r'galaxy\); a run keeps its classes: to start afresh, use another '
                     r'--workdir or move its checkpoints aside$'):
    train.train_and_evaluate(own_photos_config(other_small_photos, 'num_epochs=12'), str(run))


@pytest.mark.parametrize('prepared', [False, True], ids=['folder', 'prepared'])
def test_transfer_takes_the_net_of_a_small_run_onto_a_folder_or_its_prepared_form(
    small_photo_run, other_small_photos, tmp_path, prepared):
  """configs/transfer.py:head from a `:small` run, as the README writes it: the net (recipe,
  width, geometry) is the source's, the classes the data's; the pretrained layers frozen."""
  data = other_small_photos
  if prepared:
    data = tmp_path / 'prepared'
    prepare.prepare('folder', str(other_small_photos), str(data), workers=1, progress=False)
  source = str(small_photo_run[0])
  config = helpers.load_config('transfer.py:head', f'transfer.source={source}',
                               f'data.path={data}', 'num_epochs=1', 'batch_size=4',
                               'progress=False')
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  trained, before = (inference.load(str(p)) for p in (tmp_path / 'run', source))
  assert trained.config.recipe == 'small' and trained.config.model.width == 0.125
  assert trained.classes == ('astronaut', 'cells', 'galaxy')
  assert (trained.preprocessing.size, trained.crop) == (40, 36) == \
      (before.preprocessing.size, before.crop)
  after, frozen = (nnx.split(m.net, nnx.Param)[1] for m in (trained, before))
  np.testing.assert_array_equal(after['conv1']['kernel'][...], frozen['conv1']['kernel'][...])
  with pytest.raises(ValueError, match=r'^model.width: 0.5, but the net of .* has 0.125; a '
                     r"transferred net keeps its source's$"):
    train.train_and_evaluate(helpers.set_fields(config, {'model.width': 0.5}),
                             str(tmp_path / 'other'))
  assert not (tmp_path / 'other').exists()  # A start that fails leaves nothing behind.


def test_reevaluating_a_finished_run_replaces_its_final_records(small_photos, small_photo_run,
                                                                tmp_path, caplog):
  caplog.set_level('INFO', logger='alexnet_jax')
  run = shutil.copytree(small_photo_run[0], tmp_path / 'run')
  final = train.train_and_evaluate(
      own_photos_config(small_photos, 'num_epochs=11', 'reevaluate=True'), str(run))
  assert f'evaluating {run} again at step 44: its final records are replaced' in caplog.messages
  assert not any(m.startswith(('training the', 'resumed from')) for m in caplog.messages)
  finals = [r for r in helpers.metrics_rows(run) if any(k.startswith('final_') for k in r)]
  assert len(finals) == 1 and finals[0]['final_1view_top1_error'] == final['1view_top1_error']
  assert helpers.tensorboard_steps(run, 'final/1view_top1_error') == [44]
  assert helpers.tensorboard_steps(run, 'train/loss') == list(range(1, 45))  # Kept, once.
  assert helpers.tensorboard_steps(run, 'val/top1_error')[-1] == 44


# ---- Broken input and NaN ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize('how', ['raise', 'kill'])
def test_a_broken_input_worker_stops_the_run_in_one_line(tmp_path, monkeypatch, how):
  open_source = datasets.open_source

  def breaking(config, split):
    source, stats = open_source(config, split)
    return helpers.BreakingSource(source, how=how, after=40), stats

  monkeypatch.setattr(datasets, 'open_source', breaking)
  with pytest.raises(input_pipeline.InputError) as e:
    train.train_and_evaluate(train_config(**{'data.workers': 2}), str(tmp_path))
  message = str(e.value)
  assert re.match(r'data: the input pipeline failed (before step \d+|during evaluation): ',
                  message) and '\n' not in message, message
  assert ('disk read error on example' if how == 'raise' else 'terminated unexpectedly') \
      in message


def test_a_nan_gradient_skips_the_update_and_is_counted():
  config = train_config()
  net = alexnet_jax.create_model(config.model)
  graphdef, state, tx = train.init_state(net, config.optim)
  record = preprocess.Preprocessing(size=32, crop=32)
  step = train.make_train_step(graphdef, tx, seed=0, num_classes=10, preprocessing=record,
                               normalized=True)
  images = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype(np.float32)
  images[3, 5, 5, 0] = np.nan  # One NaN pixel: a NaN loss and NaN gradients.
  batch = {'image': images, 'label': np.arange(16, dtype=np.int32) % 10,
           'flip': np.zeros(16, bool), 'lighting': np.zeros((16, 3), np.float32)}
  weights_and_momentum = lambda s: checkpoint.checksum((s.params,
                                                       optim.momentum_buffer(s.opt_state)))
  before = weights_and_momentum(state)  # `step` donates the state it is given.
  new_state, metrics = step(state, batch, record.arrays())
  assert float(metrics['finite']) == 0 and not np.isfinite(float(metrics['loss']))
  assert int(new_state.step) == 1 and weights_and_momentum(new_state) == before
  images[3, 5, 5, 0] = 0.0  # The same batch, clean: the update happens.
  clean, metrics = step(new_state, batch, record.arrays())
  assert float(metrics['finite']) == 1 and weights_and_momentum(clean) != before


def test_non_finite_steps_then_a_clean_stop(tmp_path):
  config = train_config(max_nonfinite_steps=2, **{'optim.base_lr': 1e30})
  with pytest.raises(train.TrainingError, match='steps in a row had a non-finite') as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert '\n' not in str(e.value)
  rows = helpers.metrics_rows(tmp_path)
  assert max(r.get('nonfinite_steps', 0) for r in rows) == 3
  # Step 1's update is huge but finite; steps 2 and 3 overflow and are skipped, so the end of
  # epoch 1 saves step 1's parameters: finite, as every saved checkpoint is.
  assert helpers.checkpoint_steps(tmp_path) == [3]
  saved = nnx.split(inference.load(str(tmp_path)).net, nnx.Param)[1]
  assert checkpoint.all_finite(saved)
  assert max(float(jnp.abs(p).max()) for p in jax.tree.leaves(saved)) > 1e20


def test_a_profile_of_two_steps_lands_in_tensorboard(tmp_path):
  train.train_and_evaluate(train_config(profile_steps='2:3', num_epochs=1), str(tmp_path))
  assert list((tmp_path / 'tensorboard' / 'plugins' / 'profile').glob('*/*.xplane.pb'))
  with pytest.raises(ValueError, match=r"^profile_steps: 'A:B' with 1 <= A <= B, got '3'$"):
    train.train_and_evaluate(train_config(profile_steps='3'), str(tmp_path / 'bad'))


SCHEDULE_FIELDS = ('optim.base_lr', 'optim.schedule', 'optim.manual_drop_epochs',
                   'optim.bias_lr_multiplier', 'optim.bias_lr_follows_schedule',
                   'optim.layer_lr_multipliers', 'optim.freeze', 'data.lighting_std',
                   'data.lighting_rescale', 'data.lighting_end_epoch')


def run_145_schedule(workdir, num_epochs):
  """A one-step-per-epoch run with :cuda_convnet's whole schedule (its own epochs: 25, 51,
  67, 72), checkpointed at step 70 and at its end, resuming from `workdir`; per step: (step,
  lighting, conv1's kernel and bias before and after, the rates it trained at)."""
  recipe = alexnet_jax.recipes.config('cuda_convnet')
  config = train_config(num_epochs=num_epochs, steps_per_epoch=1, **{
      name: recipe[name.split('.')[0]][name.split('.')[1]] for name in SCHEDULE_FIELDS},
      **{'eval.every_epochs': 100, 'checkpoint.every_epochs': 70, 'eval.ten_views': False})
  trainer = train.start(config, str(workdir))
  records, step_fn = [], trainer.train_step
  conv1 = lambda s: [np.array(s.params['conv1'][k][...]) for k in ('kernel', 'bias')]

  def recording(state, batch, arrays, lighting=True):
    before = conv1(state)
    rates = {f'{path[0].key}/{path[1].key}': float(eps) for path, eps in
             jax.tree_util.tree_leaves_with_path(state.opt_state.rates)}
    step = int(state.step)
    state, metrics = step_fn(state, batch, arrays, lighting=lighting)
    records.append((step, lighting, before, conv1(state), rates))
    return state, metrics

  trainer.train_step = recording
  trainer.run()
  trainer.finish()
  return records, trainer.state.params


def test_run_145s_schedule_to_its_last_epoch_and_after_a_resume(tmp_path):
  """Colour noise on until epoch 67 and off after; conv1 learning until 72 (at 1e-5 from
  67), then bit for bit unchanged; biases at 0.02 throughout while the weights drop; the
  same when a resume lands between 67 and 72, ending where the uninterrupted run ends."""
  records, straight = run_145_schedule(tmp_path / 'straight', 74)
  assert [r[0] for r in records] == list(range(74))
  for step, lighting, before, after, rates in records:
    assert lighting == (step < 67), step
    weights = 0.01 * 0.1 ** sum(step >= e for e in (25, 51))
    assert rates['fc6/kernel'] == pytest.approx(weights), step
    assert rates['fc6/bias'] == rates['conv5/bias'] == pytest.approx(0.02), step
    frozen = step >= 72
    assert rates['conv1/kernel'] == pytest.approx(
        0.0 if frozen else weights * (0.1 if step >= 67 else 1)), step
    assert rates['conv1/bias'] == pytest.approx(0.0 if frozen else 0.02), step
    for b, a in zip(before, after):
      assert np.array_equal(b, a) == frozen, step

  # The same run resumed from its step-70 checkpoint (its step-74 one removed).
  shutil.copytree(tmp_path / 'straight', tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / '74')
  (tmp_path / 'resumed' / train.FINAL_METRICS).unlink()
  resumed, params = run_145_schedule(tmp_path / 'resumed', 74)
  assert [(r[0], r[1], r[4]) for r in resumed] == [r[:2] + r[4:] for r in records[70:]]
  jax.tree.map(np.testing.assert_array_equal, params, straight)


def test_a_preemption_that_stops_an_evaluation_leaves_it_to_the_resumed_run(tmp_path,
                                                                           monkeypatch):
  """SIGTERM to the process group also stops the evaluation's input workers: a run whose
  end-of-epoch evaluation fails so, with the signal received, saves its checkpoint and exits
  75; the resumed run evaluates that step first, and ends as an uninterrupted run does."""
  straight = train.train_and_evaluate(train_config(), str(tmp_path / 'straight'))
  evaluate = evaluation.evaluate

  def preempted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # As the scheduler's signal reaches us ...
    raise input_pipeline.InputError('data: the input pipeline failed during evaluation: '
                                    'Worker process was terminated')  # ... and the workers.

  monkeypatch.setattr(evaluation, 'evaluate', preempted)
  with pytest.raises(SystemExit) as stopped:
    train.train_and_evaluate(train_config(), str(tmp_path / 'run'))
  assert stopped.value.code == train.EXIT_PREEMPTED
  steps, meta = helpers.last_checkpoint_meta(tmp_path / 'run')
  assert steps == [3] and meta['evaluation_pending']
  monkeypatch.setattr(evaluation, 'evaluate', evaluate)
  final = train.train_and_evaluate(train_config(), str(tmp_path / 'run'))
  assert final == straight
  validated = lambda run: [r['step'] for r in helpers.metrics_rows(run) if 'val_top1_error' in r]
  assert validated(tmp_path / 'run') == validated(tmp_path / 'straight') == [3, 6]
