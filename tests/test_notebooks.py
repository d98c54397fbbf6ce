"""The notebooks run top to bottom on a CPU, in their tiny setting, and are kept without
outputs (issue 7)."""
import nbformat
import pytest
from nbclient import NotebookClient

import helpers

NOTEBOOKS = str(helpers.REPO / 'notebooks')


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize('name', ['quickstart', 'imagenet_colab', 'ablations'])
def test_notebook_runs_on_cpu(name, tmp_path, monkeypatch):
  # The notebooks keep their work under tempfile.gettempdir(), where a rerun resumes: give
  # each run its own, so that nothing from an earlier version's run is picked up.
  monkeypatch.setenv('TMPDIR', str(tmp_path))
  monkeypatch.setenv('PYTHONPATH', helpers.python_env()['PYTHONPATH'])
  path = f'{NOTEBOOKS}/{name}.ipynb'
  notebook = nbformat.read(path, as_version=4)
  assert all(not cell.get('outputs') and not cell.get('execution_count')
             for cell in notebook.cells if cell.cell_type == 'code'), 'strip the outputs'
  # The kernel inherits this process's environment: CPU, 4 fake devices, the jit cache.
  NotebookClient(notebook, timeout=500, kernel_name='python3',
                 resources={'metadata': {'path': NOTEBOOKS}}).execute()
  text = '\n'.join(o.get('text', '') for c in notebook.cells for o in c.get('outputs', []))
  assert 'tiny setting: True' in text
