"""The main job: `python -m alexnet_jax.main --config=configs/paper.py --workdir=DIR`.

With no --config it uses the embedded default, configs/digits.py. Until training lands it
builds the configured net on the device mesh, prints where every layer lives, and runs the
forward pass over the default dataset's test split.
"""
import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
config_flags.DEFINE_config_file('config', os.path.join(_REPO, 'configs', 'digits.py'),
                                'Configuration file, optionally `file.py:variant`.')
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')


def run(config, workdir=None) -> dict:
  """Builds the model on every device and evaluates it on the digits test split."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from alexnet_jax import datasets, model, sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(config.model.towers)
  net = model.create_model(config.model, mesh=mesh, seed=config.seed)
  print(f'{net.spec.variant} net on mesh {dict(mesh.shape)} ({jax.device_count()} '
        f'{jax.devices()[0].platform} devices)')
  print(model.summary(net))
  images, labels = datasets.digits('test', net.spec.image_size)
  n = len(labels) // sharding.data_size(mesh) * sharding.data_size(mesh)
  x = (images[:n].astype(np.float32) - 128.0) / 64.0
  start = time.perf_counter()
  logits = np.asarray(net(x))
  seconds = time.perf_counter() - start
  accuracy = float((logits.argmax(-1) == labels[:n]).mean())
  print(f'forward pass over {n} test images: {seconds:.2f} s (compilation included); '
        f'accuracy of the untrained net {accuracy:.3f}')
  if workdir:
    os.makedirs(workdir, exist_ok=True)
  return {'accuracy': accuracy, 'images': n}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
