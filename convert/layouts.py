"""Finds the state dict in a loaded checkpoint and recognises its layout (SPEC §3).

Every layout turns the file's keys into the DAPT release's key names (docs/architecture.md,
right-hand column) or marks them ignored, each for a reason listed below. A key that is neither
is an error raised later by the converter, naming the key.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import numpy as np

from convert import kinds
from convert import methods
from convert.errors import ConvertError

# Where the state dict sits in the top-level dict, in the order looked for. The Point-MAE and
# DAPT releases save {'base_model': ..., 'optimizer': ..., 'epoch': ..., 'metrics': ...};
# other code bases use 'model' or 'state_dict'; a bare state dict is accepted too.
STATE_DICT_KEYS = ('base_model', 'model', 'state_dict', 'model_state_dict')

# DataParallel / DistributedDataParallel wrap every key in this.
MODULE_PREFIX = 'module.'

# A key that only ReCon's encoder has (its image/text tokens and their attention branch).
_RECON_ONLY = re.compile(r'^MAE_encoder\.(img|text)_token$|_contrast\.')

# The part-segmentation head (Point-MAE's segmentation/models/pt.py; SPEC §8.5).
_SEGMENTATION_ONLY = re.compile(r'^(label_conv|propagation_0|convs[123]|bns[12])\.')

# The patch encoder's first layer: present in every layout that holds this encoder.
_ENCODER_PROBE = 'encoder.first_conv.0.weight'

# ---------------------------------------------------------------------------------------------
# Ignore lists: source keys with no place in the DAPT classifier, and why. Patterns are matched
# against the key after any `module.` prefix is removed.
# ---------------------------------------------------------------------------------------------
_COUNTER = (r'(^|\.)num_batches_tracked$', kinds.COUNTER_REASON)

POINT_MAE_IGNORE = (
    # Point-MAE's pre-training model (Point_MAE): everything outside MAE_encoder belongs to the
    # masked-reconstruction decoder, which fine-tuning throws away.
    (r'^MAE_decoder\.', 'Point-MAE decoder transformer'),
    (r'^decoder_pos_embed\.', 'Point-MAE decoder position embedding'),
    (r'^increase_dim\.', 'Point-MAE decoder point-prediction head'),
    (r'^mask_token$', 'Point-MAE decoder mask token'),
    _COUNTER,
)
RECON_IGNORE = POINT_MAE_IGNORE + (
    # ReCon's pre-training model (ReCon): Point-MAE's decoder as above, plus the image and text
    # global tokens, the cross-attention branch each encoder block runs for them, the frozen
    # CLIP teachers and the projections onto them. The DAPT release loads ReCon with
    # strict=False, which drops exactly these.
    (r'^MAE_encoder\.(img|text)_(token|pos)$', 'ReCon image/text global token'),
    (r'^MAE_encoder\.blocks\.blocks\.\d+\.(norm1|norm2|mlp|attn)_contrast\.',
     'ReCon cross-attention branch of the global tokens'),
    (r'^(img|text)_encoder\.', 'ReCon frozen CLIP teacher'),
    (r'^(img|text)_proj\.', 'ReCon projection onto the teacher'),
    (r'^cls_proj\.', 'ReCon self-contrastive projection'),
)
ACT_IGNORE = (
    # ACT's pre-training model (ACT_PointDistillation): the encoder's own pre-training heads, the
    # masked decoder, the frozen cross-modal teacher, and the decoder's class position.
    (r'^ACT_encoder\.lm_head\.', 'ACT encoder token-prediction head (pre-training only)'),
    (r'^ACT_encoder\.cls_head\.', 'ACT encoder contrastive head (pre-training only)'),
    (r'^ACT_decoder\.', 'ACT decoder transformer'),
    (r'^decoder_pos_embed\.', 'ACT decoder position embedding'),
    (r'^mask_token$', 'ACT decoder mask token'),
    (r'^cls_pos$', 'ACT decoder class position (the encoder has its own)'),
    (r'^proj_head\.', 'ACT feature-distillation projection'),
    (r'^dvae_tokenizer\.', 'ACT cross-modal teacher (dVAE tokenizer)'),
    _COUNTER,
)
POINT_BERT_IGNORE = (
    # Point-BERT's pre-training model (Point_BERT): two encoders (query and momentum key), the
    # dVAE tokenizer and the MoCo queue. As in the DAPT release, the momentum encoder
    # (transformer_k) is the backbone taken; its pre-training heads are dropped.
    (r'^transformer_q\.', 'Point-BERT query encoder (the momentum encoder transformer_k is used)'),
    (r'^transformer_k\.lm_head\.', 'Point-BERT token-prediction head (pre-training only)'),
    (r'^transformer_k\.cls_head\.', 'Point-BERT contrastive head (pre-training only)'),
    (r'^transformer_k\.mask_token$', 'Point-BERT mask token (pre-training only)'),
    (r'^dvae\.', 'Point-BERT dVAE tokenizer'),
    (r'^queue(_ptr)?$', 'Point-BERT MoCo queue'),
    _COUNTER,
)
BACKBONE_IGNORE = (
    # A fine-tuned Point-MAE-style model without DAPT parts used as a backbone: its task head
    # was trained for another head input and task; DAPT trains its own.
    (r'^cls_head_finetune\.', 'task head of a non-DAPT fine-tuning (DAPT trains its own)'),
    _COUNTER,
)
DAPT_IGNORE = (_COUNTER,)

def segmentation_layout(method: str) -> str:
  """The layout name of `method`'s part-segmentation network as this project exports it."""
  return f'{method}_seg'


