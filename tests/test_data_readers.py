"""Bad input: every malformed file gives a one-line DataError naming the file and the problem."""
import os
import pickle

import h5py
import numpy as np
import pytest

from dapt_jax import data
from dapt_jax.data import readers
from dapt_jax.data import testing


def _h5(path, **datasets):
  with h5py.File(path, 'w') as f:
    for k, v in datasets.items():
      f[k] = v
  return str(path)


def _raises(fn, *patterns):
  with pytest.raises(data.DataError) as e:
    fn()
  msg = str(e.value)
  assert '\n' not in msg, msg
  for p in patterns:
    assert p in msg, (p, msg)
  return msg


GOOD_POINTS = np.zeros((4, 16, 3), np.float32) + 0.5
GOOD_LABELS = np.array([0, 1, 2, 14])


@pytest.mark.parametrize('datasets, problem', [
    (dict(data=np.zeros((4, 16, 4), np.float32), label=GOOD_LABELS), 'shape (4, 16, 4)'),
    (dict(data=np.zeros((4, 16, 3), np.int32), label=GOOD_LABELS), 'dtype int32'),
    (dict(data=GOOD_POINTS, label=np.array([0, 1, 15, 2])), 'label 15 at sample 2'),
    (dict(data=GOOD_POINTS, label=np.array([0, -1, 1, 2])), 'outside the class range'),
    (dict(data=GOOD_POINTS, label=GOOD_LABELS[:3]), 'labels have shape (3,)'),
    (dict(data=GOOD_POINTS, label=GOOD_LABELS + 0.5), 'non-integer'),
    (dict(data=GOOD_POINTS), "no dataset 'label'"),
])
def test_h5_shape_dtype_and_label_errors(tmp_path, datasets, problem):
  path = _h5(tmp_path / 'f.h5', **datasets)
  _raises(lambda: readers.read_h5(path, 15), path, problem)


def test_h5_non_finite_coordinates(tmp_path):
  pts = GOOD_POINTS.copy()
  pts[2, 5, 1] = np.nan
  pts[3, 0, 0] = np.inf
  path = _h5(tmp_path / 'f.h5', data=pts, label=GOOD_LABELS)
  _raises(lambda: readers.read_h5(path, 15), path, 'NaN/inf', '2 sample(s)', 'first at sample 2')


