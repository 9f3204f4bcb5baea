"""The validation pass in-process: field checks, the data presence checks (headers only), and
extending both. (Every case through main.py, with exit status and workdir: test_cli_errors.py.)"""
import os

import numpy as np
import pytest

from configs import synthetic
from dapt_jax import data as data_lib
from dapt_jax import errors
from dapt_jax import validate
from dapt_jax.data import checks
from tests.conftest import SHARED_DATA


def tiny(**overrides):
  c = synthetic.get_config()
  c.unlock()
  c.model.update(trans_dim=32, encoder_dims=32, depth=1, num_heads=2, num_group=8, group_size=8,
                 rank=4, num_classes=4)
  c.data.update(num_points=64, point_all=80, synthetic_points=128, synthetic_num_classes=4)
  c.update(batch_size=8)
  c.eval.batch_size = 8
  for k, v in overrides.items():
    *path, last = k.split('.')
    target = c
    for p in path:
      target = target[p]
    target[last] = v
  return c


def check(config, tmp_path, mode='train', devices=2, processes=1):
  return validate.check_run(config, str(tmp_path / 'w'), mode, num_devices=devices,
                            num_processes=processes)


def test_a_good_config_passes_and_writes_nothing(tmp_path):
  ctx = check(tiny(), tmp_path)
  assert ctx.data.num_classes == 4 and ctx.data.points_per_cloud == 128
  assert 'blocks_0/adapter/down_proj/kernel' in ctx.variable_shapes['params']
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('field,value,fragment', [
    ('batch_size', 12, '8 devices it is split over (2 processes x 4 devices); e.g. 8 or 16'),
    ('eval.batch_size', 4, 'eval.batch_size=4'),
    ('log_every_steps', 0, 'config.log_every_steps=0: must be >= 1'),
    ('optim.b2', 1.0, 'config.optim.b2=1.0: must be in [0, 1)'),
    ('optim.clip_grad_norm', -1.0, 'clip_grad_norm'),
    ('checkpoint.keep', 0, 'config.checkpoint.keep=0'),
    ('model.head_tokens', ('cls', 'cls'), 'distinct'),
    ('model.drop_path_rate', 1.0, 'drop_path_rate'),
    ('data.train_split', 'validation', 'has splits train, test'),
])
def test_field_mistakes_name_the_field(field, value, fragment, tmp_path):
  with pytest.raises(errors.UserError, match=None) as e:
    check(tiny(**{field: value}), tmp_path, devices=8, processes=2)
  assert fragment in str(e.value) and len(str(e.value).splitlines()) == 1


def test_split_slices_are_accepted(tmp_path):
  ctx = check(tiny(**{'data.train_split': 'train[:50%]'}), tmp_path)
  assert 'train' in ctx.data.splits and os.listdir(tmp_path) == []
  # The split named before the slice is what is checked: a slice of a missing split is refused.
  with pytest.raises(errors.UserError, match='has splits train, test'):
    check(tiny(**{'data.train_split': 'validation[:50%]'}), tmp_path)


def _h5(path, shape, labels):
  import h5py  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, 'w') as f:
    f['data'] = np.zeros(shape, np.float32)
    f['label'] = np.zeros((labels,), np.int64)


def test_scanobjectnn_headers_are_read_not_the_data(tmp_path):
  dc = data_lib.default_data_config('scan_object_nn/objbg')
  dc.data_dir = str(tmp_path)
  with pytest.raises(data_lib.DataError, match='ScanObjectNN .objbg.: missing'):
    checks.check_presence(dc)
  _h5(str(tmp_path / 'main_split' / 'training_objectdataset.h5'), (6, 100, 3), 6)
  (tmp_path / 'main_split' / 'test_objectdataset.h5').write_bytes(b'\x89HDF\r\n\x1a\n truncated')
  with pytest.raises(data_lib.DataError, match='test_objectdataset.h5: unreadable or truncated'):
    checks.check_presence(dc)
  _h5(str(tmp_path / 'main_split' / 'test_objectdataset.h5'), (4, 100, 6), 4)
  with pytest.raises(data_lib.DataError, match=r"has shape \(4, 100, 6\)"):
    checks.check_presence(dc)
  _h5(str(tmp_path / 'main_split' / 'test_objectdataset.h5'), (4, 100, 3), 3)
  with pytest.raises(data_lib.DataError, match="'label' has shape"):
    checks.check_presence(dc)
  _h5(str(tmp_path / 'main_split' / 'test_objectdataset.h5'), (4, 100, 3), 4)
  facts = checks.check_presence(dc)
  assert facts.points_per_cloud == 100 and facts.num_classes == 15


