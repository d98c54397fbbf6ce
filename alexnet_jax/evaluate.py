"""The paper's table for trained models: top-1 and top-5 error with 1 and 10 views.

  python -m alexnet_jax.evaluate --workdir=DIR                # newest good checkpoint
  python -m alexnet_jax.evaluate --checkpoint=DIR/checkpoints/STEP
  python -m alexnet_jax.evaluate --weights=alexnet.pth --config=configs/paper.py:owt
  python -m alexnet_jax.evaluate --ensemble RUN1 RUN2 RUN3 RUN4 RUN5  # the 5-CNN row (or A,B,..)

Views (paper s4): 1 is the center crop; 10 are the four corner crops and the center crop
and their reflections, the softmax averaged. An ensemble averages the models' softmax
(s6: "averaging the predictions of five similar CNNs"). The data streams through once, in
global batches split over every device; the result is printed as a table and written as JSON.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from alexnet_jax import cli
from alexnet_jax import datasets
from alexnet_jax import evaluation
from alexnet_jax import inference
from alexnet_jax import input_pipeline
from alexnet_jax import sharding

CENTER = 4  # ten_views' index of the center crop.
PAPER_ROWS = {  # docs/paper.md s5: ILSVRC-2012 validation, 10 views, (top-1, top-5) %.
    1: ('paper, 1 CNN', 40.7, 18.2), 5: ('paper, 5 CNNs', 38.1, 16.4),
    7: ('paper, 7 CNNs', 36.7, 15.4)}


@jax.jit
def _error_counts(model_views, labels, mask):
  """(2, 3): top-1 errors, top-5 errors and examples of the models' averaged softmax, with 1
  and with 10 views, summed over the valid rows. All on device, in one program."""
  views = sum(model_views) / len(model_views)  # (B, 10, classes)
  counts = []
  for probs in (views[:, CENTER], views.mean(1)):
    sums = evaluation.error_sums(probs, labels, mask, probs.shape[-1])
    counts.append(jnp.stack([sums['top1_error'], sums['top5_error'], sums['count']]))
  return jnp.stack(counts)


def evaluate(models: list[inference.Trained], *, split: str | None = None,
             batch_size: int | None = None, progress: bool = True) -> dict:
  """Top-1/top-5 error with 1 and 10 views of the softmax averaged over `models`, on `split`
  of the first model's data config (default: its eval split)."""
  first = models[0]
  for m in models[1:]:
    if (m.crop, len(m.classes)) != (first.crop, len(first.classes)):
      raise ValueError(f'ensemble: {m.source} takes {m.crop}px crops over {len(m.classes)} '
                       f'classes, {first.source} {first.crop}px over {len(first.classes)}')
  config = first.config
  split = split or config.data.eval_split
  mesh = first.net.mesh
  data_parallel = sharding.data_size(mesh)
  # Rounded up to a multiple of the data-parallel size: every device gets whole rows.
  batch_size = -(-(batch_size or config.batch_size) // data_parallel) * data_parallel
  source, _ = datasets.open_source(config.data, split)
  rows = sharding.process_batch_rows(mesh, batch_size)
  dataset = input_pipeline.eval_dataset(source, global_batch=batch_size, crop=None,
                                        workers=config.data.workers,
                                        prefetch=config.data.prefetch, rows=rows)
  view_fns = [inference.probabilities_fn(m, 10, average=False) for m in models]
  counts = np.zeros((2, 3))
  bar = tqdm.tqdm(total=-(-len(source) // batch_size), desc='evaluating', unit='batch',
                  disable=not progress or jax.process_index() > 0)
  for batch in input_pipeline.global_batches(dataset, mesh, batch_size):
    model_views = tuple(fn(batch['image']) for fn in view_fns)
    counts += jax.device_get(_error_counts(model_views, batch['label'], batch['mask']))
    bar.update()
  bar.close()
  result = {'models': [m.source for m in models], 'split': split}
  for views, (top1, top5, count) in zip((1, 10), counts):
    result[f'{views}view'] = {'top1_error': top1 / count, 'top5_error': top5 / count}
  result['examples'] = int(counts[0, 2])
  return result


def table(result: dict) -> str:
  """The result as the paper's table, with the paper's row for as many CNNs beside it."""
  n = len(result['models'])
  lines = ['| views | top-1 error (%) | top-5 error (%) |', '|---|---|---|']
  for views in (1, 10):
    r = result[f'{views}view']
    lines.append(f'| {views} | {100 * r["top1_error"]:.2f} | {100 * r["top5_error"]:.2f} |')
  if n in PAPER_ROWS:
    name, top1, top5 = PAPER_ROWS[n]
    lines.append(f'| 10 ({name}, ILSVRC-2012 val) | {top1} | {top5} |')
  return '\n'.join(lines)


# ---- Command line ----------------------------------------------------------------------------

def define_flags():
  """The command line's flags (defined only when run as a program, so that tests and
  notebooks can import this module beside the others)."""
  inference.define_model_flags(ensemble=True)
  flags.DEFINE_string('split', None, 'The split to evaluate (default: the config\'s eval split).')
  flags.DEFINE_integer('batch_size', 0, 'Global batch (default: the config\'s).')
  flags.DEFINE_string('output', None, 'JSON file (default: evaluation.json in the work '
                      'directory, or here).')
  flags.DEFINE_bool('progress', True, 'Show a progress bar.')


def main(argv):
  f = flags.FLAGS
  if len(argv) > 1 and not f.ensemble:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    models = inference.models_from_flags(more=argv[1:])
    result = evaluate(models, split=f.split, batch_size=f.batch_size or None,
                      progress=f.progress)
  except (ValueError, inference.checkpoint_lib.CheckpointError) as e:
    raise SystemExit(f'error: {e}') from None
  output = f.output or os.path.join(f.workdir or '.', 'evaluation.json')
  with open(output, 'w') as fp:
    json.dump(result, fp, indent=1)
  print(f'{len(models)} model(s) on {result["examples"]} {result["split"]} examples '
        f'({", ".join(result["models"])}):\n{table(result)}\nwritten to {output}')
  sys.stdout.flush()


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
