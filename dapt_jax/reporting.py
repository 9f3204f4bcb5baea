"""Metrics a person can read: JSON lines and TensorBoard events in the workdir, and a PNG of the
training curves at the end."""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Optional

import jax

METRICS_FILE = 'metrics.jsonl'
CURVES_FILE = 'curves.png'


class MetricWriter:
  """Appends `{'step', 'epoch', 'split', ...metrics}` lines to metrics.jsonl and writes the same
  scalars as TensorBoard events under `tensorboard/`. Only process 0 writes.

  `resume_step`: the step a resumed run restarts from; rows written after it (by the run that
  was interrupted, and about to be redone) are dropped, so metrics.jsonl keeps one row per step
  and split after any number of resumes.
  """

  def __init__(self, workdir: str, resume_step: Optional[int] = None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if self.enabled and resume_step is not None:
      drop_rows_after(workdir, resume_step)
    if self.enabled:
      try:
        self._tb = _summary_writer(os.path.join(workdir, 'tensorboard'))
      except ImportError:  # TensorBoard events are optional; the JSON lines are not.
        self._tb = None

  def write(self, split: str, step: int, epoch: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'split': split, 'step': int(step), 'epoch': int(epoch)}
    record.update({k: (float(v) if not isinstance(v, (list, dict, str)) else v)
                   for k, v in metrics.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for k, v in record.items():
        if k not in ('split', 'step', 'epoch') and isinstance(v, float):
          self._tb.add_scalar(f'{split}/{k}', v, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _summary_writer(logdir: str):
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch whenever it is installed (as it is beside this project for
  `python -m convert`), which adds 1–2 s to the start of every run, for torch tensors that are
  never passed to it here: only Python floats are written. While tensorboardX is imported,
  `import torch` fails (tensorboardX is written to go on without torch); a torch that is
  already imported is left alone.
  """
  block = 'torch' not in sys.modules
  if block:
    sys.modules['torch'] = None  # `import torch` raises ImportError
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if block and 'torch' in sys.modules and sys.modules['torch'] is None:
      del sys.modules['torch']
  return SummaryWriter(logdir)


def drop_rows_after(workdir: str, step: int) -> int:
  """Removes the rows of metrics.jsonl past `step` (atomically); returns how many went."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  keep = []
  for line in lines:
    try:
      if int(json.loads(line)['step']) > step:
        continue
    except (ValueError, KeyError, TypeError):  # a line cut short by a kill: drop it too
      continue
    keep.append(line if line.endswith('\n') else line + '\n')
  if len(keep) == len(lines):
    return 0
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(keep)
  os.replace(tmp, path)
  return len(lines) - len(keep)


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(workdir: str) -> Optional[str]:
  """Training loss and evaluation accuracy against epochs, as workdir/curves.png."""
  records = read_metrics(workdir)
  train = [r for r in records if r['split'] == 'train' and 'loss' in r]
  evals = [r for r in records if r['split'] == 'eval' and 'accuracy' in r]
  # Tasks without accuracy (pre-training) evaluate a loss: drawn beside the training loss.
  eval_losses = [r for r in records if r['split'] == 'eval' and 'loss' in r
                 and 'accuracy' not in r]
  if not train and not evals:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  if train:
    ax1.plot([r['step'] for r in train], [r['loss'] for r in train], label='train loss')
    ax1.set_xlabel('step')
    ax1.set_ylabel('cross-entropy')
    ax1.set_title('training loss')
    ax1.grid(alpha=0.3)
  if train and eval_losses:
    ax1.plot([r['step'] for r in eval_losses], [r['loss'] for r in eval_losses], 'o-',
             label='eval loss')
    ax1.set_ylabel('loss')
    ax1.set_title('loss')
    ax1.set_yscale('log')
    ax1.legend()
  if train and 'accuracy' in train[0]:
    ax2.plot([r['epoch'] for r in train], [100 * r['accuracy'] for r in train], '.',
             alpha=0.4, label='train (batch)')
  if evals:
    ax2.plot([r['epoch'] for r in evals], [100 * r['accuracy'] for r in evals], 'o-',
             label='eval overall')
    if 'mean_class_accuracy' in evals[0]:
      ax2.plot([r['epoch'] for r in evals], [100 * r['mean_class_accuracy'] for r in evals],
               's--', label='eval mean class')
  ax2.set_xlabel('epoch')
  ax2.set_ylabel('accuracy (%)')
  ax2.set_title('accuracy')
  ax2.grid(alpha=0.3)
  if ax2.get_legend_handles_labels()[0]:
    ax2.legend()
  fig.tight_layout()
  path = os.path.join(workdir, CURVES_FILE)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
