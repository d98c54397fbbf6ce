"""Ablation sweeps: the paper's claims (docs/paper.md s5) tested against a baseline, over seeds.

  python experiments/sweep.py --config=configs/digits.py --config.num_epochs=8 \
      --out=experiments/ablations/digits --seeds=2 --parallel=2
  python experiments/sweep.py --config=configs/paper.py:cuda_convnet \
      --config.data.path=/data/in1k --out=/runs/ablations   # the layer files themselves

Each (ablation, seed) trains in its own work directory, OUT/<ablation>/seed<k>, with the
config as given (`--config.section.field=value` overrides, as for main) and the ablation's
change. Every run's config is built and validated before the first starts. A run that
finished (final_metrics.json) is skipped and an interrupted one resumes from its checkpoints,
so re-running the command continues the sweep. --parallel runs several at once (processes on
this machine); --shard=i/n takes every n-th run, so n hosts can share one sweep on a shared
OUT, and any of them can --summarize.

The ablations of run 145 are its layer files' changes (alexnet_jax/recipes.py): when the
sweep's baseline is run 145's net itself (`configs/paper.py:cuda_convnet`), each of them is
the layer file the paper's figure came from, and the table puts the paper's change beside the
measured one; on any other baseline (a scaled-down proxy) it says the two are not comparable.

The sweep ends with OUT/ablations.md and .csv: each ablation's top-1/top-5 error (10 views,
as the paper's ablations) as mean +- standard deviation over the seeds, its change against
the baseline, and the paper's change where it applies; and OUT/ablations.png, a bar plot.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import json
import multiprocessing
import os
import sys
from typing import Any, Mapping

from absl import app
from absl import flags
import ml_collections

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
DEFAULT_CONFIG = os.path.join(_REPO, 'configs', 'digits.py')

from alexnet_jax import cli  # noqa: E402  pylint: disable=wrong-import-position
from alexnet_jax import recipes  # noqa: E402  pylint: disable=wrong-import-position


@dataclasses.dataclass(frozen=True)
class Ablation:
  what: str  # For the table.
  changes: Mapping[str, Any]  # 'section.field' -> value, on top of the sweep's config.
  paper: tuple[float | None, float | None] | None = None  # The paper's change (points).
  versus: str = ''  # The recipe whose net the paper's figure changes (run 145's).
  source: str = ''  # Where the paper's figure comes from.


def _from_recipe(name: str, what: str) -> Ablation:
  """A recipe's own changes to the recipe it is compared with (its layer file's, for 145)."""
  r, base = recipes.get(name), recipes.get(recipes.get(name).versus)
  own = {k: v for k, v in r.changes.items() if base.changes.get(k, object()) != v}
  return Ablation(what, own, r.paper_change, r.versus,
                  r.source if r.layer_file else 'the paper\'s text, no layer file')


ABLATIONS = {  # docs/paper.md s5; changes in top-1 / top-5 points, 10 views.
    'baseline': Ablation('the config as it is', {}, (0.0, 0.0)),
    'no_lrn': _from_recipe('no_lrn', 'no local response normalization'),
    'no_overlap': _from_recipe('no_overlap', '2x2 stride-2 pooling, not 3x3 stride 2'),
    'no_pca_lighting': Ablation('no PCA lighting noise', {'data.lighting_std': 0.0},
                                (1.0, None), 'cuda_convnet', 'the paper\'s text'),
    'no_dropout': Ablation('no dropout', {'model.dropout_rate': 0.0}),
    'tanh': Ablation('tanh instead of ReLU', {'model.activation': 'tanh'}),
    'one_tower': _from_recipe('one_tower', 'one tower, half the kernels (conv5 kept)'),
    'no_cross_tower': _from_recipe('no_cross_tower', 'no cross-tower links, widened'),
    'no_conv4': _from_recipe('no_conv4', 'a middle conv layer (conv4) removed'),
}


def comparable(config: ml_collections.ConfigDict, ablation: Ablation) -> bool:
  """Whether the paper's figure for `ablation` measures this very change of this very net:
  the sweep's net is that of the recipe the figure changes (run 145's), at full size."""
  if not ablation.versus:
    return False
  want = recipes.config(ablation.versus).model.to_dict()
  ours = {k: v for k, v in config.model.to_dict().items() if k != 'num_classes'}
  return ours == {k: v for k, v in want.items() if k != 'num_classes'}


def run_config(base_json: str, ablation: str, seed: int) -> ml_collections.ConfigDict:
  """The config of one run: the sweep's config, the ablation's changes, the seed."""
  config = ml_collections.ConfigDict(json.loads(base_json))
  for name, value in ABLATIONS[ablation].changes.items():
    *sections, field = name.split('.')
    target = config
    for section in sections:
      target = target[section]
    target[field] = value
  config.seed = seed
  config.progress = False
  return config


def validate(base_json: str, ablations, seeds: int) -> None:
  """Builds and checks every run's config (net, optimizer, batch over the mesh, fitted to
  its data) and opens the data, before any run starts or any folder is made: one line on
  stderr and exit 2 for the first that cannot work."""
  from alexnet_jax import datasets, train  # pylint: disable=g-import-not-at-top
  opened = set()
  for a in ablations:
    for s in range(seeds):
      try:
        config, _ = train.checked(run_config(base_json, a, s))
        data = config.data.to_json()
        if data not in opened:  # The ablations share their data but for its augmentation.
          for split in (config.data.train_split, config.data.eval_split):
            datasets.open_source(config.data, split)
          opened.add(data)
      except ValueError as e:
        cli.fail(f'sweep: ablation {a}: {e}')


def run_one(base_json: str, ablation: str, seed: int, workdir: str) -> dict:
  """Trains one run (or finds it done); returns its final metrics. What it prints, its own
  events included, goes to WORKDIR/log.txt; libraries log nothing."""
  done = os.path.join(workdir, 'final_metrics.json')
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top  # In the worker.
  config = run_config(base_json, ablation, seed)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'log.txt'), 'a') as log, \
      contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
    cli.setup_logging()  # In a worker process too (its events go to stderr: the log).
    return train.train_and_evaluate(config, workdir)


def runs(ablations, seeds: int, out: str):
  return [(a, s, os.path.join(out, a, f'seed{s}')) for a in ablations for s in range(seeds)]


# ---- The table and the plot ------------------------------------------------------------------


def _stats(values):
  import numpy as np  # pylint: disable=g-import-not-at-top
  v = 100 * np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize(out: str, ablations, seeds: int, config: ml_collections.ConfigDict) -> list[dict]:
  """Rows of the table from the finished runs in `out` of a sweep of `config`."""
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
    ablation = ABLATIONS[a]
    paper = ablation.paper if a != 'baseline' and comparable(config, ablation) else None
    row['paper_top1_change'] = paper[0] if paper else None
    row['paper_top5_change'] = paper[1] if paper else None
    if a == 'baseline':
      row['compared'] = f'the reference ({config.recipe})'
    elif not ablation.paper:
      row['compared'] = 'the paper gives no figure'
    elif paper:
      row['compared'] = f'the paper: {ablation.source}'
    else:
      row['compared'] = (f'not comparable: the paper changes {ablation.versus}\'s full net, '
                         f'this sweep {config.recipe}\'s')
    rows.append(row)
  # 1 view against 10, from the baseline runs themselves.
  one, ten = ([m[f'{v}view_top1_error'] for m in finished['baseline']] for v in (1, 10))
  one5, ten5 = ([m[f'{v}view_top5_error'] for m in finished['baseline']] for v in (1, 10))
  rows.append({'ablation': 'one_view', 'what': 'baseline tested on 1 view (center), not 10',
               'seeds': len(one), 'top1': _stats(one)[0], 'top1_std': _stats(one)[1],
               'top1_change': _stats(one)[0] - _stats(ten)[0], 'top5': _stats(one5)[0],
               'top5_std': _stats(one5)[1], 'top5_change': _stats(one5)[0] - _stats(ten5)[0],
               'paper_top1_change': None, 'paper_top5_change': None,
               'compared': 'the paper gives no figure'})
  return rows


def _fmt(x, sign=False):
  return 'n/a' if x is None else (f'{x:+.2f}' if sign else f'{x:.2f}')


def write_table(rows, out: str) -> str:
  header = ('| ablation | seeds | top-1 error (%) | top-5 error (%) | top-1 change | '
            'top-5 change | paper top-1 change | paper top-5 change | against the paper |')
  lines = [header, '|' + '---|' * 9]
  for r in rows:
    lines.append(
        f'| {r["ablation"]}: {r["what"]} | {r["seeds"]} | {r["top1"]:.2f} +- '
        f'{r["top1_std"]:.2f} | {r["top5"]:.2f} +- {r["top5_std"]:.2f} | '
        f'{_fmt(r["top1_change"], True)} | {_fmt(r["top5_change"], True)} | '
        f'{_fmt(r["paper_top1_change"], True)} | {_fmt(r["paper_top5_change"], True)} | '
        f'{r["compared"]} |')
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
  cli.define_config_flag(DEFAULT_CONFIG, 'Config file, `file.py` or `file.py:recipe`; '
                         'override fields as --config.section.field=value, for every run.')
  flags.DEFINE_string('out', None, 'Sweep directory (one work directory per run inside).')
  flags.DEFINE_integer('seeds', 2, 'Seeds per ablation.')
  flags.DEFINE_list('ablations', list(ABLATIONS), 'Which ablations (baseline always runs).')
  flags.DEFINE_integer('parallel', 1, 'Runs at once on this machine.')
  flags.DEFINE_string('shard', '0/1', 'i/n: this host takes runs i, i+n, i+2n, ...')
  flags.DEFINE_bool('summarize', False, 'Only write the table and plot of the finished runs.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if not f.out:
    raise app.UsageError('give --out')
  unknown = sorted(set(f.ablations) - set(ABLATIONS))
  if unknown:
    cli.fail(f'--ablations: unknown ablation {unknown[0]!r}; choose from {", ".join(ABLATIONS)}')
  ablations = ['baseline'] + [a for a in f.ablations if a != 'baseline']
  base_json = f.config.to_json()
  validate(base_json, ablations, f.seeds)  # Every run's config, before the first starts.
  i, n = (int(v) for v in f.shard.split('/'))
  if not f.summarize:
    todo = runs(ablations, f.seeds, f.out)[i::n]
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(f.parallel, mp_context=context) as pool:
      futures = {pool.submit(run_one, base_json, a, s, w): (a, s) for a, s, w in todo}
      for future in concurrent.futures.as_completed(futures):
        a, s = futures[future]
        m = future.result()
        print(f'{a} seed {s}: 10-view top-1 {100 * m["10view_top1_error"]:.2f}%, top-5 '
              f'{100 * m["10view_top5_error"]:.2f}%', flush=True)
  rows = summarize(f.out, ablations, f.seeds, f.config)
  print(write_table(rows, f.out))
  plot(rows, f.out)
  print(f'written: {f.out}/ablations.md, ablations.csv, ablations.png')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
