"""Platform backends: kernels that one platform needs, kept out of the portable core.

The model computes with an `ops.Kernels` record. `kernels_for(mesh)` is the one place that
chooses it, from the devices the program is placed on, when the model is built (before
anything is traced):

  * a mesh of CPU devices gets the CPU backend (`backends/cpu`: oneDNN's convolutions
    through XLA's FFI) where it is installed (`pip install -r requirements-cpu.txt`) and not
    switched off (`ALEXNET_JAX_ONEDNN=0`); it is imported, built and loaded only then;
  * every other mesh (TPU, GPU) gets `ops.PORTABLE`, and nothing of the CPU backend is
    imported, probed, built or loaded.

One line says what a CPU run computes with. The CPU kernels keep XLA's own convolution in
every program lowered for another platform (`jax.lax.platform_dependent`), so one program
exports for several platforms.
"""
from __future__ import annotations

import functools
import logging
import os

import jax

from alexnet_jax import ops

log = logging.getLogger(__name__)
SWITCH = 'ALEXNET_JAX_ONEDNN'  # '0': the portable kernels on a CPU too.
INSTALL = 'pip install -r requirements-cpu.txt'


def kernels_for(mesh) -> ops.Kernels:
  """The kernels for programs on `mesh`'s devices (see the module doc)."""
  return for_platforms(frozenset(d.platform for d in mesh.devices.flat))


def for_platforms(platforms: frozenset[str]) -> ops.Kernels:
  """The kernels for devices of `platforms`; the switch is read at each call."""
  return _chosen(platforms, os.environ.get(SWITCH, '1') != '0')


@functools.cache
def _chosen(platforms: frozenset[str], switched_on: bool) -> ops.Kernels:
  if platforms != {'cpu'}:
    return ops.PORTABLE
  if not switched_on:
    log.info('kernels: XLA\'s own on this CPU (%s=0)', SWITCH)
    return ops.PORTABLE
  from alexnet_jax.backends import cpu  # pylint: disable=g-import-not-at-top
  if not cpu.installed():
    log.info('kernels: XLA\'s own on this CPU; %s adds oneDNN\'s convolutions', INSTALL)
    return ops.PORTABLE
  try:
    kernels = cpu.kernels()
  except cpu.Unavailable as e:
    log.warning('kernels: XLA\'s own on this CPU; oneDNN\'s convolutions are off (%s)', e)
    return ops.PORTABLE
  log.info('kernels: %s (%s=0 turns them off)', kernels.name, SWITCH)
  return kernels


def compiler_options() -> dict[str, int] | None:
  """The compiler options of programs on this process's default backend: the CPU backend's
  on a CPU (an optimization level set in XLA_FLAGS wins), none elsewhere."""
  if jax.default_backend() != 'cpu' or 'xla_backend_optimization_level' in os.environ.get(
      'XLA_FLAGS', ''):
    return None
  from alexnet_jax.backends import cpu  # pylint: disable=g-import-not-at-top
  return dict(cpu.COMPILER_OPTIONS)


def jit(fun, **kwargs):
  """`jax.jit` with `compiler_options()`. Call it once the backends may start (in a function,
  not at import: a multi-process run starts jax.distributed first)."""
  return jax.jit(fun, compiler_options=compiler_options(), **kwargs)
