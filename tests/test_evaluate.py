"""evaluate: the paper's table (1 and 10 views) for one model or an ensemble, and its command
line."""
import json
import shutil

import jax
import numpy as np
import pytest

from alexnet_jax import datasets
from alexnet_jax import evaluate
from alexnet_jax import inference
from alexnet_jax import sharding
from alexnet_jax import weights
import helpers


def test_evaluate_reproduces_the_runs_own_evaluation(trained_run):
  workdir, final = trained_run
  result = evaluate.evaluate([inference.load(str(workdir))], progress=False)
  assert result['examples'] == 359 and result['split'] == 'test'
  for views in (1, 10):
    for k in ('top1_error', 'top5_error'):
      assert result[f'{views}view'][k] == pytest.approx(final[f'{views}view_{k}'], abs=1e-9)


def test_a_batch_smaller_than_the_data_axis_still_evaluates(trained_run):
  """--batch_size=1 on a mesh with 2 data rows: rounded up to 2, never to 0."""
  trained = inference.load(str(trained_run[0]))
  assert sharding.data_size(trained.net.mesh) == 2
  small = evaluate.evaluate([trained], batch_size=1, progress=False)
  assert small == evaluate.evaluate([trained], batch_size=64, progress=False)


def test_ensemble_averages_the_models_softmax(trained_run):
  workdir, _ = trained_run
  models = [inference.load(str(workdir / 'checkpoints' / '20')), inference.load(str(workdir))]
  result = evaluate.evaluate(models, progress=False)
  source, _ = datasets.open_source(models[0].config.data, 'test')
  whole = np.stack([source[i][0] for i in range(len(source))])
  labels = np.asarray([source[i][1] for i in range(len(source))])
  mesh = models[0].net.mesh
  probs = []
  for start in range(0, len(whole), 64):  # Whole batches of 64 (the last padded).
    chunk = whole[start:start + 64]
    padded = np.concatenate([chunk, np.repeat(chunk[:1], 64 - len(chunk), 0)])
    x = jax.device_put(padded, sharding.named(mesh, sharding.BATCH))
    views = sum(np.asarray(m.probabilities(10, average=False)(x))
                for m in models) / 2
    probs.append(views[:len(chunk)].mean(1))
  probs = np.concatenate(probs)
  rank = (probs > probs[np.arange(len(labels)), labels][:, None]).sum(1)
  assert result['10view']['top1_error'] == pytest.approx((rank >= 1).mean(), abs=1e-9)
  assert result['10view']['top5_error'] == pytest.approx((rank >= 5).mean(), abs=1e-9)
  assert len(result['models']) == 2


def on_photos(run, path):
  """The model of `run`, to be evaluated on the photos at `path` (--config with a folder)."""
  return inference.load(str(run), config=helpers.load_config('folder.py:small',
                                                             f'data.path={path}'))


def test_evaluate_refuses_other_classes_and_matches_a_subset_by_name(
    small_photo_run, other_small_photos, small_photos, tmp_path, caplog):
  run = small_photo_run[0]
  with pytest.raises(ValueError, match=r"^evaluate: the data's classes \(astronaut, cells, "
                     r"galaxy\) are not the model's \(cat, coffee, space\): it has no "
                     r'astronaut, cells, galaxy; evaluate on images of its classes$'):
    evaluate.evaluate([on_photos(run, other_small_photos)], progress=False)
  two = shutil.copytree(small_photos, tmp_path / 'two')  # cat and space, not coffee.
  for split in ('train', 'val'):
    shutil.rmtree(two / split / 'coffee')
  caplog.set_level('INFO', logger='alexnet_jax')
  subset = evaluate.evaluate([on_photos(run, two)], progress=False)
  assert "evaluate: the data's 2 classes matched by name to 3 of the model's" in caplog.messages
  whole = evaluate.evaluate([inference.load(str(run))], progress=False)
  assert subset['examples'] == 4 and whole['examples'] == 6
  # Every space photo, the second class of two, is what the model calls space, its third.
  assert subset['1view']['top1_error'] <= whole['1view']['top1_error'] * 6 / 4


