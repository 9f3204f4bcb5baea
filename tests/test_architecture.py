"""The import layers drawn in docs/architecture.md hold: no import cycle, and no import from a
lower layer to a higher one, over every module of dapt_jax/, convert/, configs/ and main.py.

The layers are read from the page (the tables between `<!-- layers:begin -->` and
`<!-- layers:end -->`), so the page is the rule and this test its enforcement. Imports are read
with `ast`, not by importing: top-level and inside functions, `from X import Y` where Y is a
submodule, attribute access on an imported package that loads a submodule lazily
(`data_lib.classes`), and string constants that name a module exactly (what `importlib` is given).
"""
from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, 'docs', 'architecture.md')
BEGIN, END = '<!-- layers:begin -->', '<!-- layers:end -->'
TREES = ('dapt_jax', 'convert', 'configs')
ENTRY_FILES = ('main.py',)

# Imports known to break the rules, each with why it is still here. An entry that no longer
# occurs fails the test, so it is removed as soon as it is fixed. (None today.)
KNOWN_CYCLES: set = set()
KNOWN_FORBIDDEN: set = set()


# ---------------------------------------------------------------------------------------------
# The page


def _glob_regex(glob: str) -> re.Pattern:
  """`**` any path, `*` and `?` within one path component."""
  out = ''
  i = 0
  while i < len(glob):
    if glob.startswith('**', i):
      out, i = out + '.*', i + 2
    elif glob[i] == '*':
      out, i = out + '[^/]*', i + 1
    elif glob[i] == '?':
      out, i = out + '[^/]', i + 1
    else:
      out, i = out + re.escape(glob[i]), i + 1
  return re.compile(out + r'\Z')


def _tables(text: str) -> list[list[list[str]]]:
  """The markdown tables of `text`: each a list of rows of cell strings (separator rows out)."""
  tables, current = [], []
  for line in text.splitlines() + ['']:
    line = line.strip()
    if line.startswith('|'):
      cells = [c.strip() for c in line.strip('|').split('|')]
      if not all(re.fullmatch(r':?-+:?', c) for c in cells):
        current.append(cells)
    elif current:
      tables.append(current)
      current = []
  return tables


def _globs(cell: str) -> list[str]:
  found = re.findall(r'`([^`]+)`', cell)
  assert found, f'docs/architecture.md: no `glob` in layer table cell {cell!r}'
  return found


def read_layers(path: str = PAGE) -> tuple[list[tuple[tuple[int, ...], str, str]],
                                           list[tuple[str, str]]]:
  """([(layer, name, glob)], [(from glob, forbidden glob)]) from the page's layer section."""
  text = open(path, encoding='utf-8').read()
  assert text.count(BEGIN) == 1 and text.count(END) == 1, (
      f'{path}: the layer section must be delimited by one {BEGIN} and one {END}')
  section = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
  layers, forbidden = [], []
  for table in _tables(section):
    header = [h.lower() for h in table[0]]
    if header[:1] == ['layer']:
      for layer, name, cell in table[1:]:
        assert re.fullmatch(r'\d+(\.\d+)*', layer), f'layer {layer!r} is not like 1 or 1.2'
        key = tuple(int(p) for p in layer.split('.'))
        layers += [(key, name, g) for g in _globs(cell)]
    elif header and header[-1].startswith('must not import'):
      for src, dst in table[1:]:
        forbidden += [(a, b) for a in _globs(src) for b in _globs(dst)]
    else:
      raise AssertionError(f'{path}: unknown table in the layer section: {table[0]}')
  assert layers, f'{path}: the layer section has no layer table'
  return layers, forbidden


# ---------------------------------------------------------------------------------------------
# The code


def module_files(root: str = ROOT) -> dict[str, str]:
  """{dotted module name: path relative to root} of every module the layers cover."""
  found = {}
  for tree in TREES:
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, tree)):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith(('.', '__pycache__')))
      for f in filenames:
        if f.endswith('.py'):
          rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, '/')
          parts = rel[:-3].split('/')
          if parts[-1] == '__init__':
            parts = parts[:-1]
          found['.'.join(parts)] = rel
  for f in ENTRY_FILES:
    found[f[:-3]] = f
  return found


