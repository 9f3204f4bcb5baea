"""Evaluation: accuracy, mean class accuracy, confusion matrix, predictions.

Reading users' cloud files lives in `dapt_jax.data.clouds`; `--mode=predict` in `dapt_jax.predict`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence

import jax
import numpy as np

from dapt_jax import data as data_lib
from dapt_jax import errors


class InputError(errors.UserError, ValueError):
  """A bad `--input` for prediction (nothing matched, too few points); the message is one line."""


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int,
                           class_names: Optional[Sequence[str]] = None) -> dict:
  """Overall and mean class accuracy, per-class accuracy and the confusion matrix.

  logits: [S, classes]; labels: [S]. Classes absent from `labels` are left out of the mean class
  accuracy (their per-class accuracy is None).
  """
  labels = np.asarray(labels, np.int64)
  preds = np.argmax(logits, axis=-1)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, preds), 1)
  support = confusion.sum(axis=1)
  per_class = [float(confusion[c, c] / support[c]) if support[c] else None
               for c in range(num_classes)]
  present = [a for a in per_class if a is not None]
  names = list(class_names) if class_names else [str(c) for c in range(num_classes)]
  return {
      'accuracy': float(np.mean(preds == labels)) if labels.size else 0.0,
      'mean_class_accuracy': float(np.mean(present)) if present else 0.0,
      'per_class_accuracy': dict(zip(names, per_class)),
      'confusion_matrix': confusion.tolist(),
      'num_samples': int(labels.size),
  }


def collect_outputs(eval_fn: Callable, put_batch: Callable, gather: Callable,
                    batches: Iterable[dict], device_fields: Sequence[str] = ('points',)
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Runs `eval_fn` over padded, masked batches.

  Only `device_fields` of each batch go to the devices; `eval_fn` returns a dict of per-sample
  outputs. `gather` turns device outputs and host-local arrays into whole global batches (on
  several hosts each reads only its part of every batch). Returns (outputs, host fields) of the
  real samples only, each sample exactly once, in loader order; the host fields are the batch's
  own (labels, 'index', ...) without 'mask' and the clouds.
  """
  outs: dict[str, list] = {}
  host: dict[str, list] = {}
  for batch in batches:
    mask = np.asarray(gather(np.asarray(batch['mask'], bool)), bool)
    result = eval_fn(put_batch({f: batch[f] for f in device_fields if f in batch}))
    for k, v in result.items():
      outs.setdefault(k, []).append(gather(v)[mask])
    for k, v in batch.items():
      if k not in ('mask', 'points'):
        host.setdefault(k, []).append(np.asarray(gather(np.asarray(v)))[mask])
  return ({k: np.concatenate(v) for k, v in outs.items()},
          {k: np.concatenate(v) for k, v in host.items()})


def evaluate_source(eval_fn: Callable, parallel: Any, source: Any, info: Any, batch_size: int,
                    task: Any) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(the task's metrics, per-sample outputs, host fields) over every sample of `source` once.

  eval_fn: a device batch → the task's per-sample outputs (the wrapped eval step with its state
  bound); parallel: a `steps.DataParallel`; task: a `dapt_jax.tasks` task (device_fields and
  eval_metrics are read).
  """
  batches = data_lib.EvalLoader(source, batch_size, jax.process_index(), jax.process_count())
  outputs, host = collect_outputs(eval_fn, parallel.put_batch, parallel.gather, batches,
                                  task.device_fields)
  return task.eval_metrics(outputs, host, info), outputs, host


def collect(eval_fn: Callable, put_batch: Callable, gather: Callable,
            batches: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
  """Classification's (logits, labels) of the real samples, each exactly once, in loader order;
  `eval_fn` returns logits."""
  outputs, host = collect_outputs(lambda b: {'logits': eval_fn(b)}, put_batch, gather, batches)
  if not outputs:
    return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
  return outputs['logits'], host['label']


def softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
  """[(class name, probability)] of the k most likely classes for one cloud's logits [classes]."""
  probs = softmax(np.asarray(logits, np.float64)[None])[0]
  order = np.argsort(-probs)[:k]
  return [(class_names[i], float(probs[i])) for i in order]
