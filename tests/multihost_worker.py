"""`python -m alexnet_jax.main`, recording which examples this process's pipeline reads.

tests/test_distributed.py starts it once per process. The (example, position) pairs go to the
JSON file named by $READS_PATH when the process exits.
"""
import atexit
import json
import os
import threading

from alexnet_jax import cli
from alexnet_jax import input_pipeline
from alexnet_jax import main


def record_reads(path: str) -> None:
  reads, lock = [], threading.Lock()
  read = input_pipeline.TrainExample.__call__

  def recording(self, index_position):
    with lock:  # grain's reader threads call it concurrently.
      reads.append([int(v) for v in index_position])
    return read(self, index_position)

  input_pipeline.TrainExample.__call__ = recording
  atexit.register(lambda: json.dump(reads, open(path, 'w')))


if __name__ == '__main__':
  record_reads(os.environ['READS_PATH'])
  cli.run(main.main)
