"""The data path: decoding real files, prepare, the sources, augmentation and grain."""
import io
import json
import os
import tarfile
import warnings

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import datasets
from alexnet_jax import images
from alexnet_jax import input_pipeline
from alexnet_jax import prepare
from alexnet_jax import sharding


def photos():
  """Real public-domain photos that scikit-image ships."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  return {'astronaut': skimage.data.astronaut(), 'chelsea': skimage.data.chelsea(),
          'coffee': skimage.data.coffee(), 'rocket': skimage.data.rocket()}


def jpeg(array, **kw):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, 'JPEG', quality=92, **kw)
  return buf.getvalue()


def png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, 'PNG')
  return buf.getvalue()


def cmyk_jpeg(array):
  buf = io.BytesIO()
  Image.fromarray(array).convert('CMYK').save(buf, 'JPEG', quality=92)
  return buf.getvalue()


def grey16_png(array):
  grey = (np.asarray(Image.fromarray(array).convert('L'), np.uint16) * 257)
  buf = io.BytesIO()
  Image.fromarray(grey).save(buf, 'PNG')
  return buf.getvalue()


# ---- Decoding ---------------------------------------------------------------------------------


def test_every_kind_of_file_comes_out_as_rgb():
  photo = photos()['chelsea']
  grey = np.asarray(Image.fromarray(photo).convert('L'))
  rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 255, np.uint8)], -1)
  for name, data in [('rgb jpeg', jpeg(photo)), ('grey jpeg', jpeg(grey)),
                     ('cmyk jpeg', cmyk_jpeg(photo)), ('rgba png', png(rgba)),
                     ('16-bit png', grey16_png(photo)), ('png named .JPEG', png(photo))]:
    out = images.decode_rgb(data)
    assert out.shape == photo.shape[:2] + (3,) and out.dtype == np.uint8, name
    # Colours survive: within JPEG error of the original (greys against its luminance).
    target = photo if name in ('rgb jpeg', 'cmyk jpeg', 'rgba png', 'png named .JPEG') else \
        np.repeat(grey[..., None], 3, -1)
    assert np.abs(out.astype(float) - target).mean() < 8, name


@pytest.mark.parametrize('data,why', [(b'', 'empty'), (b'GIF89a not really', 'not an image file'),
                                      (None, 'truncated')])
def test_bad_files_raise_bad_image(data, why):
  if data is None:
    data = jpeg(photos()['coffee'])[:3000]
  with pytest.raises(images.BadImage, match=why):
    images.decode_rgb(data)


def test_resize_shorter_side_and_center_crop():
  photo = photos()['coffee']  # 400 x 600
  out = images.load_resized(jpeg(photo), 256)
  assert out.shape == (256, 256, 3)
  want = np.asarray(Image.fromarray(photo).resize((384, 256), Image.BILINEAR))[:, 64:320]
  assert np.abs(out.astype(float) - want).mean() < 4


# ---- Fixtures: an image folder and ILSVRC-format tars -----------------------------------------


def make_folder(root):
  """root/{train,val}/{cat,coffee,space}/*.jpg from real photos, crops and flips of them."""
  p = photos()
  sources = {'cat': p['chelsea'], 'coffee': p['coffee'], 'space': p['rocket']}
  for split, count in (('train', 6), ('val', 2)):
    for c, photo in sources.items():
      os.makedirs(root / split / c)
      for i in range(count):
        h, w = photo.shape[:2]
        view = photo[i * 7:h - i * 5, i * 11:w - i * 3]
        view = view[:, ::-1] if i % 2 else view
        (root / split / c / f'{c}_{i}.jpg').write_bytes(jpeg(np.ascontiguousarray(view)))
  return root


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  return make_folder(tmp_path_factory.mktemp('folder'))


def add_member(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope='module')
def ilsvrc(tmp_path_factory):
  """ILSVRC2012_img_{train,val}.tar with the oddities of the real ones."""
  root = tmp_path_factory.mktemp('ilsvrc')
  p = photos()
  grey = np.asarray(Image.fromarray(p['astronaut']).convert('L'))
  classes = {
      'n01440764': [('n01440764_1.JPEG', jpeg(p['coffee'])),
                    ('n01440764_2.JPEG', jpeg(grey)),  # greyscale JPEG
                    ('n01440764_3.JPEG', jpeg(p['rocket'])[:2500])],  # truncated
      'n02123045': [('n02123045_1.JPEG', jpeg(p['chelsea'])),
                    ('n02123045_2.JPEG', cmyk_jpeg(p['chelsea'])),  # CMYK
                    ('n02123045_3.JPEG', b'')],  # zero bytes
      'n02105855': [('n02105855_2933.JPEG', png(p['astronaut']))],  # a PNG named .JPEG
  }
  with tarfile.open(root / 'ILSVRC2012_img_train.tar', 'w') as outer:
    for wnid, members in classes.items():
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode='w') as inner:
        for name, data in members:
          add_member(inner, name, data)
      add_member(outer, f'{wnid}.tar', buf.getvalue())
  # Validation images 1..3 are n01751748, n09193705 and n02105855 in tfds' list.
  with tarfile.open(root / 'ILSVRC2012_img_val.tar', 'w') as tar:
    for number, photo in ((3, p['coffee']), (1, p['rocket']), (2, p['chelsea'])):
      add_member(tar, f'ILSVRC2012_val_{number:08d}.JPEG', jpeg(photo))
  return root


def test_imagenet_labels_come_from_tfds():
  labels = prepare.imagenet_labels()
  assert len(labels) == 1000 and labels == sorted(labels)
  assert labels.index('n02123045') == 281
  assert prepare.imagenet_validation_labels()[:3] == ['n01751748', 'n09193705', 'n02105855']


def test_prepare_ilsvrc_end_to_end(ilsvrc, tmp_path):
  out = tmp_path / 'prepared'
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    meta = prepare.prepare('ilsvrc', str(ilsvrc), str(out), size=64, shard_size=2, workers=2,
                           progress=False)
  train = meta['splits']['train']
  assert train['count'] == 5 and train['skipped'] == 2
  assert sorted(s.split(':')[0] for s in train['skipped_files']) == [
      'n01440764/n01440764_3.JPEG', 'n02123045/n02123045_3.JPEG']
  assert any('n02123045_3.JPEG' in str(w.message) for w in caught)
  index = {w: i for i, w in enumerate(prepare.imagenet_labels())}
  src = datasets.PreparedSource(str(out), 'train')
  assert [src[i][1] for i in range(len(src))] == [index['n01440764']] * 2 + [
      index['n02105855']] + [index['n02123045']] * 2
  for i in range(len(src)):
    image, _ = src[i]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
  val = datasets.PreparedSource(str(out), 'validation')
  assert [val[i][1] for i in range(3)] == [index['n01751748'], index['n09193705'],
                                          index['n02105855']]
  # The validation images are in file-number order: number 1 is the rocket.
  rocket = images.resize_and_center_crop(Image.fromarray(photos()['rocket']), 64)
  assert np.abs(val[0][0].astype(float) - rocket).mean() < 6
  assert meta['num_classes'] == 1000 and len(meta['eigval']) == 3
  assert np.load(out / prepare.MEAN_IMAGE).shape == (64, 64, 3)


@pytest.mark.parametrize('fmt', ['jpeg', 'raw'])
def test_prepare_folder_statistics_and_records(folder, tmp_path, fmt):
  out = tmp_path / fmt
  meta = prepare.prepare('folder', str(folder), str(out), size=48, fmt=fmt, shard_size=4,
                         workers=1, progress=False)
  assert meta['classes'] == ['cat', 'coffee', 'space']
  assert meta['splits']['train']['count'] == 18 and meta['splits']['validation']['count'] == 6
  src = datasets.PreparedSource(str(out), 'train')
  loaded = np.stack([src[i][0] for i in range(len(src))])
  want = np.stack([images.load_resized(open(folder / 'train' / c / f'{c}_{i}.jpg', 'rb').read(),
                                       48) for c in ('cat', 'coffee', 'space') for i in range(6)])
  if fmt == 'raw':
    np.testing.assert_array_equal(loaded, want)
  else:
    assert np.abs(loaded.astype(float) - want).mean() < 6  # JPEG at quality 90, 48x48.
  pixels = want.reshape(-1, 3).astype(np.float64)
  np.testing.assert_allclose(meta['mean_rgb'], pixels.mean(0), rtol=1e-2 if fmt == 'jpeg'
                             else 1e-9)
  cov = np.cov(pixels.T, bias=True)
  if fmt == 'raw':
    np.testing.assert_allclose(meta['rgb_covariance'], cov, rtol=1e-6)
    np.testing.assert_allclose(np.load(out / prepare.MEAN_IMAGE), want.mean(0), rtol=1e-5)
  vec, val = np.asarray(meta['eigvec']), np.asarray(meta['eigval'])
  np.testing.assert_allclose(vec @ np.diag(val) @ vec.T, meta['rgb_covariance'], rtol=1e-6)


def test_prepare_resumes_without_redoing_finished_shards(folder, tmp_path):
  out = tmp_path / 'resume'
  prepare.prepare('folder', str(folder), str(out), size=32, shard_size=4, workers=1,
                  progress=False)
  done = prepare.shard_paths(str(out), 'train', 0)[1]
  lost = prepare.shard_paths(str(out), 'train', 2)[1]
  os.utime(done, (1, 1))  # Mark a finished shard: a rerun must leave it alone.
  os.remove(lost)  # An interrupted run: this shard never finished.
  meta = prepare.prepare('folder', str(folder), str(out), size=32, shard_size=4, workers=1,
                         progress=False)
  assert os.stat(done).st_mtime == 1 and os.path.exists(lost)
  assert meta['splits']['train']['count'] == 18


def test_prepare_input_errors_are_one_line(folder, tmp_path):
  with pytest.raises(prepare.PrepareError, match='no such path'):
    prepare.prepare('folder', str(tmp_path / 'absent'), str(tmp_path / 'o'), progress=False)
  os.makedirs(tmp_path / 'f' / 'train' / 'empty')
  with pytest.raises(prepare.PrepareError, match='holds no images') as e:
    prepare.prepare('folder', str(tmp_path / 'f'), str(tmp_path / 'o'), progress=False)
  assert '\n' not in str(e.value)
  with pytest.raises(prepare.PrepareError, match='neither ILSVRC2012_img_train.tar'):
    prepare.prepare('ilsvrc', str(tmp_path / 'f'), str(tmp_path / 'o'), progress=False)


def test_prepare_command_line(folder, tmp_path):
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  run = lambda *a: subprocess.run([sys.executable, '-m', 'alexnet_jax.prepare', *a],
                                  capture_output=True, text=True, cwd=os.getcwd())
  ok = run(f'--input={folder}', f'--output={tmp_path / "cli"}', '--size=32', '--workers=2')
  assert ok.returncode == 0, ok.stderr
  assert 'train: 18 images in 1 shards, 0 skipped' in ok.stdout
  bad = run(f'--input={tmp_path / "absent"}', f'--output={tmp_path / "x"}')
  assert bad.returncode != 0 and 'prepare: --input: no such path' in bad.stderr


# ---- Augmentation -----------------------------------------------------------------------------


def coordinate_image(size):
  """Pixel (y, x) holds (y, x, 0): crops and flips can be read back from the values."""
  yy, xx = np.mgrid[:size, :size]
  return np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8)


def test_crop_bounds_and_flip_rate():
  image = coordinate_image(40)
  aug = input_pipeline.Augment(crop=32, lighting_std=0.0)
  rng = np.random.default_rng(0)
  tops, lefts, flips = set(), set(), 0
  n = 4000
  for _ in range(n):
    crop, flip, light = aug(image, rng)
    crop = input_pipeline.normalize(crop[None], light[None], 0, 1.0, np.asarray([flip]))[0]
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


def test_lighting_noise_covariance_is_alpha_squared_times_lambda_p():
  aug = input_pipeline.Augment(crop=8)
  rng = np.random.default_rng(1)
  draws = np.stack([aug.lighting(rng) for _ in range(40000)])
  p, lam = np.asarray(datasets.IMAGENET_EIGVEC), np.asarray(datasets.IMAGENET_EIGVAL)
  want = 0.1**2 * p @ np.diag(lam) @ p.T
  np.testing.assert_allclose(np.cov(draws.T), want, atol=0.03 * want.max())
  # Along each eigenvector the noise has std 0.1 * (19.72, 37.09, 121.78).
  np.testing.assert_allclose((draws @ p).std(0), 0.1 * np.sqrt(lam), rtol=0.03)
  np.testing.assert_allclose(draws.mean(0), 0, atol=0.05 * np.sqrt(lam).max() * 0.1)


def test_ten_views_are_the_corners_center_and_reflections():
  image = coordinate_image(40)[None]
  views = input_pipeline.ten_views(image, 32)
  assert views.shape == (1, 10, 32, 32, 3)
  corners = [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]
  for k, (t, l) in enumerate(corners):
    np.testing.assert_array_equal(views[0, k], image[0, t:t + 32, l:l + 32])
    np.testing.assert_array_equal(views[0, k + 5], image[0, t:t + 32, l:l + 32][:, ::-1])
  on_device = input_pipeline.ten_views(jax.numpy.asarray(image), 32)
  np.testing.assert_array_equal(np.asarray(on_device), views)


def test_normalize_matches_on_host_and_device():
  rng = np.random.default_rng(2)
  x = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  light = rng.normal(size=(2, 3)).astype(np.float32)
  mean = rng.uniform(100, 130, (8, 8, 3)).astype(np.float32)
  host = input_pipeline.normalize(x, light, mean, 1.1)
  device = input_pipeline.normalize(jax.numpy.asarray(x), jax.numpy.asarray(light), mean, 1.1)
  np.testing.assert_allclose(host, (x - mean + light[:, None, None]) / 1.1, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(device), host, rtol=1e-6)


# ---- The grain pipeline ----------------------------------------------------------------------


def data_config(**overrides):
  c = ml_collections.ConfigDict({'data': datasets.config(), 'model': {'image_size': 32},
                                 'batch_size': 16, 'seed': 3})
  c.data.image_size = 36
  c.data.eval_split = 'test'
  for k, v in overrides.items():
    setattr(c.data, k, v)
  return c


def take(iterable, n):
  it = iter(iterable)
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_digits_source_and_determinism():
  x, y = datasets.digits('train', 36)
  assert x.shape == (1438, 36, 36, 3) and x.dtype == np.uint8 and set(y) == set(range(10))
  assert len(datasets.digits('test', 36)[1]) == 359
  a = take(input_pipeline.create(data_config()).train, 3)
  b = take(input_pipeline.create(data_config()).train, 3)
  assert_batches_equal(a, b)
  c = take(input_pipeline.create(data_config(flip=False)).train, 1)
  assert a[0]['flip'].any() and not c[0]['flip'].any()


def test_every_epoch_is_a_new_permutation_of_every_example():
  source = datasets.ArraySource(np.zeros((10, 4, 4, 3), np.uint8), np.arange(10))
  pos = input_pipeline.GlobalPositions(10, 5, rows=None, seed=0, shuffle=True, epochs=3)
  order = [pos[i][0] for i in range(len(pos))]
  epochs = [order[:10], order[10:20], order[20:]]
  assert all(sorted(e) == list(range(10)) for e in epochs)
  assert epochs[0] != epochs[1] != epochs[2]
  assert len(source) == 10


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


def test_restores_across_epoch_boundaries_and_refuses_another_stream():
  source = datasets.ArraySource(np.arange(40 * 4 * 4 * 3, dtype=np.uint32).astype(np.uint8)
                                .reshape(40, 4, 4, 3), np.arange(40))
  make = lambda **kw: input_pipeline.train_dataset(
      source, input_pipeline.Augment(3), global_batch=kw.get('batch', 8),
      seed=kw.get('seed', 0), workers=kw.get('workers', 0), prefetch=3)
  straight = take(make(), 12)  # 2.4 epochs.
  for stop in (4, 5, 9):  # Epoch 0 ends after step 5, epoch 1 after step 10.
    for workers in (0, 2):
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
  aug = input_pipeline.Augment(32)
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
  center = input_pipeline.center_crop(datasets.digits('test', 36)[0][5], 32)
  np.testing.assert_array_equal(batches[0]['image'][5], center)


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
  want = input_pipeline.normalize(raw['image'], raw['lighting'], data.mean, data.divide,
                                  raw['flip'])
  np.testing.assert_allclose(host['image'], want, rtol=1e-6)
  on_device = input_pipeline.normalize(*(jax.numpy.asarray(raw[k]) for k in ('image',
                                                                           'lighting')),
                                       data.mean, data.divide, jax.numpy.asarray(raw['flip']))
  np.testing.assert_allclose(np.asarray(on_device), want, rtol=1e-6)


def test_image_folder_and_prepared_sources_through_the_pipeline(folder, tmp_path):
  folder_config = data_config(source='folder', path=str(folder), eval_split='validation',
                              mean='rgb')
  batch = take(input_pipeline.create(folder_config).train, 1)[0]
  assert batch['image'].shape == (16, 32, 32, 3) and set(batch['label']) <= {0, 1, 2}
  prepare.prepare('folder', str(folder), str(tmp_path / 'p'), size=36, workers=1,
                  progress=False)
  prepared = input_pipeline.create(data_config(source='prepared', path=str(tmp_path / 'p'),
                                               eval_split='validation'))
  assert prepared.mean.shape == (32, 32, 3) and prepared.eval_examples == 6
  assert take(prepared.train, 1)[0]['image'].shape == (16, 32, 32, 3)


def test_prepare_from_tfds(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=6):
    meta = prepare.prepare('tfds', str(tmp_path), str(tmp_path / 'out'), size=40,
                           tfds_name='imagenet2012', workers=1, progress=False)
  assert len(meta['classes']) == 1000 and meta['splits']['train']['count'] == 6
  src = datasets.PreparedSource(str(tmp_path / 'out'), 'train')
  assert src[0][0].shape == (40, 40, 3) and 0 <= src[0][1] < 1000


def test_prepare_refuses_to_resume_with_other_settings(folder, tmp_path):
  out = str(tmp_path / 'p')
  prepare.prepare('folder', str(folder), out, size=32, shard_size=4, workers=1, progress=False)
  for kw, what in ((dict(shard_size=5), '--shard_size'), (dict(fmt='raw'), '--format'),
                   (dict(size=40), '--size')):
    args = dict(size=32, shard_size=4, workers=1, progress=False) | kw
    with pytest.raises(prepare.PrepareError, match=f'different {what}'):
      prepare.prepare('folder', str(folder), out, **args)


def test_prepared_lighting_uses_the_metadatas_eigenvectors(folder, tmp_path):
  """Noise covariance = 0.1^2 x the training pixels' covariance from the metadata."""
  meta = prepare.prepare('folder', str(folder), str(tmp_path / 'p'), size=36, workers=1,
                         progress=False)
  c = data_config(source='prepared', path=str(tmp_path / 'p'), eval_split='validation')
  data = input_pipeline.create(c)
  aug = input_pipeline.Augment(32, eigval=data.stats.eigval, eigvec=data.stats.eigvec)
  rng = np.random.default_rng(0)
  draws = np.stack([aug.lighting(rng) for _ in range(30000)])
  want = 0.01 * np.asarray(meta['rgb_covariance'])
  np.testing.assert_allclose(np.cov(draws.T), want, atol=0.03 * np.abs(want).max())


def test_tfds_data_source_reads_through_the_pipeline(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=20):
    config = data_config(source='tfds', path=str(tmp_path),
                         tfds_name='imagenet2012', eval_split='validation', mean='rgb')
    data = input_pipeline.create(config)
    batch = take(data.train, 1)[0]
  assert batch['image'].shape == (16, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert ((0 <= batch['label']) & (batch['label'] < 1000)).all()
  assert len(data.stats.classes) == 1000


@pytest.mark.parametrize('overrides,message', [
    (dict(source='webdataset'), 'data.source'),
    (dict(source='prepared', path='/no/such/dir'), 'data.path: no such directory'),
    (dict(source='prepared', path=''), 'needs a path'),
    (dict(mean='median'), 'data.mean'),
    (dict(lighting_std=-1.0), 'data.lighting_std'),
    (dict(image_size=28), 'do not fit'),
])
def test_bad_data_config_is_a_one_line_error(overrides, message):
  with pytest.raises(datasets.DataError, match=message) as e:
    input_pipeline.create(data_config(**overrides))
  assert '\n' not in str(e.value)


def test_an_unprepared_directory_is_reported(tmp_path):
  with pytest.raises(datasets.DataError, match='not a prepared dataset'):
    input_pipeline.create(data_config(source='prepared', path=str(tmp_path)))
