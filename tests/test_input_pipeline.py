"""The input pipeline: the paper's augmentation (s4: crops, flips, PCA lighting, ten views),
normalization on host and device, and grain batches that restart exactly, split over
processes."""
import json

import jax
import numpy as np
import pytest

from alexnet_jax import datasets
from alexnet_jax import input_pipeline
from alexnet_jax import preprocess
from alexnet_jax import sharding
import helpers
from helpers import data_config


def coordinate_image(size):
  """Pixel (y, x) holds (y, x, 0): crops and flips can be read back from the values."""
  yy, xx = np.mgrid[:size, :size]
  return np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8)


def test_crop_bounds_and_flip_rate():
  image = coordinate_image(40)
  record = preprocess.Preprocessing(size=40, crop=32, lighting_std=0.0)
  aug = input_pipeline.Augment(record)
  rng = np.random.default_rng(0)
  tops, lefts, flips = set(), set(), 0
  n = 4000
  for _ in range(n):
    crop, flip, light, offset = aug(image, rng)
    assert tuple(offset) == (int(crop[0, 0, 0]), int(crop[0, 0, 1]))  # Where it was taken.
    crop = preprocess.normalize(crop[None], record, record.arrays(), lighting=light[None],
                                flip=np.asarray([flip]))[0]
    assert crop.shape == (32, 32, 3) and not light.any()
    top = int(crop[0, 0, 0])
    flipped = crop[0, 0, 1] > crop[0, -1, 1]
    left = int(crop[0, -1, 1] if flipped else crop[0, 0, 1])
    rows = np.broadcast_to(np.arange(top, top + 32)[:, None], (32, 32))
    cols = np.broadcast_to(np.arange(left, left + 32)[None, ::-1 if flipped else 1], (32, 32))
    np.testing.assert_array_equal(crop[..., 0], rows)
    np.testing.assert_array_equal(crop[..., 1], cols)
    tops.add(top)
    lefts.add(left)
    flips += flipped
  assert tops == set(range(9)) and lefts == set(range(9))  # Every offset 0..S-crop, no other.
  assert abs(flips / n - 0.5) < 4 * 0.5 / np.sqrt(n)


# ---- The grain pipeline ----------------------------------------------------------------------


def take(iterable, n):
  it = iter(iterable)
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_the_same_config_gives_the_same_batches():
  a = take(input_pipeline.create(data_config()).train, 3)
  b = take(input_pipeline.create(data_config()).train, 3)
  assert_batches_equal(a, b)
  c = take(input_pipeline.create(data_config(flip=False)).train, 1)
  assert a[0]['flip'].any() and not c[0]['flip'].any()


def test_every_epoch_is_a_new_permutation_of_every_example():
  pos = input_pipeline.GlobalPositions(10, 5, rows=None, seed=0, shuffle=True, epochs=3)
  order = [pos[i][0] for i in range(len(pos))]
  epochs = [order[:10], order[10:20], order[20:]]
  assert all(sorted(e) == list(range(10)) for e in epochs)
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]


@pytest.mark.slow
@pytest.mark.parametrize('workers', [0, 2])
def test_iterator_state_restores_the_same_batches(workers):
  config = data_config(workers=workers)
  data = input_pipeline.create(config)
  it = iter(data.train)
  take(it, 2)
  state = it.get_state()
  json.dumps(state)  # Small and JSON: it goes into the checkpoint.
  expected = take(it, 3)
  resumed = iter(input_pipeline.create(config).train)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), expected)
  assert state['step'] == 2 and state['global_batch'] == 16 and state['seed'] == 3
  # The state does not depend on the worker count: a run may resume with more or fewer.
  other = iter(input_pipeline.create(data_config(workers=2 - workers)).train)
  other.set_state(state)
  assert_batches_equal(take(other, 3), expected)
  for i in (it, resumed, other):
    i.close()


@pytest.mark.slow
def test_restores_across_epoch_boundaries_and_refuses_another_stream():
  source = datasets.ArraySource(np.arange(40 * 4 * 4 * 3, dtype=np.uint32).astype(np.uint8)
                                .reshape(40, 4, 4, 3), np.arange(40))
  make = lambda **kw: input_pipeline.train_dataset(
      source, input_pipeline.Augment(preprocess.Preprocessing(size=4, crop=3)),
      global_batch=kw.get('batch', 8),
      seed=kw.get('seed', 0), workers=kw.get('workers', 0), prefetch=3)
  straight = take(make(), 12)  # 2.4 epochs.
  # Epoch 0 ends after step 5, epoch 1 after step 10; worker processes once (they are slow
  # to start, and test_iterator_state_restores_the_same_batches covers them too).
  for stop, workers in ((4, 0), (5, 0), (9, 0), (9, 2)):
    it = make(workers=workers)
    take(it, stop)
    state = it.get_state()
    it.close()
    resumed = make(workers=workers)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 12 - stop), straight[stop:])
    resumed.close()
  with pytest.raises(datasets.DataError, match='global_batch=8, this run 16'):
    make(batch=16).set_state(make().get_state())
  with pytest.raises(datasets.DataError, match='seed'):
    make(seed=1).set_state(make().get_state())


