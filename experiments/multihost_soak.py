"""Runs the two-process training test many times in a row and reports every hang.

    python experiments/multihost_soak.py [--runs=10] [--record [--note=...]]

Each run is `pytest tests/test_distributed.py::test_two_processes_train_exactly_like_one_and_
share_checkpoints` in a fresh process: a 1-process and a 2-process run of one epoch (training,
validation, checkpoint, the final 1- and 10-view evaluations), then each resumed with the other
process count for a second epoch (a resume and both final evaluations again). A hang fails
that test in one line naming where each process was (tests/helpers.py, wait_all), which is
what the table shows. Measure on a quiet machine: nothing else running.

Prints a table; with --record, appends it with the date, commit and machine to
experiments/RELIABILITY.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TEST = ('tests/test_distributed.py::'
        'test_two_processes_train_exactly_like_one_and_share_checkpoints')

from records import machine, markdown_table  # noqa: E402  pylint: disable=wrong-import-position


def run_once() -> tuple[str, float, str]:
  """(passed | failed | hung, seconds, the failure's first line)."""
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', TEST],
                        cwd=REPO, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if proc.returncode == 0:
    return 'passed', seconds, ''
  errors = [l[2:].strip() for l in proc.stdout.splitlines()
            if l.startswith('E ') and l[2:].strip()]
  lines = proc.stdout.strip().splitlines()
  first = errors[0] if errors else (lines[-1] if lines else '?')
  return ('hung' if ' hung (no exit after ' in first else 'failed'), seconds, first[:300]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--runs', type=int, default=10, help='how many runs in a row')
  parser.add_argument('--record', action='store_true',
                      help='append the table to experiments/RELIABILITY.md')
  parser.add_argument('--note', default='',
                      help='with --record: what else ran on the machine (say "nothing")')
  args = parser.parse_args()
  if args.record and not args.note:
    parser.error('--record needs --note: what else ran on the machine while it measured')
  rows = []
  for i in range(1, args.runs + 1):
    outcome, seconds, why = run_once()
    rows.append((str(i), outcome, f'{seconds:.0f}', why))
    print(f'run {i}: {outcome} in {seconds:.0f} s {why}', flush=True)
  table = markdown_table(('run', 'result', 'seconds', 'first failure line'), rows)
  counts = {k: sum(r[1] == k for r in rows) for k in ('passed', 'failed', 'hung')}
  summary = ', '.join(f'{n} {k}' for k, n in counts.items())
  print(f'\n{table}\n\n{summary}')
  if args.record:
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                            text=True, cwd=REPO).stdout.strip()
    with open(os.path.join(HERE, 'RELIABILITY.md'), 'a') as f:
      f.write(f'\n## Two-process soak, {datetime.date.today()} (commit {commit})\n\n'
              f'`python experiments/multihost_soak.py {" ".join(sys.argv[1:])}` on '
              f'{machine()} ({args.note}): {summary}.\n\n{table}\n')


if __name__ == '__main__':
  main()
