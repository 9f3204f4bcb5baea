"""What `--mode=predict` reads and writes, for every task: the input files, their checks, and
output names that never collide.

    paths = predict_io.find_inputs('scans/')            # a file, a folder or a glob → sorted paths
    clouds = predict_io.read_all(paths, read)           # every bad file named in one error
    names = predict_io.output_names(paths, 'scans/', '_parts')   # by path relative to the input

A folder may hold `a/chair.ply` and `b/chair.ply`: outputs are named by each file's path relative
to the input folder (`a__chair_parts`, `b__chair_parts`), and names that would still be equal
(`chair.ply` beside `chair.npy`) are refused before anything is read.
"""
from __future__ import annotations

import glob
import os
from typing import Any, Callable, Optional, Sequence

from dapt_jax import errors
from dapt_jax.data import clouds
from dapt_jax.data.errors import DataError
from dapt_jax.evaluate import InputError

SEPARATOR = '__'  # joins the folders of a relative path in a flat output name


def check_workdir(workdir: Optional[str]) -> None:
  """A given --workdir must be an existing folder: predict reads a run from it and writes there."""
  if workdir is None:
    return
  if not os.path.exists(workdir):
    raise InputError(f'--workdir={workdir}: no such folder; --mode=predict reads a training run '
                     'from its workdir and writes its outputs there')
  if not os.path.isdir(workdir):
    raise InputError(f'--workdir={workdir}: not a folder')


def find_inputs(spec: str) -> list[str]:
  """A file, a folder (every cloud or mesh file under it, recursively) or a glob → sorted paths."""
  spec = os.path.expanduser(spec)
  if os.path.isfile(spec):
    return [spec]
  if os.path.isdir(spec):
    found = []
    for dirpath, dirnames, filenames in os.walk(spec):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
      found += [os.path.join(dirpath, f) for f in sorted(filenames)
                if not f.startswith('.') and os.path.splitext(f)[1].lower() in clouds.EXTENSIONS]
    if not found:
      raise InputError(f'{spec}: no cloud or mesh files in this folder '
                       f'({" ".join(clouds.EXTENSIONS)})')
    return found
  if glob.has_magic(spec):
    matched = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    found = [p for p in matched if os.path.splitext(p)[1].lower() in clouds.EXTENSIONS]
    if not found:
      other = f' ({len(matched)} file(s) of other types)' if matched else ''
      raise InputError(f'{spec}: matches no cloud or mesh file{other}')
    return found
  raise InputError(f'{spec}: no such file')


def input_root(spec: str) -> str:
  """The folder the inputs of `spec` are named relative to: a file's own folder, the folder
  itself, or a glob's leading folders without wildcards."""
  spec = os.path.expanduser(spec)
  if os.path.isfile(spec):
    return os.path.dirname(spec)
  if os.path.isdir(spec):
    return spec
  fixed = []
  for part in spec.split(os.sep):
    if glob.has_magic(part):
      break
    fixed.append(part)
  return os.sep.join(fixed) if fixed != [''] else os.sep


def output_names(paths: Sequence[str], root: str, suffix: str) -> list[str]:
  """One flat file name (without extension) per input: its path relative to `root`, folders
  joined by SEPARATOR, the extension dropped, `suffix` added. Raises InputError naming two
  inputs that would get the same name."""
  names, owner = [], {}
  for p in paths:
    rel = os.path.splitext(os.path.relpath(p, root))[0]
    name = SEPARATOR.join(part for part in rel.split(os.sep) if part not in ('', '.')) + suffix
    if name in owner:
      raise InputError(f'{owner[name]} and {p} would both be written as {name}.*; rename one of '
                       'them or predict them separately')
    owner[name] = p
    names.append(name)
  return names


def read_all(paths: Sequence[str], read: Callable[[str], Any],
             progress: Optional[Callable[[], None]] = None) -> list:
  """`read(path)` of every path; every file it refuses is named in one error.

  Raises:
    UserError: a single bad file's own error, or a DataError of one line: 'K of N input files
      cannot be used: ' and each file's message, separated by '; '.
  """
  out, bad = [], []
  for p in paths:
    try:
      out.append(read(p))
    except errors.UserError as e:
      bad.append(e)
    if progress is not None:
      progress()
  if len(bad) == 1:
    raise bad[0]
  if bad:
    raise DataError(f'{len(bad)} of {len(paths)} input files cannot be used: '
                    + '; '.join(errors.one_line(e) for e in bad))
  return out


def replaced(paths: Sequence[str]) -> list[str]:
  """The paths among `paths` that exist already (an earlier --mode=predict's outputs)."""
  return [p for p in paths if os.path.exists(p)]
