"""PyTorch `.pth` → Flax variables of a DAPT model, strictly (SPEC §3)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Mapping

import numpy as np

from convert import keymap
from convert import layouts
from convert import model_config
from convert import pth_reader
from convert.errors import ConvertError
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


def _no_destination(key: str, shown: str, fields: Mapping[str, Any], layout_name: str) -> str:
  """Why a release key has no Flax variable, as specifically as the key allows."""
  block = keymap.block_index(key)
  if block is not None and block >= fields['depth']:
    return (f'source tensor {shown} has no destination: the model has depth {fields["depth"]} '
            '(pass a --config with the right depth)')
  if key.startswith('reduce_dim.'):
    return (f'source tensor {shown} has no destination: this backbone projects its patch '
            'encoder output with reduce_dim, which the DAPT model (encoder_dims = trans_dim) lacks')
  method = keymap.METHOD_NAMES.get(fields.get('peft', 'dapt'), fields.get('peft'))
  return (f'source tensor {shown} has no destination in the {method} model ({layout_name} '
          'layout)')


def _plural(n: int, what: str) -> str:
  return f'{n} {what}{"" if n == 1 else "s"}'


def convert_checkpoint(src: str, config: str | None = None) -> Conversion:
  """Reads `src` and maps every tensor onto the Flax variables of the target model.

  Args:
    src: the `.pth` file.
    config: `path.py[:arg]`; None infers the model from the checkpoint's shapes, taking the
      rest from the default config.
  Raises:
    ConvertError: with a one-line message; nothing is written.
  """
  if config is not None:
    cfg = model_config.load_config(config)
    if model_config.is_pretrain_config(cfg):
      return convert_mae_checkpoint(src, config, model_config.mae_model_fields(cfg))
    if model_config.is_segmentation_config(cfg):
      return convert_seg_checkpoint(src, config, model_config.seg_model_fields(cfg))
  checkpoint = pth_reader.read_pth(src)
  source = layouts.read_source(checkpoint)
  layout = source.layout
  if layout.name in layouts.SEGMENTATION_LAYOUTS:  # no --config: the layout's default model
    fields, spec = model_config.default_seg_fields(layout.name)
    return convert_seg_checkpoint(src, spec, fields, source, default=True)

  def shown(key: str) -> str:  # a release key as the file spells it
    return source.original.get(key, key)

  if source.unplaced:
    first = source.unplaced[0]
    more = f' (and {len(source.unplaced) - 1} more)' if len(source.unplaced) > 1 else ''
    raise ConvertError(f'source tensor {first} has no destination and is on no ignore list '
                       f'({layout.description}){more}')

  if config is not None:
    fields = model_config.model_fields(model_config.load_config(config))
    config_used, inferred = config, []
  else:
    fields, inferred = model_config.infer_model_fields(
        source.tensors, model_config.default_model_fields(), with_head=layout.complete,
        method=layout.method)
    config_used = (f'inferred from the checkpoint ({", ".join(inferred) or "nothing"}); the rest '
                   f'from {model_config.DEFAULT_CONFIG}')

  method = fields.get('peft', 'dapt')
  if layout.complete and method != layout.method:
    raise ConvertError(f'the checkpoint is a fine-tuned {keymap.METHOD_NAMES[layout.method]} '
                       f'model ({layout.description}) but the config says model.peft={method!r}')
  if method not in keymap.RELEASE_METHODS:
    if layout.complete:
      raise ConvertError(f'model.peft={method!r} has no release checkpoint layout; pass a config '
                         f'of one of: {", ".join(keymap.RELEASE_METHODS)}')
    # A pre-trained backbone for LoRA / the adapter: the backbone's paths are Point-MAE's.
    method = 'full'
  shapes = model_config.variable_shapes(dict(fields, peft=method))
  try:
    entries = keymap.entries_for_variables(shapes, method)
  except ValueError as e:
    raise ConvertError(f'internal: {e}') from None
  by_key = {e.torch_key: e for e in entries}
  alias_of = {a: e for e in entries for a in e.aliases}
  flat_shapes = {c: flatten(shapes.get(c, {})) for c in ('params', 'batch_stats')}

  out = {'params': {}, 'batch_stats': {}}
  loaded, aliased = {}, {}
  for key, value in source.tensors.items():
    if key in alias_of:  # the same tensor under a second name (IDPT's BatchNorms)
      primary = alias_of[key].torch_key
      other = source.tensors.get(primary)
      if other is not None and (other.shape != value.shape or other.dtype != value.dtype
                                or not np.array_equal(other, value, equal_nan=True)):
        raise ConvertError(f'{shown(key)} differs from {shown(primary)}, which the release '
                           'saves as the same BatchNorm tensor')
      aliased[shown(key)] = f'the same tensor as {shown(primary)} (one BatchNorm, two names)'
      if other is not None:
        continue
      entry = alias_of[key]
    else:
      entry = by_key.get(key)
    if entry is None:
      raise ConvertError(_no_destination(key, shown(key), fields, layout.name))
    target = flat_shapes[entry.collection][entry.path]
    expected = entry.torch_shape(target.shape)
    if tuple(value.shape) != expected:
      raise ConvertError(f'shape mismatch for {shown(key)} (→ {entry.name}): the checkpoint has '
                         f'{tuple(value.shape)}, the model needs {expected}')
    if value.dtype.kind != 'f' and value.dtype.name != 'bfloat16':
      raise ConvertError(f'{shown(key)} has dtype {value.dtype}, expected floating point')
    out[entry.collection][entry.path] = entry.to_flax(value).astype(target.dtype)
    loaded[entry.name] = shown(key)

  required = [e for e in entries
              if layout.complete or e.part == keymap.BACKBONE]
  missing = [e for e in required if e.name not in loaded]
  if missing:
    e = missing[0]
    display = f'{source.outer_prefix}{layout.prefix}{e.torch_key}'
    target = flat_shapes[e.collection][e.path]
    more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
    raise ConvertError(f'missing required tensor {display} (for {e.name}, shape '
                       f'{e.torch_shape(target.shape)}){more}; layout: {layout.description}')
  fresh = [e for e in entries if e.name not in loaded]

  report = {
      'format': FORMAT,
      'source': os.path.abspath(src),
      'source_sha256': sha256(src),
      'layout': layout.name,
      'layout_description': source.description,
      'state_dict_at': source.container,
      'config': config_used,
      'inferred_fields': inferred,
      'model': fields,
      'counts': {'loaded': len(loaded), 'ignored': len(source.ignored) + len(aliased),
                 'freshly_initialised': len(fresh)},
      'fresh_by_part': {part: sum(e.part == part for e in fresh)
                        for part in (keymap.BACKBONE, keymap.CLS, keymap.DAPT, keymap.HEAD,
                                     keymap.PEFT)
                        if any(e.part == part for e in fresh)},
      'loaded': loaded,
      'ignored': {**source.ignored, **aliased},
      'freshly_initialised': [e.name for e in fresh],
  }
  return Conversion({c: unflatten(v) for c, v in out.items()}, report)


def convert_mae_checkpoint(src: str, config: str, fields: Mapping[str, Any]) -> Conversion:
  """A Point-MAE pre-training checkpoint → every variable of the masked autoencoder.

  Strict both ways: each of the file's tensors (after any `module.` prefix) must be one of the
  autoencoder's (SPEC §6.5: MAE_encoder.*, MAE_decoder.*, decoder_pos_embed.*, increase_dim.*,
  mask_token) or a BatchNorm step counter, with the model's shape; each of the model's must be in
  the file.

  Raises:
    ConvertError: with a one-line message; nothing is written.
  """
  checkpoint = pth_reader.read_pth(src)
  container, state_dict = layouts.find_state_dict(checkpoint)
  tensors, original = {}, {}
  for key, value in state_dict.items():
    plain = layouts._strip_module(key)  # pylint: disable=protected-access
    if plain in tensors:
      raise ConvertError(f'two keys become {plain!r} once the {layouts.MODULE_PREFIX!r} prefix is '
                         'removed')
    if not isinstance(value, np.ndarray):
      raise ConvertError(f'state dict entry {key!r} is not a tensor')
    tensors[plain], original[plain] = value, key
  shapes = model_config.mae_variable_shapes(fields)
  try:
    entries = keymap.mae_entries_for_variables(shapes)
  except ValueError as e:
    raise ConvertError(f'internal: {e}') from None
  by_key = {e.torch_key: e for e in entries}
  flat_shapes = {c: flatten(shapes.get(c, {})) for c in ('params', 'batch_stats')}
  counters = set(keymap.mae_batch_norm_counters(fields['depth'], fields['decoder_depth']))
  out = {'params': {}, 'batch_stats': {}}
  loaded, ignored = {}, {}
  for key, value in tensors.items():
    if key in counters:
      ignored[original[key]] = 'BatchNorm step counter (no Flax counterpart)'
      continue
    entry = by_key.get(key)
    if entry is None:
      raise ConvertError(f'source tensor {original[key]} has no destination in the masked '
                         f'autoencoder of {config}')
    target = flat_shapes[entry.collection][entry.path]
    expected = entry.torch_shape(target.shape)
    if tuple(value.shape) != expected:
      raise ConvertError(f'shape mismatch for {original[key]} (→ {entry.name}): the checkpoint '
                         f'has {tuple(value.shape)}, the model needs {expected}')
    if value.dtype.kind != 'f' and value.dtype.name != 'bfloat16':
      raise ConvertError(f'{original[key]} has dtype {value.dtype}, expected floating point')
    out[entry.collection][entry.path] = entry.to_flax(value).astype(target.dtype)
    loaded[entry.name] = original[key]
  missing = [e for e in entries if e.name not in loaded]
  if missing:
    e = missing[0]
    more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
    raise ConvertError(f'missing required tensor {e.torch_key} (for {e.name}, shape '
                       f'{e.torch_shape(flat_shapes[e.collection][e.path].shape)}){more}; a '
                       'Point-MAE pre-training checkpoint has all of them')
  report = {
      'format': FORMAT,
      'source': os.path.abspath(src),
      'source_sha256': sha256(src),
      'layout': 'point_mae_full',
      'layout_description': f'Point-MAE pre-training, the whole masked autoencoder (state dict '
                            f'at {container})',
      'state_dict_at': container,
      'config': config,
      'inferred_fields': [],
      'task': 'pretrain',
      'model': dict(fields),
      'counts': {'loaded': len(loaded), 'ignored': len(ignored), 'freshly_initialised': 0},
      'fresh_by_part': {},
      'loaded': loaded,
      'ignored': ignored,
      'freshly_initialised': [],
  }
  return Conversion({c: unflatten(v) for c, v in out.items()}, report)


def convert_seg_checkpoint(src: str, config: str, fields: Mapping[str, Any],
                           source: layouts.Source | None = None,
                           default: bool = False) -> Conversion:
  """A checkpoint → the part-segmentation network `fields` describe, strictly.

  A segmentation checkpoint (Point-MAE's `model_state_dict`, or this project's DAPT export) must
  provide every tensor of the network; a pre-training or backbone checkpoint provides the
  backbone, and the DAPT parts and the segmentation head are left freshly initialised. Every
  tensor of the file must land on a variable with the model's shape, or be on the layout's ignore
  list.

  Args:
    config: the `--config` spec (for the report and messages).
    default: the model is the layout's default (no --config was given).
  Raises:
    ConvertError: with a one-line message; nothing is written.
  """
  if source is None:
    source = layouts.read_source(pth_reader.read_pth(src))
  layout = source.layout
  hint = (f'the default model {config} does not fit; pass --config' if default
          else f'the model of {config}')

  def shown(key: str) -> str:
    return source.original.get(key, key)

  if source.unplaced:
    first = source.unplaced[0]
    more = f' (and {len(source.unplaced) - 1} more)' if len(source.unplaced) > 1 else ''
    raise ConvertError(f'source tensor {first} has no destination and is on no ignore list '
                       f'({layout.description}){more}')
  shapes = model_config.seg_variable_shapes(fields)
  try:
    entries = keymap.seg_entries_for_variables(shapes)
  except ValueError as e:
    raise ConvertError(f'internal: {e}') from None
  by_key = {e.torch_key: e for e in entries}
  flat_shapes = {c: flatten(shapes.get(c, {})) for c in ('params', 'batch_stats')}
  out = {'params': {}, 'batch_stats': {}}
  loaded = {}
  for key, value in source.tensors.items():
    entry = by_key.get(key)
    if entry is None:
      raise ConvertError(f'source tensor {shown(key)} has no destination in the segmentation '
                         f'network ({layout.name} layout; {hint})')
    target = flat_shapes[entry.collection][entry.path]
    expected = entry.torch_shape(target.shape)
    if tuple(value.shape) != expected:
      raise ConvertError(f'shape mismatch for {shown(key)} (→ {entry.name}): the checkpoint has '
                         f'{tuple(value.shape)}, the model needs {expected} ({hint})')
    if value.dtype.kind != 'f' and value.dtype.name != 'bfloat16':
      raise ConvertError(f'{shown(key)} has dtype {value.dtype}, expected floating point')
    out[entry.collection][entry.path] = entry.to_flax(value).astype(target.dtype)
    loaded[entry.name] = shown(key)
  required = [e for e in entries if layout.complete or e.part == keymap.BACKBONE]
  missing = [e for e in required if e.name not in loaded]
  if missing:
    e = missing[0]
    display = f'{source.outer_prefix}{layout.prefix}{e.torch_key}'
    target = flat_shapes[e.collection][e.path]
    more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
    raise ConvertError(f'missing required tensor {display} (for {e.name}, shape '
                       f'{e.torch_shape(target.shape)}){more}; layout: {layout.description}')
  fresh = [e for e in entries if e.name not in loaded]
  parts = (keymap.BACKBONE, keymap.CLS, keymap.DAPT, keymap.SEG_HEAD)
  report = {
      'format': FORMAT,
      'source': os.path.abspath(src),
      'source_sha256': sha256(src),
      'layout': layout.name,
      'layout_description': source.description,
      'state_dict_at': source.container,
      'config': config,
      'inferred_fields': [],
      'task': 'segmentation',
      'model': dict(fields),
      'counts': {'loaded': len(loaded), 'ignored': len(source.ignored), 'freshly_initialised':
                 len(fresh)},
      'fresh_by_part': {part: sum(e.part == part for e in fresh) for part in parts
                        if any(e.part == part for e in fresh)},
      'loaded': loaded,
      'ignored': source.ignored,
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
