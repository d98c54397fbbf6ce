"""Every test sees 4 fake CPU devices (set before jax initialises its backends), and the
fixtures several test files share. Helper functions are in tests/helpers.py."""
import os
import tempfile

# LLVM at -O1 for every program, as the project compiles its own steps on a CPU
# (backends.compiler_options): the suite is mostly compilation, and -O1 compiles a third
# faster; tests' own jits and the model's eager calls get it from here.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_backend_optimization_level=1'
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Many tests start `python -m alexnet_jax.main` again and again (resume, kills, several
# processes); a persistent compilation cache, inherited by them, saves ~20 s a start.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(), f'alexnet_jax_test_jit_cache_{os.getuid()}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import functools  # pylint: disable=g-import-not-at-top,wrong-import-position
import multiprocessing.process  # pylint: disable=g-import-not-at-top,wrong-import-position
import subprocess  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

# ---- Honest tiers: a test that starts a process is `slow` ------------------------------------

_STARTED = []  # What the running test started: commands, multiprocessing targets.


def _recording(start, what):
  @functools.wraps(start)
  def recorded(self, *args, **kwargs):
    _STARTED.append(what(self, *args))
    return start(self, *args, **kwargs)
  return recorded


subprocess.Popen.__init__ = _recording(
    subprocess.Popen.__init__,
    lambda _, args=(), *__: (args if isinstance(args, str) else ' '.join(map(str, args)))[:120])
multiprocessing.process.BaseProcess.start = _recording(
    multiprocessing.process.BaseProcess.start, lambda p: f'a {type(p).__name__} ({p.name})')


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
  """Fails, in one line, a test not marked slow that started a process (a command, a second
  process, input or prepare workers): `pytest -m "not slow"` stays the fast tier."""
  _STARTED.clear()
  result = yield
  if _STARTED and item.get_closest_marker('slow') is None:
    pytest.fail(f'started {_STARTED[0]!r} but is not marked slow (@pytest.mark.slow)',
                pytrace=False)
  return result


@pytest.fixture(scope='session', autouse=True)
def four_devices():
  assert jax.device_count() == 4, 'tests expect 4 fake CPU devices (see conftest.py)'


@pytest.fixture(scope='session')
def photo_folder(tmp_path_factory):
  """root/{train,val}/{cat,coffee,space}/*.jpg, made of real photos (helpers.make_folder)."""
  return helpers.make_folder(tmp_path_factory.mktemp('photos'))


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory):
  """(workdir, final metrics) of the embedded default at 1/8 width, 2 epochs of 20 steps of 32
  at a higher rate (about half the test digits right): the paper's net (non-inverted dropout,
  fc8 split over the towers) on the digits, for the tests of evaluate, predict, features,
  inference and transfer."""
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('trained_run')
  config = helpers.train_config(steps_per_epoch=20, batch_size=32, **{
      'optim.base_lr': 0.05, 'eval.ten_views': True})  # Its 10-view error, for evaluate's.
  return workdir, train.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope='session')
def small_photos(tmp_path_factory):
  """root/{train,val}/{cat,coffee,space}/*.jpg: 40-pixel photos, as users' own photos are
  small, 5 of each class to train on and among them one file that does not decode."""
  root = helpers.make_folder(tmp_path_factory.mktemp('small_photos') / 'photos', side=40,
                             train=5, val=2)
  (root / 'train' / 'cat' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a JPEG' * 4)
  return root


@pytest.fixture(scope='session')
def other_small_photos(tmp_path_factory):
  """Like `small_photos`, of other classes (astronaut, cells, galaxy), all readable."""
  return helpers.make_folder(tmp_path_factory.mktemp('other_photos') / 'photos', side=40,
                             train=4, val=2, sources=helpers.other_photos())


@pytest.fixture(scope='session')
def small_photo_run(tmp_path_factory, small_photos):
  """(workdir, final metrics) of configs/folder.py:small on `small_photos` (at 1/8 width),
  11 epochs of 4 steps: more epochs than the 10 after which one bad file once stopped a run."""
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('small_photo_run')
  config = helpers.load_config('folder.py:small', f'data.path={small_photos}', 'num_epochs=11',
                               'batch_size=4', 'progress=False', 'model.width=0.125')
  return workdir, train.train_and_evaluate(config, str(workdir))
