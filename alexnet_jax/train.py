"""Training: the pure train step, evaluation with 1 and 10 views, and the loop.

`train_and_evaluate(config, workdir)` is what `python -m alexnet_jax.main` runs and what
notebooks import. Re-running it with the same workdir resumes from the newest good checkpoint,
bit for bit; SIGTERM saves a checkpoint and exits with status EXIT_PREEMPTED.

With several processes (`alexnet_jax.distributed`) every process runs this same loop on its
rows of each batch; all of them checkpoint together, and the first alone writes metrics,
plots and the terminal output.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import distributed
from alexnet_jax import evaluation
from alexnet_jax import inference
from alexnet_jax import input_pipeline
from alexnet_jax import metrics as metrics_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import sharding

log = logging.getLogger(__name__)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after a checkpoint; run again to resume.


class TrainingError(RuntimeError):
  """The run cannot go on (one line)."""


# ---- Steps ------------------------------------------------------------------------------------


def init_state(net: model_lib.AlexNet, optim_config: ml_collections.ConfigDict):
  """(graphdef, step-0 TrainState, optimizer) of a fresh run of `net`: its parameters, the
  optimizer's buffers placed as the parameters are, and step 0."""
  graphdef, params = nnx.split(net, nnx.Param)
  tx = optim.create(optim_config)
  with jax.set_mesh(net.mesh):  # Jitted, the buffers take the params' shardings.
    opt_state = jax.jit(tx.init)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32),
                          sharding.named(net.mesh, sharding.REPLICATED))
  return graphdef, checkpoint_lib.TrainState(step=step, params=params, opt_state=opt_state), tx


def make_train_step(graphdef, tx, *, seed: int, num_classes: int, divide: float):
  """The pure train step, jitted once with the state donated."""

  def step_fn(state: checkpoint_lib.TrainState, batch, mean):
    dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)
    images = batch['image']
    if images.dtype == jnp.uint8:  # Otherwise the workers normalized already.
      images = input_pipeline.normalize(images, batch['lighting'], mean, divide,
                                        batch['flip'])

    def loss_fn(params):
      logits = nnx.merge(graphdef, params)(images, train=True, dropout_key=dropout_key)
      loss, top1, top5 = evaluation.loss_and_errors(logits, batch['label'], num_classes)
      return loss.mean(), (top1.mean(), top5.mean())

    (loss, (top1, top5)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    _, opt_state = tx.update(grads, state.opt_state, state.params)
    # A non-finite loss or gradient skips the whole update: the state is kept bit for bit.
    # A momentum or weight value that the update overflows keeps its old value, so the state
    # is always finite. Both are elementwise selects that fuse into the optimizer's one pass
    # over the parameters; checking the new state as a whole first would read it twice more
    # (0.3 s a step on a 2-core CPU for the paper's 61M parameters).
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))

    def guard(new, old):
      if not jnp.issubdtype(new.dtype, jnp.floating):
        return new
      return jnp.where(finite & jnp.isfinite(new), new, old)

    opt_state = jax.tree.map(guard, opt_state, state.opt_state)
    # w <- w + v with the momentum v just written (optim.momentum_buffer), not recomputed
    # from the old one: then XLA updates the momentum and then the weights in place, instead
    # of first copying the old fc6/fc7 weights and momentum (0.4 GB a step) to read both.
    params = jax.tree.map(jnp.add, state.params, optim.momentum_buffer(opt_state))
    new_state = checkpoint_lib.TrainState(step=state.step + 1,
                                          params=jax.tree.map(guard, params, state.params),
                                          opt_state=opt_state)
    metrics = {'loss': loss, 'top1_error': top1, 'top5_error': top5,
               'finite': finite.astype(jnp.float32)}
    return new_state, metrics

  return jax.jit(step_fn, donate_argnums=0)


# ---- Transfer learning -----------------------------------------------------------------------


