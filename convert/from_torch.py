"""PyTorch `.pth` → Flax variables of any model family, strictly (SPEC §3), driven by the
family tables of convert/families.py."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import numpy as np

from convert import families
from convert import keymap
from convert import kinds
from convert import layouts
from convert import methods
from convert import model_config
from convert import pth_reader
from convert.errors import ConvertError
from dapt_jax.models import release_keys
from dapt_jax.partition import flatten
from dapt_jax.partition import unflatten

FORMAT = 'dapt-jax converted checkpoint, version 1'


@dataclasses.dataclass
class Conversion:
  variables: dict[str, dict]   # {'params', 'batch_stats'}: only what came from the file (numpy)
  report: dict[str, Any]       # what report.json holds


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _no_destination(key: str, shown: str, target: _Target, layout: layouts.Layout) -> str:
  """Why a release key has no Flax variable, as specifically as the key allows."""
  block, depth = keymap.block_index(key), target.fields['depth']
  if block is not None and block >= depth:
    return (f'source tensor {shown} has no destination: the model has depth {depth} (pass a '
            '--config with the right depth)')
  if key.startswith('reduce_dim.'):
    return (f'source tensor {shown} has no destination: this backbone projects its patch '
            'encoder output with reduce_dim, which the DAPT model (encoder_dims = trans_dim) lacks')
  hint = f'; {target.hint}' if target.hint else ''
  return (f'source tensor {shown} has no destination in the '
          f'{target.family.what(target.fields)} ({layout.name} layout{hint})')


def _more(items: list) -> str:
  return f' (and {len(items) - 1} more)' if len(items) > 1 else ''


def _plural(n: int, what: str) -> str:
  return f'{n} {what}{"" if n == 1 else "s"}'


@dataclasses.dataclass
class _Target:
  """The model a file converts to."""
  family: families.Family
  fields: dict[str, Any]     # its model fields
  config: str                # where they came from, for the report
  hint: str | None           # which model, for messages on shapes and extra tensors
  inferred: list[str]        # the fields read off the checkpoint


def _target(source: layouts.Source, cfg: Any, config: str | None) -> _Target:
  """`config`'s model; without one the default model of the family whose checkpoints the
  layout marks, its shapes read off the checkpoint where the family says so."""
  if cfg is not None:
    family = families.for_config(cfg)
    return _Target(family, family.fields(cfg), config, f'the model of {config}', [])
  family = families.for_layout(source.layout.name)
  spec = family.defaults[source.layout.name]
  fields = family.fields(model_config.load_default(spec))
  if not family.infer:
    return _Target(family, fields, spec, f'the default model {spec} does not fit; pass --config',
                   [])
  fields, inferred = model_config.infer_fields(source.tensors, fields, source.layout.complete,
                                               source.layout.method or family.method(fields))
  names = ', '.join(inferred) or 'nothing'
  return _Target(family, fields, f'inferred from the checkpoint ({names}); the rest from {spec}',
                 None, inferred)


def _method(layout: layouts.Layout, target: _Target) -> str:
  """The release whose keys the file's tensors are matched against."""
  method = target.family.method(target.fields)
  if layout.method and layout.name in target.family.defaults and method != layout.method:
    raise ConvertError(f'the checkpoint is a fine-tuned {methods.RELEASES[layout.method].name} '
                       f'model ({layout.description}) but the config says model.peft={method!r}')
  if method in methods.RELEASES:
    return method
  if layout.complete:
    raise ConvertError(f'model.peft={method!r} has no release checkpoint layout; pass a config '
                       f'of one of: {", ".join(methods.RELEASES)}')
  return methods.PLAIN  # a backbone for a method without a release: Point-MAE's paths


def _place(source: layouts.Source, entries: list[kinds.Entry], flat_shapes: dict[str, dict],
           target: _Target) -> tuple[dict, dict, dict]:
  """Every tensor of the file onto its variable: ({'params', 'batch_stats'} of flat arrays,
  {variable: key loaded}, {key ignored: why}); raises on any tensor without one."""
  by_key = {e.torch_key: e for e in entries}
  alias_of = {a: e for e in entries for a in e.aliases}
  counters = {c for e in entries for c in e.counters}
  shown = lambda key: source.original.get(key, key)  # a release key as the file spells it
  out, loaded, ignored = {'params': {}, 'batch_stats': {}}, {}, dict(source.ignored)
  for key, value in source.tensors.items():
    if key in counters:  # a strict layout's own BatchNorm counters
      ignored[shown(key)] = kinds.COUNTER_REASON
      continue
    if key in alias_of:  # the same tensor under a second name (IDPT's BatchNorms)
      primary = alias_of[key].torch_key
      other = source.tensors.get(primary)
      if other is not None and (other.shape != value.shape or other.dtype != value.dtype
                                or not np.array_equal(other, value, equal_nan=True)):
        raise ConvertError(f'{shown(key)} differs from {shown(primary)}, which the release '
                           'saves as the same BatchNorm tensor')
      ignored[shown(key)] = f'the same tensor as {shown(primary)} (one BatchNorm, two names)'
      if other is not None:
        continue
      entry = alias_of[key]
    else:
      entry = by_key.get(key)
    if entry is None:
      raise ConvertError(_no_destination(key, shown(key), target, source.layout))
    want = flat_shapes[entry.collection][entry.path]
    expected = entry.torch_shape(want.shape)
    if tuple(value.shape) != expected:
      raise ConvertError(f'shape mismatch for {shown(key)} (→ {entry.name}): the checkpoint has '
                         f'{tuple(value.shape)}, the model needs {expected}'
                         + (f' ({target.hint})' if target.hint else ''))
    if value.dtype.kind != 'f' and value.dtype.name != 'bfloat16':
      raise ConvertError(f'{shown(key)} has dtype {value.dtype}, expected floating point')
    out[entry.collection][entry.path] = entry.to_flax(value).astype(want.dtype)
    loaded[entry.name] = shown(key)
  return out, loaded, ignored


