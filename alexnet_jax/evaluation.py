"""Loss and top-k errors, the paper's 1- and 10-view probabilities, and the evaluation loop.

Training takes its loss and its validation from here; `evaluate`, `predict` (through
`inference.probabilities_fn`) and the benchmark take the view probabilities and error sums.

The loop keeps at most two steps in flight. XLA:CPU's client runs a computation that spans
several local devices on a thread pool as large as the machine's cores, and lets 32
computations per device wait to run; on a 2-core machine, with gloo collectives across
processes, dispatching more than about 32 of them ahead of their results deadlocks the pool
in every process (measured: a loop of 60 jitted all-reduces over a 2x2 mesh of two processes
hangs every time, 25 never; with PJRT_NPROC=8 neither does). Training reads each step's
metrics one step late, which bounds it the same way.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alexnet_jax import input_pipeline
from alexnet_jax import sharding

TOTALS = ('loss', 'top1_error', 'top5_error', 'count')  # What an evaluation step sums.


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


def per_view_probabilities(net, images_u8, mean, *, divide: float, crop: int, views: int):
  """(B, views, classes) softmax of 1 view (`images_u8` are center crops) or of the paper's
  10 views (`images_u8` are whole images: 4 corners, center, and their reflections)."""
  if views == 10:
    images_u8 = input_pipeline.ten_views(images_u8, crop)  # (B, 10, c, c, 3)
    images_u8 = images_u8.reshape((-1,) + images_u8.shape[2:])
  no_lighting = jnp.zeros((images_u8.shape[0], 3), jnp.float32)
  probs = jax.nn.softmax(net(input_pipeline.normalize(images_u8, no_lighting, mean, divide)))
  return probs.reshape((-1, views, probs.shape[-1]))


def view_probabilities(net, images_u8, mean, *, divide: float, crop: int, views: int):
  """The softmax averaged over the views (paper s4)."""
  return per_view_probabilities(net, images_u8, mean, divide=divide, crop=crop,
                                views=views).mean(1)


def error_sums(probs, labels, mask, num_classes: int) -> dict[str, jax.Array]:
  """Sums over the valid examples of the loss and top-1/top-5 errors of `probs`."""
  loss, top1, top5 = loss_and_errors(jnp.log(probs + 1e-12), labels, num_classes)
  mask = mask.astype(jnp.float32)
  return {'loss': jnp.sum(loss * mask), 'top1_error': jnp.sum(top1 * mask),
          'top5_error': jnp.sum(top5 * mask), 'count': jnp.sum(mask)}


def make_eval_step(graphdef, *, num_classes: int, divide: float, crop: int, views: int):
  """(totals, params, batch, mean) -> totals plus the batch's sums of loss and errors over
  its valid examples, with 1 or 10 views: one compiled program per batch."""

  @jax.jit
  def eval_step(totals, params, batch, mean):
    probs = view_probabilities(nnx.merge(graphdef, params), batch['image'], mean,
                               divide=divide, crop=crop, views=views)
    sums = error_sums(probs, batch['label'], batch['mask'], num_classes)
    return {k: totals[k] + sums[k] for k in TOTALS}

  return eval_step


def evaluate(eval_step, params, dataset, mesh, mean, global_batch: int) -> dict[str, float]:
  """Mean loss and top-1/top-5 error of `params` over `dataset` (this process's rows of
  padded, masked global batches), the same on every process.

  Every process dispatches the same programs in the same order, one per batch, and waits for
  batch i-1 before dispatching batch i+1 (the module doc says why).
  """
  zero = np.zeros((), np.float32)
  totals = {k: jax.device_put(zero, sharding.named(mesh, sharding.REPLICATED)) for k in TOTALS}
  previous = None
  batches = input_pipeline.global_batches(dataset, mesh, global_batch)
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      break
    except Exception as e:  # pylint: disable=broad-except  # Whatever a worker raised.
      raise input_pipeline.input_error(e, 'during evaluation') from e
    totals, previous = eval_step(totals, params, batch, mean), totals
    jax.block_until_ready(previous)
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  count = totals.pop('count')
  if not count:
    raise ValueError('evaluation: the evaluation data holds no examples')
  return {k: v / count for k, v in totals.items()}