def test_modelnet40_sample_is_found():
  root = SHARED_DATA / 'modelnet40_mini' / 'modelnet40_normal_resampled'
  if not root.is_dir():
    pytest.skip('the ModelNet40 sample is not beside the checkout')
  dc = data_lib.default_data_config('modelnet40')
  dc.data_dir = str(root)
  facts = checks.check_presence(dc)
  assert facts.num_classes == 40 and facts.points_per_cloud == 8192


def test_datasets_and_sections_can_register_their_checks(tmp_path, monkeypatch):
  monkeypatch.setattr(checks, '_CHECKS', dict(checks._CHECKS))  # pylint: disable=protected-access
  monkeypatch.setattr(validate, '_CHECKS', list(validate._CHECKS))  # pylint: disable=protected-access

  @checks.register('folders/')
  def _folders(dc):
    if not os.path.isdir(dc.data_dir):
      raise data_lib.DataError(f'data.data_dir={dc.data_dir!r}: no such folder')
    return checks.DataFacts(num_classes=4, points_per_cloud=64, splits=('train', 'val'))

  @validate.register('my section')
  def _mine(config, ctx):
    if ctx.data.splits != ('train', 'val'):
      raise validate.ConfigError('unexpected')

  config = tiny(**{'data.name': 'folders/mine', 'data.data_dir': str(tmp_path / 'nope'),
                   'data.eval_split': 'val'})
  with pytest.raises(data_lib.DataError, match='no such folder'):
    check(config, tmp_path)
  (tmp_path / 'nope').mkdir()
  check(config, tmp_path)
  assert 'folders/' in checks.registered()


DEMO_BACKBONE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             'assets', 'pretrained', 'synthetic_small')


@pytest.mark.parametrize('peft', ['dapt', 'linear'])
def test_a_pretrained_backbone_with_its_decoder_is_accepted_as_init_from(peft, tmp_path):
  """The shipped masked-autoencoder backbone carries the decoder side, which loading sets aside
  (pretrained.merge_pretrained); validation accepts it for the demo-sized classifier of any
  method, and still refuses it for a model of another width."""
  config = synthetic.get_config()
  config.unlock()
  config.init_from = DEMO_BACKBONE
  config.model.peft = peft
  check(config, tmp_path)
  config.model.update(trans_dim=32, encoder_dims=32)
  with pytest.raises(errors.UserError, match='has shape'):
    check(config, tmp_path)
  assert os.listdir(tmp_path) == []


def test_other_tasks_models_are_checked_by_their_own_builders(tmp_path):
  """Pre-training and segmentation configs lack classification's fields (rank, head_tokens):
  validation asks their own model builders, which name the offending field."""
  from configs import pretrain_shapenet, shapenetpart  # pylint: disable=g-import-not-at-top
  config = pretrain_shapenet.get_config('synthetic')
  config.unlock()
  config.data.tfds_data_dir = str(tmp_path / 'tfds')
  check(config, tmp_path)  # point_all = 0 (unused by pre-training) is fine
  config.model.decoder_depth = 0
  with pytest.raises(errors.UserError, match='decoder_depth'):
    check(config, tmp_path)
  seg = shapenetpart.get_config('synthetic')
  seg.unlock()
  seg.model.num_heads = 5  # does not divide the width
  with pytest.raises(errors.UserError, match='num_heads'):
    check(seg, tmp_path)
  assert os.listdir(tmp_path) == []


BACKBONE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets',
                        'pretrained', 'synthetic_small')


def test_init_from_must_hold_every_frozen_parameter(tmp_path):
  """The shipped 2-block demo backbone fits configs/synthetic.py; into a 4-block model it would
  leave blocks 2-3 frozen at random values, which training can never fix."""
  c = synthetic.get_config()
  c.unlock()
  c.init_from = BACKBONE
  ctx = check(c, tmp_path)
  assert 'blocks_1/attn/qkv/kernel' in ctx.variable_shapes['params']
  c.model.depth = 4
  with pytest.raises(errors.UserError) as e:
    check(c, tmp_path)
  message = str(e.value)
  assert 'does not hold' in message and 'frozen parameter' in message and 'blocks_2/' in message
  assert len(message.splitlines()) == 1 and os.listdir(tmp_path) == []
  # Full fine-tuning trains every parameter: a fresh block is allowed there.
  c.model.peft = 'full'
  check(c, tmp_path)
