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

The ablations of run 145 are its layer files' changes (alexnet_jax/recipes.py). Each
published figure says where it comes from and on which data (`recipes.Published`); the table
puts it beside the measured change only where the two compare like with like: a figure
measured on the layer file's own net, on ILSVRC-2012 validation, and a sweep of run 145's full
net (`configs/paper.py:cuda_convnet`). Every other row says why not. An ablation that would
change nothing in the sweep's config (no PCA lighting where there is none) is left out, saying
so.

The sweep ends with OUT/ablations.md and .csv: each ablation's top-1/top-5 error (10 views,
as the paper's ablations) as mean +- standard deviation over the seeds; its change against
the baseline, paired by seed, with a 95% t-interval and whether that interval excludes zero
(distinguishable from noise, at these seeds); the published figure where it applies; and
OUT/ablations.png, the changes with their intervals.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import copy
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
  published: recipes.Published | None = None  # Its published figure, if any.


def _from_recipe(name: str, what: str) -> Ablation:
  """A recipe's own changes to the recipe it is compared with (its layer file's, for 145)."""
  r = recipes.get(name)
  base = recipes.get(r.published.versus)
  own = {k: v for k, v in r.changes.items() if base.changes.get(k, object()) != v}
  return Ablation(what, own, r.published)


ABLATIONS = {  # docs/paper.md s5; changes in top-1 / top-5 points, 10 views.
    'baseline': Ablation('the config as it is', {}),
    'no_lrn': _from_recipe('no_lrn', 'no local response normalization'),
    'no_overlap': _from_recipe('no_overlap', '2x2 stride-2 pooling, not 3x3 stride 2'),
    'no_pca_lighting': Ablation('no PCA lighting noise', {'data.lighting_std': 0.0},
                                recipes.Published((1.0, None), 'the paper\'s text ("over 1%"), '
                                                  'no layer file', 'data not stated',
                                                  layer_file=False)),
    'no_dropout': Ablation('no dropout', {'model.dropout_rate': 0.0}),
    'tanh': Ablation('tanh instead of ReLU', {'model.activation': 'tanh'}),
    'one_tower': _from_recipe('one_tower', 'one tower, half the kernels (conv5 kept)'),
    'no_cross_tower': _from_recipe('no_cross_tower', 'no cross-tower links, widened'),
    'no_conv4': _from_recipe('no_conv4', 'a middle conv layer (conv4) removed'),
}


def against_published(config: ml_collections.ConfigDict, ablation: Ablation) -> str:
  """Whether `ablation`'s published figure compares like with like with this sweep, and why
  not: it must measure this very change (its layer file) of the sweep's net, run 145's at full
  size with ImageNet's 1000 classes, on ILSVRC-2012 validation."""
  p = ablation.published
  if p is None:
    return 'no published figure'
  if not p.layer_file:
    return 'not like with like: no layer file, so not this very change'
  if p.data != recipes.ILSVRC_2012_VAL:
    return f'not like with like: the figure is on {p.data}'
  if config.model.to_dict() != recipes.config(p.versus).model.to_dict():
    return (f'not like with like: the figure changes {p.versus}\'s full net, this sweep '
            f'{config.recipe}\'s')
  return f'like with like (same net; the figure is on {p.data})'


def _with_changes(config: ml_collections.ConfigDict, changes) -> ml_collections.ConfigDict:
  """A copy of `config` with 'section.field' -> value `changes`."""
  config = copy.deepcopy(config)
  for name, value in changes.items():
    *sections, field = name.split('.')
    target = config
    for section in sections:
      target = target[section]
    target[field] = value
  return config


def changes_something(config: ml_collections.ConfigDict, ablation: Ablation) -> bool:
  """Whether `ablation` changes `config` at all (no PCA lighting where there is none does not)."""
  return (not ablation.changes or
          _with_changes(config, ablation.changes).to_json() != config.to_json())


def run_config(base_json: str, ablation: str, seed: int) -> ml_collections.ConfigDict:
  """The config of one run: the sweep's config, the ablation's changes, the seed."""
  config = _with_changes(ml_collections.ConfigDict(json.loads(base_json)),
                         ABLATIONS[ablation].changes)
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


