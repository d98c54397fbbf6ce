"""The paper's figure 1: how much faster ReLUs train than tanh units.

  python experiments/figure1_relu_tanh.py --out=experiments/figure1            # digits
  python experiments/figure1_relu_tanh.py --config=configs/folder.py:small \
      --config.data.path=CIFAR10_FOLDER --out=/runs/figure1   # an image folder of CIFAR-10

The paper: a four-layer CNN on CIFAR-10 reaches 25% training error six times faster with
ReLUs than with tanh. This trains the config twice, identical but for the activation (runs
are resumable and reused, as in sweep.py), plots training error (the mean of the epoch's
steps, under dropout and augmentation, as during training) against epochs for both, and
reports the epochs each needs to reach --target and their ratio. CIFAR-10 is not available
offline here, so the default is the embedded digits config.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

from alexnet_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position


def epoch_errors(workdir: str) -> np.ndarray:
  """Mean training top-1 error of each epoch, from the run's metrics.jsonl."""
  by_epoch = {}
  steps_per_epoch = None
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  for r in rows:
    if 'epoch' in r and r['epoch'] > 0:
      steps_per_epoch = round(r['step'] / r['epoch'])
      break
  for r in rows:
    if 'train_top1_error' in r:
      by_epoch.setdefault((r['step'] - 1) // steps_per_epoch, []).append(r['train_top1_error'])
  return np.asarray([np.mean(by_epoch[e]) for e in sorted(by_epoch)])


def epochs_to_reach(errors: np.ndarray, target: float) -> float | None:
  """The first epoch (1-based, linearly interpolated) at which the error reaches `target`."""
  below = np.nonzero(errors <= target)[0]
  if not len(below):
    return None
  i = int(below[0])
  if i == 0:
    return 1.0
  e0, e1 = errors[i - 1], errors[i]
  return i + (e0 - target) / (e0 - e1)  # Between epoch i and i + 1.


def define_flags():
  """Flags, defined when run as a script (tests import this module)."""
  cli.define_config_flag(sweep.DEFAULT_CONFIG, 'Config file, `file.py` or `file.py:recipe`; '
                         'override fields as --config.section.field=value, for both runs.')
  flags.DEFINE_string('out', None, 'Directory for the two runs and the plot (required; the '
                      'tracked experiments/figure1 holds the recorded result).')
  flags.DEFINE_float('target', 0.25, 'Training error to reach (the paper: 25%).')
  flags.DEFINE_integer('seed', 0, 'Seed of both runs.')


def main(argv):
  f = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not f.out:
    raise app.UsageError('give --out')
  curves = {}
  base_json = f.config.to_json()
  sweep.validate(base_json, ('baseline', 'tanh'), 1)
  for name, ablation in (('ReLU', 'baseline'), ('tanh', 'tanh')):
    workdir = os.path.join(f.out, ablation)
    sweep.run_one(base_json, ablation, f.seed, workdir)
    curves[name] = epoch_errors(workdir)
  reach = {name: epochs_to_reach(e, f.target) for name, e in curves.items()}
  lines = [f'training error {100 * f.target:.0f}% reached after: ' + ', '.join(
      f'{name} {"never" if r is None else f"{r:.2f} epochs"}' for name, r in reach.items())]
  if reach['ReLU'] and reach['tanh']:
    lines.append(f'speed-up of ReLU over tanh: {reach["tanh"] / reach["ReLU"]:.2f}x '
                 '(the paper, CIFAR-10: about 6x)')
  elif reach['ReLU']:
    lines.append(f'speed-up of ReLU over tanh: more than '
                 f'{len(curves["tanh"]) / reach["ReLU"]:.2f}x (tanh never got there)')

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, style in (('ReLU', '-'), ('tanh', '--')):
    ax.plot(np.arange(1, len(curves[name]) + 1), curves[name], style, label=name)
  ax.axhline(f.target, color='gray', linewidth=0.8)
  ax.set_xlabel('epochs')
  ax.set_ylabel('training error rate')
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(f.out, 'figure1.png'), dpi=120)
  with open(os.path.join(f.out, 'figure1.json'), 'w') as fp:
    json.dump({'target': f.target, 'epochs_to_target': reach,
               'errors': {k: v.tolist() for k, v in curves.items()}}, fp, indent=1)
  print('\n'.join(lines + [f'written: {f.out}/figure1.png, figure1.json']))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
