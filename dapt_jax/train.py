"""Fine-tuning and evaluation entry points used by main.py (prediction: `dapt_jax.predict`).

`train_and_evaluate` reads top to bottom, one named step each: model → data → optimizer → state
(resumed from the workdir's last checkpoint) → step functions → loop (train an epoch → eval →
checkpoint) → summary. The data comes before the optimizer because the learning-rate schedule
counts steps per epoch.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import dataclasses
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from dapt_jax import checkpoints as ckpt_lib
from dapt_jax import data as data_lib
from dapt_jax import errors
from dapt_jax import evaluate as eval_lib
from dapt_jax import optim
from dapt_jax import partition
from dapt_jax import reporting
from dapt_jax import steps as steps_lib
from dapt_jax import tasks
from dapt_jax import weights

log = logging.getLogger('dapt_jax')

CONFIG_FILE = 'config.json'
# Fields that may change between runs of the same workdir without making it a different run.
RESUMABLE_FIELDS = ('overwrite', 'max_steps', 'progress_bar', 'eval', 'log_every_steps',
                    'init_from', 'checkpoint', 'compile_cache_dir')


class TrainingError(errors.UserError, RuntimeError):
  """A run that cannot start or go on; the message is one line for the user."""


# ---------------------------------------------------------------------------------------------
# The workdir


def _config_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def _check_workdir(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Refuses a workdir holding a run of a different config, unless config.overwrite.

  Reads only. Returns the fields that differ ([] for a new workdir or the same run).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      previous = json.load(f)
  except (OSError, ValueError) as e:
    raise TrainingError(f'{path}: unreadable ({errors.one_line(e)}); use another --workdir, or '
                        '--config.overwrite=True to replace the run in it') from None
  current = _config_dict(config)
  strip = lambda d: {k: v for k, v in d.items() if k not in RESUMABLE_FIELDS}
  diff = sorted(k for k in set(strip(previous)) | set(strip(current))
                if strip(previous).get(k) != strip(current).get(k))
  if diff and not config.overwrite:
    raise TrainingError(
        f'{workdir} holds a run of a different config (differs in: {", ".join(diff)}); '
        'use another --workdir, or --config.overwrite=True to replace it')
  return diff


# What a run writes into its workdir; --config.overwrite=True removes all of it.
RUN_OUTPUTS = ('checkpoints', reporting.METRICS_FILE, reporting.METRICS_FILE + '.tmp',
               'tensorboard', reporting.CURVES_FILE, CONFIG_FILE, CONFIG_FILE + '.tmp',
               'eval_*.json', 'predictions_*.npz', 'classes.json', 'predictions.csv')


def _claim_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json, after replacing a different run's outputs (config.overwrite).

  Called once the model, data and state are ready, so a run refused before leaves the workdir
  as it found it.
  """
  diff = _check_workdir(config, workdir)
  if diff and jax.process_index() == 0:
    import glob  # pylint: disable=g-import-not-at-top
    log.warning('Replacing the run in %s (config differs in: %s)', workdir, ', '.join(diff))
    for pattern in RUN_OUTPUTS:
      for target in glob.glob(os.path.join(glob.escape(workdir), pattern)):
        if os.path.isdir(target):
          shutil.rmtree(target)
        else:
          os.remove(target)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  current = _config_dict(config)
  if jax.process_index() == 0:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(current, f, indent=2)
    os.replace(tmp, path)


def _best_value(meta: dict) -> Optional[float]:
  """A checkpoint's best metric so far (None before the first evaluation); checkpoints written
  before tasks named their metric call it 'best_accuracy'."""
  if meta.get('best_epoch', -1) < 0:
    return None
  return meta.get('best_value', meta.get('best_accuracy'))


