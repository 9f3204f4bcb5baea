"""The checkpoint converter (convert/) and converted-checkpoint loading (dapt_jax/pretrained.py).

PyTorch checkpoints are made here with torch: a Point-MAE pre-training checkpoint of the real
shapes (values compared, no forward), a tiny full DAPT checkpoint from the tests' PyTorch
reference (logits ≤ 1e-4, and torch → Flax → torch bit-exact), the other pre-training layouts,
and bad inputs (each: a one-line `error:`, exit status 2, nothing at DST).
"""
import builtins
import collections
import copy
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from convert import pth_reader  # noqa: E402
from convert.__main__ import main  # noqa: E402
from convert.errors import ConvertError  # noqa: E402
from convert.errors import UnsafeCheckpointError  # noqa: E402
from dapt_jax.models import classifier as model_lib  # noqa: E402
from dapt_jax import partition  # noqa: E402
from dapt_jax import pretrained  # noqa: E402
from tests import release_weights  # noqa: E402
from tests import torch_reference as R  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(trans_dim=48, depth=2, num_heads=4, mlp_ratio=4.0, num_group=8, group_size=4,
            rank=4, num_classes=5, head_tokens=('cls', 'prompt', 'patch'))
TINY_FIELDS = dict(TINY, encoder_dims=48, drop_path_rate=0.0, drop_adapter_rate=0.0,
                   freeze_bn_stats=False, dtype='float32')

CONFIG_TEMPLATE = '''
import ml_collections


def get_config(arg=None):
  model = {fields!r}
  if arg:
    model['rank'] = int(arg)
  return ml_collections.ConfigDict({{'model': model}})
'''

CONV1D_KEYS = ('encoder.first_conv.0.weight', 'encoder.first_conv.3.weight',
               'encoder.second_conv.0.weight', 'encoder.second_conv.3.weight')


# ----------------------------------------------------------------------------- helpers

def run(argv, capsys):
  """Runs the CLI in-process; returns (exit status, stdout, stderr)."""
  rc = main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return rc, out, err


def assert_refused(rc, err, dst, *fragments):
  """A user error: status 2, one `error:` line naming `fragments`, nothing at or beside DST."""
  assert rc == 2, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  assert not os.path.lexists(dst)
  parent = os.path.dirname(os.path.abspath(dst))
  assert not [n for n in os.listdir(parent) if '.converting-' in n or '.writing-' in n]


def randomise(model, seed=0):
  """Random weights everywhere (BN statistics and up_proj included), counters non-zero."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in model.named_parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    for name, b in model.named_buffers():
      if name.endswith('running_var'):
        b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
      elif name.endswith('running_mean'):
        b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
      else:
        b.fill_(37)
  return model


def write_config(path, **overrides):
  path.write_text(CONFIG_TEMPLATE.format(fields=dict(TINY_FIELDS, **overrides)))
  return str(path)


def backbone_state_dict(full_sd, seed=0):
  """The Point-MAE encoder part of a release state dict, random values (no cls, DAPT or head)."""
  gen = torch.Generator().manual_seed(seed)
  out = collections.OrderedDict()
  for k, v in full_sd.items():
    if 'tfts' in k or 'Adapter' in k or k.startswith('cls_'):
      continue
    out[k] = torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
  return out


def expected_flax(key, value):
  """Where a release tensor lands and how it is laid out, written out independently."""
  value = value.numpy()
  if key in CONV1D_KEYS:
    return value[:, :, 0].T
  if key.endswith('.weight') and value.ndim == 2:
    return value.T
  return value


def flax_name(key, depth):
  """'params/...' or 'batch_stats/...' for a release key (the tests' own naming table)."""
  names = release_weights.flax_key_for_torch_param(depth)
  if key in names:
    return 'params/' + names[key]
  module, _, leaf = key.rpartition('.')
  bn = names[module + '.weight'].rsplit('/', 1)[0]
  return f'batch_stats/{bn}/' + {'running_mean': 'mean', 'running_var': 'var'}[leaf]


def restore_flat(dst):
  """The converted checkpoint as the DST contract promises: orbax restorable, flattened."""
  import orbax.checkpoint as ocp
  tree = ocp.StandardCheckpointer().restore(os.path.abspath(dst))
  return {f'{c}/{k}': v for c in tree for k, v in partition.flatten(tree[c]).items()}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope='module')
