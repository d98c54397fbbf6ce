"""Loss and top-k errors, the paper's 1- and 10-view probabilities, and the evaluation loops.

Training takes its loss and its validation from here, `evaluate` its table (one model or an
ensemble), `predict` and `features` their probabilities: every path from uint8 canvases to
outputs goes through the model's `preprocess.Preprocessing` record.

The loop keeps at most two steps in flight. XLA:CPU's client runs a computation that spans
several local devices on a thread pool as large as the machine's cores, and lets 32
computations per device wait to run; on a 2-core machine, with gloo collectives across
processes, dispatching more than about 32 of them ahead of their results deadlocks the pool
in every process (measured: a loop of 60 jitted all-reduces over a 2x2 mesh of two processes
hangs every time, 25 never; with PJRT_NPROC=8 neither does). Training reads each step's
metrics one step late, which bounds it the same way.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alexnet_jax import backends
from alexnet_jax import input_pipeline
from alexnet_jax import preprocess
from alexnet_jax import sharding

# What an evaluation step sums: the loss and errors over the examples evaluated, their count,
# and the bad examples skipped (unreadable or damaged: named by the run, never silent).
TOTALS = ('loss', 'top1_error', 'top5_error', 'count', 'skipped')


def loss_and_errors(logits, labels, num_classes: int):
  """Per-example cross-entropy, top-1 and top-5 errors (0/1).

  Written with elementwise ops and reductions only, so it runs on logits whose class axis is
  split over the towers (the paper's fc8) without gathering them.
  """
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  loss = -jnp.sum(jax.nn.log_softmax(logits) * one_hot, axis=-1)
  true_logit = jnp.sum(logits * one_hot, axis=-1, keepdims=True)
  rank = jnp.sum(logits > true_logit, axis=-1)  # Classes scored above the true one.
  return loss, (rank >= 1).astype(jnp.float32), (rank >= 5).astype(jnp.float32)


def per_view_probabilities(net, images_u8, preprocessing, arrays, *, views: int):
  """(B, views, classes) softmax of 1 view (the center crop of `images_u8`, center crops or
  whole canvases) or of the paper's 10 views (`images_u8` are whole canvases: 4 corners,
  center, and their reflections)."""
  crop = preprocessing.crop
  if views == 1 and images_u8.shape[1] != crop:  # preprocess.center_crop, batched.
    top, left = (images_u8.shape[1] - crop) // 2, (images_u8.shape[2] - crop) // 2
    images_u8 = images_u8[:, top:top + crop, left:left + crop]
  if views == 10 and arrays['mean'].shape[:2] == images_u8.shape[1:3]:
    # A whole mean image (Caffe's): subtracted from the canvases, then each view cropped
    # (and reflected) from the result, so that every view has the mean under it removed.
    inputs = preprocess.ten_views(preprocess.normalize(images_u8, preprocessing, arrays), crop)
    inputs = inputs.reshape((-1,) + inputs.shape[2:])
  else:
    if views == 10:
      images_u8 = preprocess.ten_views(images_u8, crop)  # (B, 10, c, c, 3)
      images_u8 = images_u8.reshape((-1,) + images_u8.shape[2:])
    inputs = preprocess.normalize(images_u8, preprocessing, arrays)
  probs = jax.nn.softmax(net(inputs))
  return probs.reshape((-1, views, probs.shape[-1]))


def view_probabilities(net, images_u8, preprocessing, arrays, *, views: int):
  """The softmax averaged over the views (paper s4)."""
  return per_view_probabilities(net, images_u8, preprocessing, arrays, views=views).mean(1)


def probabilities_fn(net, preprocessing, views: int, *, average: bool = True):
  """A uint8 batch -> class probabilities, averaged over `views` (1: the images are center
  crops; 10: whole canvases), or per view (B, views, classes): a jitted program with the
  net's parameters bound (`.func` is the program, `.args` what is bound)."""
  graphdef, params = nnx.split(net, nnx.Param)
  arrays = replicated(preprocessing.arrays(), net.mesh)
  probabilities = view_probabilities if average else per_view_probabilities

  @backends.jit
  def fn(params, arrays, images_u8):
    return probabilities(nnx.merge(graphdef, params), images_u8, preprocessing, arrays,
                         views=views)

  return functools.partial(fn, params, arrays)


def replicated(tree, mesh):
  """Host arrays -> the same arrays on every device of `mesh`."""
  return jax.device_put(tree, sharding.named(mesh, sharding.REPLICATED))