def test_h5_truncated_or_not_hdf5(tmp_path):
  path = _h5(tmp_path / 'f.h5', data=np.random.rand(64, 256, 3).astype(np.float32),
             label=np.zeros(64, np.int64))
  with open(path, 'rb') as f:
    head = f.read(os.path.getsize(path) // 2)
  with open(path, 'wb') as f:
    f.write(head)
  _raises(lambda: readers.read_h5(path, 15), path, 'unreadable or truncated')
  junk = tmp_path / 'junk.h5'
  junk.write_bytes(b'not an hdf5 file at all')
  _raises(lambda: readers.read_h5(str(junk), 15), str(junk), 'unreadable or truncated')


def test_bad_scanobjectnn_file_fails_get_source_before_anything_is_prepared(tmp_path):
  testing.write_scanobjectnn(str(tmp_path / 'sonn'), 'objonly', 3, 2, points=16)
  bad = str(tmp_path / 'sonn' / 'main_split_nobg' / 'test_objectdataset.h5')
  _h5(bad, data=np.full((2, 16, 3), np.nan, np.float32), label=np.zeros(2, np.int64))
  dc = data.default_data_config('scan_object_nn/objonly')
  dc.data_dir, dc.tfds_data_dir = str(tmp_path / 'sonn'), str(tmp_path / 'tfds')
  _raises(lambda: data.get_source(dc, 'train'), bad, 'NaN/inf')
  assert not os.path.exists(tmp_path / 'tfds' / 'scan_object_nn' / 'objonly' / '1.0.0')
  testing.write_scanobjectnn(str(tmp_path / 'sonn'), 'objonly', 3, 2, points=16)  # fixed
  assert len(data.get_source(dc, 'test')[0]) == 2


# ----------------------------------------------------------------------------------------------
# Raw text.


def _txt(tmp_path, text, name='chair_0001.txt'):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


GOOD_ROWS = ''.join(f'{i * 0.1:.2f},0.2,0.3,0,0,1\n' for i in range(5))




@pytest.mark.parametrize('text, problem', [
    (GOOD_ROWS + '0.1,0.2', 'truncated'),
    (GOOD_ROWS.replace('0.2', 'abc', 1), 'malformed'),
    ('0.1,0.2,0.3\n' * 4, '3 comma-separated values'),
    ('', 'empty file'),
    (GOOD_ROWS + 'nan,0,0,0,0,1\n', 'NaN/inf coordinates at row 6'),
])
def test_txt_errors(tmp_path, text, problem):
  path = _txt(tmp_path, text)
  _raises(lambda: readers.read_modelnet_txt(path), path, problem)


def test_txt_good_file_and_too_few_points(tmp_path):
  path = _txt(tmp_path, GOOD_ROWS)
  xyz = readers.read_modelnet_txt(path)
  assert xyz.shape == (5, 3) and xyz.dtype == np.float32
  np.testing.assert_allclose(xyz[:, 0], [0, 0.1, 0.2, 0.3, 0.4], atol=1e-6)
  _raises(lambda: readers.read_modelnet_txt(path, min_rows=8192), path, 'has 5 points',
          'at least 8192')


def test_txt_list_naming_missing_or_unknown_shapes(tmp_path):
  root = tmp_path / 'mn'
  testing.write_modelnet_txt(str(root), {'train': ['cup_0001'], 'test': ['cup_0002']}, rows=10)
  (root / 'modelnet40_test.txt').write_text('cup_0002\ncup_0003\n')
  dc = data.default_data_config('modelnet40')
  dc.data_dir, dc.tfds_data_dir, dc.modelnet_points = str(root), str(tmp_path / 'tfds'), 8
  _raises(lambda: data.get_source(dc, 'train'), 'modelnet40_test.txt',
          os.path.join('cup', 'cup_0003.txt'), 'do not exist')
  (root / 'modelnet40_test.txt').write_text('teapot_0002\n')
  _raises(lambda: data.get_source(dc, 'train'), "class 'teapot'")


def test_txt_bad_shape_file_fails_get_source(tmp_path):
  root = tmp_path / 'mn'
  testing.write_modelnet_txt(str(root), {'train': ['cup_0001'], 'test': ['cup_0002']}, rows=10)
  (root / 'cup' / 'cup_0002.txt').write_text(GOOD_ROWS + '1,2\n')
  dc = data.default_data_config('modelnet40')
  dc.data_dir, dc.tfds_data_dir, dc.modelnet_points = str(root), str(tmp_path / 'tfds'), 4
  _raises(lambda: data.get_source(dc, 'train'), 'cup_0002.txt', 'truncated')


# ----------------------------------------------------------------------------------------------
# Pickled .dat files.


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def _dat(tmp_path, obj, name='modelnet40_train_8192pts_fps.dat'):
  path = tmp_path / name
  with open(path, 'wb') as f:
    pickle.dump(obj, f)
  return str(path)


def test_dat_with_code_is_refused_without_running_it(tmp_path):
  marker = tmp_path / 'pwned'
  path = _dat(tmp_path, [[np.zeros((4, 6), np.float32)], [_Exploit(marker)]])
  _raises(lambda: readers.read_modelnet_dat(path, 40), path, 'refusing to load', 'system')
  assert not marker.exists()


@pytest.mark.parametrize('obj, problem', [
    ({'points': 1}, 'holds a dict'),
    ([[np.zeros((4, 6), np.float32)], [np.array([1]), np.array([2])]], '1 point arrays but 2'),
    ([[np.zeros((4, 6), np.float32)], [np.array([40], np.int32)]], 'label 40 at sample 0'),
    ([[np.zeros((4, 6), np.int64)], [np.array([1], np.int32)]], 'dtype int64'),
    ([[np.zeros((4, 6), np.float32), np.zeros((5, 6), np.float32)], [1, 2]], 'different shapes'),
    ([[np.zeros((4, 2), np.float32)], [1]], 'shape (4, 2)'),
    ([[np.full((4, 6), np.nan, np.float32)], [1]], 'NaN/inf'),
    ([[np.array([None] * 6, object).reshape(1, 6)], [1]], 'object-dtype'),
])
def test_dat_structure_errors(tmp_path, obj, problem):
  path = _dat(tmp_path, obj)
  _raises(lambda: readers.read_modelnet_dat(path, 40), path, problem)


def test_dat_truncated(tmp_path):
  written = testing.write_modelnet_dat(str(tmp_path), 3, 1, points=32)
  path = str(tmp_path / 'modelnet40_train_8192pts_fps.dat')
  points, labels = readers.read_modelnet_dat(path, 40)  # intact: reads back exactly
  np.testing.assert_array_equal(points, written['train'][0])
  np.testing.assert_array_equal(labels, written['train'][1])
  with open(path, 'rb') as f:
    head = f.read(os.path.getsize(path) - 100)
  with open(path, 'wb') as f:
    f.write(head)
  _raises(lambda: readers.read_modelnet_dat(path, 40), path, 'truncated or corrupt pickle')


def test_missing_file_errors_name_the_path(tmp_path):
  missing = str(tmp_path / 'nope.h5')
  _raises(lambda: readers.read_h5(missing, 15), missing, 'not found')
  _raises(lambda: readers.read_modelnet_dat(missing, 40), missing, 'not found')
