"""Checkpoints: the keep policy, checksums, and damaged checkpoints reported in one line, set
aside, and resumed from the one before."""
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alexnet_jax
from alexnet_jax import checkpoint
from alexnet_jax import cli
from alexnet_jax import sharding
from alexnet_jax import train
import helpers


def tiny_state(value: float) -> checkpoint.TrainState:
  return checkpoint.TrainState(step=jnp.asarray(0, jnp.int32),
                               params={'w': jnp.full((3,), value, jnp.float32)}, opt_state={})


def test_the_newest_and_the_best_checkpoints_are_kept(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=1)
  for step, error in ((1, 0.5), (2, 0.3), (3, 0.4), (4, 0.45)):
    ckpts.save(step, tiny_state(step), {'step': step}, val_error=error)
  ckpts.wait()
  assert ckpts.steps() == [2, 4]  # The last one, and the lowest validation error.
  state, meta = ckpts.restore(2, tiny_state(0.0))
  np.testing.assert_array_equal(state.params['w'], 2.0)
  assert meta['step'] == 2 and len(meta['checksum']) == 64
  ckpts.close()


def test_non_finite_parameters_are_never_saved(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path))
  with pytest.raises(FloatingPointError, match='refusing to save step 5'):
    ckpts.save(5, tiny_state(float('nan')), {})
  assert ckpts.steps() == []
  ckpts.close()


@pytest.fixture(scope='module')
def three_checkpoints(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('three')
  train.train_and_evaluate(helpers.train_config(num_epochs=3), str(workdir))
  assert helpers.checkpoint_steps(workdir) == [3, 6, 9]
  return workdir


def largest_file(directory):
  files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
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
  good = helpers.last_checkpoint_meta(workdir)[1]['checksum']
  damage(largest_file(workdir / 'checkpoints' / '9'))
  with caplog.at_level('INFO'):
    final = train.train_and_evaluate(helpers.train_config(num_epochs=3), str(workdir))
  reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith('checkpoint 9')]
  assert len(reports) == 1 and '\n' not in reports[0], reports
  assert any(r.getMessage() == 'resumed from step 6' for r in caplog.records)
  assert (workdir / 'checkpoints' / '9.damaged').is_dir()  # Kept aside for a look.
  # Step 9 was trained again from step 6, to the very same bits.
  assert final['step'] == 9 and helpers.last_checkpoint_meta(workdir)[1]['checksum'] == good


def test_two_damaged_checkpoints_fall_back_two_steps(tmp_path, three_checkpoints):
  workdir = tmp_path / 'run'
  shutil.copytree(three_checkpoints, workdir)
  flip_a_byte(largest_file(workdir / 'checkpoints' / '9'))
  truncate(largest_file(workdir / 'checkpoints' / '6'))
  config = helpers.train_config()
  net = alexnet_jax.create_model(config.model, mesh=sharding.make_mesh(2))
  ckpts = checkpoint.Checkpoints(str(workdir / 'checkpoints'))
  state, meta = ckpts.restore_latest(checkpoint.abstract_train_state(net, config.optim,
                                                                     net.mesh))
  assert int(state.step) == 3 and meta['data']['step'] == 3 and ckpts.steps() == [3]
  assert {p.name for p in (workdir / 'checkpoints').iterdir()} >= {'6.damaged', '9.damaged'}
  ckpts.close()
  # What was restored is what step 3 saved: its checksum checks out against the state.
  assert checkpoint.checksum(state) == meta['checksum']
  assert jax.tree.structure(state.params) == jax.tree.structure(
      train.init_state(net, config.optim)[1].params)


def test_the_commands_drop_only_the_reads_a_failed_restore_abandons():
  """Python's "Exception ignored in" printouts of orbax's abandoned reads never reach a
  command's terminal; any other error Python could not raise still does."""
  def unraisable(error):
    try:
      raise error
    except Exception as e:  # pylint: disable=broad-except
      return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__,
                                   err_msg=None, object=None)
  assert cli.abandoned_checkpoint_read(unraisable(RuntimeError('Event loop is closed')))
  assert not cli.abandoned_checkpoint_read(unraisable(RuntimeError('something of ours')))
  assert not cli.abandoned_checkpoint_read(unraisable(ValueError('Event loop is closed')))


def test_an_os_error_inside_orbaxs_message_is_named_by_the_os():
  """tensorstore's text before the code varies with the failing call (a full disk once read
  "failed: true}'] (errno 27)"): the reason is the OS's own name for the code."""
  for text in ("Error writing local file \"/c/0.tmp\": File too large [os_error_code=27] ...",
               "UNKNOWN: {'file_io_sync': true}'] [os_error_code=27] [source locations=...]"):
    try:
      raise RuntimeError('orbax failed') from OSError(text)
    except RuntimeError as e:
      assert checkpoint._reason(e) == 'File too large (errno 27)'  # pylint: disable=protected-access