def _resolve(name: str, modules: dict) -> str | None:
  """The longest known module that `name` (a dotted import target) is, or lies in."""
  while name and name not in modules:
    name = name.rpartition('.')[0]
  return name or None


def imports_of(module: str, path: str, modules: dict) -> set[str]:
  """The known modules `module` imports anywhere in its file (see the module docstring)."""
  tree = ast.parse(open(path, encoding='utf-8').read(), path)
  is_package = path.endswith('__init__.py')
  package = module if is_package else module.rpartition('.')[0]
  found, aliases = set(), {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        target = _resolve(a.name, modules)
        if target:
          found.add(target)
        # `import a.b` binds `a`; `import a.b as c` binds `c` to a.b.
        aliases[a.asname or a.name.split('.')[0]] = a.name if a.asname else a.name.split('.')[0]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        parts = parts[:len(parts) - (node.level - 1)]
        base = '.'.join(parts + ([base] if base else []))
      for a in node.names:
        full = f'{base}.{a.name}'
        if full in modules:  # a submodule
          found.add(full)
          aliases[a.asname or a.name] = full
        elif _resolve(base, modules):  # a name defined in the module `base`
          found.add(_resolve(base, modules))
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
      name = node.value.split(':')[0]
      if name in modules and '.' in name:
        found.add(name)
  for node in ast.walk(tree):  # package.submodule, loaded lazily by the package's __getattr__
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and f'{aliases[node.value.id]}.{node.attr}' in modules):
      found.add(f'{aliases[node.value.id]}.{node.attr}')
  found.discard(module)
  return found