def tiny_torch():
  torch.manual_seed(0)
  return randomise(R.TorchDAPT(**TINY)).eval()


@pytest.fixture(scope='module')
def dapt_pth(tiny_torch, tmp_path_factory):
  """A DAPT fine-tuned checkpoint as the release saves it."""
  path = tmp_path_factory.mktemp('dapt') / 'dapt_hardest.pth'
  optimizer = torch.optim.AdamW(R.set_release_trainable(R.TorchDAPT(**TINY)).parameters())
  torch.save({'base_model': tiny_torch.state_dict(), 'optimizer': optimizer.state_dict(),
              'epoch': 3, 'metrics': {'acc': torch.tensor(85.08)},
              'best_metrics': {'acc': torch.tensor(85.08)}}, path)
  return path


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
  return write_config(tmp_path_factory.mktemp('cfg') / 'tiny.py')


@pytest.fixture(scope='module')
def tiny_mae_pth(tiny_torch, tmp_path_factory):
  """A tiny Point-MAE pre-training checkpoint (DataParallel prefixes, decoder keys)."""
  encoder = backbone_state_dict(tiny_torch.state_dict())
  sd = {'module.MAE_encoder.' + k: v for k, v in encoder.items()}
  sd['module.mask_token'] = torch.zeros(1, 1, 48)
  sd['module.MAE_decoder.blocks.0.norm1.weight'] = torch.ones(48)
  path = tmp_path_factory.mktemp('mae') / 'tiny_mae.pth'
  torch.save({'base_model': sd, 'epoch': 300}, path)
  return path


# ----------------------------------------------------------------------------- Point-MAE

def test_point_mae_checkpoint_of_real_shapes_converts(tmp_path, capsys):
  full = R.TorchDAPT().state_dict()  # the release's shapes (C 384, 12 blocks)
  encoder = backbone_state_dict(full, seed=1)
  sd = collections.OrderedDict(('module.MAE_encoder.' + k, v) for k, v in encoder.items())
  decoder = {
      'module.mask_token': torch.zeros(1, 1, 384),
      'module.decoder_pos_embed.0.weight': torch.randn(128, 3),
      'module.decoder_pos_embed.2.bias': torch.randn(384),
      'module.MAE_decoder.blocks.0.attn.qkv.weight': torch.randn(1152, 384),
      'module.MAE_decoder.norm.weight': torch.randn(384),
      'module.increase_dim.0.weight': torch.randn(96, 384, 1),
  }
  sd.update(decoder)
  src, dst = tmp_path / 'pointmae_pretrain.pth', tmp_path / 'pointmae'
  torch.save({'base_model': sd, 'optimizer': {}, 'epoch': 300}, src)

  rc, out, err = run([src, dst], capsys)
  assert rc == 0, err
  assert 'Point-MAE pre-training' in out and 'freshly initialised' in out

  flat = restore_flat(dst)
  depth = 12
  weights = {k: v for k, v in encoder.items() if not k.endswith('num_batches_tracked')}
  assert set(flat) == {flax_name(k, depth) for k in weights}
  for key, value in weights.items():
    got = flat[flax_name(key, depth)]
    want = expected_flax(key, value)
    assert got.shape == want.shape and got.dtype == np.float32, key
    np.testing.assert_array_equal(got, want, err_msg=key)
  # Spot-check the transposes explicitly.
  w = encoder['encoder.second_conv.3.weight'].numpy()  # Conv1d [out=384, in=512, 1]
  np.testing.assert_array_equal(flat['params/encoder/fc4/kernel'], w[:, :, 0].T)
  q = encoder['blocks.blocks.5.attn.qkv.weight'].numpy()  # Linear [out=1152, in=384]
  np.testing.assert_array_equal(flat['params/blocks_5/attn/qkv/kernel'], q.T)

  report = json.loads((dst / 'report.json').read_text())
  assert report['layout'] == 'point_mae'
  assert report['state_dict_at'] == 'base_model'
  assert set(decoder) <= set(report['ignored'])
  assert all(k in report['ignored'] for k in sd if k.endswith('num_batches_tracked'))
  assert report['model']['trans_dim'] == 384 and report['model']['depth'] == 12
  fresh = set(report['freshly_initialised'])
  assert {'params/cls_token', 'params/cls_pos', 'params/head/fc1/kernel',
          'batch_stats/head/bn1/mean', 'params/blocks_11/adapter/up_proj/kernel',
          'params/blocks_0/attn/qkv_tfts/gamma', 'params/patch_tfts/beta'} <= fresh
  assert not fresh & set(flat)
  assert len(fresh) + len(flat) == len(report['loaded']) + len(fresh) == 438
  assert (report['loaded']['params/encoder/fc1/kernel'] ==
          'module.MAE_encoder.encoder.first_conv.0.weight')


