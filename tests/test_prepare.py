"""prepare: ILSVRC tars, image folders and tfds converted once into the prepared format, with
the training split's pixel statistics; resumable, with one-line errors."""
import io
import os
import signal
import tarfile
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from alexnet_jax import datasets
from alexnet_jax import images
from alexnet_jax import prepare
from alexnet_jax import records
import helpers
from helpers import cmyk_jpeg, jpeg, photos, png


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
  labels = datasets.imagenet_labels()
  assert len(labels) == 1000 and labels == sorted(labels)
  assert labels.index('n02123045') == 281
  assert datasets.imagenet_validation_labels()[:3] == ['n01751748', 'n09193705', 'n02105855']


@pytest.mark.slow
def test_prepare_ilsvrc_end_to_end(ilsvrc, tmp_path, caplog):
  out = tmp_path / 'prepared'
  meta = prepare.prepare('ilsvrc', str(ilsvrc), str(out), size=64, shard_size=2, workers=2,
                         progress=False)
  train = meta['splits']['train']
  assert train['count'] == 5 and train['skipped'] == 2
  assert sorted(s.split(':')[0] for s in train['skipped_files']) == [
      'n01440764/n01440764_3.JPEG', 'n02123045/n02123045_3.JPEG']
  assert any('n02123045_3.JPEG' in r.getMessage() for r in caplog.records)
  index = {w: i for i, w in enumerate(datasets.imagenet_labels())}
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
  assert np.load(out / records.MEAN_IMAGE).shape == (64, 64, 3)


@pytest.mark.parametrize('fmt', ['jpeg', 'raw'])
def test_prepare_folder_statistics_and_records(photo_folder, tmp_path, fmt):
  out = tmp_path / fmt
  meta = prepare.prepare('folder', str(photo_folder), str(out), size=48, fmt=fmt, shard_size=4,
                         workers=1, progress=False)
  assert meta['classes'] == ['cat', 'coffee', 'space']
  assert meta['splits']['train']['count'] == 18 and meta['splits']['validation']['count'] == 6
  src = datasets.PreparedSource(str(out), 'train')
  loaded = np.stack([src[i][0] for i in range(len(src))])
  want = np.stack([images.load_resized((photo_folder / 'train' / c / f'{c}_{i}.jpg').read_bytes(),
                                       48) for c in helpers.FOLDER_CLASSES for i in range(6)])
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
    np.testing.assert_allclose(np.load(out / records.MEAN_IMAGE), want.mean(0), rtol=1e-5)
  vec, val = np.asarray(meta['eigvec']), np.asarray(meta['eigval'])
  np.testing.assert_allclose(vec @ np.diag(val) @ vec.T, meta['rgb_covariance'], rtol=1e-6)


def test_prepare_resumes_without_redoing_finished_shards(photo_folder, tmp_path):
  out = tmp_path / 'resume'
  prepare.prepare('folder', str(photo_folder), str(out), size=32, shard_size=4, workers=1,
                  progress=False)
  done = records.stats_path(str(out), 'train', 0)
  lost = records.stats_path(str(out), 'train', 2)
  os.utime(done, (1, 1))  # Mark a finished shard: a rerun must leave it alone.
  os.remove(lost)  # An interrupted run: this shard never finished.
  meta = prepare.prepare('folder', str(photo_folder), str(out), size=32, shard_size=4, workers=1,
                         progress=False)
  assert os.stat(done).st_mtime == 1 and os.path.exists(lost)
  assert meta['splits']['train']['count'] == 18


def test_prepare_input_errors_are_one_line(photo_folder, tmp_path):
  with pytest.raises(prepare.PrepareError, match='no such path'):
    prepare.prepare('folder', str(tmp_path / 'absent'), str(tmp_path / 'o'), progress=False)
  os.makedirs(tmp_path / 'f' / 'train' / 'empty')
  with pytest.raises(prepare.PrepareError, match='holds no images') as e:
    prepare.prepare('folder', str(tmp_path / 'f'), str(tmp_path / 'o'), progress=False)
  assert '\n' not in str(e.value)
  with pytest.raises(prepare.PrepareError, match='neither ILSVRC2012_img_train.tar'):
    prepare.prepare('ilsvrc', str(tmp_path / 'f'), str(tmp_path / 'o'), progress=False)