@dataclasses.dataclass(frozen=True)
class Layout:
  name: str          # short id, written to the report
  description: str   # one line for people
  prefix: str        # removed from the keys taken ('' for none)
  ignore: tuple      # ((regex, reason), ...)
  complete: bool     # True: every model tensor must come from the file (a fine-tuned model)
  method: str | None = None  # the config.model.peft a complete classifier checkpoint is a model of


LAYOUTS = {
    'point_mae': Layout('point_mae', 'Point-MAE pre-training (MAE_encoder.*)', 'MAE_encoder.',
                        POINT_MAE_IGNORE, False),
    'recon': Layout('recon', 'ReCon pre-training (MAE_encoder.* with image/text tokens)',
                    'MAE_encoder.', RECON_IGNORE, False),
    'act': Layout('act', 'ACT pre-training (ACT_encoder.*)', 'ACT_encoder.', ACT_IGNORE, False),
    'point_bert': Layout('point_bert', 'Point-BERT pre-training (transformer_k.*)',
                         'transformer_k.', POINT_BERT_IGNORE, False),
    'backbone': Layout('backbone', 'Point-MAE-style encoder without DAPT parts', '',
                       BACKBONE_IGNORE, False),
    # Fine-tuned classifiers of the PEFT methods with a release (each method's RELEASE).
    **{m: Layout(m, r.description, '', DAPT_IGNORE, True, m)
       for m, r in methods.RELEASES.items() if r.own_keys},
    # Part segmentation: Point-MAE's fine-tuned network (`model_state_dict`), and this project's
    # segmentation networks written back by `--to-torch` that are told apart (`<method>_seg`: the
    # same keys plus the method's, release names; DAPT's).
    'point_mae_seg': Layout('point_mae_seg', 'Point-MAE part segmentation fine-tuned', '',
                            DAPT_IGNORE, True),
    **{segmentation_layout(m): Layout(segmentation_layout(m), r.segmentation, '', DAPT_IGNORE,
                                      True)
       for m, r in methods.RELEASES.items() if r.own_keys and r.segmentation},
    # The whole masked autoencoder, read as such only when a pre-training config asks for it:
    # strictly, its BatchNorm counters being the only keys without a variable.
    'point_mae_full': Layout('point_mae_full', 'Point-MAE pre-training, the whole masked '
                             'autoencoder', '', (), True),
}


@dataclasses.dataclass
class Source:
  """A checkpoint's tensors, renamed to release keys, plus what was set aside."""
  layout: Layout
  container: str                   # where the state dict sat: 'base_model', ..., or '(top level)'
  outer_prefix: str                # 'base_model.' when the keys carried it, else ''
  tensors: dict[str, np.ndarray]   # release key → array (PyTorch layout)
  original: dict[str, str]         # release key → key as written in the file
  ignored: dict[str, str]          # key as written in the file → reason
  unplaced: list[str]              # keys as written in the file that no rule accounts for

  @property
  def description(self) -> str:
    extra = f', keys under {self.outer_prefix!r}' if self.outer_prefix else ''
    return f'{self.layout.description}{extra}, state dict at {self.container}'


