"""Part-segmentation metrics (dapt_jax/segmentation_metrics.py) against hand-computed cases."""
import jax.numpy as jnp
import numpy as np
import pytest

from dapt_jax import segmentation_metrics as M

# Two categories: 0 owns parts {0, 1}; 1 owns parts {2, 3, 4}.
PARTS = ((0, 1), (2, 3, 4))


def test_hand_computed_ious_including_absent_parts():
  gt = np.array([[0, 0, 1, 1],      # A, category 0
                 [2, 2, 2, 3],      # B, category 1 (part 4 absent from both)
                 [4, 4, 4, 4],      # C, category 1 (parts 2 and 3 absent from both)
                 [0, 0, 0, 0]])     # D, category 0 (part 1 predicted but absent from gt)
  pred = np.array([[0, 1, 1, 1],
                   [2, 2, 3, 3],
                   [4, 4, 4, 4],
                   [0, 0, 0, 1]])
  category = np.array([0, 1, 1, 0])
  # A: part 0 I=1 U=2, part 1 I=2 U=3        -> (1/2 + 2/3) / 2     = 7/12
  # B: part 2 I=2 U=3, part 3 I=1 U=2, part 4 -> (2/3 + 1/2 + 1) / 3 = 13/18
  # C: parts 2, 3 absent from both (1), part 4 perfect               = 1
  # D: part 0 I=3 U=4, part 1 I=0 U=1       -> (3/4 + 0) / 2        = 3/8
  want_shapes = np.array([7 / 12, 13 / 18, 1.0, 3 / 8])
  mask = M.part_mask(PARTS, 5)
  np.testing.assert_allclose(M.shape_ious(pred, gt, category, mask), want_shapes, rtol=1e-15)

  m = M.segmentation_metrics(pred, gt, category, PARTS, 5, ['mugs', 'cars'])
  assert m['instance_miou'] == pytest.approx(want_shapes.mean(), rel=1e-15)
  cat0 = (7 / 12 + 3 / 8) / 2
  cat1 = (13 / 18 + 1.0) / 2
  assert m['per_category_iou'] == {'mugs': pytest.approx(cat0, rel=1e-15),
                                   'cars': pytest.approx(cat1, rel=1e-15)}
  assert m['class_miou'] == pytest.approx((cat0 + cat1) / 2, rel=1e-15)
  assert m['accuracy'] == pytest.approx(13 / 16)   # 3 + 3 + 4 + 3 of 16 points
  # Per-part accuracy over the parts seen in gt: part 0: A 1 of 2 + D 3 of 4 = 4/6; part 1: A 2/2;
  # part 2: B 2/3; part 3: B 1/1; part 4: C 4/4.
  assert m['mean_part_accuracy'] == pytest.approx((4 / 6 + 1 + 2 / 3 + 1 + 1) / 5)
  assert m['per_category_shapes'] == {'mugs': 2, 'cars': 2}
  assert (m['num_shapes'], m['num_points']) == (4, 16)


def test_category_without_shapes_is_left_out_of_class_miou():
  gt = np.array([[0, 1, 1]])
  pred = np.array([[0, 1, 0]])
  m = M.segmentation_metrics(pred, gt, np.array([0]), PARTS, 5)
  # part 0: I=1 U=2; part 1: I=1 U=2 -> 1/2
  assert m['per_category_iou'] == {'0': 0.5, '1': None}
  assert m['class_miou'] == 0.5 and m['instance_miou'] == 0.5


def _reference_loop(pred, gt, category, parts):
  """A literal per-shape, per-part transcription of the reference evaluation (SPEC §8.4)."""
  per_cat = {c: [] for c in range(len(parts))}
  for segp, segl, c in zip(pred, gt, category):
    ious = []
    for l in parts[c]:
      if np.sum(segl == l) == 0 and np.sum(segp == l) == 0:
        ious.append(1.0)
      else:
        ious.append(np.sum((segl == l) & (segp == l)) / float(np.sum((segl == l) | (segp == l))))
    per_cat[c].append(np.mean(ious))
  all_ious = [v for c in per_cat for v in per_cat[c]]
  return np.mean(all_ious), np.mean([np.mean(v) for v in per_cat.values()])


def test_matches_the_reference_loop_on_random_shapenet_sized_labels():
  rng = np.random.default_rng(0)
  s, n = 64, 200
  category = np.concatenate([np.arange(16), rng.integers(0, 16, s - 16)])
  mask = M.part_mask(M.SHAPENET_PART_PARTS, 50)
  logits = rng.normal(size=(s, n, 50))
  pred = M.restricted_argmax_np(logits, category, mask)
  # ground truth: the category's parts, with some parts missing from some shapes
  gt = np.stack([rng.choice(M.SHAPENET_PART_PARTS[c][:1 + i % len(M.SHAPENET_PART_PARTS[c])], n)
                 for i, c in enumerate(category)])
  m = M.segmentation_metrics(pred, gt, category, M.SHAPENET_PART_PARTS, 50,
                             M.SHAPENET_PART_CATEGORIES)
  inst, cls = _reference_loop(pred, gt, category, M.SHAPENET_PART_PARTS)
  assert m['instance_miou'] == pytest.approx(inst, rel=1e-12)
  assert m['class_miou'] == pytest.approx(cls, rel=1e-12)
  assert set(m['per_category_iou']) == set(M.SHAPENET_PART_CATEGORIES)


def test_prediction_is_restricted_to_the_category_parts():
  # Point 0's global argmax is part 3 (category 1), point 1's is part 1; the shape is category 0.
  logits = np.array([[[0.1, 0.2, 0.0, 9.0, 0.0],
                      [0.5, 0.6, 7.0, 0.0, 0.0]]])
  mask = M.part_mask(PARTS, 5)
  assert M.restricted_argmax_np(logits, np.array([0]), mask).tolist() == [[1, 1]]
  assert M.restricted_argmax_np(logits, np.array([1]), mask).tolist() == [[3, 2]]
  got = M.restricted_argmax(jnp.asarray(logits), jnp.array([0]), jnp.asarray(mask))
  assert np.asarray(got).tolist() == [[1, 1]]
  # ties go to the lower part id, on both sides
  tie = np.zeros((1, 1, 5))
  assert M.restricted_argmax_np(tie, np.array([1]), mask).tolist() == [[2]]
  assert np.asarray(M.restricted_argmax(jnp.asarray(tie), jnp.array([1]), mask)).tolist() == [[2]]


def test_shapenet_part_table():
  assert len(M.SHAPENET_PART_CATEGORIES) == 16
  mask = M.part_mask(M.SHAPENET_PART_PARTS, M.SHAPENET_PART_NUM_PARTS)
  assert mask.sum() == 50 and (mask.sum(0) == 1).all()   # every part in exactly one category
  assert M.SHAPENET_PART_PARTS[10] == (30, 31, 32, 33, 34, 35)   # Motorbike


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError, match='two categories'):
    M.part_mask(((0, 1), (1, 2)), 3)
  with pytest.raises(ValueError, match='outside'):
    M.part_mask(((0, 5),), 3)
  with pytest.raises(ValueError, match='outside'):
    M.segmentation_metrics(np.array([[0, 7]]), np.array([[0, 1]]), np.array([0]), PARTS, 5)