def test_merge_pretrained_keeps_fresh_parts_and_is_strict(tiny_mae_pth, tiny_config, tmp_path,
                                                         capsys):
  dst = tmp_path / 'mae'
  rc, _, err = run([tiny_mae_pth, dst, '--config', tiny_config], capsys)
  assert rc == 0, err
  net = model_lib.build_model(TINY_FIELDS)
  shapes = jax.eval_shape(lambda k: model_lib.init_variables(net, k, 64), jax.random.key(0))
  init = jax.tree.map(lambda s: np.full(s.shape, 7.0, s.dtype), shapes)

  loaded = pretrained.load_converted(dst)
  merged, report = pretrained.merge_pretrained(init, loaded)
  flat = {f'{c}/{k}': v for c in merged for k, v in partition.flatten(merged[c]).items()}
  loaded_flat = {f'{c}/{k}': v for c in loaded for k, v in partition.flatten(loaded[c]).items()}
  assert sorted(report['loaded']) == sorted(loaded_flat)
  assert set(report['freshly_initialised']) == set(flat) - set(loaded_flat)
  for name, value in loaded_flat.items():
    np.testing.assert_array_equal(np.asarray(flat[name]), value)
  for name in report['freshly_initialised']:
    assert np.all(np.asarray(flat[name]) == 7.0)
  assert 'params/cls_token' in report['freshly_initialised']

  bad = jax.tree.map(lambda x: x, loaded)
  bad['params']['encoder']['fc1']['kernel'] = np.zeros((3, 7), np.float32)
  with pytest.raises(pretrained.PretrainedError, match=r'encoder/fc1/kernel.*\(3, 7\).*\(3, 128\)'):
    pretrained.merge_pretrained(init, bad)
  extra = jax.tree.map(lambda x: x, loaded)
  extra['params']['blocks_9'] = {'norm1': {'scale': np.ones(48, np.float32)}}
  with pytest.raises(pretrained.PretrainedError, match='blocks_9/norm1/scale'):
    pretrained.merge_pretrained(init, extra)
  with pytest.raises(pretrained.PretrainedError, match='no such directory'):
    pretrained.load_converted(tmp_path / 'nowhere')


# ----------------------------------------------------------------------------- full DAPT

