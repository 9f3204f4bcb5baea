"""TFDS builders: `scan_object_nn` (objbg | objonly | hardest), `modelnet40`, `synthetic_shapes`,
`modelnet_fewshot`, `folder` (the user's own class folders); for part segmentation `shapenet_part`
and `synthetic_parts` (at the end of this file).

All of them write `array_record` files and are read back through `builder.as_data_source(split)`, so
neither building nor reading needs TensorFlow. Examples are stored in source order
(`disable_shuffling`): index i of a split is the i-th sample of the official file or list.

Features: `points` float32 [P, 3] (raw bytes encoding), `label` ClassLabel with the class names.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from dapt_jax.data import fewshot
from dapt_jax.data import folder
from dapt_jax.data import modelnet_files
from dapt_jax.data import readers
from dapt_jax.data import scanobjectnn_files
from dapt_jax.data import shapenet55
from dapt_jax.data import shapenet_part
from dapt_jax.data import synthetic
from dapt_jax.data import synthetic_parts
from dapt_jax.data.errors import DataError


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base for builders that download nothing.

  tfds 4.9.10 looks for a url-checksums file beside the builder's code, and for builders in a
  regular package that lookup imports the `importlib_resources` backport, which tfds does not
  declare as a dependency. With nothing to download there is no checksums file, so skip it.
  """
  code_path = None


def _features(class_names) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'points': tfds.features.Tensor(shape=(None, 3), dtype=np.float32,
                                     encoding=tfds.features.Encoding.BYTES),
      'label': tfds.features.ClassLabel(names=list(class_names)),
  })


def _examples(points: np.ndarray, labels: np.ndarray):
  for i in range(points.shape[0]):
    yield i, {'points': points[i], 'label': int(labels[i])}


def _manual_dir(dl_manager) -> str:
  path = dl_manager.manual_dir
  return os.fspath(path) if path is not None else ''


# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ScanObjectNNConfig(tfds.core.BuilderConfig):
  folder: str = 'main_split'
  suffix: str = ''


