"""Where the run's numbers go: TensorBoard through tensorboardX, each step once after a
resume, tags grouped; metrics.jsonl cut back to the resumed step."""
import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alexnet_jax import writers


def read_tensorboard(directory):
  events = EventAccumulator(str(directory), size_guidance={'scalars': 0, 'images': 0})
  events.Reload()
  return events


def test_a_resumed_run_shows_each_step_once_under_grouped_tags(tmp_path):
  """Steps 1-8 written, the run killed and resumed from its step-5 checkpoint: every reader
  of the event files and of metrics.jsonl sees steps 1-8 once, the resumed values for 6-8."""
  first = writers.Writer(str(tmp_path))
  for step in range(1, 9):
    first.write(step, {'train_loss': 10.0 + step, 'lr': 0.01})
  first.write(8, {'val_top1_error': 0.5})
  first.close()
  again = writers.Writer(str(tmp_path), resume_step=5)
  for step in range(6, 9):
    again.write(step, {'train_loss': 20.0 + step, 'lr': 0.01})
  again.write(8, {'val_top1_error': 0.25, 'data/bad_examples': 3})
  again.image('val/conv1_kernels', np.zeros((8, 8, 3), np.uint8), 8)
  again.text('config', 'recipe small', 5)
  again.close()
  events = read_tensorboard(tmp_path / 'tensorboard')
  loss = [(e.step, e.value) for e in events.Scalars('train/loss')]
  assert loss == [(s, 10.0 + s) for s in range(1, 6)] + [(s, 20.0 + s) for s in range(6, 9)]
  assert [(e.step, e.value) for e in events.Scalars('val/top1_error')] == [(8, 0.25)]
  assert {'train/lr', 'data/bad_examples'} <= set(events.Tags()['scalars'])
  assert events.Tags()['images'] == ['val/conv1_kernels']
  rows = [l for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [__import__('json').loads(r)['step'] for r in rows] == [1, 2, 3, 4, 5, 6, 7, 8, 8]


def test_tags_are_grouped():
  assert [writers.tensorboard_tag(k) for k in (
      'train_loss', 'val_top1_error', 'final_1view_top5_error', 'lr', 'images_per_s',
      'data/bad_examples')] == ['train/loss', 'val/top1_error', 'final/1view_top5_error',
                                'train/lr', 'train/images_per_s', 'data/bad_examples']


def test_the_progress_bar_shows_the_newest_validation_error_at_once(capsys):
  """The last epoch's evaluation comes after its last step: the bar shows it, not the one
  before."""
  progress = writers.Progress(total=4)
  progress.update(4, {'loss': 0.5, 'top1_error': 0.25})
  progress.show_eval({'top1_error': 0.125})
  progress.close()
  assert 'val_err=0.125' in capsys.readouterr().err.replace('\r', '\n').splitlines()[-1]