def test_dapt_checkpoint_matches_reference_and_round_trips(dapt_pth, tiny_torch, tiny_config,
                                                          tmp_path, capsys):
  dst = tmp_path / 'dapt'
  rc, out, err = run([dapt_pth, dst, '--config', tiny_config], capsys)
  assert rc == 0, err
  assert 'freshly initialised 0' in out
  report = json.loads((dst / 'report.json').read_text())
  assert report['layout'] == 'dapt' and report['freshly_initialised'] == []

  # Logits of the converted Flax model against the PyTorch reference (eval mode), both in
  # float64 so the comparison holds to float64 rounding on any CPU: ~20 layers of sums of at most
  # 512 terms bound the relative error by 20 * 512 * 2**-53 = 1.1e-12 (tests/test_model.py,
  # F64_RTOL, derives the 1e-10 used here); a misplaced or transposed tensor gives O(1).
  variables = pretrained.load_converted(dst)
  net = model_lib.build_model(TINY_FIELDS).clone(dtype=np.float64)
  points = np.random.default_rng(0).normal(size=(3, 64, 3))
  with jax.enable_x64(True):
    variables64 = jax.tree.map(lambda v: np.asarray(v, np.float64), variables)
    logits = np.asarray(jax.jit(net.apply, static_argnames='train')(variables64, points,
                                                                      train=False))
  with torch.no_grad():
    expected = copy.deepcopy(tiny_torch).double()(torch.from_numpy(points)).numpy()
  assert logits.dtype == expected.dtype == np.float64
  assert np.abs(logits - expected).max() <= 1e-10 * np.abs(expected).max()

  # And back: bit-exact, loadable strictly by the release's model.
  back = tmp_path / 'back.pth'
  rc, out, err = run(['--to-torch', dst, back], capsys)
  assert rc == 0, err
  restored = torch.load(back, weights_only=True)
  assert list(restored) == ['base_model']
  sd, original = restored['base_model'], tiny_torch.state_dict()
  assert set(sd) == set(original)
  for key, value in original.items():
    if key.endswith('num_batches_tracked'):
      assert sd[key].dtype == torch.int64 and sd[key].shape == () and int(sd[key]) == 0
    else:
      assert sd[key].dtype == value.dtype == torch.float32, key
      assert torch.equal(sd[key], value), key
  R.TorchDAPT(**TINY).load_state_dict(sd, strict=True)


def test_dapt_model_inferred_without_config(dapt_pth, tmp_path, capsys):
  dst = tmp_path / 'inferred'
  rc, out, err = run([dapt_pth, dst, '-v'], capsys)
  assert rc == 0, err
  assert ('params/blocks_1/adapter/down_proj/kernel ← '
          'blocks.blocks.1.Adapter_MLP.down_proj.weight') in out
  model = json.loads((dst / 'report.json').read_text())['model']
  for field in ('trans_dim', 'depth', 'rank', 'num_classes', 'mlp_ratio'):
    assert model[field] == TINY[field], field
  assert model['head_tokens'] == ['cls', 'prompt', 'patch']
  assert model['num_heads'] == 6  # not in the weights: the default config's


def test_ambiguous_head_asks_for_config(tmp_path, capsys):
  m = R.TorchDAPT(**dict(TINY, head_tokens=('cls', 'patch')))
  src, dst = tmp_path / 'modelnet.pth', tmp_path / 'out'
  torch.save({'base_model': m.state_dict()}, src)
  rc, _, err = run([src, dst], capsys)
  assert_refused(rc, err, dst, '--config', '2 × trans_dim')
  cfg = write_config(tmp_path / 'cls_patch.py', head_tokens=('cls', 'patch'))
  rc, _, err = run([src, dst, '--config', cfg], capsys)
  assert rc == 0, err


# ----------------------------------------------------------------------------- other layouts

