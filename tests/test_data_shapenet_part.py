"""The `shapenet_part` builder on a small tree in the official layout, the `synthetic_parts`
generator and builder, and the pooled part sources."""
import json
import os
import time

import numpy as np
import pytest

from dapt_jax import data
from dapt_jax.data import part_source
from dapt_jax.data import preprocess
from dapt_jax.data import shapenet_part
from dapt_jax.data import synthetic_parts

SIZES = {'train': 18, 'val': 4, 'test': 17}


def _config(name, data_dir, tfds_dir, **fields):
  dc = data.default_data_config(name)
  dc.data_dir = str(data_dir)
  dc.tfds_data_dir = str(tfds_dir)
  for k, v in fields.items():
    setattr(dc, k, v)
  return dc


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  root = tmp_path_factory.mktemp('shapenetpart') / 'shapenetcore_partanno_segmentation_benchmark_v0_normal'
  written = shapenet_part.write_tree(str(root), SIZES, points=(150, 260), seed=1)
  return root, written


def _own_rows(item):
  n = int(item['num_points'])
  return item['points'][:n], item['part'][:n]


def test_reads_the_official_layout_in_reference_order(tree, tmp_path):
  root, written = tree
  dc = _config('shapenet_part', root, tmp_path / 'tfds', pool_points=512)
  for split in ('train', 'val', 'test'):
    source, info = part_source.get_part_source(dc, split)
    want = written[split]
    assert len(source) == info.num_examples == len(want)   # ids without a file are skipped
    assert info.num_classes == 16 and info.num_parts == 50
    assert info.class_names[4] == 'Chair' and info.category_parts[4] == (12, 13, 14, 15)
    for i, (category, _, xyz, labels) in enumerate(want):
      item = source[i]
      assert int(item['category']) == int(item['label']) == category
      points, part = _own_rows(item)
      # every point kept, normalised to the unit sphere over all of the shape's points
      np.testing.assert_allclose(points, preprocess.normalize_unit_sphere(xyz[None])[0],
                                 atol=1e-6)
      np.testing.assert_array_equal(part, labels)
      np.testing.assert_allclose(np.linalg.norm(points, axis=1).max(), 1.0, atol=1e-6)
  # training reads train ∪ val
  source, info = part_source.get_part_source(dc, 'train+val')
  assert len(source) == SIZES['train'] + SIZES['val']
  cats = np.array([source[i]['category'] for i in range(len(source))])
  assert cats.tolist() == [c for c, *_ in written['train']] + [c for c, *_ in written['val']]


def test_pool_pads_cyclically_and_batches_stack(tree, tmp_path):
  root, written = tree
  dc = _config('shapenet_part', root, tmp_path / 'tfds', pool_points=400)
  source, _ = part_source.get_part_source(dc, 'test')
  batch = source.get_batch([0, 3, 5])
  assert batch['points'].shape == (3, 400, 3) and batch['part'].shape == (3, 400)
  assert batch['points'].dtype == np.float32 and batch['part'].dtype == np.int32
  for row, i in enumerate((0, 3, 5)):
    n = len(written['test'][i][3])
    assert batch['num_points'][row] == n
    # the rows past the shape's own are its own points again, in order
    np.testing.assert_array_equal(batch['part'][row], np.resize(written['test'][i][3], 400))
  assert batch['category'].tolist() == [written['test'][i][0] for i in (0, 3, 5)]


def test_pool_keeps_a_fixed_subset_of_larger_shapes():
  pts = np.arange(30, dtype=np.float32).reshape(10, 3)
  part = np.arange(10, dtype=np.int32)
  p1, l1, n = part_source.fit_to_pool(pts, part, 6, index=7)
  p2, l2, _ = part_source.fit_to_pool(pts, part, 6, index=7)
  assert n == 6 and len(set(l1.tolist())) == 6 and l1.tolist() == sorted(l1.tolist())
  np.testing.assert_array_equal(p1, pts[l1])
  np.testing.assert_array_equal(p2, p1)
  np.testing.assert_array_equal(l1, l2)
  p3, l3, n3 = part_source.fit_to_pool(pts, part, 25, index=0)
  assert n3 == 10 and l3.tolist() == list(range(10)) * 2 + list(range(5))


def _copy_tree(src, dst):
  import shutil
  shutil.copytree(src, dst)
  return dst


