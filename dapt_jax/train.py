"""Fine-tuning and evaluation entry points used by main.py (prediction: `dapt_jax.predict`).

`train_and_evaluate` reads top to bottom: model → optimizer → state → data → step functions →
loop → eval → checkpoint.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from typing import Optional

import jax
import ml_collections
import numpy as np

from dapt_jax import checkpoints as ckpt_lib
from dapt_jax import data as data_lib
from dapt_jax import errors
from dapt_jax import evaluate as eval_lib
from dapt_jax.models import classifier as model_lib
from dapt_jax import optim
from dapt_jax import partition
from dapt_jax import pretrained
from dapt_jax import reporting
from dapt_jax import steps as steps_lib
from dapt_jax import tasks

log = logging.getLogger('dapt_jax')

CONFIG_FILE = 'config.json'
# Fields that may change between runs of the same workdir without making it a different run.
RESUMABLE_FIELDS = ('overwrite', 'max_steps', 'progress_bar', 'eval', 'log_every_steps',
                    'init_from', 'checkpoint', 'compile_cache_dir')


class TrainingError(errors.UserError, RuntimeError):
  """A run that cannot start or go on; the message is one line for the user."""


# ---------------------------------------------------------------------------------------------
# Pieces


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


def build(config: ml_collections.ConfigDict, task: Optional[tasks.Task] = None):
  """(net with the device axis, initial variables, labels) for a config's task."""
  task = task or tasks.get_task(config)
  net = task.build_model(axis_name=steps_lib.AXIS)
  key = jax.random.PRNGKey(config.seed)
  variables = task.init_variables(net.clone(axis_name=None), key)
  variables = jax.tree.map(np.asarray, variables)
  if config.init_from:
    loaded = pretrained.load_converted(config.init_from)
    variables, report = pretrained.merge_pretrained(variables, loaded)
    fresh = report.get('freshly_initialised', [])
    log.info('Loaded %d tensors from %s; %d freshly initialised%s', len(report['loaded']),
             config.init_from, len(fresh), f" ({', '.join(fresh[:6])}{', ...' if len(fresh) > 6 else ''})" if fresh else '')
  labels = partition.label_params(variables['params'], partition.rules_for(config))
  return net, variables, labels


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
  best = (meta.get('best_value', meta.get('best_accuracy')) if meta.get('best_epoch', -1) >= 0
          else None)  # 'best_accuracy': checkpoints written before tasks named their metric
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


