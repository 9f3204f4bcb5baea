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


# ----------------------------------------------------------------------------------------------
# Users' cloud and mesh files (dapt_jax.data.clouds): every format reads back what was written;
# every malformed file is one DataError line naming it.

from dapt_jax.data import clouds  # pylint: disable=g-import-not-at-top,wrong-import-position
from dapt_jax.data import folder_example as fx  # pylint: disable=g-import-not-at-top,wrong-import-position

CLOUD = np.random.default_rng(3).normal(size=(50, 3)).astype(np.float32)


def _write_cloud(path, kind):
  """Writes CLOUD as `kind`; returns the path."""
  path = str(path)
  if kind == 'npy':
    fx.write_npy(path, CLOUD)
  elif kind in ('txt', 'xyz', 'pts'):
    fx.write_txt(path, CLOUD)
  elif kind == 'csv_header':
    fx.write_txt(path, np.concatenate([CLOUD[:, 2:], CLOUD[:, :2]], 1), delimiter=',',
                 header='z,x,y')  # columns picked by name
  elif kind == 'txt_comments':
    fx.write_txt(path, CLOUD)
    with open(path) as f:
      body = f.read()
    with open(path, 'w') as f:
      f.write('//X Y Z\n# exported\n' + body)
  elif kind == 'ply_ascii':
    fx.write_ply(path, CLOUD, binary=False)
  elif kind == 'ply_binary':
    fx.write_ply(path, CLOUD, binary=True)
  elif kind.startswith('pcd_'):
    fx.write_pcd(path, CLOUD, data=kind[4:])
  elif kind == 'h5':
    fx.write_h5(path, CLOUD)
  return path


@pytest.mark.parametrize('kind, ext, atol', [
    ('npy', '.npy', 0), ('txt', '.txt', 1e-6), ('xyz', '.xyz', 1e-6), ('pts', '.pts', 1e-6),
    ('csv_header', '.csv', 1e-6), ('txt_comments', '.txt', 1e-6), ('ply_ascii', '.ply', 1e-6),
    ('ply_binary', '.ply', 0), ('pcd_ascii', '.pcd', 1e-6), ('pcd_binary', '.pcd', 0),
    ('pcd_binary_compressed', '.pcd', 0), ('h5', '.h5', 0),
])
def test_cloud_formats_read_back(tmp_path, kind, ext, atol):
  # Text formats are written with 6 decimals: within 5e-7 of the float32 value, so 1e-6.
  path = _write_cloud(tmp_path / f'c{ext}', kind)
  got = clouds.read_cloud(path)
  assert got.dtype == np.float32 and got.shape == CLOUD.shape
  np.testing.assert_allclose(got, CLOUD, atol=atol, rtol=0)


