"""The README's first command, as a user runs it."""
import json
import os
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


def test_main_restarts_itself_with_huge_pages_unless_told_otherwise():
  """The command re-execs itself with the same arguments and glibc.malloc.hugetlb=1, once;
  a GLIBC_TUNABLES the user set is left alone."""
  probe = ('import os; from alexnet_jax import main; '
           'os.execve = lambda exe, argv, env: print(argv[1:], env["GLIBC_TUNABLES"]); '
           'main.reexec_with_huge_pages(); print("no re-exec")')
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  run = lambda env: subprocess.run([sys.executable, '-c', probe, '--flag'], env=env,
                                   capture_output=True, text=True, timeout=120).stdout
  assert run(env).splitlines()[0] == f"{['-c', probe, '--flag']} glibc.malloc.hugetlb=1"
  assert run({**env, 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}).strip() == 'no re-exec'
