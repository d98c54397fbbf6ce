"""The paper's table for trained models: top-1 and top-5 error with 1 and 10 views.

  python -m alexnet_jax.evaluate --workdir=DIR                # newest good checkpoint
  python -m alexnet_jax.evaluate --checkpoint=DIR/checkpoints/STEP
  python -m alexnet_jax.evaluate --weights=alexnet.pth --config=configs/paper.py:owt
  python -m alexnet_jax.evaluate --ensemble RUN1 RUN2 RUN3 RUN4 RUN5  # the 5-CNN row (or A,B,..)

Views (paper s4): 1 is the center crop; 10 are the four corner crops and the center crop
and their reflections, the softmax averaged. An ensemble averages the models' softmax
(s6: "averaging the predictions of five similar CNNs"). The data streams through once, in
global batches split over every device; the result is printed as a table and written as JSON.

`--config=FILE --config.data.path=DIR` evaluates on other data, read at the model's own image
size and preprocessing. Its classes must be the model's, by name (a subset is matched by
name, and said); `--split` takes what the data has (`val` for a folder's val/), by default
the split training evaluated, or as training chooses for other data. The paper's rows are
shown beside ImageNet models only, and top-5 error only with more than five classes.
"""
from __future__ import annotations

import json
import logging
import os
import sys

from absl import app
from absl import flags
import jax
import tqdm

from alexnet_jax import cli
from alexnet_jax import datasets
from alexnet_jax import evaluation
from alexnet_jax import fitting
from alexnet_jax import inference
from alexnet_jax import input_pipeline
from alexnet_jax import sharding

log = logging.getLogger(__name__)
PAPER_ROWS = {  # docs/paper.md s5: ILSVRC-2012 validation, 10 views, (top-1, top-5) %.
    1: ('paper, 1 CNN', 40.7, 18.2), 5: ('paper, 5 CNNs', 38.1, 16.4),
    7: ('paper, 7 CNNs', 36.7, 15.4)}


