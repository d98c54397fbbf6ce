"""The device mesh and every PartitionSpec of the project.

AlexNet's two towers are laid out over a mesh axis called ``tower`` and the batch over an
axis called ``data``. Layers never spell these names: they ask this module for specs and for
the one cross-tower collective the paper has (:func:`gather_towers`).

Layout:
  * tower parameters carry a leading axis of size ``towers`` (2 for the paper's net); that
    axis is sharded over ``tower`` so each tower's weights live only on its devices;
  * activations and labels are sharded over ``data`` along the batch;
  * on a mesh whose ``tower`` axis has size 1 every device holds both towers and runs them
    one after the other, with the very same code.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = 'data'
TOWER = 'tower'
AXES = (DATA, TOWER)

# Specs, named for what they lay out.
BATCH = P(DATA)  # images_NHWC, labels: split along the batch.
BATCH_BY_TOWER = P(DATA, TOWER)  # per-example, per-tower arrays (dropout masks, split logits).
TOWER_STACKED = P(TOWER)  # tower parameters, stacked on a leading tower axis.
REPLICATED = P()  # shared parameters (a single-tower layer), scalars.


def make_mesh(towers: int = 2, *, devices=None, data: int | None = None) -> Mesh:
  """A (data, tower) mesh over `devices` (default: all devices).

  The tower axis is 2 when the model has two towers and the device count is even, else 1
  (one device then runs both towers); every other device factor goes to data parallelism.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  tower_size = 2 if towers == 2 and n % 2 == 0 else 1
  if data is None:
    data = n // tower_size
  if data * tower_size > n or data < 1:
    raise ValueError(f'mesh: data={data} x tower={tower_size} needs more than the {n} '
                     'devices available')
  grid = np.asarray(devices[:data * tower_size]).reshape(data, tower_size)
  return jax.make_mesh((data, tower_size), AXES, devices=grid.ravel().tolist(),
                       axis_types=(jax.sharding.AxisType.Explicit,) * 2)


def process_batch_rows(mesh: Mesh, global_batch: int) -> tuple[int, int]:
  """The rows [start, stop) of a global batch that this process's devices hold.

  Each process reads exactly these rows from its input pipeline. They come from the mesh,
  so any layout works: one data row per host, several, or a tower pair split over two hosts
  (both then read the same rows, and each keeps the part its devices need).
  """
  held = named(mesh, BATCH).addressable_devices_indices_map((global_batch,))
  spans = {index[0].indices(global_batch)[:2] for index in held.values()}
  start, stop = min(a for a, _ in spans), max(b for _, b in spans)
  if sum(b - a for a, b in spans) != stop - start:
    raise ValueError(f'mesh: process {jax.process_index()} holds rows {sorted(spans)} of the '
                     'batch, which are not contiguous; order the devices by process')
  return start, stop


def single_device_mesh(device=None) -> Mesh:
  """A 1x1 mesh: one device runs both towers."""
  return make_mesh(devices=[device or jax.devices()[0]])


def data_size(mesh: Mesh) -> int:
  return mesh.shape[DATA]


def tower_size(mesh: Mesh) -> int:
  return mesh.shape[TOWER]


def tower_param_spec(stacked: int, mesh: Mesh) -> P:
  """Spec of a parameter stacked over `stacked` towers.

  A layer with one stack (a single-tower net, or the code's single fc8) is replicated; a
  two-tower layer is split over the tower axis, so a tower's weights never leave its devices.
  """
  if stacked == 1:
    return REPLICATED
  if stacked % tower_size(mesh):
    raise ValueError(f'mesh: {stacked} towers cannot be split over a tower axis of size '
                     f'{tower_size(mesh)}')
  return TOWER_STACKED


def named(mesh: Mesh, spec: P) -> NamedSharding:
  return NamedSharding(mesh, spec)


def manual_spec(spec: P, mesh: Mesh) -> P:
  """`spec` as shard_map takes and returns arrays: without the mesh axes of size 1.

  Such an axis splits nothing, but an input typed as varying along it makes autodiff sum
  every replicated parameter's gradient over it: on one device, an all-reduce that copies
  all 61M gradients each step (owt, batch 32: up to 89 ms of a 2.3 s step on a 2-core CPU).
  Left out, the input is typed as the same on the axis's one device, as it is, and the sum
  never appears. Outputs leave shard_map the same way and are then resharded (a no-op).
  """
  keep = lambda axis: axis is not None and mesh.shape[axis] > 1
  return P(*(axis if keep(axis) else None for axis in spec))


def gather_towers(x: jax.Array, *, replicated: bool = False) -> jax.Array:
  """Inside shard_map: all towers' (towers_local, ...) activations -> (towers, ...).

  This is the only collective of the forward pass: the paper's cross-tower connections at
  the inputs of conv3, fc6, fc7 and fc8 (and, for Caffe's LRN across all channels, the
  inputs of LRN1 and LRN2). On a tower axis of size 1 it is the identity.

  By default the result is typed as varying over the tower axis, and its gradient is a
  reduce-scatter of the towers' contributions. `replicated=True` types it as the same on every
  tower device (it is): use it when nothing tower-specific follows (the code's single fc8, a
  feature read-out), so the output can leave shard_map unsplit and the gradient is a local
  slice, with no collective at all.
  """
  if jax.lax.axis_size(TOWER) == 1 and TOWER not in varying_axes(x):
    return x  # One device holds every tower, and `x` is the same for all: nothing to gather.
  return jax.lax.all_gather(x, TOWER, axis=0, tiled=True,
                            to='invarying' if replicated else 'varying')


def tower_index(local: int) -> jax.Array:
  """Inside shard_map: the global index of the first tower this device holds."""
  return jax.lax.axis_index(TOWER) * local


def sum_to_axes_of(grad: jax.Array, primal: jax.Array) -> jax.Array:
  """Inside shard_map: `grad` summed over the mesh axes it varies along but `primal` does
  not, as autodiff does for a gradient written by hand: a kernel replicated over the data
  axis gets the sum of every batch shard's gradient, an input every tower shares (conv1's
  image, a gathered cross-tower input) the sum of every tower's."""
  extra = tuple(sorted(varying_axes(grad) - varying_axes(primal)))
  return jax.lax.psum(grad, extra) if extra else grad


def varying_axes(x) -> frozenset:
  """Inside shard_map: the mesh axes `x` varies along (`aval.vma` in older JAX versions)."""
  aval = jax.typeof(x)
  mat = getattr(aval, 'manual_axis_type', None)
  return frozenset(mat.varying if mat is not None else getattr(aval, 'vma', ()))