def _is_state_dict(obj: Any) -> bool:
  return (isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(k, str) for k in obj)
          and sum(isinstance(v, np.ndarray) for v in obj.values()) >= len(obj) / 2)


def find_state_dict(obj: Any) -> tuple[str, dict]:
  """The state dict inside a loaded checkpoint, and where it was."""
  if not isinstance(obj, Mapping):
    raise ConvertError(f'not a checkpoint: the file holds a {type(obj).__name__}, not a dict')
  for key in STATE_DICT_KEYS:
    if key in obj and _is_state_dict(obj[key]):
      return key, dict(obj[key])
  if _is_state_dict(obj):
    return '(top level)', dict(obj)
  keys = ', '.join(sorted(map(str, obj))[:6])
  raise ConvertError(f'not a checkpoint: no state dict under {"/".join(STATE_DICT_KEYS)} and the '
                     f'top level is not one (it has: {keys})')


def _strip_module(key: str) -> str:
  while key.startswith(MODULE_PREFIX):
    key = key[len(MODULE_PREFIX):]
  return key


def _detect(keys: list[str]) -> Layout | None:
  if any(k.startswith('MAE_encoder.') for k in keys):
    recon = any(_RECON_ONLY.search(k) for k in keys)
    return LAYOUTS['recon' if recon else 'point_mae']
  if any(k.startswith('ACT_encoder.') for k in keys):
    return LAYOUTS['act']
  if any(k.startswith('transformer_k.') for k in keys):
    return LAYOUTS['point_bert']
  own = {m: re.compile(r.own_keys) for m, r in methods.RELEASES.items() if r.own_keys}
  if any(_SEGMENTATION_ONLY.search(k) for k in keys):
    return next((LAYOUTS[segmentation_layout(m)] for m, rx in own.items()
                 if segmentation_layout(m) in LAYOUTS and any(rx.search(k) for k in keys)),
                LAYOUTS['point_mae_seg'])
  if _ENCODER_PROBE in keys or any(k.startswith('blocks.blocks.') for k in keys):
    return next((LAYOUTS[m] for m, rx in own.items() if any(rx.search(k) for k in keys)),
                LAYOUTS['backbone'])
  return None


def read_source(checkpoint: Any, layout: Layout | None = None) -> Source:
  """Finds the state dict, recognises its layout (unless given) and renames its keys to release
  keys."""
  container, state_dict = find_state_dict(checkpoint)
  non_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, np.ndarray))
  if non_tensors:
    raise ConvertError(f'state dict entry {non_tensors[0]!r} is not a tensor')
  stripped = {}
  for key, value in state_dict.items():
    plain = _strip_module(key)
    if plain in stripped:
      raise ConvertError(f'two keys become {plain!r} once the {MODULE_PREFIX!r} prefix is removed')
    stripped[plain] = (key, value)

  keys = list(stripped)
  layout = layout or _detect(keys)
  outer = ''
  if layout is None and any(k.startswith('base_model.') for k in keys):
    # Saved with the wrapper's attribute name inside the dict (ReCon and others): look again
    # under it. Keys outside `base_model.` then need a rule like any other.
    outer = 'base_model.'
    layout = _detect([k[len(outer):] for k in keys if k.startswith(outer)])
  if layout is None:
    shown = ', '.join(keys[:4]) + (', ...' if len(keys) > 4 else '')
    raise ConvertError(
        'unknown checkpoint layout: found none of MAE_encoder.*, ACT_encoder.*, transformer_k.*, '
        f'base_model.* or the DAPT / Point-MAE encoder keys ({_ENCODER_PROBE}); keys: {shown}')

  ignore = [(re.compile(p), why) for p, why in layout.ignore]
  tensors, original, ignored, unplaced = {}, {}, {}, []
  for plain, (key, value) in stripped.items():
    inner = plain[len(outer):] if outer and plain.startswith(outer) else None
    name = inner if inner is not None else plain
    reason = next((why for rx, why in ignore if rx.search(name)), None)
    if reason is not None:
      ignored[key] = reason
    elif inner is not None or not outer:
      if layout.prefix and name.startswith(layout.prefix):
        tensors[name[len(layout.prefix):]] = value
        original[name[len(layout.prefix):]] = key
      elif layout.prefix:
        unplaced.append(key)
      else:
        tensors[name] = value
        original[name] = key
    else:
      unplaced.append(key)
  return Source(layout, container, outer, tensors, original, ignored, unplaced)
