"""The main job: `python -m alexnet_jax.main --config=configs/paper.py --workdir=DIR`.

With no --config it trains the embedded default, configs/digits.py. Re-running the same
command resumes from the newest good checkpoint in DIR/checkpoints. Training itself lives in
`alexnet_jax.train` (notebooks import it); this file only reads flags and, for a run over
several processes, starts `jax.distributed` (see `alexnet_jax.distributed`): e.g. per process
  --config.distributed.coordinator_address=host0:1234 --config.distributed.num_processes=2
  --config.distributed.process_id=0
"""
import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
config_flags.DEFINE_config_file('config', os.path.join(_REPO, 'configs', 'digits.py'),
                                'Configuration file, optionally `file.py:variant`.')
flags.DEFINE_string('workdir', 'workdir/digits', 'Directory for checkpoints and metrics.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s',
                      stream=sys.stderr)
  f = flags.FLAGS
  from alexnet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from alexnet_jax import distributed  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(f.config.distributed)  # Before anything touches a device.
    train.train_and_evaluate(f.config, f.workdir)
  except checkpoint.CheckpointError as e:
    # Orbax's writer threads are left failed and print asyncio tracebacks at interpreter
    # exit; the state on disk is already safe, so leave without waiting for them.
    # One write with its newline: print() writes the newline separately, and a writer
    # thread's traceback could land between the two.
    sys.stderr.write(f'error: {e}\n')
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access
  except (ValueError, train.TrainingError) as e:
    raise SystemExit(f'error: {e}') from None  # One line naming the field or problem.


if __name__ == '__main__':
  app.run(main)
