"""Tables the benchmark scripts print and append to BENCHMARKS.md (standard library only, so
that importing it adds nothing to a measured process)."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return f'{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}'


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
  line = lambda r: '| ' + ' | '.join(c.ljust(w) for c, w in zip(r, widths)) + ' |'
  return '\n'.join([line(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|'] +
                   [line(r) for r in rows])


def record(title: str, script: str, details: str, table: str) -> None:
  """Appends a measured table to BENCHMARKS.md with the date, commit, command and machine."""
  here = os.path.dirname(os.path.abspath(__file__))
  command = f'python experiments/{script} ' + ' '.join(sys.argv[1:])
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                          text=True, cwd=here).stdout.strip()
  with open(os.path.join(here, 'BENCHMARKS.md'), 'a') as f:
    f.write(f'\n## {title}, {datetime.date.today()} (commit {commit})\n\n'
            f'`{command.strip()}` on {machine()}; {details}\n\n{table}\n')
