"""TFDS builders and `get_source`, on small files written in the official formats."""
import os
import time

import numpy as np
import pytest

from dapt_jax import data
from dapt_jax.data import modelnet_files
from dapt_jax.data import preprocess
from dapt_jax.data import scanobjectnn_files
from dapt_jax.data import synthetic
from dapt_jax.data import testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.environ.get('DAPT_MODELNET40_MINI', os.path.join(
    REPO, '..', 'shared', 'data', 'modelnet40_mini', 'modelnet40_normal_resampled'))


def _config(name, data_dir, tfds_dir, **fields):
  dc = data.default_data_config(name)
  dc.data_dir = str(data_dir)
  dc.tfds_data_dir = str(tfds_dir)
  for k, v in fields.items():
    setattr(dc, k, v)
  return dc


def _all(source):
  items = [source[i] for i in range(len(source))]
  return np.stack([x['points'] for x in items]), np.array([x['label'] for x in items])


def _plain_fps(points, k):
  """Reference FPS from index 0 (running min distance, argmax, first index on ties)."""
  dist = np.full(len(points), np.inf)
  idx = [0]
  for _ in range(k - 1):
    dist = np.minimum(dist, ((points - points[idx[-1]]) ** 2).sum(-1))
    idx.append(int(np.argmax(dist)))
  return points[idx]


def test_default_data_config_fields_and_unknown_name():
  for name in data.DATASET_NAMES:
    dc = data.default_data_config(name)
    assert dc.name == name and dc.train_split == 'train' and dc.eval_split == 'test'
    assert dc.point_all > dc.num_points and dc.tfds_data_dir is None
  assert data.default_data_config('scan_object_nn/hardest').data_dir == 'data/ScanObjectNN'
  assert data.default_data_config('scan_object_nn/objbg').num_points == 2048
  dc = data.default_data_config('modelnet40')
  assert (dc.data_dir, dc.num_points, dc.point_all) == (
      'data/ModelNet/modelnet40_normal_resampled', 1024, 1200)
  with pytest.raises(data.DataError, match='unknown dataset'):
    data.default_data_config('modelnet10')


@pytest.mark.parametrize('variant', ['objbg', 'objonly', 'hardest'])
def test_scanobjectnn_variants(tmp_path, variant):
  written = testing.write_scanobjectnn(str(tmp_path / 'sonn'), variant, num_train=7, num_test=5)
  dc = _config(f'scan_object_nn/{variant}', tmp_path / 'sonn', tmp_path / 'tfds')
  for split, n in (('train', 7), ('test', 5)):
    source, info = data.get_source(dc, split)
    assert (len(source), info.num_examples, info.num_classes) == (n, n, 15)
    assert info.class_names == list(scanobjectnn_files.CLASS_NAMES)
    assert info.class_names[0] == 'bag' and info.class_names[14] == 'toilet'
    points, labels = _all(source)
    # Clouds as stored, in file order.
    np.testing.assert_array_equal(points, written[split][0])
    np.testing.assert_array_equal(labels, written[split][1])
    assert source[0]['points'].dtype == np.float32 and source[0]['label'].dtype == np.int32
    assert info.prepared_dir.startswith(str(tmp_path / 'tfds'))
    assert f'scan_object_nn/{variant}/' in info.prepared_dir


def test_scanobjectnn_missing_files_names_paths_and_instructions(tmp_path):
  testing.write_scanobjectnn(str(tmp_path / 'sonn'), 'objbg', 3, 2)  # objbg only
  dc = _config('scan_object_nn/hardest', tmp_path / 'sonn', tmp_path / 'tfds')
  with pytest.raises(data.DataError) as e:
    data.get_source(dc, 'train')
  msg = str(e.value)
  assert 'main_split/training_objectdataset_augmentedrot_scale75.h5' in msg
  assert 'main_split/test_objectdataset_augmentedrot_scale75.h5' in msg
  assert 'hkust-vgd.github.io/scanobjectnn' in msg and '\n' not in msg


def test_modelnet_dat(tmp_path):
  written = testing.write_modelnet_dat(str(tmp_path / 'mn'), 6, 3, points=64)
  dc = _config('modelnet40', tmp_path / 'mn', tmp_path / 'tfds')
  source, info = data.get_source(dc, 'train')
  assert (len(source), info.num_classes, info.points_per_cloud) == (6, 40, 64)
  assert info.class_names == list(modelnet_files.DEFAULT_CLASS_NAMES)
  points, labels = _all(source)
  np.testing.assert_array_equal(labels, written['train'][1])
  np.testing.assert_allclose(points, preprocess.normalize_unit_sphere(written['train'][0]),
                             atol=1e-6)
  # Centred and scaled to the unit sphere (SPEC §4).
  np.testing.assert_allclose(points.mean(1), 0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(points, axis=-1).max(1), 1, atol=1e-5)
  assert len(data.get_source(dc, 'test')[0]) == 3