def _layout_case(name, tiny_torch):
  enc = backbone_state_dict(tiny_torch.state_dict(), seed=2)
  cls = {'cls_token': torch.randn(1, 1, 48), 'cls_pos': torch.randn(1, 1, 48)}
  if name == 'act':
    sd = {f'ACT_encoder.{k}': v for k, v in {**enc, **cls}.items()}
    sd.update({'ACT_encoder.lm_head.weight': torch.randn(8, 48),
               'ACT_encoder.cls_head.0.weight': torch.randn(8, 48),
               'ACT_decoder.blocks.0.norm1.weight': torch.randn(48),
               'mask_token': torch.zeros(1, 1, 48),
               'cls_pos': torch.randn(1, 1, 48),
               'dvae_tokenizer.encoder.0.weight': torch.randn(4, 3),
               'proj_head.weight': torch.randn(48, 48)})
    return {'base_model': sd}, 'act', cls
  if name == 'point_bert':
    sd = {f'module.transformer_k.{k}': v for k, v in {**enc, **cls}.items()}
    sd.update({f'module.transformer_q.{k}': torch.zeros_like(v) for k, v in enc.items()})
    sd.update({'module.transformer_k.lm_head.weight': torch.randn(8, 48),
               'module.transformer_k.cls_head.0.weight': torch.randn(8, 48),
               'module.dvae.dgcnn_1.0.weight': torch.randn(4, 4),
               'module.queue': torch.randn(8, 16),
               'module.queue_ptr': torch.zeros(1, dtype=torch.long)})
    return {'base_model': sd}, 'point_bert', cls
  if name == 'recon':
    sd = {f'module.MAE_encoder.{k}': v for k, v in {**enc, **cls}.items()}
    for i in range(2):
      sd[f'module.MAE_encoder.blocks.blocks.{i}.norm1_contrast.weight'] = torch.randn(48)
      sd[f'module.MAE_encoder.blocks.blocks.{i}.attn_contrast.kv.weight'] = torch.randn(96, 48)
      sd[f'module.MAE_encoder.blocks.blocks.{i}.mlp_contrast.fc1.bias'] = torch.randn(192)
    sd.update({'module.MAE_encoder.img_token': torch.randn(1, 1, 48),
               'module.MAE_encoder.text_pos': torch.randn(1, 1, 48),
               'module.mask_token': torch.zeros(1, 1, 48),
               'module.MAE_decoder.norm.weight': torch.randn(48),
               'module.img_encoder.conv1.weight': torch.randn(4, 3, 2, 2),
               'module.text_proj.weight': torch.randn(16, 48),
               'module.cls_proj.1.running_mean': torch.randn(128)})
    return {'base_model': sd}, 'recon', cls
  if name == 'base_model_prefix':
    sd = {f'base_model.{k}': v for k, v in enc.items()}
    return {'model': sd}, 'backbone', {}
  if name == 'bare':
    return dict(enc), 'backbone', {}
  if name == 'state_dict_key':
    return {'state_dict': {f'module.MAE_encoder.{k}': v for k, v in enc.items()}}, 'point_mae', {}
  raise ValueError(name)


@pytest.mark.parametrize('name', ['act', 'point_bert', 'recon', 'base_model_prefix', 'bare',
                                  'state_dict_key'])
def test_other_layouts_convert(name, tiny_torch, tiny_config, tmp_path, capsys):
  checkpoint, layout, cls = _layout_case(name, tiny_torch)
  src, dst = tmp_path / f'{name}.pth', tmp_path / 'out'
  torch.save(checkpoint, src)
  rc, _, err = run([src, dst, '--config', tiny_config], capsys)
  assert rc == 0, err
  report = json.loads((dst / 'report.json').read_text())
  assert report['layout'] == layout
  flat = restore_flat(dst)
  assert len([n for n in flat if n.startswith('params/blocks_1/')]) == 11  # a block's backbone
  for key, value in cls.items():
    np.testing.assert_array_equal(flat[f'params/{key}'], value.numpy())
  if layout == 'point_bert':  # the momentum encoder is taken, not the (zeroed) query encoder
    assert np.abs(flat['params/blocks_0/attn/qkv/kernel']).sum() > 0
  if layout == 'act':
    assert report['ignored']['cls_pos'].startswith('ACT decoder')


