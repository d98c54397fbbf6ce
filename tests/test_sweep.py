"""The ablation sweep: its changes build valid nets, finished runs are skipped, and the table
compares against the baseline and the paper (issue 7)."""
import csv
import json
import os

import pytest

import alexnet_jax
import sweep

DIGITS = sweep.DEFAULT_CONFIG


@pytest.mark.parametrize('name', list(sweep.ABLATIONS))
def test_every_ablation_builds_a_valid_net(name):
  config = sweep.load_config(DIGITS, ['model.width=0.125', 'num_epochs=3'])
  assert config.num_epochs == 3 and config.model.width == 0.125
  sweep.ABLATIONS[name].change(config)
  spec = alexnet_jax.ModelSpec.from_config(config.model)
  if name == 'one_tower_half':
    assert spec.towers == 1 and spec.conv_filters == (48, 128, 192, 192, 128)
  if name == 'no_pca_lighting':
    assert config.data.lighting_std == 0


def write_run(out, ablation, seed, top1, top5, one_view_top1=None):
  workdir = os.path.join(out, ablation, f'seed{seed}')
  os.makedirs(workdir)
  with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
    json.dump({'10view_top1_error': top1, '10view_top5_error': top5,
               '1view_top1_error': one_view_top1 or top1, '1view_top5_error': top5}, f)


def test_table_compares_with_the_baseline_and_the_paper(tmp_path):
  out = str(tmp_path)
  write_run(out, 'baseline', 0, 0.40, 0.18, one_view_top1=0.42)
  write_run(out, 'baseline', 1, 0.42, 0.20, one_view_top1=0.44)
  write_run(out, 'no_lrn', 0, 0.43, 0.20)
  write_run(out, 'no_lrn', 1, 0.45, 0.22)
  rows = sweep.summarize(out, ['baseline', 'no_lrn', 'tanh'], 2)  # tanh has not run yet.
  by_name = {r['ablation']: r for r in rows}
  assert set(by_name) == {'baseline', 'no_lrn', 'one_view'}
  assert by_name['no_lrn']['top1'] == pytest.approx(44.0)
  assert by_name['no_lrn']['top1_std'] == pytest.approx(1.4142, abs=1e-4)
  assert by_name['no_lrn']['top1_change'] == pytest.approx(3.0)
  assert by_name['no_lrn']['paper_top1_change'] == 1.4
  assert by_name['one_view']['top1_change'] == pytest.approx(2.0)
  table = sweep.write_table(rows, out)
  assert '| no_lrn: no local response normalization | 2 | 44.00 +- 1.41 |' in table
  assert list(csv.DictReader(open(tmp_path / 'ablations.csv')))[1]['ablation'] == 'no_lrn'
  sweep.plot(rows, out)
  assert (tmp_path / 'ablations.png').stat().st_size > 1000


def test_a_finished_run_is_not_trained_again(tmp_path):
  write_run(str(tmp_path), 'tanh', 0, 0.5, 0.2)
  metrics = sweep.run_one(DIGITS, [], 'tanh', 0, str(tmp_path / 'tanh' / 'seed0'))
  assert metrics['10view_top1_error'] == 0.5  # Read back, not retrained.
