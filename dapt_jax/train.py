"""Fine-tuning, evaluation and prediction entry points used by main.py.

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
import time
from typing import Optional

import jax
import ml_collections
import numpy as np

from dapt_jax import checkpoints as ckpt_lib
from dapt_jax import data as data_lib
from dapt_jax import evaluate as eval_lib
from dapt_jax import model as model_lib
from dapt_jax import optim
from dapt_jax import partition
from dapt_jax import pretrained
from dapt_jax import reporting
from dapt_jax import steps as steps_lib
from dapt_jax.data import augment

log = logging.getLogger('dapt_jax')

CONFIG_FILE = 'config.json'
# Fields that may change between runs of the same workdir without making it a different run.
RESUMABLE_FIELDS = ('overwrite', 'max_steps', 'progress_bar', 'eval', 'log_every_steps',
                    'init_from', 'checkpoint', 'compile_cache_dir')


class TrainingError(RuntimeError):
  """A run that cannot start or go on; the message is one line for the user."""


# ---------------------------------------------------------------------------------------------
# Pieces


def _config_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def _check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir holding a run of a different config, unless config.overwrite."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  current = _config_dict(config)
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    strip = lambda d: {k: v for k, v in d.items() if k not in RESUMABLE_FIELDS}
    if strip(previous) != strip(current):
      diff = sorted(k for k in set(strip(previous)) | set(strip(current))
                    if strip(previous).get(k) != strip(current).get(k))
      if not config.overwrite:
        raise TrainingError(
            f'{workdir} holds a run of a different config (differs in: {", ".join(diff)}); '
            'use another --workdir, or --config.overwrite=True to replace it')
      log.warning('Replacing the run in %s (config differs in: %s)', workdir, ', '.join(diff))
      for name in ('checkpoints', reporting.METRICS_FILE, 'tensorboard', reporting.CURVES_FILE):
        target = os.path.join(workdir, name)
        if os.path.isdir(target):
          shutil.rmtree(target)
        elif os.path.exists(target):
          os.remove(target)
  if jax.process_index() == 0:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(current, f, indent=2)
    os.replace(tmp, path)


def build(config: ml_collections.ConfigDict, num_points: Optional[int] = None):
  """(net with the device axis, initial variables, labels) for a config."""
  net = model_lib.build_model(config.model, axis_name=steps_lib.AXIS)
  num_points = num_points or config.data.num_points
  key = jax.random.PRNGKey(config.seed)
  variables = model_lib.init_variables(net.clone(axis_name=None), key, num_points)
  variables = jax.tree.map(np.asarray, variables)
  if config.init_from:
    loaded = pretrained.load_converted(config.init_from)
    variables, report = pretrained.merge_pretrained(variables, loaded)
    fresh = report.get('freshly_initialised', [])
    log.info('Loaded %d tensors from %s; %d freshly initialised%s', len(report['loaded']),
             config.init_from, len(fresh), f" ({', '.join(fresh[:6])}{', ...' if len(fresh) > 6 else ''})" if fresh else '')
  labels = partition.label_params(variables['params'], config.partition_rules)
  return net, variables, labels


def _log_counts(variables, labels, config) -> dict:
  counts = partition.count(variables['params'], labels)
  log.info('Parameters (trainable / total):\n%s', partition.format_counts(counts))
  if not config.init_from:
    log.warning('*' * 78)
    log.warning('No --config.init_from given: the BACKBONE IS RANDOMLY INITIALISED.')
    log.warning('Convert a pre-trained checkpoint with `python -m convert` to fine-tune DAPT.')
    log.warning('*' * 78)
  return counts['total']


def _sources(config):
  dc = config.data
  train_source, train_info = data_lib.get_source(dc, dc.train_split)
  eval_source, eval_info = data_lib.get_source(dc, dc.eval_split)
  if train_info.num_classes != config.model.num_classes:
    raise TrainingError(f'config.model.num_classes={config.model.num_classes} but dataset '
                        f'{dc.name} has {train_info.num_classes} classes')
  if train_info.points_per_cloud < dc.num_points:
    raise TrainingError(f'config.data.num_points={dc.num_points} exceeds the '
                        f'{train_info.points_per_cloud} points per stored cloud of {dc.name}')
  return train_source, train_info, eval_source, eval_info


def _run_eval(parallel, eval_fn, state_dev, source, info, config) -> tuple[dict, np.ndarray,
                                                                           np.ndarray]:
  batches = data_lib.EvalLoader(source, config.eval.batch_size, jax.process_index(),
                                jax.process_count())
  run = lambda b: eval_fn(state_dev, b)
  logits, labels = eval_lib.collect(run, parallel.put_batch, parallel.gather, batches)
  metrics = eval_lib.classification_metrics(logits, labels, info.num_classes, info.class_names)
  return metrics, logits, labels


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
  _check_workdir(config, workdir)
  log.info('Devices: %d (%s), processes: %d', jax.device_count(), jax.devices()[0].platform,
           jax.process_count())

  # Model and parameters.
  net, variables, labels = build(config)
  totals = _log_counts(variables, labels, config)

  # Data (prepared on first use; clear errors for missing or bad files).
  train_source, train_info, eval_source, eval_info = _sources(config)
  loader = data_lib.TrainLoader(train_source, config.batch_size, config.seed,
                                jax.process_index(), jax.process_count())
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
  ckpts = ckpt_lib.Checkpoints(workdir, config.checkpoint.keep)
  meta = {'epoch': 0, 'loader': loader.get_state(), 'best_accuracy': -1.0, 'best_epoch': -1}
  if ckpts.latest_step() is not None:
    state, meta = ckpts.restore(state, 'last')
    state = state.replace(frozen=ckpts.restore_frozen(state.frozen))
    loader.set_state(meta['loader'])
    log.info('Resumed from step %d (epoch %d, batch %d)', int(state.step), meta['loader']['epoch'],
             meta['loader']['batch'])
  else:
    ckpts.save_frozen(state.frozen)

  # Step functions.
  parallel = steps_lib.DataParallel(config.parallel, config.batch_size)
  train_step, eval_step = steps_lib.make_steps(parallel, net, tx, config.data.num_points,
                                               config.data.point_all, votes=1,
                                               skip_full_fps=config.data.skip_full_fps)
  state_dev = parallel.put_state(state)
  writer = reporting.MetricWriter(workdir)

  last_epoch = config.num_epochs  # the release runs epochs 0..num_epochs inclusive
  total_steps = (last_epoch + 1) * steps_per_epoch
  step = int(state.step)
  best = {'accuracy': meta['best_accuracy'], 'epoch': meta['best_epoch']}
  last_eval: dict = {}
  stopped = None

  def save(epoch_done: bool, is_best: bool = False):
    host_state = parallel.get_state(state_dev)
    m = {'epoch': loader.get_state()['epoch'], 'loader': loader.get_state(),
         'best_accuracy': best['accuracy'], 'best_epoch': best['epoch'],
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
                                      config)
          is_best = last_eval['accuracy'] > best['accuracy']
          if is_best:
            best = {'accuracy': last_eval['accuracy'], 'epoch': epoch}
          writer.write('eval', step, epoch, {
              'accuracy': last_eval['accuracy'],
              'mean_class_accuracy': last_eval['mean_class_accuracy'],
              'best_accuracy': best['accuracy']})
          log.info('epoch %d: eval accuracy %.2f %% (mean class %.2f %%), best %.2f %% '
                   '(epoch %d)', epoch, 100 * last_eval['accuracy'],
                   100 * last_eval['mean_class_accuracy'], 100 * best['accuracy'], best['epoch'])
        if (epoch % config.checkpoint.every_epochs == 0 or epoch == last_epoch or is_best):
          save(epoch_done=True, is_best=is_best)
        epoch += 1
  finally:
    if bar is not None:
      bar.close()
    writer.close()
    ckpts.close()

  curves = reporting.plot_curves(workdir) if jax.process_index() == 0 else None
  summary = {
      'steps': step, 'stopped': stopped or 'finished',
      'final_accuracy': last_eval.get('accuracy'),
      'final_mean_class_accuracy': last_eval.get('mean_class_accuracy'),
      'best_accuracy': best['accuracy'] if best['accuracy'] >= 0 else None,
      'best_epoch': best['epoch'] if best['epoch'] >= 0 else None,
      'trainable_parameters': totals['trainable'], 'total_parameters': totals['total'],
      'curves': curves,
  }
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
    except ckpt_lib.CheckpointError:
      loaded = None
    if loaded is not None:
      variables, _ = pretrained.merge_pretrained(variables, loaded)
      return variables, f'{workdir} (step {step})'
  if config.init_from:
    return variables, config.init_from
  raise TrainingError(f'nothing to evaluate: {workdir} has no checkpoint and no '
                      '--config.init_from was given')


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=eval: writes eval_<split>.json and predictions_<split>.npz into the workdir."""
  net, variables, labels = build(config)
  variables, origin = _variables_for_eval(config, workdir, net, variables, labels)
  split = config.eval.split
  source, info = data_lib.get_source(config.data, split)
  parallel = steps_lib.DataParallel(config.parallel, config.eval.batch_size)
  tx = optim.make_optimizer(config.optim, labels, lambda s: 0.0)
  state = steps_lib.create_state(variables, labels, tx, jax.random.PRNGKey(0))
  _, eval_step = steps_lib.make_steps(parallel, net, tx, config.data.num_points,
                                      config.data.point_all, votes=config.eval.votes)
  state_dev = parallel.put_state(state)
  metrics, logits, labels_ = _run_eval(parallel, eval_step, state_dev, source, info, config)
  metrics.update(split=split, votes=int(config.eval.votes), checkpoint=origin,
                 class_names=list(info.class_names))
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f'eval_{split}.json'), 'w') as f:
      json.dump(metrics, f, indent=2)
    np.savez(os.path.join(workdir, f'predictions_{split}.npz'), logits=logits, labels=labels_)
  return metrics