def test_point_bert_reduce_dim_is_explained(tiny_torch, tiny_config, tmp_path, capsys):
  checkpoint, _, _ = _layout_case('point_bert', tiny_torch)
  checkpoint['base_model']['module.transformer_k.reduce_dim.weight'] = torch.randn(48, 256)
  src, dst = tmp_path / 'pb.pth', tmp_path / 'out'
  torch.save(checkpoint, src)
  rc, _, err = run([src, dst, '--config', tiny_config], capsys)
  assert_refused(rc, err, dst, 'module.transformer_k.reduce_dim.weight', 'reduce_dim')


# ----------------------------------------------------------------------------- bad inputs

def test_wrong_shape_names_key_and_both_shapes(dapt_pth, tmp_path, capsys):
  cfg = write_config(tmp_path / 'rank8.py', rank=8)
  dst = tmp_path / 'out'
  rc, _, err = run([dapt_pth, dst, '--config', cfg], capsys)
  assert_refused(rc, err, dst, 'blocks.blocks.0.Adapter_MLP', '(4, 48)', '(8, 48)')


def test_missing_required_tensor(tiny_torch, tiny_mae_pth, tiny_config, tmp_path, capsys):
  sd = tiny_torch.state_dict()
  del sd['blocks.blocks.1.mlp.fc2.bias']
  src, dst = tmp_path / 'incomplete.pth', tmp_path / 'out'
  torch.save({'base_model': sd}, src)
  rc, _, err = run([src, dst, '--config', tiny_config], capsys)
  assert_refused(rc, err, dst, 'missing required tensor blocks.blocks.1.mlp.fc2.bias')

  ckpt = torch.load(tiny_mae_pth, weights_only=True)
  del ckpt['base_model']['module.MAE_encoder.norm.weight']
  torch.save(ckpt, src)
  rc, _, err = run([src, dst, '--config', tiny_config, '--force'], capsys)
  assert_refused(rc, err, dst, 'missing required tensor MAE_encoder.norm.weight')


def test_tensor_without_destination(tiny_mae_pth, tiny_config, tmp_path, capsys):
  ckpt = torch.load(tiny_mae_pth, weights_only=True)
  ckpt['base_model']['module.MAE_encoder.extra_proj.weight'] = torch.ones(2, 2)
  ckpt['base_model']['module.something_else'] = torch.ones(2)
  src, dst = tmp_path / 'extra.pth', tmp_path / 'out'
  torch.save(ckpt, src)
  rc, _, err = run([src, dst, '--config', tiny_config], capsys)
  assert_refused(rc, err, dst, 'module.something_else', 'no destination')


def test_deeper_checkpoint_than_config(tiny_mae_pth, tmp_path, capsys):
  cfg = write_config(tmp_path / 'depth1.py', depth=1)
  dst = tmp_path / 'out'
  rc, _, err = run([tiny_mae_pth, dst, '--config', cfg], capsys)
  assert_refused(rc, err, dst, 'module.MAE_encoder.blocks.blocks.1.', 'depth 1')


