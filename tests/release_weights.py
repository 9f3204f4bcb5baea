"""Test-side mapping of a release-layout PyTorch state dict onto Flax variables.

Written from the naming table in docs/architecture.md, independently of `convert/`, so the
model parity tests do not depend on the converter (and the converter's own tests can be checked
against this one).
"""
import numpy as np

from dapt_jax import partition

# (Flax module path, PyTorch module key, kind); '{i}' is the block index.
_GLOBAL = [
    ('encoder/fc1', 'encoder.first_conv.0', 'conv'),
    ('encoder/bn1', 'encoder.first_conv.1', 'bn'),
    ('encoder/fc2', 'encoder.first_conv.3', 'conv'),
    ('encoder/fc3', 'encoder.second_conv.0', 'conv'),
    ('encoder/bn2', 'encoder.second_conv.1', 'bn'),
    ('encoder/fc4', 'encoder.second_conv.3', 'conv'),
    ('patch_tfts', '_1', 'tfts'),
    ('pos_embed/fc1', 'pos_embed.0', 'linear'),
    ('pos_embed/fc2', 'pos_embed.2', 'linear'),
    ('norm', 'norm', 'ln'),
    ('norm_tfts', '_2', 'tfts'),
    ('head/fc1', 'cls_head_finetune.0', 'linear'),
    ('head/bn1', 'cls_head_finetune.1', 'bn'),
    ('head/fc2', 'cls_head_finetune.4', 'linear'),
    ('head/bn2', 'cls_head_finetune.5', 'bn'),
    ('head/fc3', 'cls_head_finetune.8', 'linear'),
]
_BLOCK = [
    ('norm1', 'norm1', 'ln'),
    ('norm1_tfts', 'tfts_{}_1', 'tfts_in'),
    ('attn/qkv', 'attn.qkv', 'linear_nobias'),
    ('attn/qkv_tfts', 'attn.tfts_{}_1', 'tfts_in'),
    ('attn/proj', 'attn.proj', 'linear'),
    ('attn/proj_tfts', 'attn.tfts_{}_2', 'tfts_in'),
    ('norm2', 'norm2', 'ln'),
    ('norm2_tfts', 'tfts_{}_2', 'tfts_in'),
    ('mlp/fc1', 'mlp.fc1', 'linear'),
    ('mlp/fc1_tfts', 'mlp.tfts_{}_1', 'tfts_in'),
    ('mlp/fc2', 'mlp.fc2', 'linear'),
    ('mlp/fc2_tfts', 'mlp.tfts_{}_2', 'tfts_in'),
    ('adapter/norm', 'Adapter_MLP.adapter_layer_norm_before', 'ln'),
    ('adapter/scale', 'Adapter_MLP.scale', 'linear'),
    ('adapter/down_proj', 'Adapter_MLP.down_proj', 'linear'),
    ('adapter/up_proj', 'Adapter_MLP.up_proj', 'linear'),
    ('prompt_tfts', 'tfts_{}_3', 'tfts_in'),
]


def module_table(depth):
  rows = list(_GLOBAL)
  for i in range(depth):
    for fpath, tkey, kind in _BLOCK:
      rows.append((f'blocks_{i}/{fpath}', f'blocks.blocks.{i}.{tkey}', kind))
  return rows


def torch_to_flax(state_dict, depth, dtype=np.float32):
  """{release key: tensor} → {'params': ..., 'batch_stats': ...} (numpy, float32 by default)."""
  sd = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
  params, stats = {}, {}
  params['cls_token'] = sd['cls_token']
  params['cls_pos'] = sd['cls_pos']
  for fpath, tkey, kind in module_table(depth):
    if kind == 'conv':
      params[f'{fpath}/kernel'] = sd[f'{tkey}.weight'][:, :, 0].T
      params[f'{fpath}/bias'] = sd[f'{tkey}.bias']
    elif kind in ('linear', 'linear_nobias'):
      params[f'{fpath}/kernel'] = sd[f'{tkey}.weight'].T
      if kind == 'linear':
        params[f'{fpath}/bias'] = sd[f'{tkey}.bias']
    elif kind == 'ln':
      params[f'{fpath}/scale'] = sd[f'{tkey}.weight']
      params[f'{fpath}/bias'] = sd[f'{tkey}.bias']
    elif kind == 'bn':
      params[f'{fpath}/scale'] = sd[f'{tkey}.weight']
      params[f'{fpath}/bias'] = sd[f'{tkey}.bias']
      stats[f'{fpath}/mean'] = sd[f'{tkey}.running_mean']
      stats[f'{fpath}/var'] = sd[f'{tkey}.running_var']
    elif kind == 'tfts':
      params[f'{fpath}/gamma'] = sd[f'tfts_gamma{tkey}']
      params[f'{fpath}/beta'] = sd[f'tfts_beta{tkey}']
    elif kind == 'tfts_in':
      prefix, _, suffix = tkey.partition('{}')
      params[f'{fpath}/gamma'] = sd[f'{prefix}gamma{suffix}']
      params[f'{fpath}/beta'] = sd[f'{prefix}beta{suffix}']
  cast = lambda d: partition.unflatten({k: np.ascontiguousarray(v, dtype)
                                        for k, v in d.items()})
  return {'params': cast(params), 'batch_stats': cast(stats)}


def flax_key_for_torch_param(depth):
  """{release parameter name: Flax params path} for comparing gradients."""
  out = {'cls_token': 'cls_token', 'cls_pos': 'cls_pos'}
  for fpath, tkey, kind in module_table(depth):
    if kind in ('conv', 'linear', 'linear_nobias'):
      out[f'{tkey}.weight'] = f'{fpath}/kernel'
      if kind != 'linear_nobias':
        out[f'{tkey}.bias'] = f'{fpath}/bias'
    elif kind in ('ln', 'bn'):
      out[f'{tkey}.weight'] = f'{fpath}/scale'
      out[f'{tkey}.bias'] = f'{fpath}/bias'
    elif kind == 'tfts':
      out[f'tfts_gamma{tkey}'] = f'{fpath}/gamma'
      out[f'tfts_beta{tkey}'] = f'{fpath}/beta'
    else:
      prefix, _, suffix = tkey.partition('{}')
      out[f'{prefix}gamma{suffix}'] = f'{fpath}/gamma'
      out[f'{prefix}beta{suffix}'] = f'{fpath}/beta'
  return out
