"""The ablation sweep: its ablations are the layer files' changes, every run's config is
checked before any run, finished runs are skipped, and the table compares with the paper only
where the sweep's net is the one the paper's figure changes."""
import csv
import json
import os

import pytest

import alexnet_jax
from alexnet_jax import recipes
import helpers
import sweep


def base_json(spec='digits.py', *overrides):
  return helpers.load_config(spec, *overrides).to_json()


@pytest.mark.parametrize('name', list(sweep.ABLATIONS))
def test_every_ablation_builds_a_valid_net(name):
  config = sweep.run_config(base_json('digits.py', 'model.width=0.125', 'num_epochs=3'),
                            name, seed=1)
  assert config.num_epochs == 3 and config.model.width == 0.125 and config.seed == 1
  alexnet_jax.ModelSpec.from_config(config.model)  # Validates.
  for field, value in sweep.ABLATIONS[name].changes.items():
    section, _, key = field.partition('.')
    assert tuple(config[section][key]) == value if isinstance(value, tuple) else \
        config[section][key] == value, field


def test_on_run_145_the_ablations_are_their_layer_files():
  """Run 145's net plus an ablation's changes is the layer file's net, field for field."""
  base = base_json('paper.py:cuda_convnet')
  for name in ('no_lrn', 'no_overlap', 'one_tower', 'no_cross_tower', 'no_conv4'):
    ours = sweep.run_config(base, name, 0)
    assert ours.model.to_json() == recipes.config(name).model.to_json(), name
    assert sweep.comparable(helpers.load_config('paper.py:cuda_convnet'), sweep.ABLATIONS[name])
  digits = helpers.load_config('digits.py')
  assert not any(sweep.comparable(digits, a) for a in sweep.ABLATIONS.values())


def test_a_run_that_cannot_work_stops_the_sweep_before_it_starts(tmp_path):
  result = helpers.run_python('experiments/sweep.py', f'--out={tmp_path}', '--seeds=1',
                              '--config.model.image_size=8', timeout=120)
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: sweep: ablation baseline: model.image_size: 8 is too small for the net')
  assert not os.listdir(tmp_path)  # Nothing was trained.
  typo = helpers.run_python('experiments/sweep.py', f'--out={tmp_path}',
                            '--config.optim.base_rate=0.1', timeout=120)
  assert typo.returncode == 2 and typo.stderr.strip().splitlines() == [
      "error: optim.base_rate: no such config field (did you mean 'optim.base_lr'?)"]


def write_run(out, ablation, seed, top1, top5, one_view_top1=None):
  workdir = os.path.join(out, ablation, f'seed{seed}')
  os.makedirs(workdir)
  with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
    json.dump({'10view_top1_error': top1, '10view_top5_error': top5,
               '1view_top1_error': one_view_top1 or top1, '1view_top5_error': top5}, f)


@pytest.mark.parametrize('spec,paper', [('paper.py:cuda_convnet', True), ('digits.py', False)])
def test_table_compares_with_the_baseline_and_where_it_applies_the_paper(tmp_path, spec,
                                                                        paper):
  out = str(tmp_path)
  write_run(out, 'baseline', 0, 0.40, 0.18, one_view_top1=0.42)
  write_run(out, 'baseline', 1, 0.42, 0.20, one_view_top1=0.44)
  write_run(out, 'no_lrn', 0, 0.43, 0.20)
  write_run(out, 'no_lrn', 1, 0.45, 0.22)
  config = helpers.load_config(spec)
  rows = sweep.summarize(out, ['baseline', 'no_lrn', 'tanh'], 2, config)  # tanh: not run.
  by_name = {r['ablation']: r for r in rows}
  assert set(by_name) == {'baseline', 'no_lrn', 'one_view'}
  assert by_name['no_lrn']['top1'] == pytest.approx(44.0)
  assert by_name['no_lrn']['top1_std'] == pytest.approx(1.4142, abs=1e-4)
  assert by_name['no_lrn']['top1_change'] == pytest.approx(3.0)
  assert by_name['one_view']['top1_change'] == pytest.approx(2.0)
  table = sweep.write_table(rows, out)
  if paper:  # Run 145 against run 148: the layer file the paper's figure came from.
    assert by_name['no_lrn']['paper_top1_change'] == 1.4
    assert '| +1.40 | +1.20 | the paper: cuda-convnet layers-148.cfg' in table
  else:
    assert by_name['no_lrn']['paper_top1_change'] is None
    assert ("| n/a | n/a | not comparable: the paper changes cuda_convnet's full net, this "
            "sweep small's |") in table
  assert '| no_lrn: no local response normalization | 2 | 44.00 +- 1.41 |' in table
  assert list(csv.DictReader(open(tmp_path / 'ablations.csv')))[1]['ablation'] == 'no_lrn'
  sweep.plot(rows, out)
  assert (tmp_path / 'ablations.png').stat().st_size > 1000


def test_a_finished_run_is_not_trained_again(tmp_path):
  write_run(str(tmp_path), 'tanh', 0, 0.5, 0.2)
  metrics = sweep.run_one(base_json(), 'tanh', 0, str(tmp_path / 'tanh' / 'seed0'))
  assert metrics['10view_top1_error'] == 0.5  # Read back, not retrained.
