"""python -m convert on the other PEFT releases' fine-tuned checkpoints (IDPT, PointGST, and
VPT-deep from the IDPT release): recognised by their keys, converted onto dapt_jax/models/peft's models
(logits of the converted model against the PyTorch reference, float32: ≤ 1e-4 absolute, as
tests/test_model.py), and written back bit-exactly, the release's duplicate BatchNorm keys
included; plus the errors a user can make."""
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from dapt_jax.models import classifier as model_lib  # noqa: E402
from dapt_jax import pretrained  # noqa: E402
from tests import torch_reference as R  # noqa: E402
from tests import torch_reference_idpt as RI  # noqa: E402
from tests import torch_reference_pointgst as RG  # noqa: E402
from tests.test_convert import assert_refused  # noqa: E402
from tests.test_convert import randomise  # noqa: E402
from tests.test_convert import run  # noqa: E402

TINY = dict(trans_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_group=16, group_size=8,
            num_classes=5)
FIELDS = dict(TINY, encoder_dims=32, rank=4, drop_path_rate=0.0, drop_adapter_rate=0.0,
              head_tokens=['cls', 'patch'], freeze_bn_stats=False, dtype='float32',
              vpt_prompts=3, idpt_k=5, idpt_prompt_layer=-1, pgst_rank=6, pgst_local=8)
REFERENCES = {
    'idpt': lambda: RI.IDPTClassifier(**TINY, k=5),
    'pointgst': lambda: RG.PointGSTClassifier(**TINY, rank=6, local=8),
    'vpt_deep': lambda: RI.VPTDeepClassifier(**TINY, prompts=3),
}
CONFIG = '''
import ml_collections


def get_config(arg=None):
  return ml_collections.ConfigDict({{'model': {fields!r}}})
'''


def release_pth(method, path, seed=0, make=None):
  """A fine-tuned checkpoint as the releases save it (DataParallel prefix, optimizer, epoch)."""
  torch.manual_seed(seed)
  ref = randomise((make or REFERENCES[method])(), seed).eval()
  sd = {'module.' + k: v for k, v in ref.state_dict().items()}
  torch.save({'base_model': sd, 'optimizer': {'state': {}, 'param_groups': []}, 'epoch': 7,
              'metrics': {'acc': 85.0}, 'best_metrics': {'acc': 85.3}}, path)
  return ref


def config_file(path, method, **overrides):
  path.write_text(CONFIG.format(fields=dict(FIELDS, peft=method, **overrides)))
  return str(path)


@pytest.mark.parametrize('method', ['idpt', 'pointgst', 'vpt_deep'])
def test_release_checkpoint_converts_and_round_trips(method, tmp_path, capsys):
  src = tmp_path / f'{method}.pth'
  ref = release_pth(method, src)
  dst = tmp_path / 'flax'
  rc, out, err = run([src, dst, '--config', config_file(tmp_path / 'c.py', method)], capsys)
  assert rc == 0, err
  assert 'freshly initialised 0' in out
  report = json.loads((dst / 'report.json').read_text())
  assert report['layout'] == method and report['model']['peft'] == method
  if method == 'idpt':  # the second name of each BatchNorm is reported, not loaded twice
    dup = [k for k in report['ignored'] if '.conv1.1.' in k]
    assert len(dup) == 5 and all(k.startswith('module.blocks.cls.') for k in dup)
    assert 'one BatchNorm, two names' in report['ignored']['module.blocks.cls.conv1.1.weight']

  # The converted model computes the reference's logits (same groups fed to both).
  variables = pretrained.load_converted(dst)
  net = model_lib.build_model(dict(FIELDS, peft=method, head_dropout_rate=0.5))
  pts = torch.rand(4, 64, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
  nb, ctr = R.torch_group(pts, TINY['num_group'], TINY['group_size'])
  with torch.no_grad():
    want = ref.forward_from_groups(nb, ctr).numpy()
  got = jax.jit(lambda v, a, b: net.apply(v, a, b, False, method='from_groups'))(
      variables, nb.numpy(), ctr.numpy())
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)

  # And back, bit for bit, loadable strictly by the release's model.
  back = tmp_path / 'back.pth'
  rc, out, err = run(['--to-torch', dst, back], capsys)
  assert rc == 0, err
  sd = torch.load(back, weights_only=True)['base_model']
  original = ref.state_dict()
  assert set(sd) == set(original)
  for key, value in original.items():
    if key.endswith('num_batches_tracked'):
      assert sd[key].dtype == torch.int64 and int(sd[key]) == 0
    else:
      assert sd[key].dtype == value.dtype == torch.float32 and torch.equal(sd[key], value), key
  REFERENCES[method]().load_state_dict(sd, strict=True)


def test_model_inferred_from_a_pointgst_checkpoint(tmp_path, capsys):
  src = tmp_path / 'pgst.pth'  # 6 heads, as the default config (heads are not in the weights)
  release_pth('pointgst', src, make=lambda: RG.PointGSTClassifier(
      **dict(TINY, trans_dim=48, num_heads=6), rank=6, local=8))
  dst = tmp_path / 'flax'
  rc, out, err = run([src, dst], capsys)
  assert rc == 0, err
  report = json.loads((dst / 'report.json').read_text())
  model = report['model']
  assert (model['peft'], model['trans_dim'], model['depth'], model['pgst_rank'],
          model['num_classes']) == ('pointgst', 48, 2, 6, 5)
  assert {'peft', 'pgst_rank', 'depth'} <= set(report['inferred_fields'])


def test_user_errors(tmp_path, capsys):
  src = tmp_path / 'idpt.pth'
  release_pth('idpt', src)
  # A config of another method than the checkpoint's.
  dst = tmp_path / 'x'
  rc, _, err = run([src, dst, '--config', config_file(tmp_path / 'd.py', 'pointgst')], capsys)
  assert_refused(rc, err, dst, 'is a fine-tuned IDPT model', "model.peft='pointgst'")
  # A BatchNorm whose two names disagree.
  ckpt = torch.load(src, weights_only=True)
  key = 'module.blocks.cls.conv2.1.running_mean'  # (saved sharing bn2's storage: copy first)
  ckpt['base_model'][key] = ckpt['base_model'][key] + 1.0
  bad = tmp_path / 'bad.pth'
  torch.save(ckpt, bad)
  rc, _, err = run([bad, dst, '--config', config_file(tmp_path / 'e.py', 'idpt')], capsys)
  assert_refused(rc, err, dst, 'module.blocks.cls.conv2.1.running_mean', 'differs from')
  # Writing a method that has no release layout.
  flax_dir = tmp_path / 'flax'
  assert run([src, flax_dir, '--config', config_file(tmp_path / 'f.py', 'idpt')], capsys)[0] == 0
  out = tmp_path / 'lora.pth'
  rc, _, err = run(['--to-torch', flax_dir, out, '--config',
                    config_file(tmp_path / 'g.py', 'lora')], capsys)
  assert_refused(rc, err, out, "model.peft='lora' has no release checkpoint layout")
