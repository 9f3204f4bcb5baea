"""python -m convert on part-segmentation checkpoints (SPEC §8.5): Point-MAE's fine-tuned
`model_state_dict` → the network with DAPT off, reproducing the reference's per-point logits
(float64 on both sides, max error ≤ 1e-10 · max |logit|, as tests/test_segmentation_model.py);
`--to-torch` back bit-exactly; the DAPT export; a pre-training checkpoint as the backbone."""
import collections
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from convert import __main__ as convert_cli  # noqa: E402
from dapt_jax import partition  # noqa: E402
from dapt_jax import pretrained  # noqa: E402
from dapt_jax.models import segmenter as S  # noqa: E402
from tests import torch_reference as R  # noqa: E402
from tests import torch_reference_seg as RS  # noqa: E402

TINY = dict(trans_dim=24, depth=4, num_heads=2, mlp_ratio=2.0, num_group=8, group_size=6, rank=4,
            num_parts=7, num_classes=3, feature_blocks=(1, 2, 3), label_dims=5,
            propagation_dims=(20, 16), head_dims=(12, 10))

CONFIG = '''
from configs import shapenetpart


def get_config(arg=None):
  c = shapenetpart.get_config(arg or 'pointmae')
  c.unlock()
  for k, v in {fields!r}.items():
    c.model[k] = v
  c.model.encoder_dims = c.model.trans_dim
  c.model.head_dropout_rate = 0.0
  c.model.drop_path_rate = 0.0
  c.lock()
  return c
'''


@pytest.fixture
def config_file(tmp_path):
  path = tmp_path / 'tiny_seg.py'
  path.write_text(CONFIG.format(fields=TINY))
  return str(path)


def reference(dapt, seed):
  torch.manual_seed(seed)
  ref = RS.TorchPartSeg(**TINY, dapt=dapt, drop_path_rate=0.0, head_dropout=0.0)
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if 'up_proj' in name:
        p.normal_(0.0, 0.1)
    for name, b in ref.named_buffers():
      if name.endswith('running_mean'):
        b.normal_(0.0, 0.1)
      elif name.endswith('running_var'):
        b.uniform_(0.5, 1.5)
      elif name.endswith('num_batches_tracked'):
        b.fill_(37)
  return ref


def save_like_point_mae(ref, path):
  """As Point-MAE's segmentation/main.py saves its best model (with an AdamW state)."""
  opt = torch.optim.AdamW(ref.parameters(), lr=2e-4, weight_decay=0.05)
  ref.zero_grad()
  pts = torch.randn(2, 40, 3)
  ref.train()
  ref(pts, torch.tensor([0, 1])).sum().backward()
  opt.step()
  ref.eval()
  torch.save({'epoch': 12, 'train_acc': 0.9, 'test_acc': 0.93, 'class_avg_iou': 0.84,
              'inctance_avg_iou': 0.86, 'model_state_dict': ref.state_dict(),
              'optimizer_state_dict': opt.state_dict()}, path)


def _logits_parity(ref, variables, fields):
  """Float64 forward of the reference against the Flax model on the converted variables."""
  previous = jax.config.jax_enable_x64
  jax.config.update('jax_enable_x64', True)
  try:
    ref = ref.double().eval()
    g = torch.Generator().manual_seed(3)
    pts = torch.randn(3, 40, 3, generator=g, dtype=torch.float64)
    nb, center = R.torch_group(pts, TINY['num_group'], TINY['group_size'])
    cat = torch.tensor([0, 2, 1])
    with torch.no_grad():
      want = ref.forward_from_groups(pts, nb, center, cat).numpy()
    net = S.build_model(dict(fields, dtype='float64'))
    v64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), variables)
    got = jax.jit(lambda v, *a: net.apply(v, *a, method=net.from_groups))(
        v64, *[jnp.asarray(x.numpy()) for x in (pts, nb, center, cat)])
    err = float(np.abs(np.asarray(got) - want).max())
    assert err <= 1e-10 * np.abs(want).max(), err
  finally:
    jax.config.update('jax_enable_x64', previous)


