"""A fine-tuned model used from Python: `dapt_jax.load` → a `Predictor`.

    import numpy as np, dapt_jax
    predictor = dapt_jax.load('runs/mine')               # a training workdir
    probs = predictor.predict([cloud_a, cloud_b])        # [2, C] class probabilities (NumPy)
    predictor.class_names                                # the run's classes, in `probs`' order
    features = predictor.embed(clouds)                   # [B, F] what the classification head sees
    parts = predictor.segment(cloud, 'Chair')            # part-segmentation runs: part id per point

`load(PATH)` reads a training workdir: its own config.json, classes.json and data preparation,
and its best checkpoint (else its last). `load(CKPT, config='configs/scanobjectnn.py:hardest')`
reads a converted checkpoint (`python -m convert`) with the config it was trained with.

`points` is one cloud float [N, 3], a batch float [B, N, 3] or a list of clouds of different
sizes. Each is prepared exactly as `--mode=predict` prepares a file (which is built on this
module, so there is one prediction path): the run's up axis, farthest point sampling to its
stored cloud size (`input_points`), its normalisation, resampling with replacement below that
size (one warning line), a refusal below one patch (`model.group_size`). A cloud that is
already prepared (exactly `input_points` points that normalising leaves as they are, within
1e-6) passes through unchanged, so it gets exactly the answer of the exported artifact
(`python -m dapt_jax.export`). The network is compiled once per batch shape.

Every mistake (a path, a config, a shape, a dtype, NaN, an empty or too small cloud) raises
`ServeError` (a `dapt_jax.errors.UserError`), whose message is one line naming the problem.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any, Iterator, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from dapt_jax import errors
from dapt_jax import tasks
from dapt_jax import weights
from dapt_jax.data import classes as classes_lib
from dapt_jax.data import clouds as clouds_lib
from dapt_jax.data import folder
from dapt_jax.data import preprocess
from dapt_jax.data.errors import DataError

log = logging.getLogger('dapt_jax')

CONFIG_FILE = 'config.json'  # what a training run records in its workdir (dapt_jax.train)
# Data fields that decide how a cloud is prepared: they must match the run being loaded.
PREPARATION_FIELDS = ('name', 'num_points', 'point_all', 'folder_points', 'folder_mesh_points',
                      'folder_normalize', 'folder_up_axis')
PASS_THROUGH_ATOL = 1e-6  # a cloud that normalising moves less than this is already prepared
PART_CHUNK = 8192  # query points per forward pass when labelling a large cloud

Clouds = Union[np.ndarray, Sequence[np.ndarray]]


class ServeError(errors.UserError):
  """A mistake in using a loaded model (path, config, shape, dtype, NaN, empty cloud): one line."""


@contextlib.contextmanager
def one_error() -> Iterator[None]:
  """Any user mistake raised inside becomes a ServeError with the same one line."""
  try:
    yield
  except ServeError:
    raise
  except errors.UserError as e:
    raise ServeError(errors.one_line(e)) from e


# ---------------------------------------------------------------------------------------------
# The run: config, class names, preparation.


def settings(dc: Any) -> folder.Settings:
  """How each input cloud is prepared, as the run's dataset was: the folder dataset's fields;
  ModelNet40 centred and scaled to the unit sphere; the others as they are."""
  if str(dc.name) == 'folder':
    return folder.settings(dc)
  normalize = 'unit_sphere' if str(dc.name) == 'modelnet40' else 'none'
  return folder.Settings(points=int(dc.num_points), normalize=normalize)


def class_names(config: Any, workdir: Optional[str]) -> tuple[list, str]:
  """(names, where they came from): the run's classes.json, the init_from's, or the dataset's."""
  for directory in (workdir, config.init_from):
    names = classes_lib.read(directory)
    if names is not None:
      return names, os.path.join(directory, classes_lib.CLASSES_FILE)
  names = classes_lib.builtin(config.data, int(config.model.num_classes))
  if names is not None:
    return names, f'the {config.data.name} dataset'
  raise DataError(f'no class names for data.name={config.data.name!r}: neither '
                  f'{workdir}/{classes_lib.CLASSES_FILE} nor data.data_dir says what the classes '
                  'are; predict from a training workdir')


