"""Loading a trained model (a work directory, one checkpoint, or a weights file) with what it
needs to see images as its run did; the 1- and 10-view probabilities evaluate and predict use."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from alexnet_jax import checkpoint
from alexnet_jax import datasets
from alexnet_jax import evaluate
from alexnet_jax import inference
from alexnet_jax import predict
from alexnet_jax import preprocess
from alexnet_jax import train
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
  probs = [np.asarray(m.probabilities(1)(x)) for m in (newest, first)]
  assert not np.allclose(probs[0], probs[1])  # Two different steps of training.
  with pytest.raises(ValueError, match='is neither a work directory'):
    inference.load(str(workdir / 'metrics.jsonl'))


def test_ten_views_are_the_softmax_averaged_over_ten_crops_cut_by_hand(trained_run):
  trained = inference.load(str(trained_run[0]))
  record = trained.preprocessing
  assert record.kind == 'data' and np.shape(record.mean) == (32, 32, 3) and record.std == (64,)
  source, _ = datasets.open_source(trained.config.data, 'test')
  whole = np.stack([source[i][0] for i in range(8)])  # (8, 36, 36, 3)
  c, s = trained.crop, whole.shape[1]
  corners = [(0, 0), (0, s - c), (s - c, 0), (s - c, s - c), ((s - c) // 2, (s - c) // 2)]
  crops = [whole[:, t:t + c, l:l + c] for t, l in corners]
  crops += [x[:, :, ::-1] for x in crops]  # Horizontal reflections.
  by_hand = 0
  for crop in crops:
    x = preprocess.normalize(crop, record, record.arrays())
    by_hand = by_hand + jax.nn.softmax(trained.net(x)) / 10
  ours = trained.probabilities(10)(whole)  # What evaluate and predict use.
  np.testing.assert_allclose(ours, by_hand, rtol=1e-5, atol=1e-7)


def test_exported_weights_predict_and_evaluate_like_the_checkpoint(trained_run, tmp_path,
                                                                   photo_folder):
  """The .npz and the record beside it give the checkpoint's probabilities, exactly."""
  trained = inference.load(str(trained_run[0]))
  path = str(tmp_path / 'digits_net.npz')  # Caffe-blob layout, groups=2 (weights.py).
  weights.export_state_dict(trained.net, path, preprocessing=trained.preprocessing)
  assert os.path.isfile(tmp_path / 'digits_net.preprocessing.json')
  imported = inference.load(path, config=trained.config)
  assert imported.preprocessing == trained.preprocessing
  assert evaluate.evaluate([imported], progress=False) | {'models': 0} == \
      evaluate.evaluate([trained], progress=False) | {'models': 0}
  files = sorted(str(p) for p in photo_folder.glob('val/*/*.jpg'))
  assert predict.predict(imported, files, views=10) == predict.predict(trained, files, views=10)
  # Without the record beside it, the config's own (the digits at hand) is the same one.
  os.remove(tmp_path / 'digits_net.preprocessing.json')
  assert inference.load(path, config=trained.config).preprocessing == trained.preprocessing


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


def old_schema(config) -> str:
  """`config` as alexnet_jax saved it before recipes and preprocessing records."""
  d = json.loads(config.to_json())
  model = d['model']
  for field in ('init', 'weights_layout', 'conv_padding', 'pool_ceil_mode'):
    model.pop(field)
  model.update(variant=d.pop('recipe'), fc_units=model['fc_units'][0], pytorch_init=False)
  for field in ('preprocessing', 'fit', 'lighting_rescale'):
    d['data'].pop(field)
  d['checkpoint_keep'], d['checkpoint_every_epochs'] = d['checkpoint']['keep'], 1
  for section in ('checkpoint', 'eval'):
    d.pop(section)
  return json.dumps(d)


def test_a_checkpoint_from_before_records_loads_or_is_refused_in_one_line(trained_run,
                                                                          tmp_path):
  """Its config is read in today's schema and its record rebuilt from the mean.npy its run
  wrote; without that file (and its data gone), it is refused in one line."""
  trained = inference.load(str(trained_run[0]))
  _, state, _ = train.init_state(trained.net, trained.config.optim)
  elsewhere = helpers.set_fields(ml_collections.ConfigDict(trained.config.to_dict()), {
      'data.source': 'prepared', 'data.path': str(tmp_path / 'gone')})
  ckpts = checkpoint.Checkpoints(str(tmp_path / 'old' / 'checkpoints'))
  ckpts.save(40, state, {'config': old_schema(elsewhere), 'num_classes': 10,
                         'classes': list(trained.classes)})
  ckpts.close()
  np.save(tmp_path / 'old' / 'mean.npy', trained.preprocessing.mean)
  old = inference.load(str(tmp_path / 'old'))
  assert old.config.recipe == 'small' and old.config.model.fc_units == (4096, 4096)
  same = ('resize', 'size', 'crop', 'channels', 'unit_scale', 'std')
  assert all(getattr(old.preprocessing, f) == getattr(trained.preprocessing, f) for f in same)
  x = np.random.default_rng(0).integers(0, 256, (4, 36, 36, 3), dtype=np.uint8)
  np.testing.assert_array_equal(old.probabilities(10)(x), trained.probabilities(10)(x))
  os.remove(tmp_path / 'old' / 'mean.npy')
  with pytest.raises(ValueError, match='predates saved preprocessing records') as e:
    inference.load(str(tmp_path / 'old'))
  assert '\n' not in str(e.value)
