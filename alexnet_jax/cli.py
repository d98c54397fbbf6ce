"""What the command lines share: the `--config` flag, and a bad config as one line.

Every command (main, evaluate, predict, features, the sweep and the figure scripts) reads its
config through `define_config_flag`, overrides it as `--config.section.field=value`, and
parses its flags with `parse_flags` (as `app.run(main, flags_parser=cli.parse_flags)`): an
unknown field or flag (with the closest valid name), a value of the wrong type, an unknown
recipe, or an attempt to set the recipe as a field is one line on stderr, `error: ...`, and
exit status 2, before anything is built or trained.
"""
from __future__ import annotations

import difflib
import re
import sys

from absl import flags
from ml_collections import config_flags

from alexnet_jax import config as config_lib
from alexnet_jax import recipes

EXIT_BAD_CONFIG = 2  # As for any other bad command line.


def define_config_flag(default: str | None, help_text: str) -> None:
  """Defines --config. ml_collections applies the command line's overrides to the default
  file as the flag is defined, so the command line is checked first, and what the definition
  raises becomes one line too."""
  check_command_line(sys.argv)
  try:
    config_flags.DEFINE_config_file('config', default, help_text)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    fail(explain(e))


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


def check_command_line(argv: list[str]) -> None:
  """`--config=FILE:list` prints the recipes and exits; setting the recipe as a field, or a
  field the schema does not have, fails in one line."""
  config_arg = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')), '')
  if config_arg.endswith(':list'):
    print(recipes.table())
    raise SystemExit(0)
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
  """absl's parsing, with each of the errors above as one line and exit 2."""
  check_command_line(argv)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    fail(explain(e))
