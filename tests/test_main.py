"""The README's first command, as a user runs it."""
import subprocess
import sys


def test_main_runs_the_default_job(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', f'--workdir={tmp_path / "run"}',
       '--config.batch_size=32'], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert '1,796,458' in result.stdout  # The digits net's parameters, from the summary table.
  assert '359 test images through the input pipeline and the net' in result.stdout


def test_main_reports_a_bad_config_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', '--config.model.activation=gelu'],
      capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      "error: model.activation: must be 'relu' or 'tanh', got 'gelu'")
  assert 'Traceback' not in result.stderr