def import_graph(root: str = ROOT) -> tuple[dict[str, str], dict[str, set[str]]]:
  modules = module_files(root)
  return modules, {m: imports_of(m, os.path.join(root, p), modules)
                   for m, p in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
  """The import cycles: strongly connected components of more than one module (Tarjan)."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def assign_layers(modules: dict[str, str], layers) -> tuple[dict, list[str], list[str]]:
  """({module: (layer, name)}, modules in no row, globs matching no module); the longest
  matching glob wins."""
  compiled = [(key, name, glob, _glob_regex(glob)) for key, name, glob in layers]
  where, unplaced, used = {}, [], set()
  for module, path in sorted(modules.items()):
    matches = [(len(g), key, name, g) for key, name, g, rx in compiled if rx.match(path)]
    if not matches:
      unplaced.append(path)
      continue
    _, key, name, g = max(matches)
    where[module] = (key, name)
    used.add(g)
  return where, unplaced, [g for _, _, g, _ in compiled if g not in used]


def upward_imports(graph, where) -> list[str]:
  return sorted(f'{a} (layer {".".join(map(str, where[a][0]))} {where[a][1]}) imports {b} '
                f'(layer {".".join(map(str, where[b][0]))} {where[b][1]})'
                for a, targets in graph.items() for b in targets
                if a in where and b in where and where[a][0] < where[b][0])


def forbidden_imports(graph, modules, forbidden) -> set[tuple[str, str]]:
  out = set()
  for src, dst in forbidden:
    rs, rd = _glob_regex(src), _glob_regex(dst)
    out |= {(a, b) for a, targets in graph.items() if rs.match(modules[a])
            for b in targets if rd.match(modules[b])}
  return out


# ---------------------------------------------------------------------------------------------
# The tests


@pytest.fixture(scope='module')
def code():
  modules, graph = import_graph()
  layers, forbidden = read_layers()
  return modules, graph, layers, forbidden


def test_every_module_has_one_layer_and_every_glob_a_module(code):
  modules, _, layers, _ = code
  _, unplaced, unused = assign_layers(modules, layers)
  assert not unplaced, f'modules in no layer of docs/architecture.md: {unplaced}'
  assert not unused, f'layer globs of docs/architecture.md that match no module: {unused}'


def test_no_import_cycle(code):
  _, graph, _, _ = code
  cycles = [c for c in strongly_connected(graph) if frozenset(c) not in KNOWN_CYCLES]
  assert not cycles, f'import cycles: {cycles}'
  stale = [sorted(c) for c in KNOWN_CYCLES if sorted(c) not in strongly_connected(graph)]
  assert not stale, f'fixed, remove from KNOWN_CYCLES: {stale}'


def test_no_import_runs_upward(code):
  modules, graph, layers, _ = code
  where, _, _ = assign_layers(modules, layers)
  upward = upward_imports(graph, where)
  assert not upward, 'imports from a lower layer to a higher one:\n' + '\n'.join(upward)


def test_no_forbidden_import(code):
  modules, graph, _, forbidden = code
  found = forbidden_imports(graph, modules, forbidden)
  assert not found - KNOWN_FORBIDDEN, f'forbidden imports: {sorted(found - KNOWN_FORBIDDEN)}'
  stale = KNOWN_FORBIDDEN - found
  assert not stale, f'fixed, remove from KNOWN_FORBIDDEN: {sorted(stale)}'


def test_the_checks_see_what_they_must(tmp_path):
  """The reader finds imports inside functions, lazy submodules and importlib names, and the
  checks catch a cycle, an upward import and a forbidden one (a small made-up package)."""
  pkg = tmp_path / 'dapt_jax'
  (pkg / 'low').mkdir(parents=True)
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'convert').mkdir()
  (tmp_path / 'main.py').write_text('import dapt_jax.high\n')
  (pkg / '__init__.py').write_text('')
  (pkg / 'low' / '__init__.py').write_text('')
  (pkg / 'low' / 'a.py').write_text('def f():\n  from dapt_jax.low import b\n')
  (pkg / 'low' / 'b.py').write_text('from dapt_jax import low as low_lib\nx = low_lib.a\n')
  (pkg / 'low' / 'c.py').write_text('def f():\n  from dapt_jax import high\n')
  (pkg / 'high.py').write_text("import importlib\nM = importlib.import_module('dapt_jax.low.c')\n")
  (tmp_path / 'configs' / 'x.py').write_text('from dapt_jax.low import a\n')
  (tmp_path / 'convert' / '__init__.py').write_text('')
  page = tmp_path / 'page.md'
  page.write_text(f'{BEGIN}\n| layer | name | modules (globs) |\n|---|---|---|\n'
                  '| 0 | base | `dapt_jax/__init__.py`, `dapt_jax/low/**` |\n'
                  '| 1 | top | `dapt_jax/high.py`, `configs/**`, `convert/**` |\n'
                  '| 2 | entry | `main.py` |\n\n'
                  '| modules (globs) | must not import (globs) |\n|---|---|\n'
                  f'| `configs/**` | `dapt_jax/low/a.py` |\n{END}\n')
  modules, graph = import_graph(str(tmp_path))
  layers, forbidden = read_layers(str(page))
  assert graph['dapt_jax.low.a'] == {'dapt_jax.low.b'}                   # inside a function
  assert graph['dapt_jax.low.b'] == {'dapt_jax.low', 'dapt_jax.low.a'}   # lazy submodule
  assert graph['dapt_jax.high'] == {'dapt_jax.low.c'}                    # importlib's name
  assert sorted(strongly_connected(graph)) == [['dapt_jax.high', 'dapt_jax.low.c'],
                                               ['dapt_jax.low.a', 'dapt_jax.low.b']]
  where, unplaced, unused = assign_layers(modules, layers)
  assert not unplaced and not unused
  assert upward_imports(graph, where) == [
      'dapt_jax.low.c (layer 0 base) imports dapt_jax.high (layer 1 top)']
  assert forbidden_imports(graph, modules, forbidden) == {('configs.x', 'dapt_jax.low.a')}