def pretrained_params(config, params, mesh):
  """`params` with every layer outside `config.optim.new_layers` taken from the model that
  `config.transfer.source` names (same architecture, any class count)."""
  source_config = None
  if config.transfer.source.endswith(('.npz', '.pth', '.pt')):
    source_config = ml_collections.ConfigDict(config.to_dict())
    source_config.model.num_classes = config.transfer.source_num_classes
  pretrained = inference.load(config.transfer.source, config=source_config, mesh=mesh)
  _, source = nnx.split(pretrained.net, nnx.Param)
  new_layers = tuple(config.optim.new_layers)

  def take(path, ours, theirs):
    layer = path[0].key
    if layer in new_layers:
      return ours
    if ours.shape != theirs.shape:
      raise ValueError(f'transfer.source: layer {layer} is {theirs.shape} in '
                       f'{pretrained.source}, this net needs {ours.shape}')
    return jax.device_put(theirs, ours.sharding)

  try:
    merged = jax.tree_util.tree_map_with_path(take, params, source)
  except ValueError as e:
    if str(e).startswith('transfer.source'):
      raise
    raise ValueError(f'transfer.source: {pretrained.source} is another architecture than '
                     f'this {config.recipe!r} net') from None
  log.info('started from %s; new layers: %s', pretrained.source, ', '.join(new_layers))
  return merged


# ---- Config checks ----------------------------------------------------------------------------


def check_config(config: ml_collections.ConfigDict, mesh) -> None:
  """Fails before any work with one line naming the field."""
  model_lib.ModelSpec.from_config(config.model)  # Variant, sizes, input too small, ...
  data_parallel = sharding.data_size(mesh)
  if config.batch_size < 1 or config.batch_size % data_parallel:
    raise ValueError(f'batch_size: {config.batch_size} is not a positive multiple of the '
                     f'data-parallel size {data_parallel}')
  if config.num_epochs < 1:
    raise ValueError(f'num_epochs: must be >= 1, got {config.num_epochs}')
  for field in ('checkpoint.keep', 'checkpoint.every_epochs', 'eval.every_epochs'):
    section, name = field.split('.')
    if config[section][name] < 1:
      raise ValueError(f'{field}: must be >= 1, got {config[section][name]}')
  optim.create(config.optim)