@pytest.mark.parametrize('legacy', [False, True])
def test_truncated_file(dapt_pth, tmp_path, capsys, legacy):
  src, dst = tmp_path / 'truncated.pth', tmp_path / 'out'
  if legacy:
    ckpt = torch.load(dapt_pth, weights_only=True)
    buf = io.BytesIO()
    torch.save(ckpt, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
  else:
    data = dapt_pth.read_bytes()
  src.write_bytes(data[:len(data) * 2 // 3])
  rc, _, err = run([src, dst], capsys)
  assert_refused(rc, err, dst, str(src))


@pytest.mark.parametrize('content', ['text', 'random', 'list', 'zip'])
def test_not_a_checkpoint(content, tmp_path, capsys):
  src, dst = tmp_path / f'{content}.pth', tmp_path / 'out'
  if content == 'text':
    src.write_text('not a checkpoint\n')
  elif content == 'random':
    src.write_bytes(np.random.default_rng(0).bytes(4096))
  elif content == 'list':
    torch.save([torch.ones(3), 4], src)
  else:
    with zipfile.ZipFile(src, 'w') as z:
      z.writestr('readme.txt', 'hello')
  rc, _, err = run([src, dst], capsys)
  assert_refused(rc, err, dst, 'not a')


def test_unknown_layout(tmp_path, capsys):
  src, dst = tmp_path / 'resnet.pth', tmp_path / 'out'
  torch.save({'state_dict': {'conv1.weight': torch.ones(8, 3, 3, 3), 'fc.bias': torch.ones(10)}},
             src)
  rc, _, err = run([src, dst], capsys)
  assert_refused(rc, err, dst, 'unknown checkpoint layout', 'conv1.weight')


class _Exploit:
  """Unpickling this runs `exec(code)`: the classic hostile checkpoint."""

  def __init__(self, code):
    self.code = code

  def __reduce__(self):
    return builtins.exec, (self.code,)


class _SystemExploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize('form', ['torch_zip_exec', 'torch_zip_system', 'raw_pickle',
                                  'legacy_torch'])
def test_pickle_that_runs_code_is_refused(form, tiny_torch, tmp_path, capsys):
  marker = tmp_path / 'pwned'
  payload = _Exploit(f'open({str(marker)!r}, "w").write("ran")')
  checkpoint = {'base_model': tiny_torch.state_dict(), 'epoch': payload}
  src, dst = tmp_path / f'{form}.pth', tmp_path / 'out'
  if form == 'torch_zip_exec':
    torch.save(checkpoint, src)
  elif form == 'torch_zip_system':
    torch.save({**checkpoint, 'epoch': _SystemExploit(marker)}, src)
  elif form == 'raw_pickle':
    src.write_bytes(pickle.dumps(payload, protocol=2))
  else:
    torch.save(checkpoint, src, _use_new_zipfile_serialization=False)

  rc, _, err = run([src, dst], capsys)
  assert_refused(rc, err, dst, 'refusing to load')
  assert not marker.exists()
  with pytest.raises(UnsafeCheckpointError):
    pth_reader.read_pth(src)
  assert not marker.exists()
  # The payload is live: an ordinary unpickler does run it.
  if form == 'raw_pickle':
    pickle.loads(src.read_bytes())
    assert marker.read_text() == 'ran'


def test_existing_destination_needs_force(tiny_mae_pth, tiny_config, tmp_path, capsys):
  dst = tmp_path / 'out'
  dst.mkdir()
  (dst / 'keep').write_text('x')
  rc, _, err = run([tiny_mae_pth, dst, '--config', tiny_config], capsys)
  assert rc == 2 and 'already exists' in err and (dst / 'keep').exists()
  rc, _, err = run([tiny_mae_pth, dst, '--config', tiny_config, '--force'], capsys)
  assert rc == 0, err
  assert not (dst / 'keep').exists() and (dst / 'report.json').exists()


def test_to_torch_needs_a_complete_model(tiny_mae_pth, tiny_config, tmp_path, capsys):
  dst = tmp_path / 'mae'
  assert run([tiny_mae_pth, dst, '--config', tiny_config], capsys)[0] == 0
  out = tmp_path / 'back.pth'
  rc, _, err = run(['--to-torch', dst, out], capsys)
  assert_refused(rc, err, out, 'not a complete DAPT model')
  rc, _, err = run(['--to-torch', tmp_path / 'nowhere', out], capsys)
  assert_refused(rc, err, out, 'nowhere')


def test_to_torch_without_torch_says_how_to_install(dapt_pth, tiny_config, tmp_path, capsys,
                                                   monkeypatch):
  dst = tmp_path / 'dapt'
  assert run([dapt_pth, dst, '--config', tiny_config], capsys)[0] == 0
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now raises ImportError
  out = tmp_path / 'back.pth'
  rc, _, err = run(['--to-torch', dst, out], capsys)
  assert_refused(rc, err, out, 'pip install torch==2.13.0')


def test_bad_config_and_usage_errors_are_one_line(dapt_pth, tmp_path, capsys):
  dst = tmp_path / 'out'
  rc, _, err = run([dapt_pth, dst, '--config', tmp_path / 'missing.py'], capsys)
  assert_refused(rc, err, dst, 'missing.py')
  rc, _, err = run([dapt_pth], capsys)
  assert_refused(rc, err, dst, 'DST')
  variant = os.path.join(ROOT, 'configs', 'scanobjectnn.py') + ':nope'
  rc, _, err = run([dapt_pth, dst, '--config', variant], capsys)
  assert_refused(rc, err, dst, 'nope')


# ----------------------------------------------------------------------------- the reader

def test_reader_matches_torch_load(tmp_path):
  base = torch.randn(10, 6)
  sd = collections.OrderedDict(
      w=torch.randn(3, 4), transposed=base.t(), sliced=base[2:5, 1:3], shared=base,
      bf16=torch.randn(5).to(torch.bfloat16), half=torch.randn(2, 2).half(),
      long=torch.arange(7), scalar=torch.tensor(5), flags=torch.tensor([True, False]),
      param=torch.nn.Parameter(torch.ones(2)), empty=torch.zeros(0, 3))
  extra = {'np_scalar': np.float64(1.5), 'np_array': np.arange(6, dtype=np.float32).reshape(2, 3),
           'dtype': torch.float32, 'device': torch.device('cpu'), 'raw': b'abc'}
  for legacy in (False, True):
    path = tmp_path / f'x{int(legacy)}.pth'
    torch.save({'base_model': sd, **extra}, path, _use_new_zipfile_serialization=not legacy)
    got = pth_reader.read_pth(path)
    for key, value in sd.items():
      want = value.detach().float() if value.dtype == torch.bfloat16 else value.detach()
      have = got['base_model'][key]
      assert have.shape == tuple(want.shape), key
      np.testing.assert_array_equal(np.asarray(have, dtype=want.numpy().dtype), want.numpy())
    assert got['np_scalar'] == 1.5 and got['raw'] == b'abc' and got['device'] == 'cpu'
    np.testing.assert_array_equal(got['np_array'], extra['np_array'])


def test_reader_rejects_out_of_bounds_strides(tmp_path):
  """A crafted tensor pointing past its storage is an error, not a memory read."""
  path = tmp_path / 'evil.pth'
  torch.save({'w': torch.ones(4)}, path)
  with zipfile.ZipFile(path) as z:
    records = {n: z.read(n) for n in z.namelist()}
  name = next(n for n in records if n.endswith('data.pkl'))
  records[name] = records[name].replace(b'K\x04\x85', b'M\x00\x10\x85')  # size (4,) → (4096,)
  with zipfile.ZipFile(path, 'w') as z:
    for n, data in records.items():
      z.writestr(n, data)
  with pytest.raises(ConvertError, match='past the end|corrupt'):
    pth_reader.read_pth(path)


# ----------------------------------------------------------------------------- real entry point

def test_command_line_entry_point(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  cmd = [sys.executable, '-m', 'convert']
  done = subprocess.run(cmd + ['--help'], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0
  for word in ('--to-torch', '--config', 'MAE_encoder', 'ACT_encoder', 'transformer_k',
               'base_model', 'init_from'):
    assert word in done.stdout, word
  src, dst = tmp_path / 'notes.pth', tmp_path / 'out'
  src.write_text('hello')
  done = subprocess.run(cmd + [str(src), str(dst)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 2
  assert done.stderr.startswith('error: ') and len(done.stderr.strip().splitlines()) == 1
  assert 'Traceback' not in done.stderr and not dst.exists()
