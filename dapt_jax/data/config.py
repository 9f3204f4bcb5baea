"""Per-dataset defaults for the `data` section of a run config."""
from __future__ import annotations

from typing import Any

DATASET_NAMES = ('scan_object_nn/objbg', 'scan_object_nn/objonly', 'scan_object_nn/hardest',
                 'modelnet40', 'synthetic_shapes', 'shapenet_part', 'synthetic_parts',
                 'modelnet_fewshot', 'folder', 'shapenet55')

DEFAULT_TFDS_DATA_DIR = '~/.cache/dapt_jax/tfds'


def default_data_config(name: str) -> Any:
  """The data fields for dataset `name` (one of `DATASET_NAMES`) as an `ml_collections.ConfigDict`.

  Every dataset gets every field so configs can be overridden uniformly from the command line;
  fields a dataset does not read are documented as ignored.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top  (kept off the augment import path)

  if name not in DATASET_NAMES:
    from dapt_jax.data.errors import DataError  # pylint: disable=g-import-not-at-top
    raise DataError(f'data.name: unknown dataset {name!r}; expected one of {", ".join(DATASET_NAMES)}')
  dc = ml_collections.ConfigDict()
  dc.name = name  # which TFDS builder (and config) prepares the data
  if name.startswith('scan_object_nn'):
    dc.data_dir = 'data/ScanObjectNN'  # folder holding main_split/ and main_split_nobg/
    dc.num_points = 2048  # N points fed to the model
    dc.point_all = 2400  # FPS target before the random subset of N (capped at the cloud size)
  elif name == 'modelnet40':
    dc.data_dir = 'data/ModelNet/modelnet40_normal_resampled'  # raw release, .dat or ply h5 files
    dc.num_points = 1024
    dc.point_all = 1200
  elif name == 'modelnet_fewshot':
    dc.data_dir = 'data/ModelNetFewshot'  # holds 5way10shot/0.pkl ... 10way20shot/9.pkl
    dc.num_points = 1024
    dc.point_all = 1200
  elif name == 'shapenet_part':
    dc.data_dir = 'data/shapenetcore_partanno_segmentation_benchmark_v0_normal'  # official folder
    dc.num_points = 2048
    dc.point_all = 2400  # ignored: segmentation draws num_points with replacement per shape
  elif name == 'folder':
    dc.data_dir = ''  # your folder: train/<class>/<files>, optionally test/ and val/
    dc.num_points = 1024
    dc.point_all = 1200
  elif name == 'shapenet55':
    dc.data_dir = 'data/ShapeNet55-34'  # folder holding ShapeNet-55/ and shapenet_pc/
    dc.num_points = 1024  # random subset of the stored 8,192 per cloud (pre-training)
    dc.point_all = 8192  # ignored: pre-training draws a random subset, no FPS (SPEC §6.1)
  else:
    dc.data_dir = ''  # ignored: synthetic data needs no files
    dc.num_points = 1024
    dc.point_all = 1200
  dc.tfds_data_dir = ml_collections.FieldReference(None, field_type=str)  # None: DEFAULT_TFDS_DATA_DIR
  dc.source_format = 'auto'  # ModelNet40 only: 'auto' | 'dat' | 'txt' | 'h5'
  dc.modelnet_points = 8192  # ModelNet40 from raw text: FPS target of the one-time preparation
  dc.train_split = 'train'
  dc.eval_split = 'test'
  # synthetic_shapes only (ignored by the other datasets):
  dc.synthetic_num_train = 2000  # training clouds
  dc.synthetic_num_test = 500  # test clouds
  dc.synthetic_points = 1024  # points stored per cloud
  dc.synthetic_num_classes = 10  # 10..12 shape classes
  dc.synthetic_seed = 0  # the whole dataset is a function of this seed
  dc.synthetic_pose = 'so3'  # 'so3' (any 3-D rotation) | 'upright' (rotated about z only)
  # modelnet_fewshot only: which task and fold (<data_dir>/<way>way<shot>shot/<fold>.pkl).
  dc.way = 5  # classes per task
  dc.shot = 10  # training shapes per class
  dc.fold = 0  # 0..9
  # synthetic_parts only (with synthetic_num_train/num_test/points/seed above):
  dc.synthetic_num_categories = 8  # 2..8 part-labelled object categories
  # shapenet_part and synthetic_parts: every stored shape is padded (or, if larger, cut by a fixed
  # subset) to this many points; the task draws num_points of them per view.
  dc.pool_points = 4096
  # shapenet_part stores the official train, val and test lists as splits; the reference trains
  # on 'train+val' (configs/shapenetpart.py sets it).
  # folder only (ignored by the other datasets):
  dc.folder_points = 2048  # points per stored cloud (FPS down; fewer are resampled with a warning)
  dc.folder_mesh_points = 8192  # points sampled uniformly on each mesh surface before that FPS
  dc.folder_min_points = 32  # clouds with fewer points are refused
  dc.folder_normalize = 'unit_sphere'  # 'unit_sphere' (centre, scale to radius 1) | 'center' | 'none'
  dc.folder_up_axis = 'y'  # the files' up axis: 'y' (as the benchmarks) or 'z' (turned to y-up)
  dc.folder_test_fraction = 0.2  # without a test/ folder: share of each class held out for test
  dc.folder_split_seed = 0  # without a test/ folder: seed of that stratified split
  return dc