class ScanObjectNN(_LocalBuilder):
  """ScanObjectNN real-scan objects, 15 classes (Uy et al., ICCV 2019)."""

  name = 'scan_object_nn'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Official h5 files, clouds as stored.'}
  BUILDER_CONFIGS = [
      ScanObjectNNConfig(name='objbg', description='OBJ-BG: objects with background.',
                         folder='main_split'),
      ScanObjectNNConfig(name='objonly', description='OBJ-ONLY: objects without background.',
                         folder='main_split_nobg'),
      ScanObjectNNConfig(name='hardest',
                         description='PB-T50-RS: perturbed (translate, rotate, scale) with bg.',
                         folder='main_split', suffix='_augmentedrot_scale75'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = scanobjectnn_files.INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__, features=_features(scanobjectnn_files.CLASS_NAMES),
        supervised_keys=('points', 'label'), homepage='https://hkust-vgd.github.io/scanobjectnn/',
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    files = scanobjectnn_files.split_files(_manual_dir(dl_manager), self.builder_config.name)
    out = {}
    for split, path in files.items():
      points, labels = readers.read_h5(path, len(scanobjectnn_files.CLASS_NAMES))
      out[split] = _examples(points, labels)
    return out

  def _generate_examples(self, **unused):  # splits come from _split_generators
    raise NotImplementedError


# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelNet40Config(tfds.core.BuilderConfig):
  source_format: str = 'auto'  # 'auto' | 'dat' | 'txt' | 'h5'
  num_points: int = 8192  # FPS target when preparing from raw text files


class ModelNet40(_LocalBuilder):
  """ModelNet40 CAD shapes, 40 classes, xyz centred and scaled to the unit sphere."""

  name = 'modelnet40'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Point-BERT preprocessing (FPS to 8192, unit sphere).'}
  BUILDER_CONFIGS = [ModelNet40Config(name='default', description='Format detected from files.')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = modelnet_files.INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=_features(modelnet_files.DEFAULT_CLASS_NAMES),
        supervised_keys=('points', 'label'), homepage='https://modelnet.cs.princeton.edu/',
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    plan = modelnet_files.plan(_manual_dir(dl_manager), cfg.source_format)
    names = self.info.features['label'].names
    if list(plan.class_names) != list(names):
      raise DataError(f'{plan.names_file}: class list differs from the 40 official ModelNet40 '
                      'classes in their official order')
    return {split: _examples(*modelnet_files.load_split(plan, split, cfg.num_points))
            for split in ('train', 'test')}

  def _generate_examples(self, **unused):
    raise NotImplementedError


# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SyntheticShapesConfig(tfds.core.BuilderConfig):
  num_train: int = 2000
  num_test: int = 500
  num_points: int = 1024
  num_classes: int = 10
  seed: int = 0
  pose: str = 'so3'


def synthetic_config(num_train: int, num_test: int, num_points: int, num_classes: int,
                     seed: int, pose: str = 'so3') -> SyntheticShapesConfig:
  """A config whose name encodes every parameter, so each variant has its own prepared copy
  (the default pose adds nothing to the name, so copies prepared before it existed still fit)."""
  suffix = '' if pose == 'so3' else f'_{pose}'
  return SyntheticShapesConfig(
      name=f'c{num_classes}_p{num_points}_n{num_train}-{num_test}_s{seed}{suffix}',
      description='Synthetic primitive shapes with pose, scale, noise, occlusion and clutter.',
      num_train=num_train, num_test=num_test, num_points=num_points, num_classes=num_classes,
      seed=seed, pose=pose)


class SyntheticShapes(_LocalBuilder):
  """Primitive 3-D shapes generated from a seed (see `dapt_jax.data.synthetic`)."""

  name = 'synthetic_shapes'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Up to 12 classes.'}
  # No built-in config: every config is made at run time (`synthetic_config`), and TFDS refuses
  # a run-time config named as a built-in one, so a built-in would clash with the user's own.

  def _info(self) -> tfds.core.DatasetInfo:
    names = synthetic.SHAPE_NAMES[:self.builder_config.num_classes]
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=_features(names),
                                 supervised_keys=('points', 'label'), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    return {split: _examples(*synthetic.generate(n, cfg.num_points, cfg.num_classes, cfg.seed,
                                                 stream, cfg.pose))
            for stream, (split, n) in enumerate((('train', cfg.num_train),
                                                 ('test', cfg.num_test)))}

  def _generate_examples(self, **unused):
    raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Part segmentation: `shapenet_part` and `synthetic_parts`. Examples hold a whole shape (clouds of
# different sizes for ShapeNetPart); `dapt_jax.data.part_source` pads them to a fixed pool and the
# segmentation task draws the points the model sees on device.


def _part_features(category_names) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'points': tfds.features.Tensor(shape=(None, 3), dtype=np.float32,
                                     encoding=tfds.features.Encoding.BYTES),
      'part': tfds.features.Tensor(shape=(None,), dtype=np.int32,
                                   encoding=tfds.features.Encoding.BYTES),
      'category': tfds.features.ClassLabel(names=list(category_names)),
      'model_id': tfds.features.Text(),
  })


class ShapeNetPart(_LocalBuilder):
  """ShapeNetPart (shapenetcore_partanno_segmentation_benchmark_v0_normal): 16 categories, 50
  parts; xyz normalised to the unit sphere, every point of every shape kept."""

  name = 'shapenet_part'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Official _normal release; reference split logic (files that exist).'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = shapenet_part.INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=_part_features(shapenet_part.CATEGORY_NAMES),
        homepage='https://cs.stanford.edu/~ericyi/project_page/part_annotation/',
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    plan = shapenet_part.plan(_manual_dir(dl_manager))
    return {split: shapenet_part.examples(plan, split) for split in shapenet_part.SPLITS}

  def _generate_examples(self, **unused):
    raise NotImplementedError


@dataclasses.dataclass
class SyntheticPartsConfig(tfds.core.BuilderConfig):
  num_train: int = 1024
  num_test: int = 256
  num_points: int = 2048
  num_categories: int = 8
  seed: int = 0


def synthetic_parts_config(num_train: int, num_test: int, num_points: int, num_categories: int,
                           seed: int) -> SyntheticPartsConfig:
  """A config whose name encodes every parameter, so each variant has its own prepared copy."""
  return SyntheticPartsConfig(
      name=f'c{num_categories}_p{num_points}_n{num_train}-{num_test}_s{seed}',
      description='Synthetic objects glued from 2-4 labelled primitive parts.',
      num_train=num_train, num_test=num_test, num_points=num_points,
      num_categories=num_categories, seed=seed)


class SyntheticParts(_LocalBuilder):
  """Objects glued from labelled primitive parts, generated from a seed
  (see `dapt_jax.data.synthetic_parts`)."""

  name = 'synthetic_parts'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Up to 8 categories, 22 parts.'}
  # No built-in config (see SyntheticShapes): configs come from `synthetic_parts_config`.

  def _info(self) -> tfds.core.DatasetInfo:
    names = synthetic_parts.CATEGORY_NAMES[:self.builder_config.num_categories]
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=_part_features(names), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config

    def examples(n, stream):
      points, part, category = synthetic_parts.generate(n, cfg.num_points, cfg.num_categories,
                                                        cfg.seed, stream)
      for i in range(n):
        yield i, {'points': points[i], 'part': part[i], 'category': int(category[i]),
                  'model_id': f'synthetic-{stream}-{i:06d}'}

    return {'train': examples(cfg.num_train, 0), 'test': examples(cfg.num_test, 1)}

  def _generate_examples(self, **unused):
    raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Few-shot ModelNet40: one fold of one way/shot task per config (`dapt_jax.data.fewshot`).


@dataclasses.dataclass
class ModelNetFewshotConfig(tfds.core.BuilderConfig):
  way: int = 5
  shot: int = 10
  fold: int = 0
  path: str = ''  # the fold's pickle
  class_names: tuple = modelnet_files.DEFAULT_CLASS_NAMES  # 40: the fold's classes first


def fewshot_config(way: int, shot: int, fold: int, path: str,
                   class_names: tuple) -> ModelNetFewshotConfig:
  """A config per (way, shot, fold), so each fold has its own prepared copy."""
  return ModelNetFewshotConfig(
      name=f'{way}way{shot}shot_fold{fold}',
      description=f'{way}-way {shot}-shot ModelNet40, fold {fold} (Point-BERT\'s folds).',
      way=way, shot=shot, fold=fold, path=path, class_names=tuple(class_names))


class ModelNetFewshot(_LocalBuilder):
  """Few-shot ModelNet40 folds: xyz centred and scaled to the unit sphere, labels 0..way-1."""

  name = 'modelnet_fewshot'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Point-BERT\'s ModelNetFewshot pickles, xyz only, unit sphere.'}
  # No built-in config (see SyntheticShapes): a built-in `5way10shot_fold0` made every real
  # 5-way 10-shot fold 0 fail ("Cannot name a custom BuilderConfig the same as an available one").
  MANUAL_DOWNLOAD_INSTRUCTIONS = fewshot.INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=_features(self.builder_config.class_names),
        supervised_keys=('points', 'label'), homepage='https://modelnet.cs.princeton.edu/',
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    fold = fewshot.load_fold(cfg.path, cfg.way, cfg.shot)
    return {split: _examples(fold.points[split], fold.labels[split]) for split in fewshot.SPLITS}

  def _generate_examples(self, **unused):
    raise NotImplementedError


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  class_names: tuple = ()
  points: int = 2048
  mesh_points: int = 8192
  min_points: int = 32
  normalize: str = 'unit_sphere'
  up_axis: str = 'y'
  test_fraction: float = 0.2
  split_seed: int = 0

  def settings(self) -> folder.Settings:
    return folder.Settings(points=self.points, mesh_points=self.mesh_points,
                           min_points=self.min_points, normalize=self.normalize,
                           up_axis=self.up_axis, test_fraction=self.test_fraction,
                           split_seed=self.split_seed)


def folder_config(root: str, class_names: Sequence[str], s: folder.Settings) -> FolderConfig:
  """A config named by the folder (its name and a digest of its real path) and every setting, so
  each folder and preparation has its own prepared copy."""
  real = os.path.realpath(os.path.expanduser(root))
  slug = re.sub(r'[^A-Za-z0-9_-]+', '_', os.path.basename(real.rstrip(os.sep)))[:40] or 'root'
  digest = hashlib.sha256(real.encode()).hexdigest()[:10]
  name = (f'{slug}-{digest}_p{s.points}_m{s.mesh_points}_k{s.min_points}_{s.normalize}_'
          f'{s.up_axis}up_t{round(s.test_fraction * 1e6)}_s{s.split_seed}')
  return FolderConfig(name=name, description=f'Clouds and meshes in class folders under {real}.',
                      class_names=tuple(class_names), points=s.points, mesh_points=s.mesh_points,
                      min_points=s.min_points, normalize=s.normalize, up_axis=s.up_axis,
                      test_fraction=s.test_fraction, split_seed=s.split_seed)


class Folder(_LocalBuilder):
  """The user's own clouds and meshes, one per file, in class folders (`dapt_jax.data.folder`)."""

  name = 'folder'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Surface-sampled meshes, FPS to a set count, y-up, normalised.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = ('Set data.data_dir to a folder holding train/<class>/<files> '
                                  '(and optionally test/ and val/).')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=_features(self.builder_config.class_names),
                                 supervised_keys=('points', 'label'), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    s = cfg.settings()
    plan = folder.plan(_manual_dir(dl_manager), s.test_fraction, s.split_seed)
    if tuple(plan.class_names) != tuple(cfg.class_names):
      raise DataError(f'{plan.root}: the class folders changed while preparing; run again')
    folder.warn_ignored(plan)
    return {split: _examples(*folder.load_split(plan, split, s)) for split in plan.splits}

  def _generate_examples(self, **unused):
    raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Pre-training: `shapenet55` (Point-BERT / Point-MAE layout, see `dapt_jax.data.shapenet55`).


@dataclasses.dataclass
class ShapeNet55Config(tfds.core.BuilderConfig):
  taxonomies: tuple = ()  # the label names: taxonomy ids found in the two lists, sorted


class ShapeNet55(_LocalBuilder):
  """ShapeNet-55 clouds (8,192 points each in the official files) as stored, in list order;
  label = the cloud's taxonomy. Pre-training ignores the label."""

  name = 'shapenet55'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Point-BERT / Point-MAE lists and clouds, every point kept.'}
  BUILDER_CONFIGS = [ShapeNet55Config(name='default', description='Taxonomies from the lists.')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = shapenet55.INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=tfds.features.FeaturesDict({
            'points': tfds.features.Tensor(shape=(None, 3), dtype=np.float32,
                                           encoding=tfds.features.Encoding.BYTES),
            'label': tfds.features.ClassLabel(names=list(self.builder_config.taxonomies)),
            'name': tfds.features.Text(),
        }),
        homepage='https://github.com/lulutang0608/Point-BERT', disable_shuffling=True)

  def _split_generators(self, dl_manager):
    plan = shapenet55.plan(_manual_dir(dl_manager))
    if plan.taxonomies != tuple(self.builder_config.taxonomies):
      raise DataError(f'{plan.root}: the split lists changed while preparing; run again')
    return {split: shapenet55.examples(plan, split) for split in shapenet55.SPLITS}

  def _generate_examples(self, **unused):
    raise NotImplementedError


def shapenet55_config(taxonomies) -> ShapeNet55Config:
  """The builder config for a tree whose lists name these taxonomies (named after them, so a
  tree with other taxonomies gets its own prepared copy)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256(' '.join(taxonomies).encode()).hexdigest()[:10]
  return ShapeNet55Config(name=f'tax{len(taxonomies)}_{digest}',
                          description='Taxonomies from the lists.', taxonomies=tuple(taxonomies))