def category_names(config: Any) -> list:
  """The object categories of a part-segmentation config's dataset (without preparing it)."""
  from dapt_jax import segmentation_metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from dapt_jax.data import synthetic_parts  # pylint: disable=g-import-not-at-top
  if str(config.data.name) == 'shapenet_part':
    return list(metrics_lib.SHAPENET_PART_CATEGORIES)
  return list(synthetic_parts.CATEGORY_NAMES[:int(config.model.num_classes)])


def check_same_preparation(config: Any, workdir: Optional[str]) -> None:
  """Refuses data fields that differ from the run in `workdir` (the clouds would be prepared
  differently from what the model was trained on)."""
  path = os.path.join(workdir or '', CONFIG_FILE)
  if not workdir or not os.path.isfile(path):
    return
  try:
    with open(path) as f:
      run = json.load(f).get('data', {})
  except (OSError, ValueError):
    return
  for field in PREPARATION_FIELDS:
    if field in run and field in config.data and run[field] != config.data[field]:
      raise DataError(f'data.{field}={config.data[field]!r} differs from the run in {workdir} '
                      f'({run[field]!r}); predict with the config it was trained with')


def read_config(spec: str) -> Any:
  """A ConfigDict from 'path.py[:variant]' (its get_config) or from a run's config.json."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  path, _, arg = str(spec).partition(':')
  if not os.path.isfile(path):
    raise ServeError(f'config={spec!r}: no such file {path}')
  if path.endswith('.json'):
    try:
      with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
      raise ServeError(f'{path}: unreadable ({errors.one_line(e)})') from None
  try:
    module_spec = importlib.util.spec_from_file_location('_dapt_jax_serve_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except  (the user's file: one line, not a crash)
    raise ServeError(f'config={spec!r}: {type(e).__name__}: {errors.one_line(e)}') from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ServeError(f'config={spec!r}: get_config() returned a {type(config).__name__}, not a '
                     'ConfigDict')
  return config


# ---------------------------------------------------------------------------------------------
# Clouds in memory.


def as_clouds(points: Clouds, what: str = 'points') -> tuple[list, bool]:
  """(clouds float32 [N_i, 3] each (as a file is read), whether `points` was a batch) from one
  cloud [N, 3], a batch [B, N, 3] or a list of clouds; ServeError for any other shape, dtype,
  NaN/inf or empty input."""
  if isinstance(points, (list, tuple)):
    if not points:
      raise ServeError(f'{what}: an empty list, expected clouds of float [N, 3]')
    out = []
    for i, cloud in enumerate(points):
      arr = np.asarray(cloud) if not isinstance(cloud, np.ndarray) else cloud
      if arr.ndim != 2:
        raise ServeError(f'{what}[{i}]: shape {tuple(arr.shape)}, expected a cloud [N, 3]')
      out.append(_check_cloud(arr, f'{what}[{i}]'))
    return out, True
  try:
    arr = np.asarray(points)
  except (ValueError, TypeError) as e:
    raise ServeError(f'{what}: not an array ({errors.one_line(e)})') from None
  if arr.ndim == 2:
    return [_check_cloud(arr, what)], False
  if arr.ndim == 3:
    if arr.shape[0] == 0:
      raise ServeError(f'{what}: shape {arr.shape}, a batch of no clouds')
    return [_check_cloud(c, f'{what}[{i}]') for i, c in enumerate(arr)], True
  raise ServeError(f'{what}: shape {tuple(arr.shape)}, expected [N, 3], [B, N, 3] or a list of '
                   '[N_i, 3] clouds')


def _check_cloud(arr: np.ndarray, what: str) -> np.ndarray:
  """One cloud → float32 [N, 3]; ServeError for a wrong dtype, width, emptiness or NaN/inf."""
  if arr.dtype.kind not in 'fiu':
    raise ServeError(f'{what}: dtype {arr.dtype}, expected float coordinates')
  if arr.shape[-1] != 3:
    raise ServeError(f'{what}: shape {tuple(arr.shape)}, expected [N, 3] (x, y, z per point)')
  if arr.shape[0] == 0:
    raise ServeError(f'{what}: an empty cloud (0 points)')
  finite = np.isfinite(arr).all(axis=1)
  if not finite.all():
    bad = np.flatnonzero(~finite)
    raise ServeError(f'{what}: {bad.size} of {finite.size} points have NaN/inf coordinates, '
                     f'first point {int(bad[0])}')
  return arr.astype(np.float32)


def prepare(raw: Sequence[np.ndarray], s: folder.Settings) -> tuple[np.ndarray, list]:
  """Read clouds [R_i, 3] (in the run's y-up frame) → (float32 [B, s.points, 3], indices of the
  clouds that were resampled): `folder.prepare` with seed 0 for each, except that a cloud already
  prepared (exactly s.points points that normalising moves by < PASS_THROUGH_ATOL) is kept as
  given, so the exported artifact and the predictor see the very same numbers."""
  out = np.zeros((len(raw), s.points, 3), np.float32)
  kept = [i for i, c in enumerate(raw) if c.shape[0] == s.points and np.allclose(
      clouds_lib.normalize(c.astype(np.float64), s.normalize), c, rtol=0, atol=PASS_THROUGH_ATOL)]
  rest = sorted(set(range(len(raw))) - set(kept))
  for i in kept:
    out[i] = raw[i]
  if rest:
    prepared, resampled = folder.prepare([raw[i] for i in rest], s, [0] * len(rest))
    out[rest] = prepared
    return out, [rest[j] for j in resampled]
  return out, []


# ---------------------------------------------------------------------------------------------
# The predictor.


class Predictor:
  """A loaded run: `predict`, `embed` (classification), `segment` (part segmentation)."""

  def __init__(self, config: Any, workdir: Optional[str], task: Any, net: Any, variables: dict,
               origin: str, names: list, names_from: str = ''):
    self.config = config
    self.workdir = workdir
    self.task = task
    self.net = net
    self.variables = jax.tree.map(jnp.asarray, variables)
    self.origin = origin  # which weights: '<workdir> (best checkpoint, step S)' or init_from
    self.class_names = list(names)  # classes (classification) or categories (segmentation)
    self.names_from = names_from  # where the names were read
    self.settings = settings(config.data)
    self.minimum = int(config.model.group_size)  # fewer points than one patch: refused
    self._logits = jax.jit(self._logits_fn)
    self._embed = jax.jit(self._embed_fn)
    self._parts = None

  @property
  def kind(self) -> str:
    """'classes' (classification) or 'parts' (part segmentation): what this run predicts."""
    return self.task.prediction

  @property
  def input_points(self) -> int:
    """Points per prepared cloud, the exported artifact's input width."""
    return self.settings.points

  # The traced functions (variables are an argument, so they are not baked into the program).
  def _logits_fn(self, variables: dict, points: jax.Array, valid: jax.Array,
                 views: Any = None) -> jax.Array:
    """variables, points [B, input_points, 3] float32, valid [B] bool → logits [B, C] float32:
    exactly what the evaluation step computes (the eval view's FPS, voting if the run votes).
    `views`: the task's unless given (the export's portable FPS)."""
    from dapt_jax.tasks import classification  # pylint: disable=g-import-not-at-top
    return classification.classification_logits(self.net, variables, points,
                                                views or self.task.views,
                                                valid).astype(jnp.float32)

  def _embed_fn(self, variables: dict, points: jax.Array) -> jax.Array:
    from dapt_jax import tsne  # pylint: disable=g-import-not-at-top
    from dapt_jax.data import augment  # pylint: disable=g-import-not-at-top
    views = self.task.views
    points = augment.eval_view(points, views.num_points, views.fps_impl)
    return tsne.head_input(self.net, variables, points).astype(jnp.float32)

  def _need(self, kind: str, call: str) -> None:
    if self.kind != kind:
      other = {'classes': 'predict() and embed()', 'parts': 'segment()'}[self.kind]
      raise ServeError(f'{call}: this run ({self.config.get("task", "classification")}) has '
                       f'{other}, not {call}')

  def _check_sizes(self, raw: Sequence[np.ndarray]) -> None:
    """ServeError for the first cloud with fewer points than one patch (model.group_size)."""
    for i, cloud in enumerate(raw):
      if cloud.shape[0] < self.minimum:
        raise ServeError(f'points[{i}]: {cloud.shape[0]} point(s), fewer than one patch of '
                         f'{self.minimum} (model.group_size)')

  def prepare(self, points: Clouds) -> np.ndarray:
    """Clouds (see the module docstring) → float32 [B, input_points, 3], prepared as
    --mode=predict prepares a file: what the model and the exported artifact take."""
    with one_error():
      raw, _ = as_clouds(points)
      self._check_sizes(raw)
      raw = [clouds_lib.rotate_up(c, self.settings.up_axis) for c in raw]
      prepared, resampled = prepare(raw, self.settings)
      folder.warn_resampled([f'points[{i}]' for i in resampled],
                            [raw[i].shape[0] for i in resampled], self.settings.points, 'predict')
      return prepared

  def prepared_logits(self, prepared: np.ndarray, batch_size: Optional[int] = None
                      ) -> np.ndarray:
    """Prepared clouds float32 [B, input_points, 3] → logits [B, C] float32. With `batch_size`,
    in batches of that many, the last padded with copies of its first cloud and masked, so one
    compiled program serves them all."""
    self._need('classes', 'predict()')
    prepared = np.asarray(prepared, np.float32)
    size = len(prepared) if batch_size is None else int(batch_size)
    out = []
    for start in range(0, len(prepared), size):
      chunk = prepared[start:start + size]
      pad = size - len(chunk)
      valid = np.arange(size) < len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)])
      out.append(np.asarray(self._logits(self.variables, chunk, valid))[:size - pad])
    return np.concatenate(out)

  def logits(self, points: Clouds) -> np.ndarray:
    """Clouds → logits [B, C] float32 (the exported artifact's output)."""
    self._need('classes', 'predict()')
    return self.prepared_logits(self.prepare(points))

  def predict(self, points: Clouds) -> np.ndarray:
    """Clouds → class probabilities [B, C] float64 (rows sum to 1), in `class_names` order."""
    logits = self.logits(points).astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)

  def embed(self, points: Clouds) -> np.ndarray:
    """Clouds → [B, F] float32: the features the classification head receives (as --mode=tsne)."""
    self._need('classes', 'embed()')
    return np.asarray(self._embed(self.variables, self.prepare(points)))

  # Part segmentation.
  def category(self, name: Union[str, int]) -> int:
    """The index of a category given by name (case-insensitive) or index."""
    if isinstance(name, (int, np.integer)) and 0 <= int(name) < len(self.class_names):
      return int(name)
    lowered = [n.lower() for n in self.class_names]
    if isinstance(name, str) and name.lower() in lowered:
      return lowered.index(name.lower())
    raise ServeError(f'category={name!r}: not a category of this model (one of '
                     f'{", ".join(self.class_names)})')

  def label_cloud(self, cloud: np.ndarray, category: int, seed: int) -> np.ndarray:
    """Part ids [R] int32 of every point of `cloud` [R, 3] (on the unit sphere): the tokenizer
    sees `data.num_points` of them drawn with replacement (`seed`), every point is a query,
    PART_CHUNK at a time (the last chunk padded so one compiled shape serves all)."""
    self._need('parts', 'segment()')
    if self._parts is None:
      from dapt_jax import segmentation_metrics as metrics_lib  # pylint: disable=g-import-not-at-top
      net, mask = self.net, self.task.mask

      def label(variables, points, query, category):
        logits = net.apply(variables, points, category, train=False, query=query)
        return metrics_lib.restricted_argmax(logits, category, mask)
      self._parts = jax.jit(label)
    rng = np.random.default_rng(seed)
    num_points = int(self.config.data.num_points)
    sample = cloud[rng.choice(cloud.shape[0], num_points, replace=True)][None]
    parts = []
    for start in range(0, cloud.shape[0], PART_CHUNK):
      q = cloud[start:start + PART_CHUNK]
      pad = PART_CHUNK - q.shape[0] if cloud.shape[0] > PART_CHUNK else 0
      q = np.concatenate([q, np.repeat(q[:1], pad, 0)]) if pad else q
      got = np.asarray(self._parts(self.variables, sample, q[None],
                                   jnp.array([category], jnp.int32)))[0]
      parts.append(got[:got.shape[0] - pad])
    return np.concatenate(parts).astype(np.int32)

  def segment(self, points: Clouds, category: Union[str, int]) -> Union[np.ndarray, list]:
    """Part ids (int32, the dataset's global part numbering) of every point: [N] for one cloud,
    [B, N] for a batch array, a list of [N_i] for a list of clouds. Each cloud is normalised to
    the unit sphere as --mode=predict does; the tokenizer's sample is drawn with seed 0."""
    self._need('parts', 'segment()')
    with one_error():
      c = self.category(category)
      raw, batch = as_clouds(points)
      self._check_sizes(raw)
      out = [self.label_cloud(unit_sphere(cloud), c, seed=0) for cloud in raw]
    if not batch:
      return out[0]
    return np.stack(out) if isinstance(points, np.ndarray) else out


