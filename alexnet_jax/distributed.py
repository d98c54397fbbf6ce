"""Multi-process runs: `jax.distributed` and the few things only one process may do.

`initialize(config.distributed)` must run before anything touches a device (main.py calls it
first). It starts the distributed runtime when the config names a coordinator, or when the
environment shows a multi-process launch:

  * `JAX_COORDINATOR_ADDRESS` set (with JAX_NUM_PROCESSES / JAX_PROCESS_ID);
  * SLURM with more than one task (`srun`), or Open MPI with more than one rank (`mpirun`);
  * a Cloud TPU pod slice, whose `TPU_WORKER_HOSTNAMES` lists several hosts.

JAX's own cluster detection then fills in the coordinator, the process count and the id.
`initialize='on'` forces the call (a TPU pod whose environment shows none of these); 'off'
never calls it.
"""
from __future__ import annotations

import importlib
import logging
import os

from absl import flags
import jax
import ml_collections

log = logging.getLogger(__name__)


def launched_as_several_processes() -> bool:
  """Whether the environment shows a multi-process launch (see the module doc)."""
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return True
  if int(env.get('SLURM_NTASKS', '1') or 1) > 1 and 'SLURM_PROCID' in env:
    return True
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1') or 1) > 1:
    return True
  return ',' in env.get('TPU_WORKER_HOSTNAMES', '')


def initialize(c: ml_collections.ConfigDict) -> bool:
  """Starts jax.distributed if `c` or the environment asks for it; True if it did."""
  if c.initialize not in ('auto', 'on', 'off'):
    raise ValueError(f"distributed.initialize: must be 'auto', 'on' or 'off', got "
                     f'{c.initialize!r}')
  explicit = bool(c.coordinator_address)
  if c.initialize == 'off' or (c.initialize == 'auto' and not explicit and
                               not launched_as_several_processes()):
    return False
  if explicit and (c.num_processes < 1 or not 0 <= c.process_id < c.num_processes):
    raise ValueError(f'distributed: with coordinator_address set, give num_processes >= 1 and '
                     f'0 <= process_id < num_processes (got {c.num_processes}, '
                     f'{c.process_id})')
  if explicit:
    jax.distributed.initialize(c.coordinator_address, num_processes=c.num_processes,
                               process_id=c.process_id)
  else:
    jax.distributed.initialize()
  # Orbax's default barrier is a device collective, run from its async-save thread beside the
  # training step's own collectives; on CPU (gloo) the two can interleave differently on
  # different processes and deadlock. The coordination service's barrier cannot.
  importlib.import_module('orbax.checkpoint')  # Defines the flag.
  if flags.FLAGS.is_parsed():
    flags.FLAGS.experimental_orbax_use_distributed_barrier = True
  log.info('process %d of %d, %d local of %d devices', jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def is_main_process() -> bool:
  """Process 0 writes metrics, plots and prints; every process computes and checkpoints."""
  return jax.process_index() == 0


def preemption_sync_point(step: int) -> bool:
  """Whether every process has been told to stop (SIGTERM to any of them) and stops after
  `step`. Uses JAX's coordination service, so all processes take the same decision."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.reached_preemption_sync_point(step)


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def host_copy(tree):
  """`tree` as numpy arrays on this host, gathered from every process when it is split."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)
