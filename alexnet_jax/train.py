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
import os
import shutil
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from alexnet_jax import backends
from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import config as config_lib
from alexnet_jax import distributed
from alexnet_jax import evaluation
from alexnet_jax import fitting
from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import preprocess
from alexnet_jax import sharding
from alexnet_jax import transfer
from alexnet_jax import writers

log = logging.getLogger(__name__)
FINAL_METRICS = 'final_metrics.json'  # Written last: a run that has it is finished.
BAD_EXAMPLES_FILE = 'bad_examples.txt'  # The bad examples a run skipped, one line each.
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after a checkpoint; run again to resume.


class TrainingError(RuntimeError):
  """The run cannot go on (one line)."""


# ---- Steps ------------------------------------------------------------------------------------


def init_state(net: model_lib.AlexNet, optim_config: ml_collections.ConfigDict):
  """(graphdef, step-0 TrainState, optimizer) of a fresh run of `net`: its parameters, the
  optimizer's buffers placed as the parameters are, its rates those of epoch 0, and step 0."""
  graphdef, params = nnx.split(net, nnx.Param)
  tx = optim.create(optim_config)
  with jax.set_mesh(net.mesh):  # Jitted, the buffers take the params' shardings.
    opt_state = optim.with_rates(jax.jit(tx.init)(params), optim.rates_at(
        optim_config, params, epoch=0, lr=optim_config.base_lr))
    step = jax.device_put(jnp.zeros((), jnp.int32),
                          sharding.named(net.mesh, sharding.REPLICATED))
  return graphdef, checkpoint_lib.TrainState(step=step, params=params, opt_state=opt_state), tx


def make_train_step(graphdef, tx, *, seed: int, num_classes: int,
                    preprocessing: preprocess.Preprocessing, normalized: bool = False):
  """The pure train step, jitted with the state donated: (state, batch, arrays, lighting=True)
  -> (state, metrics), `arrays` being `preprocessing.arrays()` on the mesh. Batches hold uint8
  crops, flips and lighting offsets, normalized here by the record; with `normalized` (the
  workers did it: data.normalize_on_host) the net's inputs already. `lighting=False` (from
  data.lighting_end_epoch on: one more compilation) leaves the offsets out, and with them
  the code's division of noisy crops."""

  def step_fn(state: checkpoint_lib.TrainState, batch, arrays, lighting=True):
    dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)
    images = batch['image']
    if not normalized:
      images = preprocess.normalize(images, preprocessing, arrays,
                                    lighting=batch['lighting'] if lighting else None,
                                    flip=batch['flip'], offsets=batch.get('offset'), train=True)

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
    # w <- w + v with the momentum v just written, not recomputed from the old one: then XLA
    # updates the momentum and then the weights in place, instead of first copying the old
    # fc6/fc7 weights and momentum to read both. A frozen array (eps 0) is kept as it is.
    params = jax.tree.map(lambda w, v, eps: jnp.where(eps > 0, w + v, w), state.params,
                          optim.momentum_buffer(opt_state), opt_state.rates)
    new_state = checkpoint_lib.TrainState(step=state.step + 1,
                                          params=jax.tree.map(guard, params, state.params),
                                          opt_state=opt_state)
    metrics = {'loss': loss, 'top1_error': top1, 'top5_error': top5,
               'finite': finite.astype(jnp.float32)}
    if 'bad' in batch:  # (index, bad examples passed over there) of every process's rows.
      rows = jnp.stack([batch['index'], batch['bad']], axis=1)
      metrics['bad_rows'] = jax.sharding.reshard(
          rows, jax.sharding.NamedSharding(jax.typeof(rows).sharding.mesh, sharding.REPLICATED))
    return new_state, metrics

  return backends.jit(step_fn, donate_argnums=0, static_argnames='lighting')


# ---- Config checks ----------------------------------------------------------------------------


def profile_steps(config) -> tuple[int, int] | None:
  """(first, last) step of `profile_steps` ('A:B'), or None; one line if malformed."""
  if not config.profile_steps:
    return None
  try:
    first, last = (int(v) for v in config.profile_steps.split(':'))
  except ValueError:
    first = last = 0
  if not 1 <= first <= last:
    raise ValueError(f"profile_steps: 'A:B' with 1 <= A <= B, got {config.profile_steps!r}")
  return first, last


