"""Fault injection: what preemptible machines and full disks do to a run, and that nothing is
lost (issue 5).

Kills, SIGTERM and a size-limited disk hit real `python -m alexnet_jax.main` processes; damaged
checkpoints, broken input workers and NaN gradients are injected in-process.
"""
import glob
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

import alexnet_jax
from alexnet_jax import checkpoint
from alexnet_jax import datasets
from alexnet_jax import optim
from alexnet_jax import train
from test_train import abstract_state, last_checkpoint_meta, tiny_config

STEPS_PER_EPOCH, EPOCHS = 4, 8
RUN_FLAGS = ['--config.progress=False', '--config.batch_size=16', '--config.model.width=0.125',
             f'--config.steps_per_epoch={STEPS_PER_EPOCH}', '--config.checkpoint_keep=2']


def start(workdir, *flags, **popen):
  return subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main', f'--workdir={workdir}', *RUN_FLAGS, *flags],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def committed_steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())


def leftover_tmp(workdir):
  """Orbax's temporary folders of unfinished saves, as (name, inode): a save of the same step
  after a restart reuses the name."""
  with os.scandir(os.path.join(workdir, 'checkpoints')) as entries:
    return {(e.name, e.inode()) for e in entries if 'tmp' in e.name}


def train_lines(workdir):
  return sum(1 for l in open(os.path.join(workdir, 'metrics.jsonl')) if 'train_loss' in l)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """The run every interrupted run must end equal to, bit for bit."""
  workdir = tmp_path_factory.mktemp('uninterrupted')
  code, out = finish(start(workdir, f'--config.num_epochs={EPOCHS}'))
  assert code == 0, out[-3000:]
  return last_checkpoint_meta(workdir)[1]['checksum']


def test_kill_9_at_random_moments_loses_nothing(tmp_path, uninterrupted):
  """SIGKILL to the process group (as a preempted machine) 6 times, 3 of them while an async
  checkpoint is being written; every restart resumes from the last committed checkpoint and
  the end result is bit-identical to the uninterrupted run."""
  rng = random.Random(0)
  workdir = str(tmp_path)
  os.makedirs(os.path.join(workdir, 'checkpoints'))
  kills, killed_mid_save = 0, 0
  for moment in ['save', 'random'] * 3:
    expected = committed_steps(workdir)
    tmp_before = leftover_tmp(workdir)  # The restart removes them.
    lines_before = train_lines(workdir) if os.path.exists(f'{workdir}/metrics.jsonl') else 0
    proc = start(workdir, f'--config.num_epochs={EPOCHS}', start_new_session=True)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
      if moment == 'save' and leftover_tmp(workdir) - tmp_before:
        break  # An async save is writing its temporary folder: kill now.
      if moment == 'random' and os.path.exists(f'{workdir}/metrics.jsonl') and \
          train_lines(workdir) > lines_before:
        time.sleep(rng.uniform(0, 1.0))  # Somewhere in training, evaluation or saving.
        break
      time.sleep(0.001)
    if proc.poll() is not None:
      break  # It finished before the kill came.
    os.killpg(proc.pid, signal.SIGKILL)
    _, out = finish(proc)
    kills += 1
    killed_mid_save += bool(leftover_tmp(workdir) - tmp_before)
    if expected:  # The restart took the newest committed checkpoint.
      assert f'resumed from step {expected[-1]}' in out, out[-3000:]
  print(f'{kills} kills, {killed_mid_save} of them during a checkpoint save')
  assert kills >= 5 and killed_mid_save >= 1, (kills, killed_mid_save)

  code, out = finish(start(workdir, f'--config.num_epochs={EPOCHS}'))
  assert code == 0, out[-3000:]
  assert not leftover_tmp(workdir)  # Half-written checkpoints were cleaned up.
  steps, meta = last_checkpoint_meta(workdir)
  assert steps[-1] == STEPS_PER_EPOCH * EPOCHS
  assert meta['checksum'] == uninterrupted  # Bit-identical parameters and optimizer state.
  rows = [json.loads(l) for l in open(f'{workdir}/metrics.jsonl')]
  assert [r['step'] for r in rows if 'train_loss' in r] == \
      list(range(1, STEPS_PER_EPOCH * EPOCHS + 1))  # Each step's metrics once, none lost.


def test_sigterm_checkpoints_exits_75_and_resumes_exactly(tmp_path, uninterrupted):
  proc = start(tmp_path, f'--config.num_epochs={EPOCHS}')
  deadline = time.time() + 120
  while time.time() < deadline and not (
      (tmp_path / 'metrics.jsonl').exists() and train_lines(tmp_path) > 1):
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  code, out = finish(proc)
  assert code == train.EXIT_PREEMPTED, out[-3000:]
  steps, meta = last_checkpoint_meta(tmp_path)
  assert 0 < steps[-1] < STEPS_PER_EPOCH * EPOCHS and meta['data']['step'] == steps[-1]
  code, out = finish(start(tmp_path, f'--config.num_epochs={EPOCHS}'))
  assert code == 0 and f'resumed from step {steps[-1]}' in out, out[-3000:]
  assert last_checkpoint_meta(tmp_path)[1]['checksum'] == uninterrupted


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path):
  """A file-size limit below the checkpoint's size makes every write past it fail as a full
  disk does; the run stops in one line and the checkpoint before stays usable."""
  code, out = finish(start(tmp_path, '--config.num_epochs=1', '--config.checkpoint_keep=1'))
  assert code == 0, out[-3000:]

  def small_disk():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Writes fail with EFBIG instead.
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

  code, out = finish(start(tmp_path, '--config.num_epochs=2', '--config.checkpoint_keep=1',
                           preexec_fn=small_disk))
  assert code == 1
  # Our one line; orbax's failed writer threads may print their own tracebacks around it.
  assert (f'error: checkpoint: saving step {2 * STEPS_PER_EPOCH} in {tmp_path}/checkpoints '
          'failed: File too large (errno 27); the checkpoints before it are kept'
          ) in out.splitlines()
  assert committed_steps(tmp_path) == [STEPS_PER_EPOCH]
  code, out = finish(start(tmp_path, '--config.num_epochs=2', '--config.checkpoint_keep=1'))
  assert code == 0 and f'resumed from step {STEPS_PER_EPOCH}' in out, out[-3000:]
  assert committed_steps(tmp_path) == [2 * STEPS_PER_EPOCH] and not leftover_tmp(tmp_path)