def test_split_names_and_defaults_are_those_of_training(small_photo_run, small_photos,
                                                        tmp_path):
  """`val` as the folder names it; the default is the split training evaluated, and on other
  data, as training chooses it (a folder with test/ alone evaluates test/)."""
  run = small_photo_run[0]
  assert evaluate.evaluate([inference.load(str(run))], split='val',
                           progress=False)['split'] == 'validation'
  test_only = shutil.copytree(small_photos, tmp_path / 'test_only')
  (test_only / 'val').rename(test_only / 'test')
  assert evaluate.evaluate([on_photos(run, test_only)], progress=False)['split'] == 'test'
  with pytest.raises(datasets.DataError, match=r"^--split: '.*' has no split 'validation'; "
                     r'it has test, train$'):
    evaluate.evaluate([on_photos(run, test_only)], split='val', progress=False)


def test_the_table_shows_the_papers_rows_for_imagenet_and_top5_past_five_classes():
  result = {'models': ['a'], '1view': {'top1_error': 0.5, 'top5_error': 0.0},
            '10view': {'top1_error': 0.25, 'top5_error': 0.0}, 'classes': 3,
            'imagenet': False}
  assert evaluate.table(result) == ('| views | top-1 error (%) |\n|---|---|\n| 1 | 50.00 |\n'
                                    '| 10 | 25.00 |')
  imagenet = evaluate.table(dict(result, classes=1000, imagenet=True)).splitlines()
  assert imagenet[0] == '| views | top-1 error (%) | top-5 error (%) |'
  assert imagenet[-1] == '| 10 (paper, 1 CNN, ILSVRC-2012 val) | 40.7 | 18.2 |'


@pytest.mark.slow
def test_evaluate_command_prints_the_table_and_writes_json(trained_run, tmp_path):
  out = tmp_path / 'eval.json'
  result = helpers.run_python('-m', 'alexnet_jax.evaluate', f'--workdir={trained_run[0]}',
                              f'--output={out}', '--noprogress')
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| views | top-1 error (%) | top-5 error (%) |' in result.stdout
  assert 'ILSVRC' not in result.stdout  # The paper's rows are for ImageNet models.
  assert not helpers.library_lines(result.stderr), result.stderr
  saved = json.load(open(out))
  assert saved['preprocessing'][0].startswith('data: shorter side to 34, central square')
  assert f'preprocessing of {saved["models"][0]}: {saved["preprocessing"][0]}' in result.stdout
  assert saved['1view']['top1_error'] == pytest.approx(trained_run[1]['1view_top1_error'])
  # The README's other forms, all in one ensemble: a work directory, one of its checkpoints
  # and the same net exported as a weights file (with its config). Three copies of one net
  # average to its own probabilities: the same errors. With -v 0, library lines show.
  trained = inference.load(str(trained_run[0]))
  weights.export_state_dict(trained.net, str(tmp_path / 'net.npz'),
                            preprocessing=trained.preprocessing)
  step = helpers.checkpoint_steps(trained_run[0])[-1]
  three = helpers.run_python(
      '-m', 'alexnet_jax.evaluate', '--ensemble', str(trained_run[0]),
      f'{trained_run[0]}/checkpoints/{step}', str(tmp_path / 'net.npz'),
      '--config=configs/digits.py', '--config.model.width=0.125', f'--output={out}',
      '--noprogress', '-v', '0')
  assert three.returncode == 0, three.stderr[-3000:]
  assert helpers.library_lines(three.stderr), three.stderr  # -v 0: the libraries' lines too.
  assert three.stdout.startswith('3 model(s) on 359 test examples:'), three.stdout
  saved = json.load(open(out))
  assert saved['models'][1:] == [f'{trained_run[0]}/checkpoints/{step}', str(tmp_path / 'net.npz')]
  for views in ('1view', '10view'):
    assert saved[views]['top1_error'] == pytest.approx(trained_run[1][f'{views}_top1_error'])
  bad = helpers.run_python('-m', 'alexnet_jax.evaluate', f'--workdir={tmp_path}/nowhere')
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      f"error: checkpoint: '{tmp_path}/nowhere' is neither a work directory (with "
      "checkpoints/) nor a checkpoint (checkpoints/STEP)"]
