"""Ablation sweeps: the paper's claims (paper.md s5) tested against a baseline, over seeds.

  python experiments/sweep.py --config=configs/digits.py --out=experiments/ablations/digits \
      --seeds=2 --parallel=2 --set=num_epochs=6

Each (ablation, seed) trains in its own work directory, OUT/<ablation>/seed<k>, with the
config's own recipe and one change. A run that finished (final_metrics.json) is skipped and
an interrupted one resumes from its checkpoints, so re-running the command continues the
sweep. --parallel runs several at once (processes on this machine); --shard=i/n takes every
n-th run, so n hosts can share one sweep on a shared OUT, and any of them can --summarize.

The sweep ends with OUT/ablations.md and .csv: each ablation's top-1/top-5 error (10 views,
as the paper's ablations) as mean +- standard deviation over the seeds, its change against the
baseline, and the change the paper reports beside it; and OUT/ablations.png, a bar plot.
"""
from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import csv
import dataclasses
import importlib.util
import json
import multiprocessing
import os
import sys
from typing import Callable

from absl import app
from absl import flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
DEFAULT_CONFIG = os.path.join(_REPO, 'configs', 'digits.py')


@dataclasses.dataclass(frozen=True)
class Ablation:
  what: str  # For the table.
  change: Callable  # config -> None, in place.
  paper: tuple[float, float] | None  # The paper's (top-1, top-5) change in points, if given.


def _model(**fields):
  def change(c):
    for k, v in fields.items():
      c.model[k] = v
  return change