def _finished_run(config: ml_collections.ConfigDict, workdir: str) -> Optional[dict]:
  """The summary of the workdir's run of this config if it already ended (its epochs or
  `max_steps` reached), read without writing anything; None if it has training left to do."""
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)) or _check_workdir(config, workdir):
    return None  # a new workdir, or another config's run that config.overwrite replaces
  try:
    name, step = ckpt_lib.find_checkpoint(workdir, 'last')
    with open(os.path.join(workdir, 'checkpoints', name, str(step), 'meta', 'metadata')) as f:
      meta = json.load(f)
    epochs_done = meta['loader']['epoch'] > config.num_epochs  # epochs 0..num_epochs
  except (ckpt_lib.CheckpointError, OSError, ValueError, KeyError, TypeError):
    return None  # the restore says what is wrong, if anything
  if not epochs_done and (config.max_steps is None or step < config.max_steps):
    return None
  task = tasks.get_task(config)
  best = _best_value(meta)
  return {'steps': step, 'stopped': 'finished' if epochs_done else 'max_steps',
          'final_metrics': None, 'final_description': None, 'best_metric': task.best_metric,
          'best_value': best, 'best_epoch': meta['best_epoch'] if best is not None else None,
          'trainable_parameters': None, 'total_parameters': None, 'curves': None}


def _log_counts(variables, labels, config) -> dict:
  counts = partition.count(variables['params'], labels)
  log.info('Parameters (trainable / total):\n%s', partition.format_counts(counts))
  if not config.init_from:
    log.warning('*' * 78)
    log.warning('No --config.init_from given: the BACKBONE IS RANDOMLY INITIALISED.')
    log.warning('Convert a pre-trained checkpoint with `python -m convert` to fine-tune DAPT.')
    log.warning('*' * 78)
  return counts['total']


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step (save, then exit)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no signal handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _peak_memory() -> dict:
  """Peak memory so far, logged with the training metrics (the sweep reports it per method): the
  accelerator allocator's peak where it keeps one, and the process's peak resident set."""
  import resource  # pylint: disable=g-import-not-at-top
  kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  out = {'peak_rss_bytes': kib if sys.platform == 'darwin' else kib * 1024}
  stats = [d.memory_stats() for d in jax.local_devices()]
  peaks = [s['peak_bytes_in_use'] for s in stats if s and 'peak_bytes_in_use' in s]
  if peaks:
    out['peak_device_bytes'] = max(peaks)
  return out


def _progress(total: int, initial: int, enabled: bool):
  if not enabled or jax.process_index() != 0:
    return None
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, unit='step', dynamic_ncols=True, smoothing=0.1)


# ---------------------------------------------------------------------------------------------
# Training, step by step


def _model(config: ml_collections.ConfigDict, task: tasks.Task) -> tuple[Any, dict, Any, dict]:
  """(net with the device axis, initial variables with init_from merged, partition labels,
  parameter totals {'trainable', 'total'}); the counts are logged."""
  net, variables, labels = weights.build(config, task)
  return net, variables, labels, _log_counts(variables, labels, config)


def _data(config: ml_collections.ConfigDict, task: tasks.Task
          ) -> tuple[data_lib.TrainLoader, Any, Any]:
  """(training loader, evaluation source, its info): prepared on first use, with clear errors
  for missing or bad files."""
  train_source, eval_source, eval_info = task.sources()
  loader = data_lib.TrainLoader(train_source, config.batch_size, config.seed,
                                jax.process_index(), jax.process_count(),
                                shuffle=config.data.shuffle)
  log.info('Data %s: %d train / %d %s samples, %d steps per epoch of %d', config.data.name,
           len(train_source), len(eval_source), config.data.eval_split, loader.steps_per_epoch,
           config.batch_size)
  return loader, eval_source, eval_info


def _optimizer(config: ml_collections.ConfigDict, labels: Any, steps_per_epoch: int
               ) -> tuple[Any, Callable[[int], float]]:
  """(the optimizer over the trainable partition, its learning-rate schedule)."""
  schedule = optim.make_schedule(config.optim, config.num_epochs, steps_per_epoch)
  return optim.make_optimizer(config.optim, labels, schedule), schedule