@pytest.mark.parametrize('dapt', [False, True])
def test_segmentation_checkpoint_converts_reproduces_logits_and_round_trips(tmp_path, config_file,
                                                                           dapt):
  ref = reference(dapt, seed=1)
  src = tmp_path / 'best_model.pth'
  save_like_point_mae(ref, src)
  saved = torch.load(src, weights_only=True)['model_state_dict']

  def saved_model():
    model = RS.TorchPartSeg(**TINY, dapt=dapt, drop_path_rate=0.0, head_dropout=0.0)
    model.load_state_dict(saved, strict=True)
    return model
  spec = f'{config_file}:{"dapt" if dapt else "pointmae"}'
  dst = tmp_path / 'converted'
  assert convert_cli.main([str(src), str(dst), '--config', spec]) == 0
  report = json.loads((dst / 'report.json').read_text())
  assert report['layout'] == ('dapt_seg' if dapt else 'point_mae_seg')
  assert report['state_dict_at'] == 'model_state_dict' and report['task'] == 'segmentation'
  assert report['counts']['freshly_initialised'] == 0
  variables = pretrained.load_converted(str(dst))
  # Every tensor where the independent test-side naming map puts it, bit for bit.
  want = RS.seg_torch_to_flax(saved, np.float32)
  for col in ('params', 'batch_stats'):
    got_flat, want_flat = partition.flatten(variables[col]), partition.flatten(want[col])
    assert set(got_flat) == set(want_flat)
    for k in want_flat:
      np.testing.assert_array_equal(np.asarray(got_flat[k]), want_flat[k], err_msg=k)
  _logits_parity(saved_model(), variables, report['model'])

  # Back to PyTorch: Point-MAE's layout, same keys in the same order, floats bit-exact.
  out = tmp_path / 'back.pth'
  assert convert_cli.main(['--to-torch', str(dst), str(out)]) == 0
  back = torch.load(out, weights_only=True)
  assert list(back) == ['model_state_dict']
  sd, original = back['model_state_dict'], saved
  if dapt:  # no external layout to follow for DAPT's own tensors: the same keys
    assert set(sd) == set(original)
  else:  # Point-MAE's model_state_dict, key for key in its order
    assert list(sd) == list(original)
  for k, v in original.items():
    if k.endswith('num_batches_tracked'):
      assert sd[k].dtype == torch.int64 and int(sd[k]) == 0  # no Flax counterpart: written as 0
    else:
      assert sd[k].dtype == torch.float32 and torch.equal(sd[k], v), k
  fresh = RS.TorchPartSeg(**TINY, dapt=dapt)
  fresh.load_state_dict(sd, strict=True)
  # and converting that file again gives the same variables
  again = tmp_path / 'again'
  assert convert_cli.main([str(out), str(again), '--config', spec]) == 0
  for col in ('params', 'batch_stats'):
    a = partition.flatten(pretrained.load_converted(str(again))[col])
    b = partition.flatten(variables[col])
    assert all(np.array_equal(a[k], b[k]) for k in b)


def test_pretraining_checkpoint_initialises_the_dapt_segmentation_backbone(tmp_path,
                                                                            config_file):
  backbone = reference(False, seed=2).state_dict()
  keep = ('encoder.', 'pos_embed.', 'blocks.', 'norm.')
  sd = collections.OrderedDict(
      (f'module.MAE_encoder.{k}', v) for k, v in backbone.items() if k.startswith(keep))
  sd['module.mask_token'] = torch.zeros(1, 1, TINY['trans_dim'])
  sd['module.MAE_decoder.norm.weight'] = torch.ones(TINY['trans_dim'])
  sd['module.increase_dim.0.weight'] = torch.zeros(96, TINY['trans_dim'], 1)
  src = tmp_path / 'pretrain.pth'
  torch.save({'base_model': sd, 'epoch': 300}, src)
  dst = tmp_path / 'converted'
  assert convert_cli.main([str(src), str(dst), '--config', f'{config_file}:dapt']) == 0
  report = json.loads((dst / 'report.json').read_text())
  assert report['layout'] == 'point_mae'
  assert set(report['fresh_by_part']) == {'cls', 'dapt', 'seg_head'}
  loaded = pretrained.load_converted(str(dst))
  fields = report['model']
  net = S.build_model(fields)
  shapes = jax.eval_shape(lambda k: S.init_variables(net, k, 64), jax.random.PRNGKey(0))
  variables = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
  merged, merge_report = pretrained.merge_pretrained(variables, loaded)
  assert len(merge_report['loaded']) == report['counts']['loaded']
  np.testing.assert_array_equal(
      np.asarray(merged['params']['blocks_3']['attn']['qkv']['kernel']),
      backbone['blocks.blocks.3.attn.qkv.weight'].numpy().T)
  assert 'label_conv/conv/kernel' in {p.split('params/', 1)[-1] for p in
                                      merge_report['freshly_initialised']}


def test_mistakes_are_one_line_and_write_nothing(tmp_path, config_file, capsys):
  ref = reference(False, seed=4)
  sd = ref.state_dict()
  src = tmp_path / 'seg.pth'
  torch.save({'model_state_dict': sd}, src)
  dst = tmp_path / 'out'
  # No --config: the default (full-size) Point-MAE network does not fit a tiny checkpoint.
  assert convert_cli.main([str(src), str(dst)]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: shape mismatch for encoder.second_conv.3.weight') and '\n' not in err
  assert 'configs/shapenetpart.py:pointmae does not fit; pass --config' in err
  assert not dst.exists()
  # A missing tensor is named.
  del sd['convs3.bias']
  torch.save({'model_state_dict': sd}, src)
  assert convert_cli.main([str(src), str(dst), '--config', config_file]) == 2
  err = capsys.readouterr().err.strip()
  assert 'missing required tensor convs3.bias' in err and not dst.exists()
  # An unknown tensor is named.
  sd = ref.state_dict()
  sd['convs4.weight'] = torch.zeros(3, 3, 1)
  torch.save({'model_state_dict': sd}, src)
  assert convert_cli.main([str(src), str(dst), '--config', config_file]) == 2
  err = capsys.readouterr().err.strip()
  assert 'convs4.weight has no destination in the segmentation network' in err
  assert not dst.exists()