def test_pcd_with_extra_fields_padding_and_big_endian_free_layout(tmp_path):
  # PCL writes rgb as a packed float and names padding fields '_'; x y z are found by name.
  rgb = np.arange(len(CLOUD), dtype=np.float32)
  rec = np.zeros(len(CLOUD), [('a', '<f4'), ('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                              ('p1', '<u1', (4,)), ('p2', '<u1', (4,))])
  rec['a'], rec['x'], rec['y'], rec['z'] = rgb, CLOUD[:, 0], CLOUD[:, 1], CLOUD[:, 2]
  head = (f'VERSION .7\nFIELDS rgb x y z _ _\nSIZE 4 4 4 4 1 1\nTYPE F F F F U U\n'
          f'COUNT 1 1 1 1 4 4\nWIDTH {len(CLOUD)}\nHEIGHT 1\nPOINTS {len(CLOUD)}\nDATA binary\n')
  path = tmp_path / 'rgb.pcd'
  path.write_bytes(head.encode() + rec.tobytes())
  np.testing.assert_array_equal(clouds.read_cloud(str(path)), CLOUD)


def test_lzf_back_references_from_the_format_definition():
  # 'abc' as a literal run (control 2), then a back reference of length 6 at distance 3:
  # control (6 - 2) << 5 | (3 - 1) >> 8 = 0x80, then (3 - 1) & 0xff = 2. It overlaps itself.
  assert clouds.lzf_decompress(bytes([2]) + b'abc' + bytes([0x80, 2]), 9) == b'abcabcabc'
  # A long reference: length 7 + 3 + 2 = 12 via the extension byte, distance 1.
  assert clouds.lzf_decompress(bytes([0]) + b'z' + bytes([0xE0, 3, 0]), 13) == b'z' * 13
  for bad in (bytes([5]) + b'ab', bytes([0x80, 9])):  # run past the end; reference before start
    with pytest.raises(ValueError):
      clouds.lzf_decompress(bad, 9)


def _box(path, fmt):
  v, t = fx.box_mesh()
  {'off': fx.write_off, 'obj': fx.write_obj, 'stl': fx.write_stl}[fmt](str(path), v, t)
  return str(path)


@pytest.mark.parametrize('fmt', ['off', 'obj', 'stl', 'stl_ascii'])
def test_meshes_are_sampled_on_their_surface(tmp_path, fmt):
  path = str(tmp_path / f'box.{fmt[:3]}')
  v, t = fx.box_mesh()
  if fmt == 'stl_ascii':
    fx.write_stl(path, v, t, binary=False)
  else:
    _box(path, fmt)
  pts = clouds.read_cloud(path, mesh_points=3000, seed=1)
  assert pts.shape == (3000, 3)
  # On the surface of the unit box: the largest |coordinate| is 0.5 (6-decimal text: 1e-6).
  np.testing.assert_allclose(np.abs(pts).max(1), 0.5, atol=1e-6)
  # Every face gets its share of the points (1/6 each; 3000 draws: sd 20, bound 5 sd).
  face = np.argmax(np.abs(pts), 1) * 2 + (pts[np.arange(3000), np.argmax(np.abs(pts), 1)] > 0)
  assert np.all(np.abs(np.bincount(face, minlength=6) - 500) < 100)
  np.testing.assert_array_equal(pts, clouds.read_cloud(path, mesh_points=3000, seed=1))
  assert not np.array_equal(pts, clouds.read_cloud(path, mesh_points=3000, seed=2))


def test_surface_sampling_is_area_weighted_and_uniform_in_each_triangle():
  # Two disjoint triangles, areas 1/2 and 9/2: a point lands in the big one with p = 0.9.
  v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 0, 0], [8, 0, 0], [5, 3, 0]], float)
  t = np.array([[0, 1, 2], [3, 4, 5]])
  n = 20000
  pts = clouds.sample_surface(v, t, n, np.random.default_rng(0))
  big = pts[:, 0] >= 5 - 1e-12
  assert abs(big.mean() - 0.9) < 5 * np.sqrt(0.9 * 0.1 / n)
  # Inside each triangle, uniform: the mean is the centroid (sd of the mean < 0.01 here).
  np.testing.assert_allclose(pts[big].mean(0), [6, 1, 0], atol=0.05)
  np.testing.assert_allclose(pts[~big].mean(0), [1 / 3, 1 / 3, 0], atol=0.02)
  assert np.all(pts[~big, 0] + pts[~big, 1] <= 1 + 1e-12) and np.all(pts[:, 2] == 0)


def test_obj_quads_negative_indices_and_bare_vertices(tmp_path):
  quad = tmp_path / 'q.obj'
  quad.write_text('v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvn 0 0 1\nvt 0 0\n'
                  'f 1/1/1 2/1/1 3/1/1 4/1/1\n')
  pts = clouds.read_cloud(str(quad), mesh_points=500)
  assert pts.shape == (500, 3) and pts[:, :2].min() >= 0 and pts[:, :2].max() <= 1
  assert pts[:, 0].mean() == pytest.approx(0.5, abs=0.05)  # both triangles of the fan used
  neg = tmp_path / 'n.obj'
  neg.write_text('v 0 0 0\nv 2 0 0\nv 0 2 0\nf -3 -2 -1\n')
  assert clouds.read_cloud(str(neg), mesh_points=10).shape == (10, 3)
  bare = tmp_path / 'cloud.obj'
  bare.write_text(''.join(f'v {x} {y} {z}\n' for x, y, z in CLOUD))
  np.testing.assert_allclose(clouds.read_cloud(str(bare)), CLOUD, atol=1e-6)