def _state(config: ml_collections.ConfigDict, workdir: str, variables: dict, labels: Any,
           tx: Any, loader: data_lib.TrainLoader, eval_info: Any
           ) -> tuple[steps_lib.TrainState, ckpt_lib.Checkpoints, dict]:
  """(host state, the workdir's checkpoints, their metadata): a fresh state, or the workdir's
  last checkpoint (the loader is moved to where it stopped).

  The workdir is claimed only here, once model and data are ready, so a run refused before
  leaves it as it found it.
  """
  state = steps_lib.create_state(variables, labels, tx, jax.random.PRNGKey(config.seed + 1))
  state = jax.tree.map(np.asarray, state)
  _claim_workdir(config, workdir)
  if jax.process_index() == 0 and eval_info.class_names:  # what --mode=predict labels outputs with
    data_lib.classes.write(workdir, eval_info.class_names)
  ckpts = ckpt_lib.Checkpoints(workdir, config.checkpoint.keep)
  meta = {'epoch': 0, 'loader': loader.get_state(), 'best_value': None, 'best_epoch': -1}
  if ckpts.latest_step() is None:
    ckpts.save_frozen(state.frozen)
    return state, ckpts, meta
  state, meta = ckpts.restore(state, 'last')
  meta['best_value'] = _best_value(meta)
  state = state.replace(frozen=ckpts.restore_frozen(state.frozen))
  loader.set_state(meta['loader'])
  log.info('Resumed from step %d (epoch %d, batch %d)', int(state.step), meta['loader']['epoch'],
           meta['loader']['batch'])
  return state, ckpts, meta


def _step_functions(config: ml_collections.ConfigDict, task: tasks.Task, net: Any, tx: Any
                    ) -> tuple[steps_lib.DataParallel, Callable, Callable]:
  """(the data-parallel wrapper, train step, eval step) over every device."""
  parallel = steps_lib.DataParallel(config.parallel, config.batch_size)
  train_step, eval_step = steps_lib.make_task_steps(parallel, task, net, tx)
  return parallel, train_step, eval_step


@dataclasses.dataclass
class _Run:
  """What the loop reads and moves: the device state, the step, the best evaluation so far."""
  config: ml_collections.ConfigDict
  workdir: str
  task: tasks.Task
  parallel: steps_lib.DataParallel
  loader: data_lib.TrainLoader
  ckpts: ckpt_lib.Checkpoints
  writer: reporting.MetricWriter
  schedule: Callable[[int], float]
  state_dev: Any
  step: int
  best: dict  # {'value': best metric or None, 'epoch': its epoch or -1}
  bar: Any = None  # tqdm progress bar (None: off, or not the first host)
  last_eval: dict = dataclasses.field(default_factory=dict)
  stopped: Optional[str] = None  # None (going on), 'preempted' or 'max_steps'
  t0: float = dataclasses.field(default_factory=time.time)  # throughput window start
  seen: int = 0  # samples since t0


def _log_train(run: _Run, metrics: Any, epoch: int) -> None:
  """Writes the step's training metrics (loss, task metrics, lr, throughput, peak memory);
  refuses a non-finite value."""
  m = jax.device_get(run.parallel.unreplicate_metrics(metrics))
  if not all(math.isfinite(float(v)) for v in m.values()):
    raise TrainingError(
        f'non-finite loss at step {run.step} (loss={float(m["loss"])}); stopping. The last '
        f'good checkpoint is kept in {run.workdir}/checkpoints/last')
  elapsed = max(time.time() - run.t0, 1e-9)
  m = {k: float(v) for k, v in m.items()}
  m.update(lr=float(run.schedule(run.step - 1)), samples_per_second=run.seen / elapsed)
  m.update(_peak_memory())
  run.writer.write('train', run.step, epoch, m)
  if run.bar is not None:
    run.bar.set_postfix(epoch=epoch, loss=f"{m['loss']:.3f}",
                        samples_s=f"{m['samples_per_second']:.0f}")
  run.t0, run.seen = time.time(), 0


