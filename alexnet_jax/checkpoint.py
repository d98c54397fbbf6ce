"""Orbax checkpoints of the whole run, verified by a checksum of the parameters.

A checkpoint holds the train state (step, parameters, optimizer state with its learning
rate) and a JSON part (the data iterator's state, the schedule's state, the config, and a
checksum of the whole train state). The manager keeps the last `keep` checkpoints and the best by
validation error. Orbax stores no checksums of its own, so a flipped byte would restore
silently: `restore_latest` recomputes the checksum and falls back to the previous good
checkpoint when it, or the files, do not check out.

A save that fails (a full disk, a quota, a file-size limit) raises `CheckpointError` in one
line, at the next save or at `wait`/`close`; the checkpoints before it are kept, and the
half-written folder is removed when the run starts again. Every process of a multi-process
run calls every method here; orbax writes each array's shards from the processes that hold
them.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import sys
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from alexnet_jax import distributed
from alexnet_jax import optim
from alexnet_jax import sharding

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint could not be written (one line)."""


@flax.struct.dataclass
class TrainState:
  """What a checkpoint holds besides its JSON part, and what the train step carries."""
  step: jax.Array
  params: Any  # nnx.State of the model's nnx.Param variables.
  opt_state: Any


def abstract_train_state(net, optim_config, mesh) -> TrainState:
  """The shapes, dtypes and shardings of the train state of `net` under the optimizer of
  `optim_config`, for restoring a checkpoint into: nothing is allocated."""
  _, params = nnx.split(net, nnx.Param)
  params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding),
                        params)
  with jax.set_mesh(mesh):
    opt_state = jax.eval_shape(optim.create(optim_config).init, params)

  def on_mesh(s):  # eval_shape's shardings name an abstract mesh (or none): make them real.
    spec = s.sharding.spec if s.sharding is not None else sharding.REPLICATED
    return jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding.named(mesh, spec))

  step = jax.ShapeDtypeStruct((), np.int32, sharding=sharding.named(mesh, sharding.REPLICATED))
  return TrainState(step=step, params=params, opt_state=jax.tree.map(on_mesh, opt_state))


