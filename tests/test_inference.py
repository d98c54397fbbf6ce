"""Loading a trained model (a work directory, one checkpoint, or a weights file) with what it
needs to see images as its run did; the 1- and 10-view probabilities evaluate and predict use."""
import jax
import numpy as np
import pytest

import alexnet_jax
from alexnet_jax import datasets
from alexnet_jax import evaluate
from alexnet_jax import inference
from alexnet_jax import weights
import helpers


def test_a_work_directory_and_its_checkpoints_load(trained_run):
  workdir, _ = trained_run
  newest = inference.load(str(workdir))
  assert not newest.net.spec.dropout_inverted  # Outputs scaled by 0.5 at test time (s2.8).
  assert newest.classes == tuple(str(i) for i in range(10)) and newest.crop == 32
  assert newest.source == f'{workdir}/checkpoints/40'
  first = inference.load(str(workdir / 'checkpoints' / '20'))
  assert first.source == f'{workdir}/checkpoints/20'
  x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  probs = [np.asarray(inference.probabilities_fn(m, 1)(x)) for m in (newest, first)]
  assert not np.allclose(probs[0], probs[1])  # Two different steps of training.
  with pytest.raises(ValueError, match='is neither a work directory'):
    inference.load(str(workdir / 'metrics.jsonl'))


def test_ten_views_are_the_softmax_averaged_over_ten_crops_cut_by_hand(trained_run):
  trained = inference.load(str(trained_run[0]))
  source, _ = datasets.open_source(trained.config.data, 'test')
  whole = np.stack([source[i][0] for i in range(8)])  # (8, 36, 36, 3)
  c, s = trained.crop, whole.shape[1]
  corners = [(0, 0), (0, s - c), (s - c, 0), (s - c, s - c), ((s - c) // 2, (s - c) // 2)]
  crops = [whole[:, t:t + c, l:l + c] for t, l in corners]
  crops += [x[:, :, ::-1] for x in crops]  # Horizontal reflections.
  by_hand = 0
  for crop in crops:
    x = (crop.astype(np.float32) - trained.mean) / trained.divide
    by_hand = by_hand + jax.nn.softmax(trained.net(x)) / 10
  ours = inference.probabilities_fn(trained, 10)(whole)  # What evaluate and predict use.
  np.testing.assert_allclose(ours, by_hand, rtol=1e-5, atol=1e-7)


def test_imported_weights_evaluate_like_the_checkpoint(trained_run, tmp_path):
  trained = inference.load(str(trained_run[0]))
  path = str(tmp_path / 'digits_net.npz')  # Caffe-blob layout, groups=2 (weights.py).
  weights.export_state_dict(trained.net, path)
  imported = inference.load(path, config=trained.config)
  assert evaluate.evaluate([imported], progress=False) | {'models': 0} == \
      evaluate.evaluate([trained], progress=False) | {'models': 0}


def test_torchvision_layout_weights_give_the_nets_own_probabilities(tmp_path):
  config = helpers.train_config()
  config.model = helpers.small_config('owt', image_size=32)
  net = alexnet_jax.create_model(config.model, seed=3)
  path = str(tmp_path / 'owt.pth')  # torchvision's keys and layout.
  weights.export_state_dict(net, path)
  imported = inference.load(path, config=config)
  x = np.random.default_rng(0).integers(0, 256, (4, 36, 36, 3), dtype=np.uint8)
  center = x[:, 2:34, 2:34]
  by_hand = jax.nn.softmax(net((center.astype(np.float32) - imported.mean) / imported.divide))
  np.testing.assert_allclose(inference.probabilities_fn(imported, 1)(center), by_hand,
                             rtol=1e-5, atol=1e-7)


def test_weights_files_need_a_config_and_must_exist(tmp_path):
  with pytest.raises(ValueError, match='needs --config'):
    inference.load(str(tmp_path / 'w.npz'))
  with pytest.raises(ValueError, match='no such file'):
    inference.load(str(tmp_path / 'w.npz'), config=helpers.train_config())


def test_imagenet_classes_are_named_in_words():
  wnids = tuple(sorted(f'n{i:08d}' for i in range(1000)))
  names = inference.class_names(wnids)
  assert len(names) == 1000 and names[281] == 'tabby'  # n02123045, tfds labels.txt order.
  assert inference.class_names(('cat', 'dog')) == ('cat', 'dog')