def check_config(config: ml_collections.ConfigDict, mesh) -> None:
  """Fails before any work with one line naming the field."""
  model_lib.ModelSpec.from_config(config.model)  # Variant, sizes, input too small, ...
  profile_steps(config)
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
  optim.check(config.optim, config_lib.LAYERS)
  if config.data.lighting_end_epoch and config.data.normalize_on_host:
    raise ValueError('data.lighting_end_epoch: not with data.normalize_on_host (the input '
                     'workers add the lighting there, before the step knows its epoch)')


def _flat(tree: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def check_resumable(config: ml_collections.ConfigDict, checkpoints, state, classes) -> None:
  """Fails in one line, touching nothing, when the newest checkpoint was trained on other
  classes than the data's `classes`, or holds another train state than `state` (another net,
  or an optimizer with other parts), naming what differs and the config fields that differ
  from those of the run that wrote it. Anything that leaves the state's shapes alone (compute
  dtype, dropout, the examples, the schedule) may change."""
  steps = checkpoints.steps()
  if not steps:
    return
  try:
    theirs = checkpoints.leaf_shapes(steps[-1])
    meta = checkpoints.read_meta(steps[-1])
  except checkpoint_lib.CheckpointError:
    return  # Damaged: restore_latest reports it and falls back to the one before.
  if 'classes' in meta and tuple(meta['classes']) != tuple(classes):
    raise ValueError(
        f'data: the checkpoints in {checkpoints.directory} were trained on '
        f'{len(meta["classes"])} classes ({fitting.classes_line(meta["classes"])}), the data '
        f'has {len(classes)} ({fitting.classes_line(classes)}); a run keeps its classes: to '
        'start afresh, use another --workdir or move its checkpoints aside')
  saved = _flat(json.loads(meta['config']))
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


SIGNAL_NAMES = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'SIGINT (Ctrl-C)'}


class _Preemption:
  """SIGTERM (preemption) and SIGINT (Ctrl-C) ask the loop to checkpoint and stop between
  steps; a second Ctrl-C stops at once.

  One process: our own handler notes the signal. Several: JAX's coordination service catches
  SIGTERM on any process, and `requested(step)` is true on all of them after the same step;
  Ctrl-C is passed on to it as a SIGTERM.
  """

  def __init__(self):
    self.signalled = None  # The signal received, one process.
    self._previous = {}
    self._multi = jax.process_count() > 1

  def __enter__(self):
    handlers = ({signal.SIGINT: self._to_sigterm} if self._multi else
                {signal.SIGTERM: self._handle, signal.SIGINT: self._handle})
    for signum, handler in handlers.items():
      try:
        self._previous[signum] = signal.signal(signum, handler)
      except ValueError:  # Not the main thread (a notebook thread): no handler.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.signalled == signal.SIGINT:
      raise KeyboardInterrupt
    self.signalled = signum

  @staticmethod
  def _to_sigterm(signum, frame):
    del signum, frame
    os.kill(os.getpid(), signal.SIGTERM)

  def requested(self, step: int) -> bool:
    return distributed.preemption_sync_point(step) if self._multi else bool(self.signalled)

  def exit_status(self) -> int:
    """EXIT_PREEMPTED, or for Ctrl-C what shells report for it (128 + SIGINT)."""
    return 128 + signal.SIGINT if self.signalled == signal.SIGINT else EXIT_PREEMPTED

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns final metrics.

  Everything is checked before the run starts; a start that fails removes what it created
  in `workdir` (the directory itself if it made it), so that nothing half-made is left."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f'workdir: {workdir!r} is a file, not a directory')
  before = set(os.listdir(workdir)) if os.path.isdir(workdir) else None
  try:
    trainer = start(config, workdir)
  except BaseException:
    _remove_new_entries(workdir, before)
    raise
  if trainer.finished is not None:
    return trainer.finished
  trainer.run()
  return trainer.finish()


def checked(config: ml_collections.ConfigDict):
  """(config, mesh): `config` with a transfer source's net, fitted to its data and checked,
  in one line naming the field if it cannot work, before anything is built."""
  config = transfer.with_source_net(config)
  mesh = sharding.make_mesh(config.model.towers)
  config = fitting.fit(config, mesh)
  check_config(config, mesh)
  return config, mesh