def error_sums(probs, labels, mask, num_classes: int) -> dict[str, jax.Array]:
  """Sums over the valid examples of the loss and top-1/top-5 errors of `probs`."""
  loss, top1, top5 = loss_and_errors(jnp.log(probs + 1e-12), labels, num_classes)
  mask = mask.astype(jnp.float32)
  return {'loss': jnp.sum(loss * mask), 'top1_error': jnp.sum(top1 * mask),
          'top5_error': jnp.sum(top5 * mask), 'count': jnp.sum(mask)}


def make_eval_step(graphdef, *, num_classes: int, preprocessing, views: int):
  """(totals, params, batch, arrays) -> totals plus the batch's sums of loss and errors over
  its valid examples, with 1 or 10 views: one compiled program per batch. `arrays` are
  `preprocessing.arrays()` on the mesh."""

  @backends.jit
  def eval_step(totals, params, batch, arrays):
    probs = view_probabilities(nnx.merge(graphdef, params), batch['image'], preprocessing,
                               arrays, views=views)
    sums = error_sums(probs, batch['label'], batch['mask'], num_classes)
    sums['skipped'] = jnp.sum(batch['bad'].astype(jnp.float32))
    return {k: totals[k] + sums[k] for k in TOTALS}

  return eval_step


CENTER = 4  # preprocess.ten_views' index of the center crop.


@jax.jit
def _ensemble_counts(model_views, labels, mask):
  """(2, 3): top-1 errors, top-5 errors and examples of the models' averaged softmax, with 1
  and with 10 views, summed over the valid rows. All on device, in one program."""
  views = sum(model_views) / len(model_views)  # (B, 10, classes)
  counts = []
  for probs in (views[:, CENTER], views.mean(1)):
    sums = error_sums(probs, labels, mask, probs.shape[-1])
    counts.append(jnp.stack([sums['top1_error'], sums['top5_error'], sums['count']]))
  return jnp.stack(counts)


def ensemble_errors(models, dataset, mesh, global_batch: int, *, on_batch=lambda: None,
                    bad_examples: input_pipeline.BadExamples | None = None):
  """((2, 3) numpy, bad examples skipped): summed top-1 errors, top-5 errors and examples,
  with 1 and 10 views, of
  the softmax averaged over `models` ([(net, preprocessing)]) on `dataset`'s whole canvases.
  The counts of each batch are read before the next is dispatched (see the module doc); each
  bad example skipped is named by `bad_examples`."""
  view_fns = [probabilities_fn(net, p, 10, average=False) for net, p in models]
  counts, skipped = np.zeros((2, 3)), 0
  for batch in input_pipeline.global_batches(dataset, mesh, global_batch,
                                             bad_examples=bad_examples,
                                             when='during evaluation'):
    model_views = tuple(fn(batch['image']) for fn in view_fns)
    counts += jax.device_get(_ensemble_counts(model_views, batch['label'], batch['mask']))
    skipped += int(jax.device_get(jnp.sum(batch['bad'])))
    on_batch()
  return counts, skipped


def evaluate(eval_step, params, dataset, mesh, arrays, global_batch: int, *,
             bad_examples: input_pipeline.BadExamples | None = None) -> dict[str, float]:
  """Mean loss and top-1/top-5 error of `params` over `dataset` (this process's rows of
  padded, masked global batches), the same on every process; each bad example skipped is
  named by `bad_examples` (and counted in `skipped` either way).

  Every process dispatches the same programs in the same order, one per batch, and waits for
  batch i-1 before dispatching batch i+1 (the module doc says why).
  """
  zero = np.zeros((), np.float32)
  totals = {k: jax.device_put(zero, sharding.named(mesh, sharding.REPLICATED)) for k in TOTALS}
  previous = None
  for batch in input_pipeline.global_batches(dataset, mesh, global_batch,
                                             bad_examples=bad_examples,
                                             when='during evaluation'):
    totals, previous = eval_step(totals, params, batch, arrays), totals
    jax.block_until_ready(previous)
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  count, skipped = totals.pop('count'), totals.pop('skipped')
  if not count:
    raise ValueError('evaluation: the evaluation data holds no examples' +
                     (f' that can be read ({skipped:.0f} skipped)' if skipped else ''))
  return {k: v / count for k, v in totals.items()} | {'skipped': int(skipped)}
