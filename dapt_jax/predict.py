r"""--mode=predict, one entry for every task (`run`): the task names what it predicts
(`Task.prediction`), `PREDICTORS` says who does it. Classification lives here; part segmentation
in `dapt_jax.predict_parts`.

Classification: class probabilities for every cloud in a file, a folder or a glob.

    python main.py --config=configs/folder.py --workdir=runs/mine --mode=predict --input=scans/
    python main.py --config=configs/folder.py --workdir=runs/mine --mode=predict \
        --input='scans/**/*.ply'

Writes `<workdir>/predictions.csv` (file, top-1 class and probability, then the next four classes
with theirs), one row per file in sorted path order; a single file's top-5 is also printed. An
earlier predictions.csv is replaced, and the printout says so; a file of that name that
--mode=predict did not write is refused. The weights are the workdir's best checkpoint (else
`--config.init_from`), and the class names the run's own `<workdir>/classes.json` (else the
init_from workdir's, else the dataset's official list or class folders). Every file is read and
checked before the model is built, so bad files cost one line naming every one of them and leave
nothing written.

Built on the Python API (`dapt_jax.serve`, `dapt_jax.load`): one prediction path. Each cloud is
prepared as the run's data was (`serve.prepare`): for the folder dataset the same up axis, surface
sampling, farthest point sampling to `data.folder_points` and normalisation; ModelNet40 clouds
are centred and scaled to the unit sphere; others are read as they are. A cloud with fewer
points than that is resampled with replacement (one warning line for all of them); one with fewer
than `model.group_size` points (one patch) is refused. Clouds run in batches of
`eval.batch_size` on one device (the last padded and masked), compiled once.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import os
from typing import Any, Optional

import jax
import numpy as np

from dapt_jax import evaluate as eval_lib
from dapt_jax import predict_io
from dapt_jax import predict_parts
from dapt_jax import serve
from dapt_jax import tasks
from dapt_jax.data import classes as classes_lib
from dapt_jax.data import folder

log = logging.getLogger('dapt_jax')

PREDICTIONS_FILE = 'predictions.csv'
TOP_K = 5


@dataclasses.dataclass
class Predictions:
  files: list  # input paths, in the order of `probs`
  class_names: list
  probs: np.ndarray  # [files, classes] float64
  csv_path: Optional[str]  # where the CSV was written (None: not written)
  replaced: Optional[int] = None  # rows of the earlier predictions.csv it replaced (None: none)

  def top(self, i: int, k: int = TOP_K) -> list[tuple[str, float]]:
    order = np.argsort(-self.probs[i], kind='stable')[:k]
    return [(self.class_names[c], float(self.probs[i, c])) for c in order]


class_names = serve.class_names  # (names, where from): the run's, the init_from's, the dataset's


def load_inputs(paths: list, config: Any, progress: bool = True) -> np.ndarray:
  """Reads, checks and prepares every file → float32 [files, P, 3] (`serve.prepare`, as the
  Python API prepares clouds in memory)."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  s = serve.settings(config.data)
  minimum = int(config.model.group_size)
  with tqdm(total=len(paths), desc='predict: reading', unit='file', leave=False,
            disable=not progress or jax.process_index() != 0) as bar:
    # Every file is read, so one error names every bad one; the bar is cleared before it.
    raw = predict_io.read_all(paths, lambda p: folder.read(p, s, minimum, seed=0),
                              lambda: bar.update(1))
  points, resampled = serve.prepare(raw, s)
  folder.warn_resampled([paths[i] for i in resampled], [raw[i].shape[0] for i in resampled],
                        s.points, 'predict')
  return points


