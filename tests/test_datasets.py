"""The sources grain reads (digits, prepared, folder, tfds): what they return, their
statistics, and one-line errors for data that cannot work."""
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from alexnet_jax import datasets
from alexnet_jax import images
from alexnet_jax import input_pipeline
from alexnet_jax import prepare
import helpers
from helpers import data_config


def test_digits_are_scikit_learns_split_once_and_rendered_as_rgb():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  raw = load_digits()
  # Every digit rendered by hand: 0-16 scaled to 0-255, bilinear to 36x36, grey as RGB.
  rendered = np.stack([np.asarray(Image.fromarray((x * 255 / 16).astype(np.uint8)).resize(
      (36, 36), Image.BILINEAR)) for x in raw.images]).reshape(len(raw.images), -1)
  which = {}
  for split, count in (('train', 1438), ('test', 359)):
    x, y = datasets.digits(split, 36)
    assert x.shape == (count, 36, 36, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    index = {row.tobytes(): k for k, row in enumerate(rendered)}
    which[split] = [index[image[..., 0].tobytes()] for image in x]  # Each is one digit ...
    np.testing.assert_array_equal(y, raw.target[which[split]])  # ... with its label.
  assert sorted(which['train'] + which['test']) == list(range(1797))  # Disjoint, complete.


def test_folder_and_prepared_sources_read_the_same_images(photo_folder, tmp_path):
  config = data_config(source='folder', path=str(photo_folder), image_size=36)
  folder, stats = datasets.open_source(config.data, 'train')
  assert stats.classes == helpers.FOLDER_CLASSES and len(folder) == 18
  files = sorted((photo_folder / 'train').glob('*/*.jpg'))
  for i in (0, 7, 17):
    image, label = folder[i]
    np.testing.assert_array_equal(image, images.load_resized(files[i].read_bytes(), 36))
    assert helpers.FOLDER_CLASSES[label] == files[i].parent.name
  prepare.prepare('folder', str(photo_folder), str(tmp_path / 'p'), size=36, fmt='raw',
                  workers=1, progress=False)
  prepared, pstats = datasets.open_source(
      data_config(source='prepared', path=str(tmp_path / 'p'), image_size=36).data, 'train')
  assert len(prepared) == 18 and pstats.mean_image.shape == (36, 36, 3)
  for i in range(18):
    np.testing.assert_array_equal(prepared[i][0], folder[i][0])
    assert prepared[i][1] == folder[i][1]


def test_tfds_data_source_reads_the_records(tmp_path):
  with tfds.testing.mock_data(num_examples=20):
    config = data_config(source='tfds', path=str(tmp_path), tfds_name='imagenet2012',
                         eval_split='validation', mean='rgb')
    source, stats = datasets.open_source(config.data, 'train')
    records = tfds.data_source('imagenet2012', split='train', data_dir=str(tmp_path))
    for i in (0, 19):
      image, label = source[i]
      assert label == int(records[i]['label'])
      np.testing.assert_array_equal(image, images.array_resized(np.asarray(records[i]['image']),
                                                                36))
    batch = next(iter(input_pipeline.create(config).train))
    # Its per-channel mean (data.mean='rgb') and lighting come from its own images (all 20
    # sampled here), never ImageNet's constants assumed.
    own = datasets.Stats.of_images(stats.classes, np.stack([source[i][0] for i in range(20)]))
  assert stats.mean_rgb == pytest.approx(own.mean_rgb) and stats.eigval == pytest.approx(
      own.eigval)
  assert stats.mean_rgb != pytest.approx(datasets.IMAGENET_MEAN_RGB, abs=1)
  assert len(stats.classes) == 1000 and stats.classes[281] == 'n02123045'
  assert batch['image'].shape == (16, 32, 32, 3) and batch['image'].dtype == np.uint8


def test_prepared_lighting_uses_the_metadatas_eigenvectors(photo_folder, tmp_path):
  """Noise covariance = 0.1^2 x the training pixels' covariance from the metadata."""
  meta = prepare.prepare('folder', str(photo_folder), str(tmp_path / 'p'), size=36, workers=1,
                         progress=False)
  c = data_config(source='prepared', path=str(tmp_path / 'p'), eval_split='validation')
  data = input_pipeline.create(c)
  rng = np.random.default_rng(0)
  draws = np.stack([data.preprocessing.lighting(rng) for _ in range(30000)])
  want = 0.01 * np.asarray(meta['rgb_covariance'])
  np.testing.assert_allclose(np.cov(draws.T), want, atol=0.03 * np.abs(want).max())


@pytest.mark.parametrize('overrides,message', [
    (dict(source='webdataset'), 'data.source'),
    (dict(source='prepared', path='/no/such/dir'), 'data.path: no such directory'),
    (dict(source='prepared', path=''), 'needs a path'),
    (dict(mean='median'), 'data.mean'),
    (dict(lighting_std=-1.0), 'data.lighting_std'),
    (dict(image_size=28), 'do not fit'),
    (dict(preprocessing='torchvision'), "'digits' source holds central squares"),
    (dict(preprocessing='jpeg'), 'data.preprocessing: must be one of'),
])
def test_bad_data_config_is_a_one_line_error(overrides, message):
  with pytest.raises(datasets.DataError, match=message) as e:
    input_pipeline.create(data_config(**overrides))
  assert '\n' not in str(e.value)


def test_an_unprepared_directory_is_reported(tmp_path):
  with pytest.raises(datasets.DataError, match='not a prepared dataset'):
    input_pipeline.create(data_config(source='prepared', path=str(tmp_path)))


# ---- Bad examples ----------------------------------------------------------------------------


def test_damaged_prepared_records_are_bad_examples_named_by_shard_record_and_file(
    photo_folder, tmp_path):
  out = tmp_path / 'p'
  prepare.prepare('folder', str(photo_folder), str(out), size=32, shard_size=4, workers=1,
                  progress=False)
  name = helpers.damage_record(out, 'train', 5)  # Shard 1, record 1.
  truncated = out / 'train-00003.array_record'
  with open(truncated, 'r+b') as f:
    f.truncate(truncated.stat().st_size // 2)
  source = datasets.PreparedSource(str(out), 'train')
  bad = {}
  for i in range(len(source)):
    try:
      source[i]
    except datasets.BadExample as e:
      bad[i] = str(e)
  assert sorted(bad) == [5, 12, 13, 14, 15]
  assert bad[5].startswith(f'train-00001.array_record record 1 ({name}): ')
  assert bad[12].startswith('train-00003.array_record record 0 (train/space/space_0.jpg): '
                            'the shard does not open')


def test_garbage_empty_truncated_and_oversized_files_are_bad_examples(tmp_path):
  root = helpers.make_folder(tmp_path / 'f')
  cat = root / 'train' / 'cat'
  files = {'garbage.jpg': b'not an image at all' * 50, 'empty.jpg': b'',
           'truncated.jpg': (cat / 'cat_0.jpg').read_bytes()[:2000],
           'bomb.png': helpers.png_bomb(), 'bomb.jpg': helpers.jpeg_bomb()}
  for name, data in files.items():
    (cat / name).write_bytes(data)
  config = data_config(source='folder', path=str(root), eval_split='validation')
  source, _ = datasets.open_source(config.data, 'train')
  why = {}
  for i in range(len(source)):
    try:
      source[i]
    except datasets.BadExample as e:
      why[e.where.rsplit('/', 1)[1]] = e.why
  assert why.keys() == files.keys()
  assert why['empty.jpg'] == 'empty file' and 'not an image file' in why['garbage.jpg']
  assert 'truncated' in why['truncated.jpg']
  assert why['bomb.png'].startswith('declares 40000x40000 pixels, more than the 100,000,000')


@pytest.mark.slow
def test_decompression_bombs_are_refused_before_decoding(tmp_path):
  """PNG and JPEG files declaring 40,000 x 40,000 pixels (4.8 GB decoded) in a folder source
  and in prepare: refused from their headers, in a process that grows by far less than one
  decoded bomb past its imports."""
  root = helpers.make_folder(tmp_path / 'f')
  (root / 'train' / 'cat' / 'bomb.png').write_bytes(helpers.png_bomb())
  (root / 'train' / 'cat' / 'bomb.jpg').write_bytes(helpers.jpeg_bomb())
  script = f'''
import json, re, time
from alexnet_jax import datasets, prepare, preprocess
# This process's own peak (VmHWM): ru_maxrss would also count the pytest process it was
# forked from.
peak_mb = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) / 1024
start = time.perf_counter()
imported_mb = peak_mb()
source = datasets.FolderSource({str(root)!r}, 'train', preprocess.Preprocessing(size=32, crop=28))
bad = []
for i in range(len(source)):
  try:
    source[i]
  except datasets.BadExample as e:
    bad.append(e.where)
meta = prepare.prepare('folder', {str(root)!r}, {str(tmp_path / 'p')!r}, size=32, workers=1,
                       progress=False)
print(json.dumps({{'bad': bad, 'skipped': meta['splits']['train']['skipped_files'],
                   'seconds': time.perf_counter() - start, 'imported_mb': imported_mb,
                   'peak_mb': peak_mb()}}))
'''
  run = helpers.run_python('-c', script)
  assert run.returncode == 0, run.stderr[-3000:]
  got = __import__('json').loads(run.stdout.strip().splitlines()[-1])
  assert sorted(p.rsplit('/', 1)[1] for p in got['bad']) == ['bomb.jpg', 'bomb.png']
  assert len(got['skipped']) == 2 and all('declares 40000x40000' in s for s in got['skipped'])
  # Past its imports, the process grew by far less than one decoded bomb (4,800 MB).
  assert got['peak_mb'] - got['imported_mb'] < 1000, got


def test_a_run_stops_only_past_the_readmes_floor_of_bad_examples():
  """README: more than data.max_bad_fraction of the split, and at least 10 bad examples (or
  half of a split under 20), stop a run; fewer never do."""
  stops = lambda bad, examples, fraction=0.001: bad > datasets.bad_example_limit(examples,
                                                                                fraction)
  assert not stops(9, 1_281_167 // 1000) and stops(10, 1_000)  # 0.1% of 1,000 is 1: floor 10.
  assert not stops(1281, 1_281_167) and stops(1282, 1_281_167)  # 0.1% of ImageNet's train.
  assert not stops(5, 11) and stops(6, 11)  # A split under 20: half of it.
  assert not stops(9, 40, fraction=0.2) and stops(10, 40, fraction=0.2)  # The larger of two.