def start(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
  """The run of `config` in `workdir`, checked, fitted to its data and built or resumed."""
  config, mesh = checked(config)
  # A pretrained net keeps the input scaling it learned with (its preprocessing record).
  inputs_of = transfer.source_preprocessing(config) if config.transfer.source else None
  data = input_pipeline.create(config, mesh, inputs_of=inputs_of)
  try:
    if len(data.stats.classes) != config.model.num_classes:
      raise ValueError(f'model.num_classes: {config.model.num_classes}, but the data has '
                       f'{len(data.stats.classes)} classes')
    os.makedirs(workdir, exist_ok=True)
    return Trainer(config, workdir, mesh, data)
  except BaseException:
    data.close()
    raise


def _remove_new_entries(workdir: str, before: set[str] | None) -> None:
  """Removes what a failed start made in `workdir`: the entries that were not there before
  (`before`), or the directory itself if it did not exist (None)."""
  if not distributed.is_main_process() or not os.path.isdir(workdir):
    return
  if before is None:
    shutil.rmtree(workdir, ignore_errors=True)
    return
  for name in set(os.listdir(workdir)) - before:
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)


class Trainer:
  """One run: built (or resumed from its newest checkpoint) by the constructor; `run()` calls
  `step()` until the last step and `end_of_epoch()` after each epoch's last step (evaluate,
  schedule, checkpoint), and checkpoints and exits on a preemption; `finish()` writes the
  final 1- and 10-view evaluation and every output. `finished` holds the final metrics of a
  run that was already done (and nothing else happens)."""

  def __init__(self, config, workdir: str, mesh, data: input_pipeline.Data):
    self.config, self.workdir, self.mesh, self.data = config, workdir, mesh, data
    self.main_process = distributed.is_main_process()
    self.finished = None
    net = model_lib.create_model(config.model, mesh=mesh, seed=config.seed)
    self.graphdef, state, tx = init_state(net, config.optim)
    self.plateau = optim.Plateau(config.optim.base_lr, config.optim.plateau_patience,
                                 config.optim.plateau_threshold, config.optim.plateau_factor,
                                 config.optim.max_drops)
    self.checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                                  keep=config.checkpoint.keep)
    try:
      restored = self._restore(state, data.stats.classes)
      if restored is None and config.transfer.source:
        params, pretrained = transfer.pretrained_params(config, state.params, mesh)
        state = state.replace(params=params)
    except BaseException:
      self.checkpoints.close()
      raise
    meta = restored[1] if restored is not None else {}
    # A resumed run keeps its epochs' length, even if examples were added or removed since.
    self.steps_per_epoch = (config.steps_per_epoch or meta.get('steps_per_epoch') or
                            max(1, data.train_examples // config.batch_size))
    self.total_steps = config.num_epochs * self.steps_per_epoch
    done = os.path.join(workdir, FINAL_METRICS)
    finished = (restored is not None and int(restored[0].step) >= self.total_steps and
                os.path.isfile(done))
    if finished and not config.reevaluate:
      log.info('%s finished at step %d (%s); nothing to do (--config.reevaluate=true '
               'evaluates it again)', workdir, int(restored[0].step), done)
      self.checkpoints.close()
      data.close()
      with open(done) as f:
        self.finished = json.load(f)
      return
    self.reevaluating = finished  # The final evaluation again, its records replaced.
    if self.main_process and self.reevaluating:
      log.info('evaluating %s again at step %d: its final records are replaced', workdir,
               int(restored[0].step))
    elif self.main_process:
      log.info('training the %s recipe in %s on mesh %s (%d %s devices, %d processes):\n%s',
               config.recipe, workdir, dict(mesh.shape), jax.device_count(),
               jax.devices()[0].platform, jax.process_count(), model_lib.summary(net))
      log.info(fitting.describe(config, data.stats.classes, data.train_examples,
                                data.eval_examples))
    data_changed = None
    if restored is not None:
      state = restored[0]
      data_changed = data.train.set_state(meta['data'])
      self.plateau.restore(meta['plateau'])
      if not self.reevaluating:
        log.info('resumed from step %d', int(state.step))
      if data_changed and not self.reevaluating:
        log.info('data: the training examples changed since step %d (%d then, %d now); the '
                 'run goes on with them', int(state.step), *data_changed)
    elif config.transfer.source:
      log.info('started from %s (its %s net); new layers: %s', pretrained, config.recipe,
               ', '.join(config.optim.new_layers))
    self.state = state
    self.step_count = int(state.step)
    self.saved_step = self.step_count if restored is not None else None  # Newest checkpoint.
    self.schedule = None  # (epoch, lr) the state's rates were last set for.

    self.writer = writers.Writer(workdir, resume_step=self.step_count,
                                 enabled=self.main_process, reevaluating=self.reevaluating)
    self.writer.text('config', f'recipe {config.recipe}\n\n```\n{config.to_json(indent=1)}\n```',
                     self.step_count)
    self.progress = writers.Progress(
        self.total_steps, initial=self.step_count,
        enabled=config.progress and self.main_process and not self.reevaluating)
    # Bad training and evaluation examples are named in one list, each line saying where.
    bad_list = os.path.join(workdir, BAD_EXAMPLES_FILE)
    self.bad_examples = input_pipeline.BadExamples(data.train_source, bad_list)
    if 'bad_examples' in meta and not data_changed:  # Counted on across a resume.
      self.bad_examples.restore(meta['bad_examples'])
    self.bad_eval_examples = input_pipeline.BadExamples(data.eval_source, bad_list)
    # What evaluate/predict need besides the weights: the config, class names and how images
    # become inputs; and what a resumed run keeps.
    self.meta = {'num_classes': config.model.num_classes, 'config': config.to_json(),
                 'classes': list(data.stats.classes),
                 'preprocessing': data.preprocessing.to_dict(),
                 'steps_per_epoch': self.steps_per_epoch}
    self.train_step = make_train_step(self.graphdef, tx, seed=config.seed,
                                      num_classes=config.model.num_classes,
                                      preprocessing=data.preprocessing,
                                      normalized=config.data.normalize_on_host)
    self.eval_1view = evaluation.make_eval_step(self.graphdef,
                                                num_classes=config.model.num_classes,
                                                preprocessing=data.preprocessing, views=1)
    self.arrays = evaluation.replicated(data.preprocessing.arrays(), mesh)
    self.timer = StepTimer()
    self.profiled = profile_steps(config)
    self.pending = None  # (step, metrics on the device, lr): read one step late.
    self.nonfinite_in_a_row = 0
    # This step's evaluation, stopped by a preemption signal: the resumed run does it first.
    self.evaluation_pending = bool(meta.get('evaluation_pending'))
    self.last_eval = (None, None)  # (step, 1-view results) of the newest evaluation.

  def _restore(self, state, classes):
    """(state, meta) of the newest good checkpoint, or None (a fresh run); one line if the
    checkpoints cannot be resumed with this config and data."""
    check_resumable(self.config, self.checkpoints, state, classes)
    restored = self.checkpoints.restore_latest(state)
    if restored is None and self.checkpoints.steps():
      raise TrainingError(f'checkpoint: none of the checkpoints in '
                          f'{self.checkpoints.directory} restores into this config (see the '
                          'warnings above); use another --workdir or move them aside')
    return restored

  # ---- The loop -------------------------------------------------------------------------------

  def run(self) -> None:
    """Steps to the end; on SIGTERM or Ctrl-C, a checkpoint, one line and SystemExit (with
    EXIT_PREEMPTED, or 130 for Ctrl-C)."""
    try:
      with _Preemption() as preemption:
        if self.evaluation_pending:  # A preemption stopped it last time: this step's first.
          self.end_of_epoch(save=False)
        while self.step_count < self.total_steps:
          batch = self.next_batch(preemption)
          if batch is not None:
            self.step(batch)
            if (self.step_count % self.steps_per_epoch == 0 or
                self.step_count == self.total_steps):
              try:
                self.end_of_epoch()
              except input_pipeline.InputError:
                if not preemption.signalled:
                  raise
                # The signal reached the evaluation's input workers too (a SIGTERM to the
                # process group): the checkpoint below leaves the evaluation to the resumed run.
                self.evaluation_pending, batch = True, None
          # After the epoch's evaluation, so that a resumed run takes the same schedule.
          if batch is None or preemption.requested(self.step_count):
            self.record_pending()
            if self.saved_step != self.step_count:
              self.save()
            self.checkpoints.wait()
            self.progress.close()
            signalled = SIGNAL_NAMES.get(preemption.signalled, 'a preemption signal')
            log.info('stopped by %s at step %d of %d, its checkpoint saved: run the same '
                     'command again to continue', signalled, self.step_count, self.total_steps)
            raise SystemExit(preemption.exit_status())
    except BaseException:  # Preempted or failed: the evaluation workers stop too.
      self.data.eval.close()
      raise
    finally:
      self.progress.close()
      self.data.train.close()
      self.checkpoints.close()  # Last: it raises if the final save failed.

  def next_batch(self, preemption):
    """The next global batch, or None when a preemption signal broke the input workers."""
    try:
      batch = next(self.data.train)
    except Exception as e:  # pylint: disable=broad-except  # Whatever a worker raised.
      if preemption.signalled:  # SIGTERM to the process group also stops grain's workers.
        return None
      raise input_pipeline.input_error(e, f'before step {self.step_count + 1}') from e
    self.bad_examples.name(batch)
    return input_pipeline.to_global(batch, self.mesh, self.config.batch_size)

  @property
  def lr(self) -> float:
    """The schedule's rate for the current step (eps of the weights of most layers)."""
    c = self.config.optim
    if c.schedule == 'manual':
      return optim.manual_lr(c.base_lr, self.epoch, c.manual_drop_epochs, c.plateau_factor)
    return self.plateau.lr

  @property
  def epoch(self) -> int:
    """The epoch of the next step (0-based): what the schedule reads."""
    return self.step_count // self.steps_per_epoch

  def set_rates(self) -> None:
    """Every parameter array's eps for the coming step (optim.rates_at), set only when the
    epoch or the schedule's rate changed: a fresh or resumed run sets them at its first step."""
    if self.schedule != (self.epoch, self.lr):
      self.schedule = (self.epoch, self.lr)
      self.state = self.state.replace(opt_state=optim.with_rates(
          self.state.opt_state,
          optim.rates_at(self.config.optim, self.state.params, self.epoch, self.lr)))

  def step(self, batch) -> None:
    """One training step: the rates and augmentation of its epoch, the step dispatched, the
    previous step's metrics read (one step late: the device never waits on them)."""
    self.set_rates()
    lr, end = self.lr, self.config.data.lighting_end_epoch
    if self.profiled and self.step_count + 1 == self.profiled[0]:
      jax.profiler.start_trace(os.path.join(self.workdir, 'tensorboard'))
    self.state, metrics = self.train_step(self.state, batch, self.arrays,
                                          lighting=not end or self.epoch < end)
    self.step_count += 1
    if self.profiled and self.step_count == self.profiled[1]:
      jax.block_until_ready(metrics)
      jax.profiler.stop_trace()
      log.info("profile of steps %d-%d written to %s/tensorboard (TensorBoard's Profile tab)",
               *self.profiled, self.workdir)
    self.record_pending()
    self.pending = (self.step_count, metrics, lr)

  def end_of_epoch(self, save: bool = True) -> None:
    """The epoch's last metrics, its evaluation and the plateau rule (every
    eval.every_epochs), its checkpoint (every checkpoint.every_epochs, unless `save` is False:
    the pending evaluation of a resumed checkpoint); the last epoch does both."""
    c, step = self.config, self.step_count
    self.record_pending()
    epochs_done, last = step // self.steps_per_epoch, step == self.total_steps
    val = None
    if epochs_done % c.eval.every_epochs == 0 or last:
      val = evaluation.evaluate(self.eval_1view, self.state.params, self.data.eval, self.mesh,
                                self.arrays, c.batch_size, bad_examples=self.bad_eval_examples)
      self.last_eval = (step, val)
      self.writer.write(step, {f'val_{k}': v for k, v in val.items()}
                        | {'epoch': step / self.steps_per_epoch})
      self.write_kernels(step)
      self.progress.show_eval(val)
      if c.optim.schedule == 'plateau' and self.plateau.update(val['top1_error']):
        log.info('validation error stopped improving: learning rate now %g', self.plateau.lr)
    self.evaluation_pending = False
    if save and (epochs_done % c.checkpoint.every_epochs == 0 or last):
      self.save(val_error=val and val['top1_error'])
    self.timer.idle()  # Evaluation and saving are not step time.

  def write_kernels(self, step: int) -> None:
    """The paper's figure 3 (conv1's kernels) into TensorBoard, as training goes."""
    if self.main_process:
      kernel = nnx.merge(self.graphdef, self.state.params).layer('conv1').kernel[...]
      self.writer.image('val/conv1_kernels', writers.kernel_grid(
          np.asarray(jax.device_get(kernel), np.float32)), step)

  def save(self, val_error: float | None = None) -> None:
    self.checkpoints.save(self.step_count, self.state,
                          dict(self.meta, data=self.data.train.get_state(),
                               plateau=self.plateau.state(),
                               bad_examples=self.bad_examples.state(),
                               evaluation_pending=self.evaluation_pending),
                          val_error=val_error)
    self.saved_step = self.step_count

  def record_pending(self) -> None:
    """Reads the pending step's metrics (waiting for it), times it, logs it, and stops the
    run on too many non-finite steps or bad examples."""
    if self.pending is None:
      return
    (step, metrics, lr), self.pending = self.pending, None
    c = self.config
    metrics = jax.device_get(metrics)  # Waits for the step.
    timing = self.timer.done()
    if 'step_time_s' in timing:
      timing['images_per_s'] = c.batch_size / timing['step_time_s']
    if self.bad_examples.count(metrics.pop('bad_rows', ()), c.data.max_bad_fraction):
      self.writer.write(step, {'data/bad_examples': self.bad_examples.total})
    metrics = {k: float(v) for k, v in metrics.items()}
    if metrics.pop('finite') < 1:
      self.nonfinite_in_a_row += 1
      self.writer.count_nonfinite(step)
      if self.nonfinite_in_a_row > c.max_nonfinite_steps:
        raise TrainingError(f'training: {self.nonfinite_in_a_row} steps in a row had a '
                            f'non-finite loss or gradient (last at step {step}); lower '
                            'optim.base_lr or check the data')
    else:
      self.nonfinite_in_a_row = 0
    metrics.update(timing, lr=float(f'{lr:.6g}'))  # Not 1.0000000000000003e-05.
    if step % c.log_every_steps == 0:
      self.writer.write(step, {f'train_{k}' if 'error' in k or k == 'loss' else k: v
                               for k, v in metrics.items()})
    self.progress.update(step, metrics)

  # ---- The end --------------------------------------------------------------------------------

  def finish(self) -> dict[str, Any]:
    """The final 1-view (the last epoch's, if it evaluated the last step) and 10-view
    evaluations, written to metrics.jsonl, TensorBoard and final_metrics.json."""
    c, step, data = self.config, self.step_count, self.data
    final = {'step': step, 'epochs': step / self.steps_per_epoch}
    if self.reevaluating:
      self.write_kernels(step)  # Purged from TensorBoard with the last step's other records.
    if self.last_eval[0] == step:
      one_view = self.last_eval[1]
    else:
      one_view = evaluation.evaluate(self.eval_1view, self.state.params, data.eval, self.mesh,
                                     self.arrays, c.batch_size,
                                     bad_examples=self.bad_eval_examples)
    results = {1: one_view}
    if c.eval.ten_views:
      eval_10views = evaluation.make_eval_step(self.graphdef, num_classes=c.model.num_classes,
                                               preprocessing=data.preprocessing, views=10)
      results[10] = evaluation.evaluate(eval_10views, self.state.params, data.eval, self.mesh,
                                        self.arrays, c.batch_size,
                                        bad_examples=self.bad_eval_examples)
    data.eval.close()
    for views, result in results.items():
      for k, v in result.items():
        final[f'{views}view_{k}'] = v
    self.writer.write(step, {f'final_{k}': v for k, v in final.items()})
    self.writer.close()
    if not self.main_process:
      return final
    with open(os.path.join(self.workdir, FINAL_METRICS), 'w') as f:
      json.dump(final, f, indent=1)
    writers.plot(self.writer.path, os.path.join(self.workdir, 'curves.png'))
    top5 = c.model.num_classes > 5  # With five classes or fewer it is always 0.
    print('final: ' + '; '.join(
        f'{views}-view top-1 error {final[f"{views}view_top1_error"]:.4f}' +
        (f', top-5 {final[f"{views}view_top5_error"]:.4f}' if top5 else '')
        for views in results))
    log.info('written to %s: %s, metrics.jsonl, curves.png, tensorboard/, checkpoints/%s',
             self.workdir, FINAL_METRICS,
             f', {BAD_EXAMPLES_FILE}' if self.bad_examples.named else '')
    return final


class StepTimer:
  """Wall time of completed steps: from the moment one step's outputs were ready to the next
  one's. The first step of a (re)start includes compilation, reported apart; after an
  evaluation or a save, time counts from when they ended (the device was idle)."""

  def __init__(self):
    self.last, self.compiled = time.perf_counter(), False

  def idle(self) -> None:
    self.last = time.perf_counter()

  def done(self) -> dict[str, float]:
    """Call once a step's outputs are on the host: its timing metrics."""
    now = time.perf_counter()
    seconds, self.last = now - self.last, now
    if not self.compiled:
      self.compiled = True
      return {'compile_time_s': seconds}  # Compilation and the first step.
    return {'step_time_s': seconds}
