"""The README's first command, as a user runs it."""
import json
import subprocess
import sys


def test_main_runs_the_default_job(tmp_path):
  """The default job, cut to 2 short epochs: it trains, evaluates and reports."""
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', f'--workdir={tmp_path / "run"}',
       '--config.num_epochs=2', '--config.steps_per_epoch=4'],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'final: 1-view top-1 error' in result.stdout
  assert '1,796,458' in result.stdout  # The digits net's parameters, from the layer table.
  final = json.load(open(tmp_path / 'run' / 'final_metrics.json'))
  assert final['step'] == 8 and final['1view_top1_error'] < 0.9  # Better than chance.


def test_main_reports_a_bad_config_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', '--config.model.activation=gelu'],
      capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      "error: model.activation: must be 'relu' or 'tanh', got 'gelu'")
  assert 'Traceback' not in result.stderr