def leaf_shapes(tree) -> dict[str, tuple]:
  """{'opt_state/momentum/fc6/kernel/value': (shape, dtype name), ...} of a train
  state, abstract or not, or of a checkpoint's metadata: the same paths for the same state."""
  def name(key):
    return str(getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key))))
  return {'/'.join(map(name, path)): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def checksum(tree) -> str:
  """SHA-256 of every leaf's bytes, in tree order: the same on any mesh and process count."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):  # One leaf at a time on the host.
    a = np.asarray(distributed.host_copy(leaf))
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def all_finite(tree) -> bool:
  return bool(_all_finite(tree))  # A replicated scalar: readable on every process.


# A test-only hook (tests/test_main.py): with ALEXNET_JAX_TEST_HOLD_SAVE=N in the environment,
# the save of step N writes every file but never commits (renames) its folder: it says so in
# a line on stderr and waits there, so that a kill lands inside the save, every time.
HOLD_SAVE_ENV = 'ALEXNET_JAX_TEST_HOLD_SAVE'


class _HeldSave(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """orbax's atomic rename, except for the step that HOLD_SAVE_ENV names."""

  async def finalize(self, *args, **kwargs):
    step = self.get_final().name
    if step == os.environ.get(HOLD_SAVE_ENV):
      sys.stderr.write(f'checkpoint: holding the save of step {step} before its commit '
                       f'({HOLD_SAVE_ENV})\n')
      sys.stderr.flush()
      await asyncio.Event().wait()  # Until the process is killed.
    return await super().finalize(*args, **kwargs)


def _reason(e: BaseException) -> str:
  """One line from orbax's exception: the OS error inside tensorstore's long message, else the
  first line of the innermost cause (orbax wraps it in pages of TensorStore spec)."""
  while e.__cause__ is not None or e.__context__ is not None:
    e = e.__cause__ or e.__context__
  text = str(e).strip() or type(e).__name__
  os_error = re.search(r'\[os_error_code=\W*(\d+)', text)
  if os_error:  # Named by the OS itself: the text around the code varies with the call.
    code = int(os_error.group(1))
    return f'{os.strerror(code)} (errno {code})'
  text = re.sub(r' in OCDBT database at local file "[^"]*"', '', text.splitlines()[0])
  return text[:300]


class Checkpoints:
  """Save and restore the run in `directory` (async; call `close` at the end)."""

  def __init__(self, directory: str, *, keep: int = 3, read_only: bool = False):
    """`read_only` (evaluation beside a running job): never writes, deletes or cleans up."""
    self.directory = os.path.abspath(os.path.expanduser(directory))
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep),
        ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m['val_error'], reverse=True,
                                      n=1, keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                           enable_async_checkpointing=True,
                                           cleanup_tmp_directories=not read_only,
                                           read_only=read_only, create=not read_only,
                                           temporary_path_class=(
                                               _HeldSave if HOLD_SAVE_ENV in os.environ
                                               else None))
    # The handlers named, so that the state's shapes can be read without restoring it.
    handlers = {'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, item_handlers=handlers,
                                         options=options)
    self._saving = None  # The step of the save in flight.

  def save(self, step: int, state, meta: dict, *, val_error: float | None = None) -> None:
    """Saves asynchronously; refuses parameters that are not all finite."""
    if not all_finite(state.params):
      raise FloatingPointError(f'checkpoint: refusing to save step {step}: the parameters '
                               'are not all finite')
    self.wait()  # The previous save's error, if any, surfaces here.
    meta = dict(meta, checksum=checksum(state))
    self._saving = step
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)),
                      metrics=None if val_error is None else {'val_error': val_error},
                      force=True)

  def steps(self) -> list[int]:
    """The committed checkpoints' steps."""
    return sorted(self.manager.all_steps())

  def unfinished(self) -> list[int]:
    """The steps of saves that never committed (a run killed while saving); the next run
    that writes here removes their folders."""
    return sorted(int(p.get_final().name) for p in ocp.utils.tmp_checkpoints(self.directory))

  def leaf_shapes(self, step: int) -> dict[str, tuple]:
    """{path: (shape, dtype)} of every array in checkpoint `step`'s train state, read from its
    metadata (no array is loaded); compare with `leaf_shapes(abstract_state)`."""
    try:
      return leaf_shapes(self.manager.item_metadata(step)['state'])
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises many types.
      raise CheckpointError(f'checkpoint {step} is unreadable ({_reason(e)})') from None

  def restore_latest(self, abstract_state):
    """(state, meta) of the newest checkpoint that reads and checks out, or None.

    `abstract_state` gives shapes, dtypes and shardings (the run's own state, or
    jax.ShapeDtypeStructs). Damaged checkpoints are reported in one line each, skipped, and
    set aside as `<step>.damaged`.
    """
    damaged = []
    try:
      for step in reversed(self.steps()):
        try:
          return self.restore(step, abstract_state)
        except CheckpointError as e:
          log.warning('%s; trying the previous one', e)
          damaged.append(step)
      return None
    finally:
      self._set_aside(damaged)

  def restore(self, step: int, abstract_state):
    """(state, meta) of checkpoint `step`; CheckpointError (one line) if it is unreadable or
    fails its checksum."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises many types.
      raise CheckpointError(f'checkpoint {step} is unreadable ({_reason(e)})') from None
    if checksum(restored.state) != restored.meta.get('checksum'):
      raise CheckpointError(f'checkpoint {step} fails its checksum')
    return restored.state, restored.meta

  def read_meta(self, step: int) -> dict:
    """The JSON part of checkpoint `step` (its config, classes, data state), read alone."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore())).meta
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'checkpoint {step} is unreadable ({_reason(e)})') from None

  def _set_aside(self, steps) -> None:
    """Renames damaged checkpoints to `<step>.damaged` (kept for a look, out of the way of
    the steps that the resumed run will save again)."""
    if not steps or len(steps) == len(self.steps()):
      return  # Nothing restored: keep everything as it is for the user to inspect.
    if distributed.is_main_process():
      for step in steps:
        path = os.path.join(self.directory, str(step))
        os.replace(path, f'{path}.damaged')
    distributed.barrier('checkpoint_set_aside')
    self.manager.reload()

  def wait(self) -> None:
    """Waits for the save in flight; raises CheckpointError if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  # Orbax re-raises the writer's.
      step, self._saving = self._saving, None
      raise CheckpointError(f'checkpoint: saving step {step} in {self.directory} failed: '
                            f'{_reason(e)}; the checkpoints before it are kept') from None
    self._saving = None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()