def _bin_stl(n_declared, n_written):
  v, t = fx.box_mesh()
  tris = v[t][:n_written].astype('<f4')
  rec = b''.join(b'\0' * 12 + x.tobytes() + b'\0\0' for x in tris)
  return b'\0' * 80 + np.uint32(n_declared).tobytes() + rec


OFF_HEAD = 'OFF\n4 2 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n'
PLY_HEAD = ('ply\nformat ascii 1.0\nelement vertex {n}\nproperty float x\nproperty float y\n'
            'property float z\nend_header\n')


@pytest.mark.parametrize('name, content, problem', [
    ('a.ply', PLY_HEAD.format(n=300) + '0 0 0\n' * 20, 'declares 300 data rows'),
    ('a.ply', PLY_HEAD.format(n=3) + '0 0 0\n0 0\n1 1 1\n', 'vertex 1 has 2 values'),
    ('b.ply', PLY_HEAD.format(n=30).replace('ascii', 'binary_little_endian').encode()
     + b'\0' * 100, 'declares 30 vertices (360 bytes)'),
    ('c.ply', 'ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nend_header\n0\n0\n',
     'no x, y, z'),
    ('d.ply', 'solid nothing\n', 'not a PLY file'),
    ('a.pcd', 'FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 5\nPOINTS 5\nDATA ascii\n1 2 3\n',
     'declares 5 points but the file holds 1 rows'),
    ('b.pcd', b'FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 5\nPOINTS 5\nDATA binary\n'
     + b'\0' * 59, 'declares 5 points (60 bytes)'),
    ('c.pcd', b'FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 1\nPOINTS 1\nDATA binary_compressed\n'
     + np.asarray([3, 12], '<u4').tobytes() + bytes([0x80, 9, 1]), 'corrupt PCD'),
    ('d.pcd', 'FIELDS x y\nSIZE 4 4\nTYPE F F\nWIDTH 1\nPOINTS 1\nDATA ascii\n1 2\n', 'no x, y, z'),
    ('e.pcd', 'FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 2\nHEIGHT 2\nPOINTS 3\nDATA ascii\n',
     'WIDTH x HEIGHT'),
    ('f.pcd', 'FIELDS x y z\nDATA ascii\n', "lacks or has an unknown 'SIZE'"),
    ('a.off', 'OFF\n300 2 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n',
     'declares 300 vertices and 2 faces'),
    ('b.off', OFF_HEAD + '3 0 1 2\n3 0 1 7\n', 'uses vertex 7, outside the 4 vertices'),
    ('c.off', OFF_HEAD + '3 0 1 2\n4 0 1 3\n', 'declares 4 vertices but lists 3'),
    ('d.off', 'hello\n', 'not an OFF file'),
    ('e.off', 'OFF\n0 0 0\n', 'has no faces'),
    ('a.obj', 'v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 7\n', 'uses vertex 7, but 3 are defined'),
    ('b.obj', 'v 0 0 x\nv 1 0 0\nv 0 1 0\nf 1 2 3\n', "holds 'x'"),
    ('c.obj', 'f 1 2 3\n', 'uses vertex 1, but 0 are defined'),
    ('d.obj', '# nothing\n', 'no vertices'),
    ('e.obj', 'v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n', 'triangles are degenerate'),
    ('a.stl', _bin_stl(12, 5), 'declares 12 triangles (684 bytes) but the file has 334'),
    ('b.stl', _bin_stl(2, 5), 'declares 2 triangles'),
    ('c.stl', 'solid x\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\n', 'no "endsolid"'),
    ('d.stl', 'garbage', 'not an STL file'),
    ('a.txt', '', 'empty file'),
    ('b.txt', '  \n# only a comment\n', 'empty file'),
    ('c.txt', '1 2 3\n4 5\n', 'line 2 has 2 value(s), expected 3'),
    ('d.txt', '1 2 3\n4 5 six\n', "holds 'six'"),
    ('e.txt', '1 2\n3 4\n', 'line 1 has 2 value(s)'),
    ('f.txt', '1 abc 3\n4 5 6\n', "line 1 holds 'abc'"),
    ('g.txt', '1 2 3\nnan 0 0\n', '1 of 2 points have NaN/inf coordinates, first point 1'),
    ('h.xyz', b'\x00\xff\xfe', 'not a text file'),
    ('a.npy', b'not numpy', 'not a readable .npy'),
    ('a.off', 'OFF\n3 1 0\n0 0 0\n1 0 inf\n0 1 0\n3 0 1 2\n', 'NaN/inf'),
    ('a.las', 'x', "unsupported extension '.las'"),
])
def test_malformed_cloud_and_mesh_files(tmp_path, name, content, problem):
  path = tmp_path / name
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content)
  import warnings  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # no NumPy warning on the way to the error line
    _raises(lambda: clouds.read_cloud(str(path)), str(path), problem)


