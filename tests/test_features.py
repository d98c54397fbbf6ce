"""features: fc7 activations of a folder of images, retrieval by them (figure 4), and its
command line."""
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import features
from alexnet_jax import inference
from alexnet_jax import preprocess
import helpers


def test_fc7_features_and_nearest_neighbour_grid(trained_run, photo_folder, tmp_path):
  trained = inference.load(str(trained_run[0]))
  paths = features.image_files(str(photo_folder))
  twin = tmp_path / 'twin.jpg'  # An exact copy of image 5: its nearest neighbour, at 0.
  twin.write_bytes(open(paths[5], 'rb').read())
  paths = paths + [str(twin)]
  feats, kept = features.extract(trained, paths, batch_size=8)
  assert kept == paths and feats.shape == (len(paths), trained.net.spec.fc_widths[1])
  # The rows are the net's fc7 of each image's center crop, as evaluation prepares it.
  record = trained.preprocessing
  crop = preprocess.center_crop(record.load(open(paths[3], 'rb').read()), record.crop)
  x = preprocess.normalize(crop[None], record, record.arrays())
  np.testing.assert_allclose(feats[3], np.asarray(trained.net.features(
      np.concatenate([x, x]), 'fc7'))[0], rtol=1e-5, atol=1e-6)
  assert features.nearest(feats, [len(paths) - 1], 1)[0, 0] == 5
  grid = tmp_path / 'grid.png'
  queries = [0, len(paths) - 1]
  features.render_grid(paths, [[q, *features.nearest(feats, [q], 3)[0]] for q in queries],
                       str(grid))
  assert Image.open(grid).size == (4 * 100 + 12, 2 * 100 + 4)


@pytest.mark.slow
def test_features_command_line(trained_run, photo_folder, tmp_path):
  out = tmp_path / 'features.npz'
  ok = helpers.run_python('-m', 'alexnet_jax.features', f'--workdir={trained_run[0]}',
                          f'--folder={photo_folder}', f'--output={out}',
                          f'--grid={tmp_path / "grid.png"}', '--queries=2', '--neighbours=3')
  assert ok.returncode == 0 and not helpers.library_lines(ok.stderr), ok.stderr[-3000:]
  saved = np.load(out)
  paths = features.image_files(str(photo_folder))
  assert saved['paths'].tolist() == paths
  assert saved['labels'].tolist() == [p.split('/')[-2] for p in paths]
  want, _ = features.extract(inference.load(str(trained_run[0])), paths)
  np.testing.assert_allclose(saved['features'], want, rtol=1e-5, atol=1e-6)
  assert want.shape == (24, 512)
  assert Image.open(tmp_path / 'grid.png').size == (4 * 100 + 12, 2 * 100 + 4)
  assert f'512-d fc7 features of 24 images -> {out}' in ok.stdout
