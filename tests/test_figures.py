"""The paper's figures: figure 1 (epochs to 25% training error, ReLU against tanh) and figure 3
(the conv1 kernels by tower)."""
import json

import numpy as np
import pytest

import figure1_relu_tanh as fig1
import helpers
import figure3_kernels as fig3


def test_figure1_epochs_to_reach_the_target(tmp_path):
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    for step, err in enumerate([0.9, 0.7, 0.5, 0.3, 0.2, 0.1], start=1):  # 2 steps an epoch
      f.write(json.dumps({'step': step, 'train_top1_error': err}) + '\n')
      if step % 2 == 0:
        f.write(json.dumps({'step': step, 'val_top1_error': 0.5, 'epoch': step / 2}) + '\n')
  errors = fig1.epoch_errors(str(tmp_path))
  assert errors.tolist() == pytest.approx([0.8, 0.4, 0.15])
  assert fig1.epochs_to_reach(errors, 0.25) == pytest.approx(2 + 0.15 / 0.25)
  assert fig1.epochs_to_reach(errors, 0.05) is None


def test_figure3_puts_tower_0_above_tower_1():
  kernel = np.zeros((2, 3, 3, 3, 20), np.float32)
  kernel[0, 0, 0, 0, :] = 1.0  # Tower 0: a red top-left pixel in every kernel.
  kernel[1, 0, 0, 2, :] = 1.0  # Tower 1: a blue one.
  grid = fig3.kernel_grid(kernel, per_row=16, zoom=2, gap=2, tower_gap=8)
  rows_per_tower = 2  # 20 kernels at 16 a row.
  assert grid.shape == (2 * rows_per_tower * 8 + 8 + 2, 16 * 8 + 2, 3)
  assert tuple(grid[2, 2]) == (255, 0, 0)  # Tower 0's first kernel, top left.
  top_of_tower1 = 2 + rows_per_tower * 8 + 8
  assert tuple(grid[top_of_tower1, 2]) == (0, 0, 255)


@pytest.mark.slow
def test_the_figure_scripts_write_only_where_they_are_told():
  """Without --out / --output they refuse (one usage line) rather than write into the
  repository: the tracked experiments/figure1 is updated only on purpose."""
  for script, line in (('figure1_relu_tanh.py', 'error: give --out'),
                       ('figure3_kernels.py', 'error: give --workdir and --output')):
    run = helpers.run_python(f'experiments/{script}', '--workdir=x' if 'figure3' in script
                             else '--seed=0')
    assert run.returncode == 2 and run.stderr.splitlines() == [line], run.stderr[-2000:]