@pytest.mark.slow
def test_prepare_command_line(photo_folder, tmp_path):
  ok = helpers.run_python('-m', 'alexnet_jax.prepare', f'--input={photo_folder}',
                          f'--output={tmp_path / "cli"}', '--size=32', '--workers=2')
  assert ok.returncode == 0 and not helpers.library_lines(ok.stderr), ok.stderr
  assert 'train: 18 images in 1 shards, 0 skipped' in ok.stdout
  assert datasets.PreparedSource(str(tmp_path / 'cli'), 'validation')[5][1] == 2  # 'space'
  bad = helpers.run_python('-m', 'alexnet_jax.prepare', f'--input={tmp_path / "absent"}',
                           f'--output={tmp_path / "x"}')
  assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
      f'error: --input: no such path {str(tmp_path / "absent")!r}']


def test_prepare_from_tfds(tmp_path):
  with tfds.testing.mock_data(num_examples=6):
    meta = prepare.prepare('tfds', str(tmp_path), str(tmp_path / 'out'), size=40,
                           tfds_name='imagenet2012', workers=1, progress=False)
    record = tfds.data_source('imagenet2012', split='train', data_dir=str(tmp_path))[0]
  assert len(meta['classes']) == 1000 and meta['splits']['train']['count'] == 6
  image, label = datasets.PreparedSource(str(tmp_path / 'out'), 'train')[0]
  assert label == int(record['label'])
  want = images.array_resized(np.asarray(record['image']), 40)
  # The mock's images are noise, the hardest case for JPEG: within its error on average.
  assert image.shape == want.shape and np.abs(image.astype(float) - want).mean() < 25


def test_prepare_refuses_to_resume_with_other_settings(photo_folder, tmp_path):
  out = str(tmp_path / 'p')
  prepare.prepare('folder', str(photo_folder), out, size=32, shard_size=4, workers=1,
                  progress=False)
  for kw, what in ((dict(shard_size=5), '--shard_size'), (dict(fmt='raw'), '--format'),
                   (dict(size=40), '--size')):
    args = dict(size=32, shard_size=4, workers=1, progress=False) | kw
    with pytest.raises(prepare.PrepareError, match=f'different {what}'):
      prepare.prepare('folder', str(photo_folder), out, **args)




@pytest.mark.slow
def test_prepare_killed_with_sigkill_resumes_to_the_same_records(tmp_path):
  """kill -9 while shards are being written: the rerun keeps the finished shards (untouched),
  redoes the partial one, and the result reads exactly as an uninterrupted conversion."""
  root = tmp_path / 'photos'
  rng = np.random.default_rng(0)
  for split, count in (('train', 40), ('val', 4)):
    for c in ('a', 'b'):
      os.makedirs(root / split / c)
      for i in range(count // 2):  # Large noisy PNGs: slow enough to kill halfway.
        (root / split / c / f'{i}.png').write_bytes(
            png(rng.integers(0, 256, (700, 700, 3), dtype=np.uint8)))
  args = ('--source=folder', f'--input={root}', '--size=32', '--shard_size=2', '--workers=1')
  proc = helpers.Process('-m', 'alexnet_jax.prepare', f'--output={tmp_path / "killed"}', *args,
                         log=tmp_path / 'log.txt')
  second = records.stats_path(str(tmp_path / 'killed'), 'train', 1)
  deadline = time.monotonic() + 120
  while not os.path.exists(second) and proc.returncode is None and time.monotonic() < deadline:
    time.sleep(0.01)
  os.kill(proc.pid, signal.SIGKILL)
  proc.popen.wait()
  done = sorted((tmp_path / 'killed').glob('*.stats.npz'))
  assert not (tmp_path / 'killed' / records.METADATA).exists() and 2 <= len(done) < 22
  stamps = {p: p.stat().st_mtime_ns for p in done}
  kw = dict(size=32, shard_size=2, workers=1, progress=False)
  resumed = prepare.prepare('folder', str(root), str(tmp_path / 'killed'), **kw)
  assert {p: p.stat().st_mtime_ns for p in done} == stamps  # Finished shards kept as they were.
  fresh = prepare.prepare('folder', str(root), str(tmp_path / 'fresh'), **kw)
  assert resumed == fresh
  for split in ('train', 'validation'):
    a, b = (datasets.PreparedSource(str(tmp_path / d), split) for d in ('killed', 'fresh'))
    for i in range(len(b)):
      np.testing.assert_array_equal(a[i][0], b[i][0])
      assert a[i][1] == b[i][1]
