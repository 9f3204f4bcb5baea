"""Command-line parsing shared by the entry points that take `--config` (main.py, sweeps, ...).

    app.run(main, flags_parser=cli.parse_flags)

absl and ml_collections report a misspelled override, a wrong type, an unknown variant or a
missing config file with a long traceback, before `main` runs. `parse_flags` loads the config file
once itself first and checks every `--config.<field>` override against it, so each of those
mistakes is one `error:` line (with a "did you mean" where a field is close) and exit status 2.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
from typing import Sequence

from absl import flags

from dapt_jax import errors

FLAGS = flags.FLAGS
_PRECHECKED = {}  # the config file's config, for naming the type of a bad override


def _config_value(argv) -> str | None:
  """The value of --config in argv (either --config=V or --config V), or None."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _is_section(node) -> bool:
  return hasattr(node, 'keys') and type(node).__name__ in ('ConfigDict', 'FrozenConfigDict')


def _field_paths(node, prefix: str = '') -> list[str]:
  out = []
  for key in node.keys():
    out.append(prefix + key)
    if _is_section(node[key]):
      out += _field_paths(node[key], prefix + key + '.')
  return out


def _unknown_field(config, name: str) -> str | None:
  """A one-line complaint when `name` (a dotted path) is not a field of `config`, else None."""
  node, parts = config, name.split('.')
  for i, part in enumerate(parts):
    if not _is_section(node):
      return (f'--config.{name}: config.{".".join(parts[:i])} is a value, not a section with '
              'fields')
    if part not in node.keys():
      section = '.'.join(parts[:i])
      close = difflib.get_close_matches(part, list(node.keys()), n=1, cutoff=0.6)
      if close:
        guess = '.'.join(parts[:i] + close + parts[i + 1:])
        return f'--config.{name}: no such config field; did you mean --config.{guess}?'
      leaf = parts[-1]
      elsewhere = [p for p in _field_paths(config) if p.rsplit('.', 1)[-1] == leaf]
      if elsewhere:
        return (f'--config.{name}: no such config field; did you mean '
                f'{" or ".join("--config." + p for p in elsewhere)}?')
      fields = ', '.join(node.keys())
      where = f'config.{section}' if section else 'the config'
      return f'--config.{name}: no such config field ({where} has: {fields})'
    node = node[part]
  return None


def _override_names(argv) -> list[str]:
  names = []
  for arg in argv:
    m = re.match(r'^--?(?:no)?config\.([^=]+)', arg)
    if m:
      names.append(m.group(1))
  return names


def _precheck_config(argv) -> None:
  """Loads --config's file once before absl does, to name a missing file, a bad variant or an
  unknown override field in one line (absl would raise with a long traceback)."""
  value = _config_value(argv)
  if value is None:
    return
  path, _, arg = value.partition(':')
  if not os.path.isfile(path):
    what = 'is a directory' if os.path.isdir(path) else 'no such file'
    errors.fail(f'--config={value}: {what} (e.g. --config=configs/scanobjectnn.py:hardest)')
  try:
    spec = importlib.util.spec_from_file_location('_dapt_jax_config_precheck', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (the user's config file)
    if errors.debug():
      raise
    errors.fail(f'--config={value}: the config file fails to load: {type(e).__name__}: '
          f'{errors.one_line(e)}')
  if not hasattr(module, 'get_config'):
    errors.fail(f'--config={value}: {path} has no get_config() function')
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except  (a variant the file refuses, ...)
    if errors.debug():
      raise
    errors.fail(f'--config={value}: {errors.one_line(e)}')
  if not _is_section(config):
    errors.fail(f'--config={value}: get_config() returned a {type(config).__name__}, not a ConfigDict')
  for name in _override_names(argv):
    problem = _unknown_field(config, name)
    if problem:
      errors.fail(problem)
  _PRECHECKED['config'] = config


def _field_type(name: str) -> str | None:
  """The type name of config field `name` (dotted), from the prechecked config."""
  node = _PRECHECKED.get('config')
  try:
    *sections, leaf = name.split('.')
    for part in sections:
      node = node[part]
    kind = node.get_type(leaf)
  except (KeyError, AttributeError, TypeError):
    return None
  return 'a ConfigDict section' if 'ConfigDict' in kind.__name__ else kind.__name__


def _flag_error(e: Exception) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  text = lines[-1] if len(lines) > 1 and 'Traceback' in str(e) else (lines[0] if lines else '')
  m = re.match(r'^flag --config\.([^=]+)=(.*?): ', text)
  kind = _field_type(m.group(1)) if m else None
  if kind:
    return (f'--config.{m.group(1)}={m.group(2)}: config.{m.group(1)} takes {kind}, not '
            f'{m.group(2)!r}')
  text = re.sub(r'^flag (--\S+): ', r'\1: ', text)
  if isinstance(e, flags.Error):
    return f'{text} (see --helpshort)'
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with its errors as one `error:` line and exit status 2.

  Pass it to `absl.app.run(main, flags_parser=cli.parse_flags)`.
  """
  _precheck_config(argv)
  try:
    return FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  (absl and ml_collections raise many)
    if errors.debug():
      raise
    errors.fail(_flag_error(e))