def predict_file(config: ml_collections.ConfigDict, workdir: str, input_path: str,
                 k: int = 5) -> list[tuple[str, float]]:
  """--mode=predict: the top-k classes with probabilities for one cloud file."""
  points = eval_lib.read_cloud(input_path)
  net, variables, labels = build(config)
  variables, _ = _variables_for_eval(config, workdir, net, variables, labels)
  class_names = _class_names(config, workdir)
  pts = eval_lib.fit_points(points, config.data.num_points)
  single = net.clone(axis_name=None)

  @jax.jit
  def run(variables, pts):
    return single.apply(variables, augment.eval_view(pts[None], config.data.num_points),
                        train=False)[0]

  logits = np.asarray(run(variables, pts))
  return eval_lib.top_k(logits, class_names, k)


def _class_names(config, workdir) -> list[str]:
  """Class names without preparing the dataset when the workdir already knows them."""
  for split in ('test', 'train'):
    path = os.path.join(workdir or '', f'eval_{split}.json')
    if os.path.exists(path):
      with open(path) as f:
        names = json.load(f).get('class_names')
      if names:
        return names
  try:
    _, info = data_lib.get_source(config.data, config.data.eval_split)
    return list(info.class_names)
  except data_lib.DataError:
    return [f'class {i}' for i in range(config.model.num_classes)]
