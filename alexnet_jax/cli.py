"""What the command lines share: the `--config` flag, a bad config as one line, and the
flags that name a trained model (evaluate, predict, features).

Every command (main, evaluate, predict, features, prepare, the sweep and the figure scripts)
reads its config through `define_config_flag`, overrides it as `--config.section.field=value`,
and runs as `cli.run(main)`: a config file that does not exist, an unknown field or flag (with
the closest valid name), a value of the wrong type, an unknown recipe, an attempt to set the
recipe as a field, or a missing or unexpected argument is one line on stderr, `error: ...`,
and exit status 2, before anything is built or trained. `-h` and `--help` print the help and
exit 0; Ctrl-C outside a training loop (which saves first) stops in one line.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import traceback
from typing import TYPE_CHECKING

from absl import app
from absl import flags
from ml_collections import config_flags

from alexnet_jax import config as config_lib
from alexnet_jax import recipes

if TYPE_CHECKING:
  from alexnet_jax import inference

EXIT_BAD_CONFIG = 2  # As for any other bad command line.
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C.
HELP_ARGS = ('-h', '--help', '-help', '--helpshort', '--helpfull', '-?')


def define_config_flag(default: str | None, help_text: str) -> None:
  """Defines --config. ml_collections applies the command line's overrides to the default
  file as the flag is defined, so the command line is checked first, and what the definition
  raises becomes one line too."""
  check_command_line(sys.argv)
  try:
    config_flags.DEFINE_config_file('config', default, help_text)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    fail(explain(e))


class _AboveTheBar(logging.Handler):
  """The project's events, one line each, written above any progress bar (tqdm.write)."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      message = record.getMessage()
      if record.levelno >= logging.WARNING:
        message = f'{record.levelname.lower()}: {message}'
      tqdm.write(message, file=sys.stderr)
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