def _one_tower_half(c):
  """One tower with half of each conv layer's kernels; fully connected layers unchanged."""
  c.model.towers = 1
  c.model.conv_filters = tuple(f // 2 for f in c.model.conv_filters)
  c.model.fc8_per_tower = False


def _no_lighting(c):
  c.data.lighting_std = 0.0


ABLATIONS = {  # paper.md s5; changes in top-1 / top-5 points, 10 views.
    'baseline': Ablation('the config as it is', lambda c: None, (0.0, 0.0)),
    'no_lrn': Ablation('no local response normalization', _model(lrn=False), (1.4, 1.2)),
    'non_overlapping_pool': Ablation('2x2 stride-2 pooling (not 3x3 stride 2)',
                                     _model(pool_window=2), (0.4, 0.3)),
    'no_pca_lighting': Ablation('no PCA lighting noise', _no_lighting, (1.0, None)),
    'no_dropout': Ablation('no dropout', _model(dropout_rate=0.0), None),
    'tanh': Ablation('tanh instead of ReLU', _model(activation='tanh'), None),
    'one_tower_half': Ablation('one tower, half the kernels of each conv layer',
                               _one_tower_half, (1.7, 1.2)),
    # Run 150: 41.83 / 19.33 against run 145's 40.66 / 18.21.
    'no_cross_tower': Ablation('no cross-tower connections (conv3, fc6, fc7)',
                               _model(cross_tower=False), (1.17, 1.12)),
    'no_conv4': Ablation('a middle conv layer (conv4) removed', _model(skip_conv4=True),
                         (2.0, None)),  # "about 2%" top-1 for any middle layer.
}


def load_config(spec: str, sets: list[str]):
  """`path.py[:arg]` -> its get_config(arg), with `a.b=value` overrides applied."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('sweep_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for item in sets:
    key, _, text = item.partition('=')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, last = key.split('.')
    target = config
    for p in parents:
      target = target[p]
    target[last] = value
  return config


def run_one(config_spec: str, sets: list[str], ablation: str, seed: int,
            workdir: str) -> dict:
  """Trains one run (or finds it done); returns its final metrics."""
  done = os.path.join(workdir, 'final_metrics.json')
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top  # In the worker.
  config = load_config(config_spec, sets)
  ABLATIONS[ablation].change(config)
  config.seed = seed
  config.progress = False
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'log.txt'), 'a') as log, \
      contextlib.redirect_stdout(log):
    return train.train_and_evaluate(config, workdir)


def runs(ablations, seeds: int, out: str):
  return [(a, s, os.path.join(out, a, f'seed{s}')) for a in ablations for s in range(seeds)]


# ---- The table and the plot ------------------------------------------------------------------


def _stats(values):
  import numpy as np  # pylint: disable=g-import-not-at-top
  v = 100 * np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize(out: str, ablations, seeds: int) -> list[dict]:
  """Rows of the table from the finished runs in `out`."""
  finished = {}
  for a, s, workdir in runs(ablations, seeds, out):
    path = os.path.join(workdir, 'final_metrics.json')
    if os.path.exists(path):
      with open(path) as f:
        finished.setdefault(a, []).append(json.load(f))
  if 'baseline' not in finished:
    raise SystemExit('error: sweep: no finished baseline run to compare against')
  rows = []
  base = {k: _stats([m[f'10view_{k}_error'] for m in finished['baseline']])[0]
          for k in ('top1', 'top5')}
  for a in ablations:
    if a not in finished:
      continue
    row = {'ablation': a, 'what': ABLATIONS[a].what, 'seeds': len(finished[a])}
    for k in ('top1', 'top5'):
      mean, std = _stats([m[f'10view_{k}_error'] for m in finished[a]])
      row[f'{k}'], row[f'{k}_std'], row[f'{k}_change'] = mean, std, mean - base[k]
    paper = ABLATIONS[a].paper
    row['paper_top1_change'] = paper[0] if paper else None
    row['paper_top5_change'] = paper[1] if paper else None
    rows.append(row)
  # 1 view against 10, from the baseline runs themselves.
  one, ten = ([m[f'{v}view_top1_error'] for m in finished['baseline']] for v in (1, 10))
  one5, ten5 = ([m[f'{v}view_top5_error'] for m in finished['baseline']] for v in (1, 10))
  rows.append({'ablation': 'one_view', 'what': 'baseline tested on 1 view (center), not 10',
               'seeds': len(one), 'top1': _stats(one)[0], 'top1_std': _stats(one)[1],
               'top1_change': _stats(one)[0] - _stats(ten)[0], 'top5': _stats(one5)[0],
               'top5_std': _stats(one5)[1], 'top5_change': _stats(one5)[0] - _stats(ten5)[0],
               'paper_top1_change': None, 'paper_top5_change': None})
  return rows


def _fmt(x, sign=False):
  return 'n/a' if x is None else (f'{x:+.2f}' if sign else f'{x:.2f}')


def write_table(rows, out: str) -> str:
  header = ('| ablation | seeds | top-1 error (%) | top-5 error (%) | top-1 change | '
            'top-5 change | paper top-1 change | paper top-5 change |')
  lines = [header, '|' + '---|' * 8]
  for r in rows:
    lines.append(
        f'| {r["ablation"]}: {r["what"]} | {r["seeds"]} | {r["top1"]:.2f} +- '
        f'{r["top1_std"]:.2f} | {r["top5"]:.2f} +- {r["top5_std"]:.2f} | '
        f'{_fmt(r["top1_change"], True)} | {_fmt(r["top5_change"], True)} | '
        f'{_fmt(r["paper_top1_change"], True)} | {_fmt(r["paper_top5_change"], True)} |')
  table = '\n'.join(lines)
  with open(os.path.join(out, 'ablations.md'), 'w') as f:
    f.write(table + '\n')
  with open(os.path.join(out, 'ablations.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return table


def plot(rows, out: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [r for r in rows if r['ablation'] != 'baseline']
  x = range(len(rows))
  fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2, 4))
  ax.bar(x, [r['top1_change'] for r in rows], yerr=[r['top1_std'] for r in rows],
         capsize=3, label='this sweep (top-1, 10 views)', color='tab:blue')
  paper = [(i, r['paper_top1_change']) for i, r in enumerate(rows)
           if r['paper_top1_change'] is not None]
  if paper:
    ax.scatter(*zip(*paper), marker='D', color='tab:red', zorder=3, label='the paper')
  ax.axhline(0, color='black', linewidth=0.8)
  ax.set_xticks(list(x), [r['ablation'] for r in rows], rotation=30, ha='right')
  ax.set_ylabel('top-1 error change vs baseline (points)')
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'ablations.png'), dpi=120)
  plt.close(fig)


# ---- Command line ----------------------------------------------------------------------------

def define_flags():
  """Flags, defined when run as a script (tests import this module)."""
  flags.DEFINE_string('config', DEFAULT_CONFIG,
                      'Config file, optionally file.py:arg.')
  flags.DEFINE_string('out', None, 'Sweep directory (one work directory per run inside).')
  flags.DEFINE_integer('seeds', 2, 'Seeds per ablation.')
  flags.DEFINE_list('ablations', list(ABLATIONS), 'Which ablations (baseline always runs).')
  flags.DEFINE_multi_string('set', [], 'Config overrides a.b=value, for every run.')
  flags.DEFINE_integer('parallel', 1, 'Runs at once on this machine.')
  flags.DEFINE_string('shard', '0/1', 'i/n: this host takes runs i, i+n, i+2n, ...')
  flags.DEFINE_bool('summarize', False, 'Only write the table and plot of the finished runs.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if not f.out:
    raise app.UsageError('give --out')
  unknown = set(f.ablations) - set(ABLATIONS)
  if unknown:
    raise app.UsageError(f'unknown ablations {sorted(unknown)}; choose from {list(ABLATIONS)}')
  ablations = ['baseline'] + [a for a in f.ablations if a != 'baseline']
  load_config(f.config, f.set)  # A bad config or override fails here, before any run.
  i, n = (int(v) for v in f.shard.split('/'))
  if not f.summarize:
    todo = runs(ablations, f.seeds, f.out)[i::n]
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(f.parallel, mp_context=context) as pool:
      futures = {pool.submit(run_one, f.config, f.set, a, s, w): (a, s)
                 for a, s, w in todo}
      for future in concurrent.futures.as_completed(futures):
        a, s = futures[future]
        m = future.result()
        print(f'{a} seed {s}: 10-view top-1 {100 * m["10view_top1_error"]:.2f}%, top-5 '
              f'{100 * m["10view_top5_error"]:.2f}%', flush=True)
  rows = summarize(f.out, ablations, f.seeds)
  print(write_table(rows, f.out))
  plot(rows, f.out)
  print(f'written: {f.out}/ablations.md, ablations.csv, ablations.png')


if __name__ == '__main__':
  define_flags()
  app.run(main)