def predict(config: Any, workdir: Optional[str], input_spec: str) -> Predictions:
  """Predicts every cloud `input_spec` names; writes `<workdir>/predictions.csv` (process 0)."""
  if config.get('task', 'classification') != 'classification':
    raise eval_lib.InputError(f"--mode=predict classifies clouds; config.task={config.task!r} "
                              "has no per-file prediction (use --mode=eval)")
  if workdir is None and not config.init_from:
    raise eval_lib.InputError('--mode=predict needs --workdir (a training run) or '
                              '--config.init_from (a converted checkpoint)')
  if int(config.eval.batch_size) < 1:
    raise eval_lib.InputError(f'eval.batch_size={config.eval.batch_size}: must be at least 1')
  predict_io.check_workdir(workdir)
  csv_path = os.path.join(workdir, PREDICTIONS_FILE) if workdir is not None else None
  earlier = _earlier_rows(csv_path)
  paths = predict_io.find_inputs(input_spec)
  if workdir is None and len(paths) > 1:
    raise eval_lib.InputError(f'{input_spec}: {len(paths)} files; --mode=predict writes their '
                              f'{PREDICTIONS_FILE} into --workdir, so give one')
  names, names_from = class_names(config, workdir)  # refused here (no names, other data) ...
  config = classes_lib.with_num_classes(config, names, names_from)
  serve.check_same_preparation(config, workdir)
  points = load_inputs(paths, config, config.progress_bar)  # ... and every file, before the model
  predictor = serve.open_run(config, workdir)
  log.info('Predicting %d file(s) with %s; classes from %s', len(paths), predictor.origin,
           predictor.names_from)
  # One compiled batch of eval.batch_size (the last padded and masked), as evaluation runs.
  logits = predictor.prepared_logits(points, int(config.eval.batch_size))
  probs = eval_lib.softmax(np.asarray(logits, np.float64))
  result = Predictions(paths, list(predictor.class_names), probs, None, earlier)
  if csv_path is not None and jax.process_index() == 0:
    result.csv_path = write_csv(result, csv_path)
  return result


def _earlier_rows(path: Optional[str]) -> Optional[int]:
  """The rows of an earlier predictions.csv at `path` (None: there is none). Refuses a file of
  that name that --mode=predict did not write: it is the user's, never to be replaced."""
  if path is None or not os.path.lexists(path):
    return None
  try:
    with open(path, newline='') as f:
      rows = list(csv.reader(f))
  except (OSError, UnicodeDecodeError, csv.Error):
    rows = []
  if not rows or rows[0][:3] != ['file', 'class', 'probability'] or not os.path.isfile(path):
    raise eval_lib.InputError(f'{path} exists and is not a predictions file written by '
                              '--mode=predict; move it away or predict into another workdir')
  return len(rows) - 1


def write_csv(result: Predictions, path: str) -> str:
  """file, class, probability, class_2, probability_2, ... up to the top 5; written atomically."""
  k = min(TOP_K, len(result.class_names))
  header = ['file', 'class', 'probability']
  for r in range(2, k + 1):
    header += [f'class_{r}', f'probability_{r}']
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(header)
    for i, name in enumerate(result.files):
      w.writerow([name] + [v for c, p in result.top(i, k) for v in (c, f'{p:.6f}')])
  os.replace(tmp, path)
  return path


def summary(result: Predictions) -> str:
  """What main.py prints: a single file's top-5, or where the CSV of many went."""
  lines = []
  if len(result.files) == 1:
    lines += [f'{r}. {name:<20} {100 * p:6.2f} %' for r, (name, p) in enumerate(result.top(0), 1)]
  else:
    counts: dict = {}
    for i in range(len(result.files)):
      top = result.class_names[int(np.argmax(result.probs[i]))]
      counts[top] = counts.get(top, 0) + 1
    lines.append(f'{len(result.files)} files: ' + ', '.join(
        f'{n} {c}' for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))
  if result.csv_path:
    lines.append(f'wrote {result.csv_path}' + (
        f' (replacing the earlier one of {result.replaced} file(s))'
        if result.replaced is not None else ''))
  return '\n'.join(lines)


def _predict_classes(config: Any, workdir: Optional[str], input_spec: str,
                     category: Optional[str]) -> str:
  if category:
    raise eval_lib.InputError(f'--category={category}: only part-segmentation configs take a '
                              'category; this config classifies whole clouds')
  return summary(predict(config, workdir, input_spec))


def _predict_parts(config: Any, workdir: Optional[str], input_spec: str,
                   category: Optional[str]) -> str:
  return predict_parts.summary(predict_parts.predict_parts(config, workdir, input_spec, category))


# Task.prediction → fn(config, workdir, input spec, category) → the lines main.py prints.
PREDICTORS = {
    'classes': _predict_classes,
    'parts': _predict_parts,
}


def run(config: Any, workdir: Optional[str], input_spec: str,
        category: Optional[str] = None) -> str:
  """--mode=predict for the config's task: writes its outputs, returns what to print."""
  task = tasks.get_task(config)
  if task.prediction is None:
    raise eval_lib.InputError(f'config.task={task.name!r} has no per-file prediction (use '
                              '--mode=eval)')
  return PREDICTORS[task.prediction](config, workdir, input_spec, category)