def _flat(tree: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def check_resumable(config: ml_collections.ConfigDict, checkpoints, state) -> None:
  """Fails in one line, touching nothing, when the newest checkpoint holds another train state
  than `state` (another net, or an optimizer with other parts), naming what differs and the
  config fields that differ from those of the run that wrote it. Anything that leaves the
  state's shapes alone (compute dtype, dropout, the data, the schedule) may change."""
  steps = checkpoints.steps()
  if not steps:
    return
  try:
    theirs = checkpoints.leaf_shapes(steps[-1])
    saved = _flat(json.loads(checkpoints.read_meta(steps[-1])['config']))
  except checkpoint_lib.CheckpointError:
    return  # Damaged: restore_latest reports it and falls back to the one before.
  ours = checkpoint_lib.leaf_shapes(state)
  if theirs == ours:
    return
  path = next(p for p in sorted(set(theirs) | set(ours)) if theirs.get(p) != ours.get(p))
  shape = lambda leaf: 'nothing' if leaf is None else f'{leaf[1]}{list(leaf[0])}'
  fields = [k for k, v in sorted(_flat(json.loads(config.to_json())).items())
            if k.startswith(('model.', 'optim.')) and k in saved and saved[k] != v]
  raise ValueError(
      f'checkpoint: the checkpoints in {checkpoints.directory} hold another train state '
      f'({path} is {shape(theirs.get(path))} there, {shape(ours.get(path))} here; this '
      f'config differs from theirs in {", ".join(fields) or "no model or optim field"}); '
      'resume with their settings, or use another --workdir')


# ---- The loop ---------------------------------------------------------------------------------


class _Preemption:
  """SIGTERM (preemption) asks the loop to checkpoint and stop between steps.

  One process: our own handler sets a flag. Several: JAX's coordination service catches the
  signal on any process, and `requested(step)` is true on all of them after the same step.
  """

  def __init__(self):
    self.signalled = False
    self._previous = None
    self._multi = jax.process_count() > 1

  def __enter__(self):
    if not self._multi:  # JAX installs its own handler with jax.distributed.
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # Not the main thread (a notebook thread): no handler.
        self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.signalled = True

  def requested(self, step: int) -> bool:
    return distributed.preemption_sync_point(step) if self._multi else self.signalled

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns final metrics."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  mesh = sharding.make_mesh(config.model.towers)
  config = input_pipeline.fit_config(config, mesh)
  check_config(config, mesh)
  data = input_pipeline.create(config, mesh)
  main_process = distributed.is_main_process()
  if len(data.stats.classes) != config.model.num_classes:
    raise ValueError(f'model.num_classes: {config.model.num_classes}, but the data has '
                     f'{len(data.stats.classes)} classes')
  os.makedirs(workdir, exist_ok=True)

  net = model_lib.create_model(config.model, mesh=mesh, seed=config.seed)
  if main_process:
    print(f'{config.recipe} net on mesh {dict(mesh.shape)} ({jax.device_count()} '
          f'{jax.devices()[0].platform} devices, {jax.process_count()} processes):\n'
          f'{model_lib.summary(net)}', flush=True)
  graphdef, state, tx = init_state(net, config.optim)
  params = state.params
  plateau = optim.Plateau(config.optim.base_lr, config.optim.plateau_patience,
                          config.optim.plateau_threshold, config.optim.plateau_factor,
                          config.optim.max_drops)
  steps_per_epoch = config.steps_per_epoch or max(1, data.train_examples // config.batch_size)
  total_steps = config.num_epochs * steps_per_epoch

  checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                           keep=config.checkpoint.keep)
  history_path = os.path.join(workdir, 'metrics.jsonl')
  check_resumable(config, checkpoints, state)
  restored = checkpoints.restore_latest(state)
  if restored is None and checkpoints.steps():
    raise TrainingError(f'checkpoint: none of the checkpoints in {checkpoints.directory} '
                        'restores into this config (see the warnings above); use another '
                        '--workdir or move them aside')
  if restored is not None:
    state, meta = restored
    data.train.set_state(meta['data'])
    plateau.restore(meta['plateau'])
    log.info('resumed from step %d', int(state.step))
  elif config.transfer.source:
    state = state.replace(params=pretrained_params(config, params, mesh))
  writer = metrics_lib.Writer(workdir, resume_step=int(state.step), enabled=main_process)
  # What evaluate/predict need besides the weights: the config, class names and the mean.
  meta_base = {'num_classes': config.model.num_classes, 'config': config.to_json(),
               'classes': list(data.stats.classes)}
  if main_process:
    np.save(os.path.join(workdir, inference.MEAN_FILE), data.mean)

  train_step = make_train_step(graphdef, tx, seed=config.seed,
                               num_classes=config.model.num_classes, divide=data.train_divide)
  crop = config.model.image_size
  eval_1view = evaluation.make_eval_step(graphdef, num_classes=config.model.num_classes,
                                         divide=data.divide, crop=crop, views=1)
  mean = jax.device_put(data.mean, sharding.named(mesh, sharding.REPLICATED))

  def save(step, val_error=None):
    checkpoints.save(step, state, dict(meta_base, data=data.train.get_state(),
                                       plateau=plateau.state()), val_error=val_error)

  step = int(state.step)
  lr = float(optim.learning_rate(state.opt_state))  # Kept on the host: no sync per step.
  nonfinite_in_a_row = 0
  progress = metrics_lib.Progress(total_steps, initial=step,
                                  enabled=config.progress and main_process)
  pending, t_last = None, time.perf_counter()
  saved_step = step if restored is not None else None  # The step of the newest checkpoint.
  last_eval = (None, None)  # (step, 1-view results) of the newest evaluation.

  def next_batch():
    """The next global batch, or None when a preemption signal broke the input workers."""
    try:
      return input_pipeline.to_global(next(data.train), mesh, config.batch_size)
    except Exception as e:  # pylint: disable=broad-except  # Whatever a worker raised.
      if preemption.signalled:  # SIGTERM to the process group also stops grain's workers.
        return None
      raise input_pipeline.input_error(e, f'before step {step + 1}') from e

  try:
    with _Preemption() as preemption:
      while step < total_steps:
        epoch = step // steps_per_epoch
        if config.optim.schedule == 'manual':
          wanted = optim.manual_lr(config.optim.base_lr, epoch,
                                   config.optim.manual_drop_epochs, config.optim.plateau_factor)
          if not math.isclose(wanted, lr):
            lr = wanted
            state = state.replace(opt_state=optim.set_lr(state.opt_state, lr))
        batch = next_batch()
        if batch is None:
          preempted = True
        else:
          state, metrics = train_step(state, batch, mean)
          step += 1
          # Metrics are pulled to the host one step late, so the device never waits on them.
          if pending is not None:
            nonfinite_in_a_row = _record(pending, writer, progress, nonfinite_in_a_row, config)
          now = time.perf_counter()
          pending = (step, metrics, config.batch_size / (now - t_last), now - t_last, lr)
          t_last = now
          preempted = False
        if not preempted and (step % steps_per_epoch == 0 or step == total_steps):
          nonfinite_in_a_row = _record(pending, writer, progress, nonfinite_in_a_row, config)
          pending = None
          epochs_done, last = step // steps_per_epoch, step == total_steps
          val = None
          if epochs_done % config.eval.every_epochs == 0 or last:
            val = evaluation.evaluate(eval_1view, state.params, data.eval, mesh, mean,
                                      config.batch_size)
            last_eval = (step, val)
            writer.write(step, {f'val_{k}': v for k, v in val.items()}
                         | {'epoch': step / steps_per_epoch})
            progress.show_eval(val)
            if config.optim.schedule == 'plateau' and plateau.update(val['top1_error']):
              lr = plateau.lr
              state = state.replace(opt_state=optim.set_lr(state.opt_state, lr))
              log.info('validation error stopped improving: learning rate now %g', lr)
          if epochs_done % config.checkpoint.every_epochs == 0 or last:
            save(step, val_error=val and val['top1_error'])
            saved_step = step
          t_last = time.perf_counter()  # Evaluation and saving are not step time.
        # Checked after the epoch's evaluation, so that a resumed run takes the same schedule.
        if preempted or preemption.requested(step):
          if pending is not None:
            nonfinite_in_a_row = _record(pending, writer, progress, nonfinite_in_a_row, config)
          if saved_step != step:
            save(step)
          checkpoints.wait()
          raise SystemExit(EXIT_PREEMPTED)
  finally:
    progress.close()
    data.train.close()
    checkpoints.close()  # Last: it raises if the final save failed.

  final = {'step': step, 'epochs': step / steps_per_epoch}
  if last_eval[0] == step:  # The last epoch's evaluation is the final 1-view one.
    one_view = last_eval[1]
  else:
    one_view = evaluation.evaluate(eval_1view, state.params, data.eval, mesh, mean,
                                   config.batch_size)
  results = {1: one_view}
  if config.eval.ten_views:
    eval_10views = evaluation.make_eval_step(graphdef, num_classes=config.model.num_classes,
                                             divide=data.divide, crop=crop, views=10)
    results[10] = evaluation.evaluate(eval_10views, state.params, data.eval_whole, mesh,
                                      mean, config.batch_size)
  for views, result in results.items():
    for k, v in result.items():
      final[f'{views}view_{k}'] = v
  writer.write(step, {f'final_{k}': v for k, v in final.items()})
  writer.close()
  if not main_process:
    return final
  with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
    json.dump(final, f, indent=1)
  metrics_lib.plot(history_path, os.path.join(workdir, 'curves.png'))
  print('final: ' + '; '.join(
      f'{views}-view top-1 error {final[f"{views}view_top1_error"]:.4f}, top-5 '
      f'{final[f"{views}view_top5_error"]:.4f}' for views in results))
  return final


def _record(pending, writer, progress, nonfinite_in_a_row, config) -> int:
  step, metrics, images_per_s, step_time, lr = pending
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if metrics.pop('finite') < 1:
    nonfinite_in_a_row += 1
    writer.count_nonfinite(step)
    if nonfinite_in_a_row > config.max_nonfinite_steps:
      raise TrainingError(f'training: {nonfinite_in_a_row} steps in a row had a non-finite '
                          f'loss or gradient (last at step {step}); lower optim.base_lr or '
                          'check the data')
  else:
    nonfinite_in_a_row = 0
  metrics.update(images_per_s=images_per_s, step_time_s=step_time, lr=lr)
  if step % config.log_every_steps == 0:
    writer.write(step, {f'train_{k}' if 'error' in k or k == 'loss' else k: v
                        for k, v in metrics.items()})
  progress.update(step, metrics)
  return nonfinite_in_a_row