def convert_checkpoint(src: str, config: str | None = None) -> Conversion:
  """Reads `src` and maps every tensor onto the Flax variables of the target model.

  Args:
    src: the `.pth` file.
    config: `path.py[:arg]`, whose family (convert/families.py) and model are the target; None:
      the default model of the family whose checkpoints the file's layout marks.
  Raises:
    ConvertError: with a one-line message; nothing is written.
  """
  cfg = None if config is None else model_config.load_config(config)
  strict = None if cfg is None else families.for_config(cfg).strict
  source = layouts.read_source(pth_reader.read_pth(src), strict)
  layout = source.layout
  if source.unplaced:
    raise ConvertError(f'source tensor {source.unplaced[0]} has no destination and is on no '
                       f'ignore list ({layout.description}){_more(source.unplaced)}')
  target = _target(source, cfg, config)
  family, fields = target.family, target.fields
  method = _method(layout, target)
  shapes = family.shapes(fields if method == family.method(fields) else
                         dict(fields, peft=method))
  try:
    entries = family.entries(shapes, method)
  except ValueError as e:
    raise ConvertError(f'internal: {e}') from None
  flat_shapes = {c: flatten(shapes.get(c, {})) for c in ('params', 'batch_stats')}
  out, loaded, ignored = _place(source, entries, flat_shapes, target)

  missing = [e for e in entries
             if (layout.complete or e.part == release_keys.BACKBONE) and e.name not in loaded]
  if missing:
    e = missing[0]
    raise ConvertError(f'missing required tensor {source.outer_prefix}{layout.prefix}'
                       f'{e.torch_key} (for {e.name}, shape '
                       f'{e.torch_shape(flat_shapes[e.collection][e.path].shape)}){_more(missing)}'
                       f'; layout: {layout.description}')
  fresh = [e for e in entries if e.name not in loaded]
  report = {
      'format': FORMAT,
      'source': os.path.abspath(src),
      'source_sha256': sha256(src),
      'layout': layout.name,
      'layout_description': source.description,
      'state_dict_at': source.container,
      'config': target.config,
      'inferred_fields': target.inferred,
      **({'task': family.task} if family.task else {}),
      'model': dict(fields),
      'counts': {'loaded': len(loaded), 'ignored': len(ignored),
                 'freshly_initialised': len(fresh)},
      'fresh_by_part': {part: sum(e.part == part for e in fresh) for part in release_keys.PARTS
                        if any(e.part == part for e in fresh)},
      'loaded': loaded,
      'ignored': ignored,
      'freshly_initialised': [e.name for e in fresh],
  }
  return Conversion({c: unflatten(v) for c, v in out.items()}, report)


def summary(conv: Conversion, dst: str, verbose: bool) -> str:
  """What the CLI prints after a successful conversion."""
  r = conv.report
  parts = ', '.join(f'{n} {p}' for p, n in r['fresh_by_part'].items())
  lines = [
      f'converted {r["source"]}',
      f'  layout: {r["layout_description"]}',
      f'  model: {r["config"]}',
      f'  loaded {_plural(r["counts"]["loaded"], "tensor")}, ignored {r["counts"]["ignored"]}, '
      f'freshly initialised {r["counts"]["freshly_initialised"]}'
      + (f' ({parts})' if parts else ''),
  ]
  if verbose:
    lines.append('  loaded:')
    lines += [f'    {flax} ← {key}' for flax, key in r['loaded'].items()]
    lines.append('  ignored:')
    lines += [f'    {key}  ({why})' for key, why in r['ignored'].items()]
    lines.append('  freshly initialised:')
    lines += [f'    {name}' for name in r['freshly_initialised']]
  else:
    lines.append('  (names: --verbose, or the report)')
  lines.append(f'wrote {dst} (report: {os.path.join(dst, "report.json")})')
  return '\n'.join(lines)
