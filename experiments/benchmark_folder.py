"""The CPU recipe for your own images, end to end: accuracy and wall time on a 10-class folder.

    python experiments/benchmark_folder.py [--repeats=2] [--record --note=...]

Builds experiments/item_folder.py's folder (2,000 training and 500 test 28x28 greyscale
photographs of 10 classes) in a temporary directory, then runs, as a user would and with
nothing else on the command line,

    python -m alexnet_jax.main --config=configs/folder.py:small --config.data.path=FOLDER

--repeats times, each in a fresh work directory (compilation included; the persistent
compilation cache is off). Prints the test accuracy (1 and 10 views) and the wall time of
each run; the target is at least 80% within 90 s on a 2-core CPU. With --record, appends the
table to experiments/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import item_folder  # noqa: E402  pylint: disable=wrong-import-position
from records import markdown_table, record  # noqa: E402  pylint: disable=wrong-import-position


def run_once(folder: str, workdir: str) -> tuple[float, dict]:
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env['PYTHONPATH'] = os.path.dirname(HERE)
  start = time.perf_counter()
  subprocess.run([sys.executable, '-m', 'alexnet_jax.main', '--config=configs/folder.py:small',
                  f'--config.data.path={folder}', f'--workdir={workdir}',
                  '--config.progress=False'], cwd=os.path.dirname(HERE), env=env, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  seconds = time.perf_counter() - start
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    return seconds, json.load(f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--repeats', type=int, default=2, help='runs, each from scratch')
  parser.add_argument('--record', action='store_true',
                      help='append the table to experiments/BENCHMARKS.md')
  parser.add_argument('--note', default='', help='with --record: what else ran meanwhile')
  args = parser.parse_args()
  if args.record and not args.note:
    parser.error('--record needs --note: what else ran on the machine while it measured')
  with tempfile.TemporaryDirectory() as tmp:
    folder = item_folder.build(os.path.join(tmp, 'items'))
    rows = []
    for i in range(args.repeats):
      seconds, final = run_once(folder, os.path.join(tmp, f'run{i}'))
      rows.append((str(i + 1), f'{100 * (1 - final["1view_top1_error"]):.1f}',
                   f'{100 * (1 - final["10view_top1_error"]):.1f}', f'{seconds:.1f}'))
      print(f'run {i + 1}: {rows[-1][1]}% (1 view), {rows[-1][2]}% (10 views), '
            f'{seconds:.1f} s', flush=True)
  table = markdown_table(('run', 'test accuracy, 1 view (%)', '10 views (%)', 'wall (s)'),
                         rows)
  print(table)
  if args.record:
    record('configs/folder.py:small on a 10-class folder of 28x28 photos', 'benchmark_folder.py',
           f'{args.note}; 2,000 training and 500 test images (experiments/item_folder.py), '
           'compilation included, no compilation cache.', table)


if __name__ == '__main__':
  main()