def test_array_files_with_bad_shapes_or_values(tmp_path):
  cases = {'nan.npy': np.full((4, 3), np.nan, np.float32), 'flat.npy': np.zeros(9, np.float32),
           'two.npy': np.zeros((4, 2), np.float32), 'empty.npy': np.zeros((0, 3), np.float32),
           'text.npy': np.array([['a', 'b', 'c']])}
  problems = {'nan.npy': 'NaN/inf', 'flat.npy': 'shape (points, 3+)', 'two.npy': 'got (4, 2)',
              'empty.npy': 'no points', 'text.npy': 'expected numbers'}
  for name, arr in cases.items():
    np.save(tmp_path / name, arr)
    _raises(lambda: clouds.read_cloud(str(tmp_path / name)), name, problems[name])
  two = _h5(tmp_path / 'two.h5', data=np.zeros((2, 16, 3), np.float32))
  _raises(lambda: clouds.read_cloud(two), two, 'holds 2 clouds')
  other = _h5(tmp_path / 'other.h5', xyz=np.zeros((16, 3), np.float32))
  _raises(lambda: clouds.read_cloud(other), other, 'no dataset named "data" or "points"')
  _raises(lambda: clouds.read_cloud(str(tmp_path / 'missing.ply')), 'missing.ply', 'no such file')
  _raises(lambda: clouds.read_cloud(str(tmp_path)), str(tmp_path), 'not a file')


def test_normalise_and_up_axis():
  pts = np.random.default_rng(0).normal(size=(100, 3)) * [1, 2, 3] + [5, 6, 7]
  unit = clouds.normalize(pts, 'unit_sphere')
  np.testing.assert_allclose(unit.mean(0), 0, atol=1e-12)
  assert np.linalg.norm(unit, axis=1).max() == pytest.approx(1)
  centred = clouds.normalize(pts, 'center')
  np.testing.assert_allclose(centred, pts - pts.mean(0))  # metric scale kept
  np.testing.assert_array_equal(clouds.normalize(pts, 'none'), pts)
  up = clouds.rotate_up(np.array([[1., 2., 3.]]), 'z')
  np.testing.assert_array_equal(up, [[1, 3, -2]])  # z-up → y-up: the old z is the new y
  rot = clouds.rotate_up(np.eye(3), 'z')
  assert np.linalg.det(rot) == pytest.approx(1)  # a rotation, not a reflection
  with pytest.raises(data.DataError, match='folder_up_axis'):
    clouds.rotate_up(pts, 'x')
  with pytest.raises(data.DataError, match='folder_normalize'):
    clouds.normalize(pts, 'scale')


def test_cloud_readers_import_without_the_data_stack():
  from tests import test_imports  # pylint: disable=g-import-not-at-top
  r = test_imports._run(['torch', 'tensorflow_datasets', 'grain', 'array_record', 'h5py'],  # pylint: disable=protected-access
                        'import dapt_jax.data.clouds, dapt_jax.data.folder, '
                        'dapt_jax.data.classes; print("ok")')
  assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-2000:]
