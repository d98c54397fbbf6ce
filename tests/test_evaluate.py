"""evaluate: the paper's table (1 and 10 views) for one model or an ensemble, and its command
line."""
import json

import jax
import numpy as np
import pytest

from alexnet_jax import datasets
from alexnet_jax import evaluate
from alexnet_jax import inference
from alexnet_jax import sharding
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


@pytest.mark.slow
def test_evaluate_command_prints_the_table_and_writes_json(trained_run, tmp_path):
  out = tmp_path / 'eval.json'
  result = helpers.run_python('-m', 'alexnet_jax.evaluate', f'--workdir={trained_run[0]}',
                              f'--output={out}', '--noprogress')
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| views | top-1 error (%) | top-5 error (%) |' in result.stdout
  assert '| 10 (paper, 1 CNN, ILSVRC-2012 val) | 40.7 | 18.2 |' in result.stdout
  saved = json.load(open(out))
  assert saved['preprocessing'][0].startswith('data: shorter side to 36, central square')
  assert f'preprocessing of {saved["models"][0]}: {saved["preprocessing"][0]}' in result.stdout
  assert saved['1view']['top1_error'] == pytest.approx(trained_run[1]['1view_top1_error'])
  bad = helpers.run_python('-m', 'alexnet_jax.evaluate', f'--workdir={tmp_path}/nowhere')
  assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith(
      'error: checkpoint: ') and 'Traceback' not in bad.stderr
