"""Loss and top-k errors, and the evaluation loop: exact sums over the valid examples of
padded batches, never more than two steps in flight (the multi-process hang of issue 14)."""
import types

import jax
import numpy as np
import pytest
from flax import nnx

import alexnet_jax
from alexnet_jax import datasets
from alexnet_jax import evaluation
from alexnet_jax import input_pipeline
from alexnet_jax import preprocess
from alexnet_jax import sharding
from helpers import small_config


def test_loss_and_errors_by_hand():
  logits = np.random.default_rng(1).normal(size=(8, 10)).astype(np.float32)
  labels = np.arange(8) % 10
  loss, top1, top5 = jax.jit(evaluation.loss_and_errors, static_argnums=2)(logits, labels, 10)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(loss, -logp[np.arange(8), labels], rtol=1e-5)
  ranks = (logits > logits[np.arange(8), labels][:, None]).sum(-1)
  np.testing.assert_array_equal(top1, ranks >= 1)
  np.testing.assert_array_equal(top5, ranks >= 5)


class WithBadExamples(datasets.ArraySource):
  """In-memory examples, some of which do not decode."""

  def __init__(self, images, labels, bad):
    super().__init__(images, labels)
    self.bad = set(bad)

  def __getitem__(self, i):
    if i in self.bad:
      raise datasets.BadExample(self.where(i), 'not an image file')
    return super().__getitem__(i)


def eval_setup(examples=37, views=1, bad=(), keep=None) -> types.SimpleNamespace:
  """A small net on a (2 data x 2 tower) mesh, random 36x36 images (`bad` ones unreadable,
  only `keep` ones if given), padded batches of 8, and the evaluation step and loop
  arguments."""
  mesh = sharding.make_mesh(2)
  net = alexnet_jax.create_model(small_config(image_size=32, conv1_stride=1), seed=4,
                                 mesh=mesh)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (examples, 36, 36, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, examples).astype(np.int32)
  if keep is not None:
    images, labels = images[keep], labels[keep]
  source = WithBadExamples(images, labels, bad)
  dataset = input_pipeline.eval_dataset(source, global_batch=8, crop=32 if views == 1 else None)
  graphdef, params = nnx.split(net, nnx.Param)
  record = preprocess.Preprocessing(size=36, crop=32, mean=(120.0,) * 3, std=(50.0,))
  step = evaluation.make_eval_step(graphdef, num_classes=10, preprocessing=record, views=views)
  arrays = evaluation.replicated(record.arrays(), mesh)
  return types.SimpleNamespace(net=net, mesh=mesh, images=images, labels=labels, source=source,
                               record=record, dataset=dataset, step=step, params=params,
                               arrays=arrays)


def test_evaluate_averages_over_the_valid_examples_only():
  """37 examples in batches of 8: the last batch's 3 padding rows count for nothing."""
  e = eval_setup()
  got = evaluation.evaluate(e.step, e.params, e.dataset, e.mesh, e.arrays, 8)
  crops = preprocess.center_crop(e.images.transpose(1, 2, 0, 3), 32).transpose(2, 0, 1, 3)
  x = np.concatenate([crops, crops[:1]]).astype(np.float32)  # 38 rows: 2 data shards.
  logits = np.asarray(e.net((x - 120.0) / 50.0), np.float64)[:37]
  labels = e.labels
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  rank = (logits > logits[np.arange(37), labels][:, None]).sum(-1)
  want = {'loss': -logp[np.arange(37), labels].mean(), 'top1_error': (rank >= 1).mean(),
          'top5_error': (rank >= 5).mean()}
  assert got.pop('skipped') == 0 and got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, err_msg=k)


@pytest.mark.parametrize('views', [1, 10])
def test_bad_examples_are_left_out_counted_and_named(views, tmp_path, caplog):
  """Three unreadable examples: the errors are those of the other 34, and the three are
  reported as skipped and named (a warning and a line of the list each, once however often
  they are met), never silently dropped."""
  bad = (0, 17, 36)
  e = eval_setup(views=views, bad=bad)
  named = input_pipeline.BadExamples(e.source, str(tmp_path / 'bad_examples.txt'))
  for _ in range(2):  # Evaluated twice, as after two epochs: named the first time only.
    got = evaluation.evaluate(e.step, e.params, e.dataset, e.mesh, e.arrays, 8,
                              bad_examples=named)
  good = eval_setup(views=views, keep=[i for i in range(37) if i not in bad])
  want = evaluation.evaluate(good.step, good.params, good.dataset, good.mesh, good.arrays, 8)
  assert got.pop('skipped') == 3 and want.pop('skipped') == 0
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, err_msg=k)
  lines = [f'{e.source.where(i)}: not an image file' for i in bad]
  assert sorted((tmp_path / 'bad_examples.txt').read_text().splitlines()) == sorted(lines)
  warned = [r.getMessage() for r in caplog.records if 'skipped a bad example' in r.getMessage()]
  assert sorted(warned) == sorted(f'data: skipped a bad example, {l}' for l in lines)


def test_ensemble_errors_name_and_count_the_bad_examples_too(caplog):
  """The `evaluate` command's loop (whole canvases, 10 views): the same naming, no list."""
  e = eval_setup(views=10, bad=(3, 30))
  named = input_pipeline.BadExamples(e.source, None)
  counts, skipped = evaluation.ensemble_errors([(e.net, e.record)], e.dataset, e.mesh, 8,
                                               bad_examples=named)
  assert skipped == 2 and counts[0, 2] == counts[1, 2] == 35
  warned = [r.getMessage() for r in caplog.records if 'skipped a bad example' in r.getMessage()]
  assert sorted(warned) == sorted(f'data: skipped a bad example, {e.source.where(i)}: not an '
                                  'image file' for i in (3, 30))


def test_evaluate_keeps_at_most_two_steps_in_flight():
  """Before batch i+1 is dispatched, batch i-1 has finished: on a 2-core machine, more than
  about 32 computations in flight across processes deadlock XLA:CPU (evaluation.py)."""
  e = eval_setup(examples=80, views=10)
  ready_at_dispatch = []
  results = []

  def keeping_step(totals, *args):
    ready_at_dispatch.append(all(o.is_ready() for o in results[:-1]))
    out = e.step(totals, *args)
    results.append(out['count'])
    return out

  assert evaluation.evaluate(keeping_step, e.params, e.dataset, e.mesh, e.arrays, 8)[
      'top1_error'] <= 1
  assert len(ready_at_dispatch) == 10 and all(ready_at_dispatch), ready_at_dispatch
