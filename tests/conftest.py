"""Every test sees 4 fake CPU devices; set before jax initialises its backends."""
import os
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Many tests start `python -m alexnet_jax.main` again and again (resume, kills, several
# processes); a persistent compilation cache, inherited by them, saves ~20 s a start.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(), f'alexnet_jax_test_jit_cache_{os.getuid()}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

import alexnet_jax  # pylint: disable=g-import-not-at-top,wrong-import-position


def small_config(variant='paper', **overrides):
  """A variant scaled down to run in well under a second on a CPU, same topology.

  width 1/8 keeps every layer's tower split; a 5x5 stride-2 conv1 on 63x63 images reaches
  pool5 at 3x3, so all eight layers, both LRNs and all three pools are exercised.
  """
  c = alexnet_jax.model_config(variant)
  c.width = 0.125
  c.image_size = 63
  c.conv1_kernel = 5
  c.conv1_stride = 2
  c.num_classes = 10
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope='session', autouse=True)
def four_devices():
  assert jax.device_count() == 4, 'tests expect 4 fake CPU devices (see conftest.py)'