def quiet_libraries() -> None:
  """No library's log line (orbax, absl, grain, jax: INFO, WARNING or ERROR, all of which
  they use for their own bookkeeping) reaches the terminal, unless -v/--verbosity was given.
  What goes wrong for the user reaches them as the project's own one-line error."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  if 'verbosity' in flags.FLAGS and flags.FLAGS['verbosity'].present:
    return
  absl_logging.set_verbosity(absl_logging.FATAL)
  logging.getLogger().setLevel(logging.CRITICAL)  # Libraries logging without absl (jax).
  sys.unraisablehook = _without_abandoned_checkpoint_reads


def abandoned_checkpoint_read(unraisable) -> bool:
  """Whether an error Python could not raise (its "Exception ignored in" printout) comes
  from the reads orbax leaves behind when a restore fails: a damaged checkpoint, already
  reported in one line and skipped (checkpoint.Checkpoints.restore_latest)."""
  trace = ''.join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value,
                                             unraisable.exc_traceback))
  return ('orbax/checkpoint' in trace or
          (unraisable.exc_type is RuntimeError and 'Event loop is closed' in trace))


def _without_abandoned_checkpoint_reads(unraisable) -> None:
  if not abandoned_checkpoint_read(unraisable):
    sys.__unraisablehook__(unraisable)


def setup_logging() -> None:
  """Libraries quiet (`quiet_libraries`); the project's own events (`alexnet_jax.*` loggers)
  as short lines on stderr. Call after the flags are parsed (absl's app.run sets INFO)."""
  quiet_libraries()
  project = logging.getLogger('alexnet_jax')
  if not any(isinstance(h, _AboveTheBar) for h in project.handlers):
    project.addHandler(_AboveTheBar())
  project.setLevel(logging.INFO)
  project.propagate = False


def run(main) -> None:
  """absl's `app.run(main)` with this module's flag parsing and logging; a usage mistake
  raised by `main` (app.UsageError: a missing or unexpected argument) is one line and exit
  2 instead of the whole help, and Ctrl-C one line instead of a traceback."""

  def checked(argv):
    setup_logging()
    try:
      return main(argv)
    except app.UsageError as e:
      fail(str(e))
    except KeyboardInterrupt:
      sys.stdout.flush()
      sys.stderr.write('\nstopped: interrupted (Ctrl-C)\n')
      raise SystemExit(EXIT_INTERRUPTED) from None

  app.run(checked, flags_parser=parse_flags)


def fail(message: str) -> None:
  """Leaves with `error: message` on stderr and exit status 2."""
  sys.stderr.write(f'error: {message}\n')
  sys.stderr.flush()
  raise SystemExit(EXIT_BAD_CONFIG)


def _field_names() -> list[str]:
  def walk(tree, prefix=''):
    for key, value in tree.items():
      if isinstance(value, dict):
        yield from walk(value, f'{prefix}{key}.')
      else:
        yield f'{prefix}{key}'
  return list(walk(config_lib.base_config().to_dict()))


def _closest(name: str, names, prefix: str = '') -> str:
  close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
  return f" (did you mean '{prefix}{close[0]}'?)" if close else ''


def _recipe_override(argv: list[str]) -> str | None:
  for arg in argv[1:]:
    match = re.match(r'--config\.(recipe|model\.variant)(=|$)', arg)
    if match:
      return match.group(1)
  return None


def explain(e: Exception) -> str:
  """One line from a flag-parsing error: the field or flag, what is wrong, the closest name."""
  text = str(e).strip()
  unknown = re.search(r"Unknown command line flag '([^']+)'", text)
  if unknown:
    name = unknown.group(1)
    if name.startswith('config.'):
      field = name[len('config.'):]
      return f'{field}: no such config field{_closest(field, _field_names())}'
    return f'--{name}: no such flag{_closest(name, list(flags.FLAGS), "--")}'
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  # An error raised inside a config file arrives wrapped in its traceback: keep the raise.
  last = re.sub(r'^\w+(Error|Exception): ', '', lines[-1]) if lines else type(e).__name__
  return last


def _config_argument(argv: list[str]) -> str:
  """The value of --config, given as `--config=FILE` or `--config FILE` ('' if absent)."""
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return ''


def _check_config_file(argument: str) -> None:
  """A --config file that does not exist fails in one line, naming the closest file beside
  where it was looked for (ml_collections would defer the error to a traceback)."""
  path = argument.split(':', 1)[0]
  if not path or os.path.isfile(path):
    return
  folder = os.path.dirname(path) or '.'
  names = [n for n in os.listdir(folder) if n.endswith('.py')] if os.path.isdir(folder) else []
  close = difflib.get_close_matches(os.path.basename(path), names, n=1, cutoff=0.6)
  hint = f" (did you mean '{os.path.join(os.path.dirname(path), close[0])}'?)" if close else ''
  fail(f'--config: no such file {path!r}{hint}')


def check_command_line(argv: list[str]) -> None:
  """`--config=FILE:list` prints the recipes and exits; a config file that does not exist,
  setting the recipe as a field, or a field the schema does not have fails in one line."""
  if any(arg in HELP_ARGS for arg in argv[1:]):
    return  # parse_flags prints the help.
  if _config_argument(argv).endswith(':list'):
    print(recipes.table())
    raise SystemExit(0)
  _check_config_file(_config_argument(argv))
  field = _recipe_override(argv)
  if field:
    fail(f'{field}: the recipe is chosen by name, as the config file\'s argument: '
         '--config=configs/paper.py:<recipe> (--config=configs/paper.py:list lists them)')
  known = _field_names()  # Every config file shares the one schema.
  for arg in argv[1:]:
    override = re.match(r'--config\.([\w.]+)', arg)
    if override and override.group(1) not in known:
      fail(f'{override.group(1)}: no such config field{_closest(override.group(1), known)}')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with each of the errors above as one line and exit 2; `-h` or `--help`
  prints the help and exits 0."""
  if any(arg in HELP_ARGS for arg in argv[1:]):
    app.usage(shorthelp=True, writeto_stdout=True)
    raise SystemExit(0)
  check_command_line(argv)
  try:
    remaining = flags.FLAGS(argv)
    if 'config' in flags.FLAGS:
      getattr(flags.FLAGS, 'config')  # A config file that failed to load raises only here.
    return remaining
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    fail(explain(e))


# ---- The flags that name a trained model -----------------------------------------------------


def define_model_flags(*, ensemble: bool = False) -> None:
  """--workdir / --checkpoint / --weights (+ --config), and --ensemble where it makes sense."""
  flags.DEFINE_string('workdir', None, 'A training work directory: its newest good checkpoint.')
  flags.DEFINE_string('checkpoint', None, 'One checkpoint: WORKDIR/checkpoints/STEP.')
  flags.DEFINE_string('weights', None, 'A .npz/.pth state dict (needs --config); its '
                      'preprocessing record is the .preprocessing.json beside it, if any.')
  define_config_flag(
      None, 'The config (file.py:recipe) of --weights; for a checkpoint, its data section '
      "replaces the run's (to use other data).")
  if ensemble:
    flags.DEFINE_list('ensemble', None, 'Several models (work directories, checkpoints or '
                      'weights files), their softmax averaged.')


def models_from_flags(more: list[str] = ()) -> list[inference.Trained]:
  """The models the flags name; `more` (positional arguments) extend --ensemble, so both
  `--ensemble=A,B,C` and `--ensemble A B C` work."""
  f = flags.FLAGS
  single = [r for r in (f.workdir, f.checkpoint, f.weights) if r]
  ensemble = (getattr(f, 'ensemble', None) or []) + list(more)
  if len(single) + bool(ensemble) != 1:
    raise app.UsageError('give exactly one of --workdir, --checkpoint, --weights'
                         + (', --ensemble' if 'ensemble' in f else ''))
  from alexnet_jax import inference  # pylint: disable=g-import-not-at-top
  return [inference.load(r, config=f.config) for r in (ensemble or single)]
