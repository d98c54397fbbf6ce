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


def test_a_published_figure_is_set_beside_a_sweep_only_like_with_like():
  """Only the layer files' ILSVRC-2012 validation figures, on run 145's own net."""
  run_145 = helpers.load_config('paper.py:cuda_convnet')
  notes = {name: sweep.against_published(run_145, a) for name, a in sweep.ABLATIONS.items()}
  assert {n for n, note in notes.items() if note.startswith('like with like')} == {
      'no_lrn', 'no_overlap', 'no_cross_tower'}
  assert notes['one_tower'] == 'not like with like: the figure is on ILSVRC-2010 test'
  assert notes['no_conv4'] == notes['no_pca_lighting'] == (
      'not like with like: no layer file, so not this very change')
  assert notes['tanh'] == 'no published figure'
  digits = helpers.load_config('digits.py')
  assert sweep.against_published(digits, sweep.ABLATIONS['no_lrn']) == (
      "not like with like: the figure changes cuda_convnet's full net, this sweep small's")
  # The digits have no lighting to take away: that ablation would repeat the baseline.
  assert not sweep.changes_something(digits, sweep.ABLATIONS['no_pca_lighting'])
  assert sweep.changes_something(run_145, sweep.ABLATIONS['no_pca_lighting'])
  assert sweep.changes_something(digits, sweep.ABLATIONS['baseline'])


def test_the_paired_interval_on_known_numbers():
  """Differences 1, 2, 3 points: mean 2, sd 1, t(0.975, 2) = 4.3027: 2 +- 2.4841."""
  base = {0: 0.10, 1: 0.20, 2: 0.30}
  mean, low, high = sweep.paired_interval({0: 0.11, 1: 0.22, 2: 0.33}, base)
  assert mean == pytest.approx(2.0)
  assert (low, high) == pytest.approx((2 - 2.4841, 2 + 2.4841), abs=1e-4)
  # Pairs by seed, not by order; seeds only one side has are left out.
  assert sweep.paired_interval({2: 0.33, 0: 0.11, 1: 0.22, 5: 0.9}, base) == (mean, low, high)
  assert sweep.paired_interval({0: 0.5}, base) == (pytest.approx(40.0), None, None)


@pytest.mark.slow
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


@pytest.mark.parametrize('spec,like', [('paper.py:cuda_convnet', True), ('digits.py', False)])
def test_table_pairs_seeds_and_sets_a_figure_beside_ours_only_like_with_like(tmp_path, spec,
                                                                           like):
  out = str(tmp_path)
  for seed, (base, lrn, tanh) in enumerate([(0.40, 0.43, 0.38), (0.42, 0.45, 0.46),
                                            (0.30, 0.34, 0.35)]):
    write_run(out, 'baseline', seed, base, 0.18, one_view_top1=base + 0.02)
    write_run(out, 'no_lrn', seed, lrn, 0.20)
    write_run(out, 'tanh', seed, tanh, 0.20)
  config = helpers.load_config(spec)
  rows = sweep.summarize(out, ['baseline', 'no_lrn', 'tanh', 'no_dropout'], 3, config)
  by_name = {r['ablation']: r for r in rows}  # no_dropout: not run.
  assert list(by_name) == ['baseline', 'no_lrn', 'tanh', 'one_view']
  lrn = by_name['no_lrn']
  assert lrn['top1'] == pytest.approx(40.6667, abs=1e-4)
  assert lrn['top1_change'] == pytest.approx(10 / 3)  # 3, 3 and 4 points, paired.
  assert (lrn['top1_low'], lrn['top1_high']) == pytest.approx(
      (10 / 3 - 4.3027 * 0.57735 / 3 ** 0.5, 10 / 3 + 4.3027 * 0.57735 / 3 ** 0.5), abs=1e-3)
  assert lrn['top1_distinguishable'] and not by_name['tanh']['top1_distinguishable']
  assert by_name['one_view']['top1_change'] == pytest.approx(2.0)
  table = sweep.write_table(rows, out)
  assert ('| no_lrn: no local response normalization | 3 | 40.67 +- 5.86 | 20.00 +- 0.00 | '
          '+3.33 [+1.90, +4.77] yes | +2.00 [+2.00, +2.00] yes |') in table
  assert '| tanh: tanh instead of ReLU | 3 | 39.67 +- 5.69 |' in table
  assert '+1.40 / +1.20: the paper\'s text; run 148\'s log against run 145\'s' in table
  if like:  # Run 145 against run 148: the layer file the figure came from, same data.
    assert lrn['published_top1_change'] == 1.4
    assert table.splitlines()[3].endswith(
        '| like with like (same net; the figure is on ILSVRC-2012 validation) |')
  else:
    assert lrn['published_top1_change'] is None
    assert table.splitlines()[3].endswith(
        "| not like with like: the figure changes cuda_convnet's full net, this sweep "
        "small's |")
  assert list(csv.DictReader(open(tmp_path / 'ablations.csv')))[1]['ablation'] == 'no_lrn'
  sweep.plot(rows, out)
  assert (tmp_path / 'ablations.png').stat().st_size > 1000


def test_a_finished_run_is_not_trained_again(tmp_path):
  write_run(str(tmp_path), 'tanh', 0, 0.5, 0.2)
  metrics = sweep.run_one(base_json(), 'tanh', 0, str(tmp_path / 'tanh' / 'seed0'))
  assert metrics['10view_top1_error'] == 0.5  # Read back, not retrained.
