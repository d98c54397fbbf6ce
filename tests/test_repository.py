"""The repository stands on its own: nothing refers to a path outside it, and the paper
notes the code cites are in it."""
import re

import helpers

TEXT_SUFFIXES = ('.py', '.md', '.ipynb', '.txt', '.ini', '.toml', '.cfg', '.sh', '')


def repository_files():
  for path in helpers.REPO.rglob('*'):
    parts = path.relative_to(helpers.REPO).parts
    if path.is_file() and parts[0] != '.git' and '__pycache__' not in parts and \
        path.suffix in TEXT_SUFFIXES:
      yield path


def test_no_file_refers_to_shared():
  outside = 'shared' + '/'  # Spelled apart, so that this file does not name it.
  offenders = [str(p.relative_to(helpers.REPO)) for p in repository_files()
               if outside in p.read_text(errors='replace')]
  assert not offenders, offenders


def test_every_section_the_code_cites_is_in_docs_paper_md():
  paper = (helpers.REPO / 'docs' / 'paper.md').read_text()
  sections = set(re.findall(r'^#+ (\d+(?:\.\d+)?)\.? ', paper, re.M))
  sections |= {f'2.{i}' for i in range(1, 9)}  # s2's numbered list.
  cited = set()
  for path in repository_files():
    if path.suffix in ('.py', '.md') and path.name != 'paper.md':
      cited |= set(re.findall(r'\bs(\d+(?:\.\d+)?)\b', path.read_text(errors='replace')))
  assert cited and cited <= sections, sorted(cited - sections)