def _train_epoch(run: _Run, train_step: Callable, epoch: int, preempt: _Preemption) -> None:
  """The rest of `epoch`'s batches, or until SIGTERM (saved, run.stopped='preempted') or
  config.max_steps (run.stopped='max_steps')."""
  config = run.config
  for batch in run.loader.epoch(epoch):
    run.state_dev, metrics = train_step(run.state_dev, run.parallel.put_batch(batch))
    run.step += 1
    run.seen += config.batch_size
    if run.bar is not None:
      run.bar.update(1)
    if run.step % config.log_every_steps == 0 or run.step % run.loader.steps_per_epoch == 0:
      _log_train(run, metrics, epoch)
    if preempt.requested:
      _save(run, epoch_done=False)
      run.stopped = 'preempted'
      log.warning('SIGTERM: saved step %d; re-run the same command to resume.', run.step)
      return
    if config.max_steps is not None and run.step >= config.max_steps:
      run.stopped = 'max_steps'
      return


def _evaluate(run: _Run, eval_step: Callable, source: Any, info: Any, epoch: int) -> bool:
  """Evaluates every sample once, logs the task's metrics; True when this is the best so far."""
  task = run.task
  run.last_eval, _, _ = eval_lib.evaluate_source(
      lambda b: eval_step(run.state_dev, b), run.parallel, source, info,
      run.config.eval.batch_size, task)
  scalars = task.scalars(run.last_eval)
  is_best = False
  if task.best_metric is not None:
    is_best = task.is_better(scalars[task.best_metric], run.best['value'])
    if is_best:
      run.best = {'value': scalars[task.best_metric], 'epoch': epoch}
    scalars[f'best_{task.best_metric}'] = run.best['value']
  scalars['num_samples'] = run.last_eval.get('num_samples')  # each sample counted once
  run.writer.write('eval', run.step, epoch, {k: v for k, v in scalars.items() if v is not None})
  log.info('epoch %d: eval %s%s', epoch, task.describe(run.last_eval),
           f"; best {task.best_metric} {run.best['value']:.4f} (epoch {run.best['epoch']})"
           if task.best_metric is not None else '')
  return is_best


def _save(run: _Run, epoch_done: bool, is_best: bool = False) -> None:
  """Checkpoints the state with the loader's position and the best evaluation so far."""
  loader_state = run.loader.get_state()
  meta = {'epoch': loader_state['epoch'], 'loader': loader_state,
          'best_value': run.best['value'], 'best_epoch': run.best['epoch'],
          'epoch_done': epoch_done}
  run.ckpts.save(run.parallel.get_state(run.state_dev), meta, best=is_best)


def _loop(run: _Run, train_step: Callable, eval_step: Callable, eval_source: Any,
          eval_info: Any) -> None:
  """Epochs from the loader's position to config.num_epochs inclusive (the release runs epochs
  0..num_epochs): train, evaluate every eval.every_epochs (and the last), checkpoint every
  checkpoint.every_epochs, the last epoch and every new best."""
  config = run.config
  last_epoch = config.num_epochs
  with _Preemption() as preempt:
    epoch = run.loader.get_state()['epoch']
    while epoch <= last_epoch and run.stopped is None:
      _train_epoch(run, train_step, epoch, preempt)
      if run.stopped == 'preempted':
        return
      if run.loader.get_state()['epoch'] <= epoch:  # max_steps within an epoch
        _save(run, epoch_done=False)
        return
      is_best = False
      # The release evaluates every val_freq epochs but never epoch 0; the last epoch is always
      # evaluated here, epoch 0 too when it is the last (num_epochs=0: one epoch of training).
      if epoch == last_epoch or (epoch > 0 and epoch % config.eval.every_epochs == 0):
        is_best = _evaluate(run, eval_step, eval_source, eval_info, epoch)
      if epoch % config.checkpoint.every_epochs == 0 or epoch == last_epoch or is_best:
        _save(run, epoch_done=True, is_best=is_best)
      epoch += 1