def unit_sphere(cloud: np.ndarray) -> np.ndarray:
  """[R, 3] → float32 [R, 3] centred and scaled to the unit sphere (part segmentation's input)."""
  return preprocess.normalize_unit_sphere(cloud[None].astype(np.float32))[0]


# ---------------------------------------------------------------------------------------------
# Loading.


def open_run(config: Any, workdir: Optional[str]) -> Predictor:
  """The Predictor of `config`'s run: the workdir's best checkpoint (else its last, else
  `config.init_from`), its class names (classification) or categories (part segmentation).
  Raises the library's own UserErrors (`load` turns them into ServeError)."""
  task = tasks.get_task(config)
  if task.prediction not in ('classes', 'parts'):
    raise ServeError(f'config.task={task.name!r} predicts nothing per cloud (a pre-training '
                     'run: fine-tune it first)')
  if task.prediction == 'classes':
    names, names_from = class_names(config, workdir)
    config = classes_lib.with_num_classes(config, names, names_from)
    check_same_preparation(config, workdir)
    task = tasks.get_task(config)
  else:
    names, names_from = (classes_lib.read(workdir) or classes_lib.read(config.init_from)
                         or category_names(config)), 'the run'
  net, variables, origin = weights.load_for_eval(config, workdir, task)
  return Predictor(config, workdir, task, net, variables, origin, names, names_from)