def _run_eval(parallel, eval_fn, state_dev, source, info, config, task
              ) -> tuple[dict, dict, dict]:
  """(metrics, per-sample outputs, host fields) over every sample of `source` exactly once."""
  batches = data_lib.EvalLoader(source, config.eval.batch_size, jax.process_index(),
                                jax.process_count())
  run = lambda b: eval_fn(state_dev, b)
  outputs, host = eval_lib.collect_outputs(run, parallel.put_batch, parallel.gather, batches,
                                           task.device_fields)
  return task.eval_metrics(outputs, host, info), outputs, host


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
# Training


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fine-tunes with the release's recipe; resumes from the workdir's last checkpoint.

  Returns a summary: final and best accuracy, steps, whether it stopped early.
  """
  config = data_lib.classes.fit_to_data(config)  # folder data: prepared, num_classes set
  _check_workdir(config, workdir)  # reads only: nothing is written before the run is set up
  finished = _finished_run(config, workdir)
  if finished is not None:  # re-running a finished run's command changes nothing
    return finished
  log.info('Devices: %d (%s), processes: %d', jax.device_count(), jax.devices()[0].platform,
           jax.process_count())
  task = tasks.get_task(config)

  # Model and parameters.
  net, variables, labels = build(config, task)
  totals = _log_counts(variables, labels, config)

  # Data (prepared on first use; clear errors for missing or bad files).
  train_source, eval_source, eval_info = task.sources()
  loader = data_lib.TrainLoader(train_source, config.batch_size, config.seed,
                                jax.process_index(), jax.process_count(),
                                shuffle=config.data.shuffle)
  steps_per_epoch = loader.steps_per_epoch
  log.info('Data %s: %d train / %d %s samples, %d steps per epoch of %d', config.data.name,
           len(train_source), len(eval_source), config.data.eval_split, steps_per_epoch,
           config.batch_size)

  # Optimizer and state.
  schedule = optim.make_schedule(config.optim, config.num_epochs, steps_per_epoch)
  tx = optim.make_optimizer(config.optim, labels, schedule)
  state = steps_lib.create_state(variables, labels, tx, jax.random.PRNGKey(config.seed + 1))
  state = jax.tree.map(np.asarray, state)

  # Checkpoints: resume when there is one.
  _claim_workdir(config, workdir)
  if jax.process_index() == 0 and eval_info.class_names:  # what --mode=predict labels outputs with
    data_lib.classes.write(workdir, eval_info.class_names)
  ckpts = ckpt_lib.Checkpoints(workdir, config.checkpoint.keep)
  meta = {'epoch': 0, 'loader': loader.get_state(), 'best_value': None, 'best_epoch': -1}
  if ckpts.latest_step() is not None:
    state, meta = ckpts.restore(state, 'last')
    if 'best_value' not in meta:  # written before tasks named their best metric
      meta['best_value'] = meta.get('best_accuracy') if meta.get('best_epoch', -1) >= 0 else None
    state = state.replace(frozen=ckpts.restore_frozen(state.frozen))
    loader.set_state(meta['loader'])
    log.info('Resumed from step %d (epoch %d, batch %d)', int(state.step), meta['loader']['epoch'],
             meta['loader']['batch'])
  else:
    ckpts.save_frozen(state.frozen)

  # Step functions.
  parallel = steps_lib.DataParallel(config.parallel, config.batch_size)
  train_step, eval_step = steps_lib.make_task_steps(parallel, task, net, tx)
  state_dev = parallel.put_state(state)
  writer = reporting.MetricWriter(workdir, resume_step=int(state.step))

  last_epoch = config.num_epochs  # the release runs epochs 0..num_epochs inclusive
  total_steps = (last_epoch + 1) * steps_per_epoch
  step = int(state.step)
  best = {'value': meta['best_value'], 'epoch': meta['best_epoch']}
  last_eval: dict = {}
  stopped = None

  def save(epoch_done: bool, is_best: bool = False):
    host_state = parallel.get_state(state_dev)
    m = {'epoch': loader.get_state()['epoch'], 'loader': loader.get_state(),
         'best_value': best['value'], 'best_epoch': best['epoch'],
         'epoch_done': epoch_done}
    ckpts.save(host_state, m, best=is_best)

  bar = _progress(total_steps, step, config.progress_bar)
  t0, seen = time.time(), 0
  try:
    with _Preemption() as preempt:
      epoch = loader.get_state()['epoch']
      while epoch <= last_epoch and stopped is None:
        for batch in loader.epoch(epoch):
          state_dev, metrics = train_step(state_dev, parallel.put_batch(batch))
          step += 1
          seen += config.batch_size
          if bar is not None:
            bar.update(1)
          if step % config.log_every_steps == 0 or step % steps_per_epoch == 0:
            m = jax.device_get(parallel.unreplicate_metrics(metrics))
            if not all(math.isfinite(float(v)) for v in m.values()):
              stopped = 'nan'
              raise TrainingError(
                  f'non-finite loss at step {step} (loss={float(m["loss"])}); stopping. The last '
                  f'good checkpoint is kept in {workdir}/checkpoints/last')
            elapsed = max(time.time() - t0, 1e-9)
            m = {k: float(v) for k, v in m.items()}
            m.update(lr=float(schedule(step - 1)), samples_per_second=seen / elapsed)
            m.update(_peak_memory())
            writer.write('train', step, epoch, m)
            if bar is not None:
              bar.set_postfix(epoch=epoch, loss=f"{m['loss']:.3f}",
                              samples_s=f"{m['samples_per_second']:.0f}")
            t0, seen = time.time(), 0
          if preempt.requested:
            save(epoch_done=False)
            stopped = 'preempted'
            log.warning('SIGTERM: saved step %d; re-run the same command to resume.', step)
            break
          if config.max_steps is not None and step >= config.max_steps:
            stopped = 'max_steps'
            break
        if stopped in ('preempted',):
          break
        epoch_finished = loader.get_state()['epoch'] > epoch
        if not epoch_finished:  # max_steps within an epoch
          save(epoch_done=False)
          break
        is_best = False
        if epoch > 0 and (epoch % config.eval.every_epochs == 0 or epoch == last_epoch):
          last_eval, _, _ = _run_eval(parallel, eval_step, state_dev, eval_source, eval_info,
                                      config, task)
          scalars = task.scalars(last_eval)
          if task.best_metric is not None:
            is_best = task.is_better(scalars[task.best_metric], best['value'])
            if is_best:
              best = {'value': scalars[task.best_metric], 'epoch': epoch}
            scalars[f'best_{task.best_metric}'] = best['value']
          scalars['num_samples'] = last_eval.get('num_samples')  # each sample counted once
          writer.write('eval', step, epoch, {k: v for k, v in scalars.items() if v is not None})
          log.info('epoch %d: eval %s%s', epoch, task.describe(last_eval),
                   f"; best {task.best_metric} {best['value']:.4f} (epoch {best['epoch']})"
                   if task.best_metric is not None else '')
        if (epoch % config.checkpoint.every_epochs == 0 or epoch == last_epoch or is_best):
          save(epoch_done=True, is_best=is_best)
        epoch += 1
  finally:
    if bar is not None:
      bar.close()
    writer.close()
    ckpts.close()

  curves = reporting.plot_curves(workdir) if jax.process_index() == 0 else None
  final = task.scalars(last_eval) if last_eval else {}
  summary = {
      'steps': step, 'stopped': stopped or 'finished',
      'final_metrics': final or None,
      'final_description': task.describe(last_eval) if last_eval else None,
      'best_metric': task.best_metric, 'best_value': best['value'],
      'best_epoch': best['epoch'] if best['epoch'] >= 0 else None,
      'trainable_parameters': totals['trainable'], 'total_parameters': totals['total'],
      'curves': curves,
  }
  # Flat names too (final_accuracy, best_accuracy, ...), for scripts reading the summary.
  summary.update({f'final_{k}': v for k, v in final.items()})
  if task.best_metric is not None:
    summary[f'best_{task.best_metric}'] = best['value']
  return summary


# ---------------------------------------------------------------------------------------------
# Evaluation and prediction


def _variables_for_eval(config, workdir, net, variables, labels):
  """The variables to evaluate: the workdir's best checkpoint if it has one, else init_from
  (already merged into `variables` by `build`)."""
  del net, labels
  if workdir and ckpt_lib.is_workdir(workdir):
    try:
      loaded, step = ckpt_lib.workdir_variables(workdir, 'best')
      which, _ = ckpt_lib.find_checkpoint(workdir, 'best')
    except ckpt_lib.CheckpointError:
      loaded = None
    if loaded is not None:
      variables, _ = pretrained.merge_pretrained(variables, loaded)
      if which == 'best':
        return variables, f'{workdir} (best checkpoint, step {step})'
      log.warning('%s has no best checkpoint (no evaluation saved one yet): evaluating its last '
                  'checkpoint, step %d.', workdir, step)
      return variables, f'{workdir} (no best checkpoint: the last one, step {step})'
  if config.init_from:
    return variables, config.init_from
  raise TrainingError(f'nothing to evaluate: {workdir} has no checkpoint and no '
                      '--config.init_from was given')


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=eval: writes eval_<split>.json and predictions_<split>.npz into the workdir.

  The metrics dict also carries 'split', 'votes', 'checkpoint' and 'description' (one line).
  """
  config = data_lib.classes.fit_to_data(config)
  task = tasks.get_task(config)
  net, variables, labels = build(config, task)
  variables, origin = _variables_for_eval(config, workdir, net, variables, labels)
  split = config.eval.split
  source, info = data_lib.get_source(config.data, split)
  parallel = steps_lib.DataParallel(config.parallel, config.eval.batch_size)
  tx = optim.make_optimizer(config.optim, labels, lambda s: 0.0)
  state = steps_lib.create_state(variables, labels, tx, jax.random.PRNGKey(0))
  _, eval_step = steps_lib.make_task_steps(parallel, task, net, tx)
  state_dev = parallel.put_state(state)
  metrics, outputs, host = _run_eval(parallel, eval_step, state_dev, source, info, config, task)
  metrics.update(split=split, votes=int(config.eval.votes), checkpoint=origin,
                 class_names=list(info.class_names), description=task.describe(metrics))
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f'eval_{split}.json'), 'w') as f:
      json.dump(metrics, f, indent=2)
    np.savez(os.path.join(workdir, f'predictions_{split}.npz'),
             **task.saved_predictions(outputs, host))
  return metrics
