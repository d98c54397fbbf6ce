"""The notebooks run top to bottom on a CPU, in their tiny setting, show what they promise
(a net above chance, its figures, the sweep's table), and are kept without outputs."""
import re

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
  outputs = [o for c in notebook.cells for o in c.get('outputs', [])]
  text = '\n'.join(o.get('text', '') for o in outputs)
  assert 'tiny setting: True' in text
  assert not [o for o in outputs if o.get('output_type') == 'error'], text[-3000:]
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  if name == 'quickstart':  # Trains the digits: above chance (90% error), and draws.
    final = re.search(r'final: 1-view top-1 error ([\d.]+).*10-view top-1 error ([\d.]+)', text)
    assert final and max(map(float, final.groups())) < 0.9, text[-3000:]
    assert len(images) >= 2, 'the curves and the conv1 kernels'
  elif name == 'imagenet_colab':  # Trains, then resumes a finished run: nothing retrained.
    assert text.count('final: 1-view top-1 error') >= 1, text[-3000:]
  else:  # The sweep's table and its plot.
    tables = [o['data']['text/markdown'] for o in outputs if 'text/markdown' in o.get('data', {})]
    assert tables and '| baseline: the config as it is | 1 |' in tables[0], tables
    assert len(images) == 1