def evaluate(models: list[inference.Trained], *, split: str | None = None,
             batch_size: int | None = None, progress: bool = True) -> dict:
  """Top-1/top-5 error with 1 and 10 views of the softmax averaged over `models`, on `split`
  of the first model's data config (default: its eval split), each model seeing the canvases
  through its own preprocessing record."""
  first = models[0]
  for m in models[1:]:
    same = (m.preprocessing.crop, m.preprocessing.resize, m.preprocessing.size, len(m.classes))
    if same != (first.preprocessing.crop, first.preprocessing.resize,
                first.preprocessing.size, len(first.classes)):
      raise ValueError(f'ensemble: {m.source} reads {m.preprocessing.crop}px crops of '
                       f'{m.preprocessing.resize} canvases over {len(m.classes)} classes, '
                       f'{first.source} {first.preprocessing.crop}px of '
                       f'{first.preprocessing.resize} ones over {len(first.classes)}')
  config = first.config
  available = datasets.available_splits(config.data)
  split = datasets.eval_split(split or config.data.eval_split, available,
                              default=None if split else fitting.DEFAULT_EVAL_SPLIT,
                              where=repr(config.data.path or config.data.source),
                              field='--split' if split else 'data.eval_split')
  mesh = first.net.mesh
  data_parallel = sharding.data_size(mesh)
  # Rounded up to a multiple of the data-parallel size: every device gets whole rows.
  batch_size = -(-(batch_size or config.batch_size) // data_parallel) * data_parallel
  source, stats = datasets.open_source(config.data, split)
  source = matched_classes(source, stats.classes, first.classes)
  rows = sharding.process_batch_rows(mesh, batch_size)
  dataset = input_pipeline.eval_dataset(source, global_batch=batch_size, crop=None,
                                        workers=config.data.workers,
                                        prefetch=config.data.prefetch, rows=rows)
  bar = tqdm.tqdm(total=-(-len(source) // batch_size), desc='evaluating', unit='batch',
                  disable=not progress or jax.process_index() > 0)
  counts, skipped = evaluation.ensemble_errors(
      [(m.net, m.preprocessing) for m in models], dataset, mesh, batch_size,
      on_batch=bar.update, bad_examples=input_pipeline.BadExamples(source, None))
  bar.close()
  result = {'models': [m.source for m in models], 'split': split,
            'classes': len(first.classes),
            'imagenet': inference.imagenet_classes(first.classes),
            'preprocessing': [m.preprocessing.summary() for m in models]}
  for views, (top1, top5, count) in zip((1, 10), counts):
    result[f'{views}view'] = {'top1_error': top1 / count, 'top5_error': top5 / count}
  result['examples'] = int(counts[0, 2])
  result['skipped'] = skipped  # Bad examples, not evaluated (named on stderr).
  return result


def matched_classes(source, data_classes, model_classes):
  """`source` with its labels as the model's: itself when the classes are the model's; a
  subset of them matched by name (said in a line); a ValueError naming the classes the model
  does not have otherwise. A model whose class names are unknown (a weights file without its
  data: '0', '1', ...) is only held to their count."""
  data_classes, model_classes = tuple(data_classes), tuple(model_classes)
  if data_classes == model_classes:
    return source
  if model_classes == tuple(map(str, range(len(model_classes)))):
    if len(data_classes) != len(model_classes):
      raise ValueError(f'evaluate: the data has {len(data_classes)} classes, the model '
                       f'{len(model_classes)}')
    return source
  missing = [c for c in data_classes if c not in model_classes]
  if missing:
    raise ValueError(
        f'evaluate: the data\'s classes ({fitting.classes_line(data_classes)}) are not the '
        f'model\'s ({fitting.classes_line(model_classes)}): it has no '
        f'{fitting.classes_line(missing)}; evaluate on images of its classes')
  log.info('evaluate: the data\'s %d classes matched by name to %d of the model\'s',
           len(data_classes), len(model_classes))
  return datasets.Relabeled(source, [model_classes.index(c) for c in data_classes])


def table(result: dict) -> str:
  """The result as the paper's table; for ImageNet models the paper's row for as many CNNs
  beside it; top-5 error only with more than five classes (with fewer it is always 0)."""
  top5 = result['classes'] > 5
  lines = (['| views | top-1 error (%) | top-5 error (%) |', '|---|---|---|'] if top5 else
           ['| views | top-1 error (%) |', '|---|---|'])
  for views in (1, 10):
    r = result[f'{views}view']
    lines.append(f'| {views} | {100 * r["top1_error"]:.2f} |' +
                 (f' {100 * r["top5_error"]:.2f} |' if top5 else ''))
  n = len(result['models'])
  if result['imagenet'] and n in PAPER_ROWS:
    name, top1, top5_paper = PAPER_ROWS[n]
    lines.append(f'| 10 ({name}, ILSVRC-2012 val) | {top1} | {top5_paper} |')
  return '\n'.join(lines)


# ---- Command line ----------------------------------------------------------------------------

def define_flags():
  """The command line's flags (defined only when run as a program, so that tests and
  notebooks can import this module beside the others)."""
  cli.define_model_flags(ensemble=True)
  flags.adopt_module_key_flags(cli)  # --help lists the model flags too.
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
    models = cli.models_from_flags(more=argv[1:])
    result = evaluate(models, split=f.split, batch_size=f.batch_size or None,
                      progress=f.progress)
  except ValueError as e:
    cli.fail(str(e))
  except inference.checkpoint_lib.CheckpointError as e:
    raise SystemExit(f'error: {e}') from None
  output = f.output or os.path.join(f.workdir or '.', 'evaluation.json')
  with open(output, 'w') as fp:
    json.dump(result, fp, indent=1)
  records = '\n'.join(f'preprocessing of {m}: {p}'
                      for m, p in zip(result['models'], result['preprocessing']))
  skipped = (f' ({result["skipped"]} bad examples skipped: unreadable or damaged)'
             if result['skipped'] else '')
  print(f'{len(models)} model(s) on {result["examples"]} {result["split"]} examples{skipped}:\n'
        f'{records}\n{table(result)}\nwritten to {output}')
  sys.stdout.flush()


if __name__ == '__main__':
  define_flags()
  cli.run(main)