@pytest.mark.parametrize('damage,message', [
    ('label', 'part label 40 at row 2 is not a part of Airplane'),
    ('row', 'row 3 has 6 values'),
    ('categories', 'expected the 16 official ShapeNetPart categories'),
    ('json', 'not a JSON file'),
    ('entry', "expected \"shape_data/<synset>/<model>\""),
    ('folder', 'category folder of Lamp not found'),
    ('list', 'shuffled_val_file_list.json'),
])
def test_bad_files_give_one_line_errors_and_leave_nothing(tree, tmp_path, damage, message):
  root = _copy_tree(tree[0], tmp_path / 'copy')
  first = tree[1]['train'][0]  # an Airplane shape
  shape = root / shapenet_part.SYNSETS[first[0]] / (first[1] + '.txt')
  split_dir = root / shapenet_part.SPLIT_DIR
  if damage == 'label':
    lines = shape.read_text().splitlines()
    lines[1] = ' '.join(lines[1].split()[:6] + ['40.0'])
    shape.write_text('\n'.join(lines) + '\n')
  elif damage == 'row':
    lines = shape.read_text().splitlines()
    lines[2] = ' '.join(lines[2].split()[:6])
    shape.write_text('\n'.join(lines) + '\n')
  elif damage == 'categories':
    (root / shapenet_part.CATEGORY_FILE).write_text('Airplane 02691156\nBag 02773838\n')
  elif damage == 'json':
    (split_dir / 'shuffled_test_file_list.json').write_text('[not json')
  elif damage == 'entry':
    (split_dir / 'shuffled_train_file_list.json').write_text(json.dumps(['02691156-x']))
  elif damage == 'folder':
    import shutil
    shutil.rmtree(root / '03636649')
  elif damage == 'list':
    os.remove(split_dir / 'shuffled_val_file_list.json')
  dc = _config('shapenet_part', root, tmp_path / 'tfds', pool_points=512)
  with pytest.raises(data.DataError) as e:
    part_source.get_part_source(dc, 'train')
  msg = str(e.value)
  assert message in msg and '\n' not in msg
  if damage in ('label', 'row'):
    assert str(shape) in msg
  # nothing prepared, nothing half-written
  prepared = tmp_path / 'tfds' / 'shapenet_part'
  leftovers = [p for p in prepared.rglob('*')] if prepared.exists() else []
  assert not any(p.name == 'dataset_info.json' for p in leftovers), leftovers
  assert not any('incomplete' in str(p) for p in leftovers), leftovers


def test_prepared_copy_is_rebuilt_when_a_source_file_changes(tree, tmp_path):
  root = _copy_tree(tree[0], tmp_path / 'copy')
  dc = _config('shapenet_part', root, tmp_path / 'tfds', pool_points=512)
  source, _ = part_source.get_part_source(dc, 'test')
  before = source[0]['points'].copy()
  category, model_id, xyz, labels = tree[1]['test'][0]
  path = root / shapenet_part.SYNSETS[category] / (model_id + '.txt')
  table = np.concatenate([xyz[:, ::-1] * 3.0, np.zeros((len(xyz), 3)), labels[:, None]], 1)
  time.sleep(0.01)
  np.savetxt(path, table, fmt='%.6f')
  source, _ = part_source.get_part_source(dc, 'test')
  after = source[0]['points'][:len(xyz)]
  want = preprocess.normalize_unit_sphere(table[None, :, :3].astype(np.float32))[0]
  np.testing.assert_allclose(after, want, atol=1e-6)
  assert not np.allclose(before[:len(xyz)], after)


# ---------------------------------------------------------------------------------------------
# synthetic_parts


def test_synthetic_parts_generator():
  pts, part, cat = synthetic_parts.generate(40, 300, 8, seed=3)
  pts2, part2, cat2 = synthetic_parts.generate(40, 300, 8, seed=3)
  np.testing.assert_array_equal(pts, pts2)
  np.testing.assert_array_equal(part, part2)
  assert pts.shape == (40, 300, 3) and pts.dtype == np.float32 and part.dtype == np.int32
  assert np.bincount(cat, minlength=8).tolist() == [5] * 8
  table = synthetic_parts.category_parts(8)
  assert synthetic_parts.num_parts(8) == 22 and table[-1] == (19, 20, 21)
  for p, c in zip(part, cat):
    # every part of the category occurs, and nothing else
    assert sorted(set(p.tolist())) == list(table[c])
  np.testing.assert_allclose(np.linalg.norm(pts, axis=-1).max(1), 1.0, atol=1e-5)
  np.testing.assert_allclose(pts.mean(1), 0.0, atol=1e-5)
  other = synthetic_parts.generate(40, 300, 8, seed=3, stream=1)[0]
  assert not np.allclose(other, pts)
  with pytest.raises(ValueError, match='num_categories'):
    synthetic_parts.generate(4, 300, 9, seed=0)


def test_synthetic_parts_builder(tmp_path):
  dc = _config('synthetic_parts', '', tmp_path / 'tfds', synthetic_num_train=12,
               synthetic_num_test=6, synthetic_points=200, synthetic_num_categories=3,
               pool_points=200)
  source, info = part_source.get_part_source(dc, 'train')
  assert info.class_names == ['table', 'chair', 'lamp'] and info.num_parts == 8
  assert info.category_parts == ((0, 1), (2, 3, 4), (5, 6, 7))
  pts, part, cat = synthetic_parts.generate(12, 200, 3, seed=0)
  batch = source.get_batch(range(12))
  np.testing.assert_array_equal(batch['points'], pts)
  np.testing.assert_array_equal(batch['part'], part)
  np.testing.assert_array_equal(batch['category'], cat)
  assert (batch['num_points'] == 200).all()
  assert len(part_source.get_part_source(dc, 'test')[0]) == 6
  dc.synthetic_num_categories = 9
  with pytest.raises(data.DataError, match='synthetic_num_categories'):
    part_source.get_part_source(dc, 'train')


def test_not_a_part_dataset(tmp_path):
  dc = _config('synthetic_shapes', '', tmp_path / 'tfds')
  with pytest.raises(data.DataError, match='not a part-segmentation dataset'):
    part_source.get_part_source(dc, 'train')
