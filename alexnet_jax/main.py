"""The main job: `python -m alexnet_jax.main --config=configs/paper.py --workdir=DIR`.

With no --config it uses the embedded default, configs/digits.py. Until training lands it
builds the configured net on the device mesh, prints where every layer lives, and runs the
evaluation split through the real input pipeline and the net.
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
  """Builds the model on every device and evaluates it on the configured eval split."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from alexnet_jax import input_pipeline, model, sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(config.model.towers)
  net = model.create_model(config.model, mesh=mesh, seed=config.seed)
  print(f'{net.spec.variant} net on mesh {dict(mesh.shape)} ({jax.device_count()} '
        f'{jax.devices()[0].platform} devices)')
  print(model.summary(net))
  data = input_pipeline.create(config, mesh)

  @nnx.jit
  def predict(net, images_u8, mean):
    zero_light = jax.numpy.zeros((images_u8.shape[0], 3), jax.numpy.float32)
    return net(input_pipeline.normalize(images_u8, zero_light, mean, data.divide)).argmax(-1)

  start = time.perf_counter()
  correct = 0
  for batch in input_pipeline.global_batches(data.eval, mesh):
    hits = np.asarray(predict(net, batch['image'], data.mean)) == np.asarray(batch['label'])
    correct += int((hits & np.asarray(batch['mask'])).sum())
  seconds = time.perf_counter() - start
  accuracy = correct / data.eval_examples
  print(f'{data.eval_examples} {config.data.eval_split} images through the input pipeline '
        f'and the net in {seconds:.2f} s (compilation included); accuracy of the untrained '
        f'net {accuracy:.3f}')
  if workdir:
    os.makedirs(workdir, exist_ok=True)
  return {'accuracy': accuracy, 'images': data.eval_examples}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    run(flags.FLAGS.config, flags.FLAGS.workdir)
  except ValueError as e:  # Bad config or data: one line naming the field, no traceback.
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  app.run(main)