def test_processes_read_disjoint_rows_of_the_same_global_batches():
  x, y = datasets.digits('train', 36)
  source = datasets.ArraySource(x, np.arange(len(y)))  # Labels are example ids here.
  aug = input_pipeline.Augment(preprocess.Preprocessing(size=36, crop=32))
  one = take(input_pipeline.train_dataset(source, aug, global_batch=16, seed=1), 4)
  two = [take(input_pipeline.train_dataset(source, aug, global_batch=16, seed=1, rows=rows), 4)
         for rows in ((0, 8), (8, 16))]
  for step in range(4):
    joined = {k: np.concatenate([two[0][step][k], two[1][step][k]]) for k in one[step]}
    assert_batches_equal([joined], [one[step]])
  ids = np.concatenate([b['label'] for b in one])
  assert len(set(ids.tolist())) == len(ids)  # Within an epoch no example repeats.


def test_eval_reads_every_example_once_with_a_padded_last_batch():
  data = input_pipeline.create(data_config())
  batches = list(data.eval)
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.sum() == data.eval_examples == 359 and len(masks) == 23 * 16
  _, labels = datasets.digits('test', 36)
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches])[masks], labels)
  # Whole canvases (the 1-view step cuts the centre), the same on every pass.
  np.testing.assert_array_equal(batches[0]['image'][5], datasets.digits('test', 36)[0][5])
  assert not np.concatenate([b['bad'] for b in batches]).any()
  again = list(data.eval)
  assert len(again) == len(batches)
  for a, b in zip(again, batches):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_global_batches_land_on_the_data_axis():
  mesh = sharding.make_mesh(2)
  data = input_pipeline.create(data_config())
  batch = next(input_pipeline.global_batches(data.train, mesh))
  assert batch['image'].shape == (16, 32, 32, 3)
  assert batch['image'].sharding.spec == sharding.BATCH
  assert len({s.index[0].start for s in batch['image'].addressable_shards}) == 2
  host = take(input_pipeline.create(data_config()).train, 1)[0]
  for k in host:  # The global array holds this process's rows, in order.
    np.testing.assert_array_equal(np.asarray(batch[k]), host[k])


def test_host_normalization_gives_the_device_result():
  host = take(input_pipeline.create(data_config(normalize_on_host=True)).train, 1)[0]
  data = input_pipeline.create(data_config())
  raw = take(data.train, 1)[0]
  assert raw['flip'].any() and not raw['flip'].all()
  record = data.preprocessing
  want = preprocess.normalize(raw['image'], record, record.arrays(), lighting=raw['lighting'],
                              flip=raw['flip'], train=True)
  np.testing.assert_allclose(host['image'], want, rtol=1e-6)
  on_device = preprocess.normalize(jax.numpy.asarray(raw['image']), record, record.arrays(),
                                   lighting=jax.numpy.asarray(raw['lighting']),
                                   flip=jax.numpy.asarray(raw['flip']), train=True)
  np.testing.assert_allclose(np.asarray(on_device), want, rtol=1e-6)


def test_a_batch_holds_its_examples_augmented_as_the_seed_and_position_say():
  """Batch 1 of the stream, rebuilt by hand: example order from the epoch's permutation,
  crop, flip and lighting from a generator seeded with (seed, global position)."""
  config = data_config()
  batch = take(input_pipeline.create(config).train, 2)[1]
  source, stats = datasets.open_source(config.data, 'train')
  positions = input_pipeline.GlobalPositions(len(source), 16, rows=None, seed=3, shuffle=True,
                                             epochs=None)
  augment = input_pipeline.Augment(input_pipeline.create(config).preprocessing)
  for row in range(16):
    index, position = positions[16 + row]
    assert position == 16 + row
    image, label = source[index]
    crop, flip, light, offset = augment(image, np.random.default_rng([3, position]))
    np.testing.assert_array_equal(batch['image'][row], crop)
    np.testing.assert_array_equal(batch['offset'][row], offset)
    top, left = offset
    np.testing.assert_array_equal(image[top:top + crop.shape[0], left:left + crop.shape[1]],
                                  crop)
    assert batch['flip'][row] == flip and batch['label'][row] == label
    np.testing.assert_array_equal(batch['lighting'][row], light)
  assert batch['flip'].any() and not batch['flip'].all() and batch['lighting'].std() > 0


@pytest.mark.slow
def test_input_workers_start_once_and_leave_no_shared_memory_behind():
  """Training batches and two evaluation passes from one worker each, then exit: the two
  passes are served by the same evaluation worker, close() stops the workers, and nothing is
  left for multiprocessing's resource tracker to clean up ('leaked shared_memory')."""
  script = '''
import sys
sys.path[:0] = ['tests', '.']
import psutil
from helpers import data_config
from alexnet_jax import input_pipeline

def workers():  # Not multiprocessing's resource tracker, which outlives them.
  return {p.pid for p in psutil.Process().children(recursive=True)
          if 'resource_tracker' not in ' '.join(p.cmdline())}

if __name__ == '__main__':
  data = input_pipeline.create(data_config(workers=1))
  batches = [next(data.train) for _ in range(3)]
  train = workers()
  passes = []
  for _ in range(2):
    last = list(data.eval)[-1]
    passes.append(workers() - train)
  data.close()
  psutil.wait_procs([psutil.Process(p) for p in train | passes[0] if psutil.pid_exists(p)],
                    timeout=30)
  print('eval workers', len(passes[0]), passes[0] == passes[1], 'left', len(workers()),
        'rows', len(last['label']))
'''
  run = helpers.run_python('-c', script)
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.strip().splitlines()[-1] == 'eval workers 1 True left 0 rows 16'
  assert 'leaked' not in run.stderr, run.stderr[-3000:]