def load(path: Union[str, os.PathLike], config: Any = None) -> Predictor:
  """A Predictor for a training workdir (`path`: its config.json, classes.json, best else last
  checkpoint) or a converted checkpoint (`path` with `config`: 'configs/x.py[:variant]', a
  config.json or a ConfigDict). Every mistake raises ServeError (one line)."""
  with one_error():
    path = os.fspath(path)
    if not os.path.exists(path):
      raise ServeError(f'{path}: no such training workdir or converted checkpoint')
    if not os.path.isdir(path):
      raise ServeError(f'{path}: not a folder (a training workdir or a converted checkpoint)')
    recorded = os.path.join(path, CONFIG_FILE)
    is_run = os.path.isfile(recorded)
    if config is None:
      if not is_run:
        raise ServeError(f'{path}: no {CONFIG_FILE}, so not a training workdir; for a converted '
                         "checkpoint give its config: load(path, config='configs/x.py:variant')")
      config = read_config(recorded)
    elif isinstance(config, (str, os.PathLike)):
      config = read_config(os.fspath(config))
    if not hasattr(config, 'data') or not hasattr(config, 'model'):
      raise ServeError(f'config: a {type(config).__name__} without data and model sections')
    import copy  # pylint: disable=g-import-not-at-top
    config = copy.deepcopy(config)
    if is_run:
      return open_run(config, path)
    config.init_from = path
    return open_run(config, None)