def test_modelnet_txt_fps_and_labels(tmp_path):
  root = tmp_path / 'modelnet40_normal_resampled'
  shapes = {'train': ['chair_0001', 'airplane_0002', 'night_stand_0003'],
            'test': ['xbox_0004', 'chair_0005']}
  written = testing.write_modelnet_txt(str(root), shapes, rows=120)
  dc = _config('modelnet40', root, tmp_path / 'tfds', modelnet_points=48)
  for split in ('train', 'test'):
    source, info = data.get_source(dc, split)
    points, labels = _all(source)
    names = [info.class_names[l] for l in labels]
    assert names == [s.rsplit('_', 1)[0] for s in shapes[split]]  # label from the class folder
    for cloud, shape_id in zip(points, shapes[split]):
      expected = preprocess.normalize_unit_sphere(_plain_fps(written[shape_id][:, :3], 48)[None])
      np.testing.assert_allclose(cloud, expected[0], atol=1e-5)
  assert info.prepared_dir.endswith(os.path.join('modelnet40', 'auto_fps48', '1.0.0'))


def test_modelnet_h5(tmp_path):
  written = testing.write_modelnet_h5(str(tmp_path / 'h5'), [3, 4], [2], points=32)
  dc = _config('modelnet40', tmp_path / 'h5', tmp_path / 'tfds')
  source, info = data.get_source(dc, 'train')
  points, labels = _all(source)
  assert (len(source), info.num_classes) == (7, 40)
  np.testing.assert_array_equal(labels, written['train'][1])  # file 0 then file 1
  np.testing.assert_allclose(points, preprocess.normalize_unit_sphere(written['train'][0]),
                             atol=1e-6)


def test_modelnet_prefers_dat_and_reports_all_layouts_when_missing(tmp_path):
  root = tmp_path / 'mn'
  testing.write_modelnet_txt(str(root), {'train': ['cup_0001'], 'test': ['cup_0002']}, rows=20)
  assert modelnet_files.detect_format(str(root)) == 'txt'
  testing.write_modelnet_dat(str(root), 2, 1, points=16)
  assert modelnet_files.detect_format(str(root)) == 'dat'
  assert modelnet_files.plan(str(root), 'txt').source_format == 'txt'  # explicit choice wins
  with pytest.raises(data.DataError) as e:
    data.get_source(_config('modelnet40', tmp_path / 'empty', tmp_path / 'tfds'), 'train')
  msg = str(e.value)
  for expected in ('modelnet40_train_8192pts_fps.dat', 'modelnet40_shape_names.txt',
                   'ply_data_train0.h5', 'Point-BERT'):
    assert expected in msg


def test_new_or_changed_source_files_rebuild(tmp_path):
  a = testing.write_scanobjectnn(str(tmp_path / 'a'), 'objbg', 4, 2, points=16, seed=1)
  b = testing.write_scanobjectnn(str(tmp_path / 'b'), 'objbg', 5, 2, points=16, seed=2)
  dc = _config('scan_object_nn/objbg', tmp_path / 'a', tmp_path / 'tfds')
  np.testing.assert_array_equal(_all(data.get_source(dc, 'train')[0])[0], a['train'][0])
  dc.data_dir = str(tmp_path / 'b')  # other files → rebuilt, not the stale copy
  np.testing.assert_array_equal(_all(data.get_source(dc, 'train')[0])[0], b['train'][0])
  time.sleep(0.01)
  c = testing.write_scanobjectnn(str(tmp_path / 'b'), 'objbg', 5, 2, points=16, seed=3)
  np.testing.assert_array_equal(_all(data.get_source(dc, 'train')[0])[0], c['train'][0])
  # Unchanged files: the prepared copy is reused, not rebuilt.
  info = data.get_source(dc, 'train')[1]
  before = os.stat(os.path.join(info.prepared_dir, 'dataset_info.json')).st_mtime_ns
  data.get_source(dc, 'train')
  assert os.stat(os.path.join(info.prepared_dir, 'dataset_info.json')).st_mtime_ns == before