def _summary(run: _Run, totals: dict) -> dict:
  """What train_and_evaluate returns (and main.py prints); draws curves.png."""
  task = run.task
  curves = reporting.plot_curves(run.workdir) if jax.process_index() == 0 else None
  final = task.scalars(run.last_eval) if run.last_eval else {}
  summary = {
      'steps': run.step, 'stopped': run.stopped or 'finished',
      'final_metrics': final or None,
      'final_description': task.describe(run.last_eval) if run.last_eval else None,
      'best_metric': task.best_metric, 'best_value': run.best['value'],
      'best_epoch': run.best['epoch'] if run.best['epoch'] >= 0 else None,
      'trainable_parameters': totals['trainable'], 'total_parameters': totals['total'],
      'curves': curves,
  }
  # Flat names too (final_accuracy, best_accuracy, ...), for scripts reading the summary.
  summary.update({f'final_{k}': v for k, v in final.items()})
  if task.best_metric is not None:
    summary[f'best_{task.best_metric}'] = run.best['value']
  return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fine-tunes with the release's recipe; resumes from the workdir's last checkpoint.

  Returns a summary: final and best metrics, steps, whether it stopped early ('stopped':
  'finished', 'preempted' or 'max_steps').
  """
  config = data_lib.classes.fit_to_data(config)  # folder data: prepared, num_classes set
  _check_workdir(config, workdir)  # reads only: nothing is written before the run is set up
  finished = _finished_run(config, workdir)
  if finished is not None:  # re-running a finished run's command changes nothing
    return finished
  log.info('Devices: %d (%s), processes: %d', jax.device_count(), jax.devices()[0].platform,
           jax.process_count())
  task = tasks.get_task(config)
  net, variables, labels, totals = _model(config, task)
  loader, eval_source, eval_info = _data(config, task)
  tx, schedule = _optimizer(config, labels, loader.steps_per_epoch)
  state, ckpts, meta = _state(config, workdir, variables, labels, tx, loader, eval_info)
  parallel, train_step, eval_step = _step_functions(config, task, net, tx)
  run = _Run(config, workdir, task, parallel, loader, ckpts,
             reporting.MetricWriter(workdir, resume_step=int(state.step)), schedule,
             state_dev=parallel.put_state(state), step=int(state.step),
             best={'value': meta['best_value'], 'epoch': meta['best_epoch']})
  total_steps = (config.num_epochs + 1) * loader.steps_per_epoch
  run.bar = _progress(total_steps, run.step, config.progress_bar)
  try:
    _loop(run, train_step, eval_step, eval_source, eval_info)
  finally:
    if run.bar is not None:
      run.bar.close()
    run.writer.close()
    ckpts.close()
  return _summary(run, totals)


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate_split(config: ml_collections.ConfigDict, workdir: str, task: tasks.Task
                   ) -> tuple[dict, dict, dict, str, Any]:
  """`task`'s evaluation of the weights --mode=eval reads (the workdir's best checkpoint, else
  init_from) over config.eval.split, every sample once: (metrics, per-sample outputs, the
  samples' host fields, where the weights came from, the split's SourceInfo)."""
  net, variables, labels = weights.build(config, task)
  variables, origin = weights.for_eval(config, workdir, variables)
  source, info = data_lib.get_source(config.data, config.eval.split)
  parallel = steps_lib.DataParallel(config.parallel, config.eval.batch_size)
  tx = optim.make_optimizer(config.optim, labels, lambda s: 0.0)
  state = steps_lib.create_state(variables, labels, tx, jax.random.PRNGKey(0))
  _, eval_step = steps_lib.make_task_steps(parallel, task, net, tx)
  state_dev = parallel.put_state(state)
  metrics, outputs, host = eval_lib.evaluate_source(
      lambda b: eval_step(state_dev, b), parallel, source, info, config.eval.batch_size, task)
  return metrics, outputs, host, origin, info


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=eval: writes eval_<split>.json and predictions_<split>.npz into the workdir.

  The metrics dict also carries 'split', 'votes', 'checkpoint' and 'description' (one line).
  """
  config = data_lib.classes.fit_to_data(config)
  task = tasks.get_task(config)
  metrics, outputs, host, origin, info = evaluate_split(config, workdir, task)
  split = config.eval.split
  metrics.update(split=split, votes=int(config.eval.votes), checkpoint=origin,
                 class_names=list(info.class_names), description=task.describe(metrics))
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f'eval_{split}.json'), 'w') as f:
      json.dump(metrics, f, indent=2)
    np.savez(os.path.join(workdir, f'predictions_{split}.npz'),
             **task.saved_predictions(outputs, host))
  return metrics