def paired_interval(ours, baseline, level: float = 0.95):
  """(mean, low, high) of the change `ours - baseline` in points, paired by seed ({seed:
  error} each, errors as fractions), with Student's t-interval over the seeds both have; low
  and high are None with fewer than two pairs."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scipy import stats  # pylint: disable=g-import-not-at-top  # scikit-learn's dependency.
  seeds = sorted(set(ours) & set(baseline))
  d = 100 * np.asarray([ours[s] - baseline[s] for s in seeds], np.float64)
  if len(d) < 2:
    return (float(d.mean()) if len(d) else float('nan')), None, None
  half = stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
  return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def _row(name, what, errors, baseline, note):
  """A table row: `errors` and `baseline` are {'top1'/'top5': {seed: error}}."""
  row = {'ablation': name, 'what': what, 'seeds': len(errors['top1'])}
  for k in ('top1', 'top5'):
    row[k], row[f'{k}_std'] = _stats(list(errors[k].values()))
    change, low, high = paired_interval(errors[k], baseline[k])
    row[f'{k}_change'], row[f'{k}_low'], row[f'{k}_high'] = change, low, high
    row[f'{k}_distinguishable'] = (None if low is None or name == 'baseline' else
                                   bool(low > 0 or high < 0))
  row['compared'] = note
  return row


def summarize(out: str, ablations, seeds: int, config: ml_collections.ConfigDict) -> list[dict]:
  """Rows of the table from the finished runs in `out` of a sweep of `config`."""
  finished = {}
  for a, s, workdir in runs(ablations, seeds, out):
    path = os.path.join(workdir, 'final_metrics.json')
    if os.path.exists(path):
      with open(path) as f:
        finished.setdefault(a, {})[s] = json.load(f)
  if 'baseline' not in finished:
    raise SystemExit('error: sweep: no finished baseline run to compare against')
  errors = lambda runs_, views=10: {k: {s: m[f'{views}view_{k}_error'] for s, m in runs_.items()}
                                    for k in ('top1', 'top5')}
  base = errors(finished['baseline'])
  rows = []
  for a in ablations:
    if a in finished:
      ablation = ABLATIONS[a]
      note = (f'the reference ({config.recipe})' if a == 'baseline'
              else against_published(config, ablation))
      row = _row(a, ablation.what, errors(finished[a]), base, note)
      p = ablation.published if note.startswith('like with like') else None
      row['published_top1_change'] = p.change[0] if p else None
      row['published_top5_change'] = p.change[1] if p else None
      row['published'] = ablation.published.describe() if ablation.published else ''
      rows.append(row)
  # 1 view against 10, from the baseline runs themselves.
  rows.append(dict(_row('one_view', 'baseline tested on 1 view (center), not 10',
                        errors(finished['baseline'], views=1), base,
                        'no published figure'),
                   published_top1_change=None, published_top5_change=None, published=''))
  return rows


def _fmt(x, sign=False):
  return 'n/a' if x is None else (f'{x:+.2f}' if sign else f'{x:.2f}')


def _change(r, k):
  """'+1.23 [+0.10, +2.36] yes': the change, its 95% interval, distinguishable from zero."""
  if r['ablation'] == 'baseline':
    return '+0.00'
  if r[f'{k}_low'] is None:
    return f'{_fmt(r[f"{k}_change"], True)} (one seed: no interval)'
  verdict = 'yes' if r[f'{k}_distinguishable'] else 'no'
  return (f'{_fmt(r[f"{k}_change"], True)} [{_fmt(r[f"{k}_low"], True)}, '
          f'{_fmt(r[f"{k}_high"], True)}] {verdict}')


def write_table(rows, out: str) -> str:
  header = ('| ablation | seeds | top-1 error (%) | top-5 error (%) | top-1 change [95% CI] '
            'distinguishable | top-5 change [95% CI] distinguishable | published change '
            '(top-1 / top-5): source (data) | against it |')
  lines = [header, '|' + '---|' * 8]
  for r in rows:
    lines.append(
        f'| {r["ablation"]}: {r["what"]} | {r["seeds"]} | {r["top1"]:.2f} +- '
        f'{r["top1_std"]:.2f} | {r["top5"]:.2f} +- {r["top5_std"]:.2f} | '
        f'{_change(r, "top1")} | {_change(r, "top5")} | {r["published"] or "none"} | '
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
  """The top-1 changes with their 95% intervals; a published figure where it compares."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [r for r in rows if r['ablation'] != 'baseline']
  x = range(len(rows))
  low = [r['top1_change'] - r['top1_low'] if r['top1_low'] is not None else 0 for r in rows]
  high = [r['top1_high'] - r['top1_change'] if r['top1_high'] is not None else 0 for r in rows]
  fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2, 4))
  ax.bar(x, [r['top1_change'] for r in rows], yerr=[low, high], capsize=3,
         color=['tab:blue' if r['top1_distinguishable'] else 'lightsteelblue' for r in rows],
         label='this sweep (top-1, 10 views; 95% interval, paired by seed; pale: it holds 0)')
  published = [(i, r['published_top1_change']) for i, r in enumerate(rows)
               if r['published_top1_change'] is not None]
  if published:
    ax.scatter(*zip(*published), marker='D', color='tab:red', zorder=3,
               label='published, like with like')
  ax.axhline(0, color='black', linewidth=0.8)
  ax.set_xticks(list(x), [r['ablation'] for r in rows], rotation=30, ha='right')
  ax.set_ylabel('top-1 error change vs baseline (points)')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'ablations.png'), dpi=120)
  plt.close(fig)


# ---- Command line ----------------------------------------------------------------------------

def define_flags():
  """Flags, defined when run as a script (tests import this module)."""
  cli.define_config_flag(DEFAULT_CONFIG, 'Config file, `file.py` or `file.py:recipe`; '
                         'override fields as --config.section.field=value, for every run.')
  flags.DEFINE_string('out', None, 'Sweep directory (one work directory per run inside).')
  flags.DEFINE_integer('seeds', 3, 'Seeds per ablation (the changes are paired by seed).')
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
  for a in ablations:
    if not changes_something(f.config, ABLATIONS[a]):
      print(f'sweep: {a} left out: it changes nothing in this config '
            f'({", ".join(f"{k}={v}" for k, v in ABLATIONS[a].changes.items())} already)')
  ablations = [a for a in ablations if changes_something(f.config, ABLATIONS[a])]
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