def test_synthetic_builder_is_a_function_of_its_config(tmp_path):
  fields = dict(synthetic_num_train=60, synthetic_num_test=24, synthetic_points=64,
                synthetic_num_classes=12, synthetic_seed=5)
  dc1 = _config('synthetic_shapes', '', tmp_path / 't1', **fields)
  dc2 = _config('synthetic_shapes', '', tmp_path / 't2', **fields)
  s1, info = data.get_source(dc1, 'train')
  s2, _ = data.get_source(dc2, 'train')
  p1, l1 = _all(s1)
  np.testing.assert_array_equal(p1, _all(s2)[0])
  assert info.class_names == list(synthetic.SHAPE_NAMES) and info.num_classes == 12
  assert p1.shape == (60, 64, 3) and np.bincount(l1).tolist() == [5] * 12
  test_points, _ = _all(data.get_source(dc1, 'test')[0])
  assert test_points.shape == (24, 64, 3) and not np.allclose(test_points[:3], p1[:3])
  dc1.synthetic_seed = 6
  assert not np.allclose(_all(data.get_source(dc1, 'train')[0])[0], p1)
  dc1.synthetic_num_classes = 1
  with pytest.raises(data.DataError, match='synthetic_num_classes'):
    data.get_source(dc1, 'train')
  dc1.synthetic_num_classes = 12
  dc1.synthetic_pose = 'sideways'
  with pytest.raises(data.DataError, match='synthetic_pose'):
    data.get_source(dc1, 'train')


def test_synthetic_upright_pose_has_its_own_prepared_copy(tmp_path):
  fields = dict(synthetic_num_train=20, synthetic_num_test=10, synthetic_points=32,
                synthetic_num_classes=10, synthetic_seed=2)
  so3, so3_info = data.get_source(_config('synthetic_shapes', '', tmp_path, **fields), 'train')
  up, up_info = data.get_source(
      _config('synthetic_shapes', '', tmp_path, synthetic_pose='upright', **fields), 'train')
  assert so3_info.prepared_dir != up_info.prepared_dir
  np.testing.assert_array_equal(_all(up)[0], synthetic.generate(20, 32, 10, 2, 0, 'upright')[0])
  np.testing.assert_array_equal(_all(so3)[0], synthetic.generate(20, 32, 10, 2, 0)[0])


def test_unknown_split_is_a_data_error(tmp_path):
  dc = _config('synthetic_shapes', '', tmp_path / 'tfds', synthetic_num_train=12,
               synthetic_num_test=4, synthetic_points=16)
  with pytest.raises(data.DataError, match='validation'):
    data.get_source(dc, 'validation')
  assert len(data.get_source(dc, 'train[:50%]')[0]) == 6  # TFDS slicing works


@pytest.mark.skipif(not os.path.isdir(MINI), reason='shared modelnet40_mini sample is absent')
def test_real_modelnet40_mini(tmp_path):
  dc = _config('modelnet40', MINI, tmp_path / 'tfds')
  expected = {s: [ln.strip() for ln in open(os.path.join(MINI, f'modelnet40_{s}.txt')) if ln.strip()]
              for s in ('train', 'test')}
  for split, n in (('train', 30), ('test', 10)):
    source, info = data.get_source(dc, split)
    assert (len(source), info.num_classes, info.points_per_cloud) == (n, 40, 8192)
    points, labels = _all(source)
    assert points.shape == (n, 8192, 3) and points.dtype == np.float32
    assert [info.class_names[l] for l in labels] == [s.rsplit('_', 1)[0] for s in expected[split]]
    np.testing.assert_allclose(np.linalg.norm(points, axis=-1).max(1), 1, atol=1e-5)
    np.testing.assert_allclose(points.mean(1), 0, atol=1e-5)
    assert all(len(np.unique(p, axis=0)) == 8192 for p in points[:3])  # distinct FPS points


def test_locked_config_without_optional_fields(tmp_path, monkeypatch):
  """The training configs carry only the core fields; the optional ones fall back to defaults."""
  import ml_collections
  from ml_collections import config_dict
  dc = ml_collections.ConfigDict(dict(
      name='modelnet40', data_dir=str(tmp_path / 'mn'), num_points=16, point_all=20,
      train_split='train', eval_split='test', synthetic_num_train=1, synthetic_num_test=1,
      synthetic_points=1, synthetic_num_classes=10, synthetic_seed=0))
  dc.tfds_data_dir = config_dict.placeholder(str)
  dc.lock()
  testing.write_modelnet_dat(str(tmp_path / 'mn'), 2, 1, points=32)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))  # default tfds_data_dir is under ~
  source, info = data.get_source(dc, 'train')
  assert len(source) == 2 and info.points_per_cloud == 32
  assert info.prepared_dir.startswith(str(tmp_path / 'home' / '.cache' / 'dapt_jax' / 'tfds'))