# ---- Damaged checkpoints ------------------------------------------------------------------


@pytest.fixture(scope='module')
def three_checkpoints(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('three')
  train.train_and_evaluate(tiny_config(num_epochs=3), str(workdir))
  return workdir


def largest_state_file(step_dir):
  files = [p for p in glob.glob(os.path.join(step_dir, 'state', '**'), recursive=True)
           if os.path.isfile(p)]
  return max(files, key=os.path.getsize)


def truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 3)


def flip_a_byte(path):
  blob = bytearray(open(path, 'rb').read())
  blob[len(blob) // 2] ^= 0x01
  open(path, 'wb').write(bytes(blob))


@pytest.mark.parametrize('damage', [truncate, os.remove, flip_a_byte],
                         ids=['truncated', 'deleted', 'flipped-byte'])
def test_damaged_latest_checkpoint_resumes_from_the_previous(tmp_path, three_checkpoints,
                                                            damage, caplog):
  workdir = tmp_path / 'run'
  shutil.copytree(three_checkpoints, workdir)
  good = last_checkpoint_meta(workdir)[1]['checksum']
  damage(largest_state_file(workdir / 'checkpoints' / '9'))
  with caplog.at_level('INFO'):
    final = train.train_and_evaluate(tiny_config(num_epochs=3), str(workdir))
  reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith('checkpoint 9')]
  assert len(reports) == 1 and '\n' not in reports[0], reports
  assert any(r.getMessage() == 'resumed from step 6' for r in caplog.records)
  assert (workdir / 'checkpoints' / '9.damaged').is_dir()  # Kept aside for a look.
  # Step 9 was trained again from step 6, to the very same bits.
  assert final['step'] == 9 and last_checkpoint_meta(workdir)[1]['checksum'] == good


def test_two_damaged_checkpoints_fall_back_two_steps(tmp_path, three_checkpoints):
  workdir = tmp_path / 'run'
  shutil.copytree(three_checkpoints, workdir)
  flip_a_byte(largest_state_file(workdir / 'checkpoints' / '9'))
  truncate(largest_state_file(workdir / 'checkpoints' / '6'))
  config = tiny_config(num_epochs=3)
  ckpts = checkpoint.Checkpoints(str(workdir / 'checkpoints'))
  state, meta = ckpts.restore_latest(abstract_state(config))
  assert int(state.step) == 3 and meta['data']['step'] == 3 and ckpts.steps() == [3]
  ckpts.close()


# ---- Input workers ------------------------------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize('how', ['raise', 'kill'])
def test_a_broken_input_worker_stops_the_run_in_one_line(tmp_path, monkeypatch, how):
  from fault_sources import BreakingSource  # pylint: disable=g-import-not-at-top
  open_source = datasets.open_source

  def breaking(config, split):
    source, stats = open_source(config, split)
    return BreakingSource(source, how=how, after=40), stats

  monkeypatch.setattr(datasets, 'open_source', breaking)
  config = tiny_config(**{'data.workers': 2})
  with pytest.raises(train.TrainingError) as e:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(e.value)
  assert re.match(r'data: the input pipeline failed (before step \d+|during evaluation): ',
                  message) and '\n' not in message, message
  assert ('disk read error on example' if how == 'raise' else 'terminated unexpectedly') \
      in message


# ---- NaN gradients ------------------------------------------------------------------------


def test_a_nan_gradient_skips_the_update_and_is_counted():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  state = abstract_state(config)
  graphdef, _ = nnx.split(alexnet_jax.create_model(config.model), nnx.Param)
  step = train.make_train_step(graphdef, optim.create(config.optim), seed=0, num_classes=10,
                               divide=1.0)
  images = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype(np.float32)
  images[3, 5, 5, 0] = np.nan  # One NaN pixel: a NaN loss and NaN gradients.
  batch = {'image': images, 'label': np.arange(16, dtype=np.int32) % 10,
           'flip': np.zeros(16, bool), 'lighting': np.zeros((16, 3), np.float32)}
  before = checkpoint.checksum(state.params)
  new_state, metrics = step(state, batch, jnp.zeros((32, 32, 3)))
  assert float(metrics['finite']) == 0 and not np.isfinite(float(metrics['loss']))
  assert checkpoint.checksum(new_state.params) == before and int(new_state.step) == 1


def test_non_finite_steps_then_a_clean_stop(tmp_path):
  config = tiny_config(max_nonfinite_steps=2, **{'optim.base_lr': 1e30})
  with pytest.raises(train.TrainingError, match='steps in a row had a non-finite') as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert '\n' not in str(e.value)
  ckpts = checkpoint.Checkpoints(str(tmp_path / 'checkpoints'))
  restored = ckpts.restore_latest(abstract_state(config))
  ckpts.close()
  assert restored is None or checkpoint.all_finite(restored[0].params)  # Only finite saved.
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert max(r.get('nonfinite_steps', 0) for r in rows) == 3
