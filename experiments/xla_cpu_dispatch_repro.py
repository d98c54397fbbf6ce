"""The XLA:CPU deadlock behind the multi-process evaluation hang, in 40 lines (issue 14).

    python experiments/xla_cpu_dispatch_repro.py --programs=60            # hangs on 2 cores
    python experiments/xla_cpu_dispatch_repro.py --programs=60 --wait     # finishes
    PJRT_NPROC=8 python experiments/xla_cpu_dispatch_repro.py --programs=400   # finishes

Starts two processes of 2 CPU devices each, lays a (data, tower) mesh over them with the
data axis across the processes, and dispatches `--programs` calls of a jitted function whose
sum over the batch is an all-reduce across the processes, without reading any result
(`--wait`: waiting for call i-1 before dispatching i+1, as alexnet_jax.evaluation does).
Measured on a 2-core machine (experiments/RELIABILITY.md): 25 finish, 60 hang every time.
Each child gives up after --timeout seconds and says whether it finished.
"""
import argparse
import os
import socket
import subprocess
import sys


def child(process_id: int, port: int, programs: int, wait: bool) -> None:
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
  os.environ['JAX_PLATFORMS'] = 'cpu'
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(f'localhost:{port}', num_processes=2, process_id=process_id)
  mesh = jax.make_mesh((2, 2), ('data', 'tower'), devices=jax.devices())
  x = jax.make_array_from_process_local_data(NamedSharding(mesh, P('data')),
                                             np.ones((4, 64), np.float32), (8, 64))
  total = jax.jit(lambda x: jnp.sum(jnp.tanh(x @ jnp.ones((64, 64)))))
  previous = out = None
  for _ in range(programs):
    out, previous = total(x), out
    if wait and previous is not None:
      jax.block_until_ready(previous)
  print(f'process {process_id}: finished, {float(out)}', flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--programs', type=int, default=60, help='calls dispatched')
  parser.add_argument('--wait', action='store_true', help='keep at most two in flight')
  parser.add_argument('--timeout', type=float, default=60, help='seconds before giving up')
  parser.add_argument('--child', type=int, default=-1, help=argparse.SUPPRESS)
  parser.add_argument('--port', type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child >= 0:
    child(args.child, args.port, args.programs, args.wait)
    return
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  argv = [sys.executable, __file__, f'--programs={args.programs}', f'--port={port}'] + \
      (['--wait'] if args.wait else [])
  procs = [subprocess.Popen(argv + [f'--child={i}']) for i in range(2)]
  for i, proc in enumerate(procs):
    try:
      proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
      print(f'process {i}: no result after {args.timeout:.0f} s (hung); killed', flush=True)
      proc.kill()


if __name__ == '__main__':
  main()
