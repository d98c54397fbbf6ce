"""predict: the top classes of your own image files, by name, and its command line."""
import numpy as np
import pytest

from alexnet_jax import datasets
from alexnet_jax import inference
from alexnet_jax import predict
from alexnet_jax import preprocess
import helpers


@pytest.fixture(scope='module')
def digit_photos(trained_run, tmp_path_factory):
  """Two test digits saved as 144px JPEG photos that the run, briefly trained, classifies
  right with a clear margin under 1 and 10 views, read as predict reads them:
  [(path, label)]."""
  trained = inference.load(str(trained_run[0]))
  source, _ = datasets.open_source(trained.config.data, 'test')
  folder = tmp_path_factory.mktemp('digits')
  photos = []
  for i in range(128):
    image, label = source[i]
    path = folder / f'digit_{i}_{label}.jpg'
    path.write_bytes(helpers.jpeg(np.kron(image, np.ones((4, 4, 1), np.uint8))))
    whole = predict.read(str(path), trained.preprocessing)[None]
    margins = []
    for views, x in ((1, preprocess.center_crop(whole[0], trained.crop)[None]),
                     (10, whole)):
      x = np.concatenate([x, x])  # Two rows: one per device of the data axis.
      p = np.asarray(trained.probabilities(views)(x))[0]
      margins.append(p[label] - np.max(np.delete(p, label)))
    if min(margins) > 0.01:
      photos.append((str(path), str(label)))
    if len(photos) == 2:
      return photos
  raise AssertionError('the trained run classifies fewer than 2 of 128 digits clearly right')


def test_predict_names_the_top_classes_and_skips_unreadable_files(trained_run, digit_photos,
                                                                 tmp_path):
  trained = inference.load(str(trained_run[0]))
  broken = tmp_path / 'broken.jpg'
  broken.write_bytes(b'\xff\xd8 not really a jpeg')
  (good, label), (other, other_label) = digit_photos
  paths = [good, str(broken), str(tmp_path / 'missing.png'), other, good]
  lines = predict.predict(trained, paths, top=5)
  assert len(lines) == 5 and lines[0] == lines[4]
  assert lines[1].startswith(f'{broken}: cannot read (')
  assert lines[2].startswith(f'{tmp_path}/missing.png: cannot read (')
  for line, want in ((lines[0], label), (lines[3], other_label)):
    names = line.split(': ', 1)[1].split(', ')
    assert len(names) == 5 and names[0].split()[0] == want, line  # The right digit first.
    probs = [float(n.split()[1]) for n in names]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3


@pytest.mark.slow
def test_predict_command_line(trained_run, digit_photos, tmp_path):
  (good, label), _ = digit_photos
  ok = helpers.run_python('-m', 'alexnet_jax.predict', f'--workdir={trained_run[0]}',
                          '--top=3', '--views=10', good)
  assert ok.returncode == 0 and not helpers.library_lines(ok.stderr), ok.stderr[-3000:]
  record, line = ok.stdout.strip().splitlines()
  assert record.startswith('preprocessing: data: shorter side to '), record  # The run's record.
  assert line.startswith(f'{good}: {label} ') and line.count(', ') == 2, line
  # A missing file: the others are still predicted, and the exit status says one failed.
  missing = helpers.run_python('-m', 'alexnet_jax.predict', f'--workdir={trained_run[0]}',
                               good, str(tmp_path / 'absent.jpg'))
  assert missing.returncode == 1 and missing.stdout.count(f'{good}: {label} ') == 1
  assert missing.stderr.strip().splitlines()[-1] == 'error: 1 of 2 files could not be read'
