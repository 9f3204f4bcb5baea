"""README.md stays a five-minute read that points to docs/, and what it promises holds:

- at most 250 lines;
- every relative link in README.md and docs/*.md names a file that exists (and, with #anchor, a
  heading of that page), and every docs page is reachable from README.md;
- the README's test command is exactly what CI (.ci/run) runs, and scripts/test.sh runs pytest;
- the README's demo command runs the quick start (scripts/demo.sh -> dapt_jax.demo.quickstart).

Pure text checks: no JAX, milliseconds.
"""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
DOCS = os.path.join(ROOT, 'docs')
MAX_README_LINES = 250
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def _read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


def _pages():
  return sorted(os.path.join(DOCS, n) for n in os.listdir(DOCS) if n.endswith('.md'))


def _local_links(path):
  """(target file, anchor or None) of every relative link in a markdown file, outside code."""
  text = re.sub(r'```.*?```', '', _read(path), flags=re.S)
  out = []
  for target in LINK.findall(text):
    if re.match(r'[a-z]+:', target):  # http:, https:, mailto:
      continue
    file, _, anchor = target.partition('#')
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
    out.append((resolved, anchor or None))
  return out


def _anchors(path):
  """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
  anchors = set()
  for line in _read(path).splitlines():
    m = re.match(r'#{1,6}\s+(.*)', line)
    if m:
      slug = re.sub(r'[^\w\- ]', '', m.group(1).strip().lower()).replace(' ', '-')
      anchors.add(slug)
  return anchors


def _commands(text):
  """The shell lines of a script: no comments, no `set`/`cd` preamble."""
  lines = []
  for line in text.splitlines():
    line = line.split('#', 1)[0].strip()
    if line and not line.startswith(('set ', 'cd ')):
      lines.append(line)
  return lines


def _quick_start_commands():
  """{script: command} of the quick start's code lines (`bash scripts/X.sh  # what it does`)."""
  section = _read(README).split('## Quick start', 1)[1].split('\n## ', 1)[0]
  found = {}
  for line in section.splitlines():
    m = re.match(r'    (bash (scripts/\w+\.sh))\s*(#.*)?$', line)
    if m:
      found[m.group(2)] = m.group(1)
  return found


def test_readme_is_at_most_250_lines():
  n = len(_read(README).splitlines())
  assert n <= MAX_README_LINES, f'README.md has {n} lines; move detail into a docs/ page'


def test_readme_links_into_docs_and_every_page_is_linked():
  links = {f for f, _ in _local_links(README)}
  into_docs = {f for f in links if os.path.dirname(f) == DOCS}
  assert len(into_docs) >= 9  # one page per row of "What you can do", at least
  missing = sorted(os.path.relpath(f, ROOT) for f in links if not os.path.exists(f))
  assert not missing, f'README.md links to missing files: {missing}'
  unlinked = sorted(os.path.basename(p) for p in _pages() if p not in into_docs)
  assert not unlinked, f'docs pages not linked from README.md: {unlinked}'


@pytest.mark.parametrize('page', [os.path.basename(p) for p in _pages()])
def test_links_of_each_docs_page_resolve(page):
  path = os.path.join(DOCS, page)
  for file, anchor in _local_links(path):
    assert os.path.exists(file), f'{page}: link to missing {os.path.relpath(file, ROOT)}'
    if anchor and file.endswith('.md'):
      assert anchor in _anchors(file), f'{page}: no heading #{anchor} in {os.path.basename(file)}'


def test_readme_test_command_is_what_ci_runs():
  commands = _quick_start_commands()
  assert commands.get('scripts/test.sh') == 'bash scripts/test.sh', commands
  assert _commands(_read(os.path.join(ROOT, '.ci', 'run'))) == [commands['scripts/test.sh']]
  test_sh = _commands(_read(os.path.join(ROOT, 'scripts', 'test.sh')))
  assert test_sh[-1].startswith('exec .venv/bin/python -m pytest'), test_sh


def test_readme_demo_command_runs_the_quick_start():
  commands = _quick_start_commands()
  assert commands.get('scripts/demo.sh') == 'bash scripts/demo.sh', commands
  demo_sh = _commands(_read(os.path.join(ROOT, 'scripts', 'demo.sh')))
  assert demo_sh[-1].startswith('exec .venv/bin/python -m dapt_jax.demo.quickstart'), demo_sh
  assert os.path.exists(os.path.join(ROOT, 'dapt_jax', 'demo', 'quickstart.py'))


def test_anchor_rule_matches_github():
  # The slug rule above, on headings of this project's pages (so anchor links keep working).
  assert 'input-pipeline' in _anchors(os.path.join(DOCS, 'benchmarks.md'))
  assert 'several-gpus-several-hosts' in _anchors(os.path.join(DOCS, 'pods.md'))
