"""A data source that breaks inside a grain worker process (tests/test_faults.py).

It lives in its own module so that grain's spawned workers can unpickle it.
"""
import os
import signal


class BreakingSource:
  """Wraps a source; after `after` reads in a process, it raises or kills that process."""

  def __init__(self, source, *, how: str, after: int):
    self.source, self.how, self.after, self.reads = source, how, after, 0

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    self.reads += 1
    if self.reads > self.after:
      if self.how == 'raise':
        raise OSError(f'disk read error on example {index}')
      os.kill(os.getpid(), signal.SIGKILL)  # As the OOM killer would.
    return self.source[index]
