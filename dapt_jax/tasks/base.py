"""The interface every task implements (see `dapt_jax.tasks`)."""
from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np

from dapt_jax import errors

Array = jax.Array


class TaskError(errors.UserError):
  """A config that names no known task, or a task/config mismatch; one line for the user."""


class Task:
  """What differs per task. Subclasses fill in every method.

  Attributes:
    name: the `config.task` value.
    best_metric: the evaluation metric that selects `checkpoints/best` (None: no best).
    higher_is_better: direction of `best_metric`.
    device_fields: the batch fields the evaluation step needs on device (the rest, e.g. labels,
      stay on the host and reach `eval_metrics` directly).
    figure: the figure drawn once a run has a best checkpoint, a name in
      `dapt_jax.figures.FIGURES` (None: none).
    prediction: what `--mode=predict` makes of users' files, a name in
      `dapt_jax.predict.PREDICTORS` ('classes': predictions.csv; 'parts': labelled clouds; None:
      the task has no per-file prediction).
  """
  name: str = ''
  best_metric: Optional[str] = None
  higher_is_better: bool = True
  device_fields: tuple[str, ...] = ('points',)
  figure: Optional[str] = None
  prediction: Optional[str] = None

  def __init__(self, config: Any):
    self.config = config

  def check_config(self) -> None:
    """What the task can check against its data without preparing it (validate.py calls it
    before anything is prepared, built or written); raises TaskError."""

  # -- model --------------------------------------------------------------------------------

  def build_model(self, axis_name: Optional[str] = None) -> Any:
    """The Flax module from `config.model`; `axis_name` names the device axis (BatchNorm sync)."""
    raise NotImplementedError

  def init_variables(self, net: Any, key: Array) -> dict:
    """Initial {'params', 'batch_stats'} (net has no device axis here)."""
    raise NotImplementedError

  # -- data ---------------------------------------------------------------------------------

  def sources(self) -> tuple[Any, Any, Any]:
    """(train source, evaluation source, evaluation SourceInfo), prepared on first use."""
    raise NotImplementedError

  # -- per-device steps (inside pmap / shard_map, collectives over steps.AXIS) ----------------

  def train_loss(self, net: Any, variables: dict, batch: dict, key: Array
                 ) -> tuple[Array, tuple[dict, Any]]:
    """(loss, (metrics, new batch_stats)) on this device's share of the global batch.

    `key` is the step's key, the same on every device; augmentation keys come from each sample's
    global index (`steps.sample_keys`), dropout keys are folded with the device index. The loss
    and metrics are this device's means; the caller averages them over devices.
    """
    raise NotImplementedError

  def eval_outputs(self, net: Any, variables: dict, batch: dict) -> dict:
    """Per-sample outputs {name: [b, ...]} for this device's share of an evaluation batch."""
    raise NotImplementedError

  # -- host side ----------------------------------------------------------------------------

  def eval_metrics(self, outputs: dict[str, np.ndarray], batch: dict[str, np.ndarray],
                   info: Any) -> dict:
    """Metrics over every real sample exactly once (padding already removed)."""
    raise NotImplementedError

  def saved_predictions(self, outputs: dict[str, np.ndarray], batch: dict[str, np.ndarray]
                        ) -> dict[str, np.ndarray]:
    """What --mode=eval writes to predictions_<split>.npz: the outputs and the samples' own
    fields (labels, source index), the clouds left out."""
    saved = dict(outputs)
    saved.update({k: v for k, v in batch.items() if k != 'points' and k not in saved})
    return saved

  def scalars(self, metrics: dict) -> dict[str, float]:
    """The scalar metrics logged to metrics.jsonl / TensorBoard after an evaluation."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and k != 'num_samples'}

  def describe(self, metrics: dict) -> str:
    """One human line for an evaluation result."""
    return ', '.join(f'{k} {v:.4f}' for k, v in self.scalars(metrics).items())

  def is_better(self, value: float, best: Optional[float]) -> bool:
    if best is None:
      return True
    return value > best if self.higher_is_better else value < best
