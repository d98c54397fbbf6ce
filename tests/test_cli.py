"""Every command's usage mistakes, as a new user makes them: one line, exit status 2, nothing
made; `-h` and `--help` print the help and exit 0."""
import pytest

import helpers

pytestmark = pytest.mark.slow


def test_every_commands_usage_mistakes_are_one_line_with_exit_2(tmp_path):
  a_file = tmp_path / 'notes.txt'
  a_file.write_text('not a work directory')
  sweep_out = tmp_path / 'sweep'
  cases = {  # args -> the one line on stderr.
      ('-m', 'alexnet_jax.main', '--config=configs/folders.py:small'):
          "error: --config: no such file 'configs/folders.py' (did you mean "
          "'configs/folder.py'?)",
      ('-m', 'alexnet_jax.main', f'--workdir={a_file}'):
          f"error: --workdir: '{a_file}' is a file, not a directory",
      ('-m', 'alexnet_jax.evaluate'):
          'error: give exactly one of --workdir, --checkpoint, --weights, --ensemble',
      ('-m', 'alexnet_jax.predict', f'--workdir={tmp_path}'): 'error: give one or more image files',
      ('-m', 'alexnet_jax.features', f'--workdir={tmp_path}'): 'error: give --folder',
      ('-m', 'alexnet_jax.prepare', f'--input={tmp_path}'): 'error: give --input and --output',
      # The README's ImageNet sweep on a machine without the data: refused before any run.
      ('experiments/sweep.py', '--config=configs/paper.py:cuda_convnet',
       f'--config.data.path={tmp_path}/in1k', f'--out={sweep_out}'):
          f"error: sweep: ablation baseline: data.path: no such directory '{tmp_path}/in1k'",
  }
  procs = {args: helpers.Process(*args, log=tmp_path / f'{i}.log')  # Side by side: imports.
           for i, args in enumerate(cases)}
  outputs = helpers.wait_all(list(procs.values()), 300, 'the commands')
  for (args, line), proc, out in zip(cases.items(), procs.values(), outputs):
    assert proc.returncode == 2 and out.strip().splitlines() == [line], (args, out[-2000:])
  assert not sweep_out.exists()


def test_help_exits_0():
  for flag in ('-h', '--help'):
    result = helpers.run_python('-m', 'alexnet_jax.prepare', flag)
    assert result.returncode == 0 and '--input:' in result.stdout, result.stderr[-2000:]
    assert not result.stderr
