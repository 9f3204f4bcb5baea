r"""Several runs of one config (folds, seeds) in one command, and one results table.

  python -m dapt_jax.sweep --config=configs/modelnet_fewshot.py:5way10shot --workdir=runs/fs \
      --folds=0-9 --seeds=0 --config.init_from=ckpts/pointmae \
      --config.data.data_dir=data/ModelNetFewshot
  python -m dapt_jax.sweep --config=configs/scanobjectnn.py:hardest --workdir=runs/hardest \
      --seeds=0,1,2 --config.init_from=ckpts/pointmae
  python -m dapt_jax.sweep --config=configs/scanobjectnn.py:hardest --workdir=runs/peft \
      --methods=full,linear,vpt_deep,idpt,pointgst,lora,adapter,dapt --seeds=0,1,2 \
      --config.init_from=ckpts/pointmae

Every `--config.*` override of main.py applies to every run. Each run is one main.py training run
in its own workdir under --workdir, named by its place on each axis (`fold3_seed0`, `seed1`), and
is resumable as any main.py run. Runs go one after another, each in a fresh process (JAX state
isolated; a crash or preemption of one run loses nothing of the others). Re-running the command
skips finished runs and resumes the unfinished one. SIGTERM is passed to the running run, which
saves; the sweep then stops with exit status 3, as main.py does, so a scheduler requeues it.

Before the first run starts, every planned run (each method, fold and seed, with the overrides)
is checked as main.py checks a run (`dapt_jax.validate.check_run`: config, data files, model,
init_from), in one child process so that this one never holds an accelerator while the runs
train. A mistake in any run is one `error:` line and exit status 2, before anything trains or is
written (`--check_only` stops after the check). The sweep holds a lock on --workdir while it runs,
so a second sweep there is refused at once and writes nothing.

After each run `summary.json` and `summary.md` in --workdir hold, per run, the final-epoch and
the best-epoch test accuracy, and their mean ± std over the finished runs. Two protocols:
  best   each run's best test accuracy over its evaluated epochs: selection on the test split,
         what the papers report (Point-MAE / IDPT few-shot: best epoch per fold);
  final  the accuracy after the last epoch: no selection on test, the honest figure.
std is the population standard deviation (ddof 0), as the few-shot papers compute it over folds;
summary.json also has the sample one (ddof 1).

Axes are data (`AXES`): a run is one value per axis, each axis an override of one config field.
`--methods` sets the fine-tuning method (config.model.peft; runs named `dapt_seed0`, ...); the
summary then has a row per method: trainable parameters, final- and best-epoch accuracy (mean ±
std over its runs), the published figure where there is one, and step time and peak memory per
sample from the runs' own logs.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from dapt_jax import cli
from dapt_jax import errors

SUMMARY_JSON = 'summary.json'
SUMMARY_MD = 'summary.md'
RUN_LOG = 'train.log'
METRICS_FILE = 'metrics.jsonl'  # dapt_jax.reporting.METRICS_FILE (not imported: it pulls in JAX)
MAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'main.py')


@dataclasses.dataclass(frozen=True)
class Axis:
  """One sweep dimension: a command-line flag whose values each set one config field."""
  name: str      # run-name prefix and summary column, e.g. 'fold'
  flag: str      # the sweep's flag holding the values, e.g. 'folds'
  field: str     # the config field each value sets, e.g. 'data.fold'
  parse: Any     # str → list of values
  applies: Any = None  # config → None if the axis may be used, else why not
  label: Any = None    # value → its part of a run name (default: name + value, e.g. 'seed0')


class SweepError(errors.UserError):
  """A sweep that cannot start or go on; one line for the user."""


def parse_ints(text: str, flag: str) -> list[int]:
  """'0-9' | '0,2,5' | '3' | '0-2,7' → sorted distinct ints (≥ 0)."""
  values = []
  for part in str(text).split(','):
    part = part.strip()
    try:
      if '-' in part:
        lo, hi = (int(x) for x in part.split('-', 1))
        if hi < lo:
          raise ValueError
        values.extend(range(lo, hi + 1))
      else:
        values.append(int(part))
    except ValueError:
      raise SweepError(f'--{flag}={text!r}: expected integers like 0-9, 0,1,2 or 3') from None
  if any(v < 0 for v in values):
    raise SweepError(f'--{flag}={text!r}: values must be ≥ 0')
  return sorted(set(values))


def _fold_applies(config) -> Optional[str]:
  if config.data.name != 'modelnet_fewshot':
    return (f'--folds needs a few-shot config (data.name=modelnet_fewshot), not '
            f'data.name={config.data.name!r}')
  return None


def parse_methods(text: str) -> list[str]:
  """'dapt,full,idpt' → the PEFT methods (config.model.peft), in the order given, once each."""
  from dapt_jax.models import peft  # pylint: disable=g-import-not-at-top  (no JAX)
  values = [v.strip() for v in str(text).split(',')]
  bad = [v for v in values if v not in peft.METHODS]
  if bad:
    raise SweepError(f'--methods={text!r}: {bad[0]!r} is not one of {", ".join(peft.METHODS)}')
  return list(dict.fromkeys(values))


AXES = (
    Axis('method', 'methods', 'model.peft', parse_methods, label=str),
    Axis('fold', 'folds', 'data.fold', lambda s: parse_ints(s, 'folds'), _fold_applies),
    Axis('seed', 'seeds', 'seed', lambda s: parse_ints(s, 'seeds')),
)

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/modelnet_fewshot.py.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for the runs (one subfolder each) and the summary.')
flags.DEFINE_string('folds', None, 'Few-shot folds, e.g. 0-9 (sets --config.data.fold).')
flags.DEFINE_string('seeds', '0', 'Seeds, e.g. 0,1,2 (sets --config.seed).')
flags.DEFINE_string('methods', None, 'PEFT methods, e.g. full,linear,vpt_deep,idpt,pointgst,lora,'
                    'adapter,dapt (sets --config.model.peft).')
flags.DEFINE_bool('check_only', False, 'Check every planned run as main.py would (config, data '
                  'files, model, init_from, existing run folders) and exit; nothing is written.')
FLAGS = flags.FLAGS


# ---------------------------------------------------------------------------------------------
# Planning


@dataclasses.dataclass(frozen=True)
class Run:
  name: str                      # e.g. 'fold3_seed0'
  values: tuple                  # ((axis name, value), ...)
  overrides: tuple               # ('--config.data.fold=3', '--config.seed=0')

  def workdir(self, root: str) -> str:
    return os.path.join(root, self.name)


def plan_runs(config, axis_values: dict[str, str], overrides: Sequence[str]) -> list[Run]:
  """The runs: the product of the given axes (seeds always; the others when given).

  overrides: the `--config.*=value` arguments, to refuse one that sets an axis's field.
  """
  used = []
  for axis in AXES:
    text = axis_values.get(axis.flag)
    if text is None:
      continue
    if axis.applies is not None and axis.applies(config):
      raise SweepError(axis.applies(config))
    given = [a for a in overrides if a.split('=', 1)[0] == f'--config.{axis.field}']
    if given:
      raise SweepError(f'{given[0]} conflicts with --{axis.flag}: give the values with '
                       f'--{axis.flag} only')
    used.append((axis, axis.parse(text)))
  runs = []
  for combo in itertools.product(*[values for _, values in used]):
    pairs = tuple((axis.name, value) for (axis, _), value in zip(used, combo))
    labels = [axis.label(value) if axis.label else f'{axis.name}{value}'
              for (axis, _), value in zip(used, combo)]
    runs.append(Run(name='_'.join(labels), values=pairs,
                    overrides=tuple(f'--config.{axis.field}={value}'
                                    for (axis, _), value in zip(used, combo))))
  return runs


def config_overrides(argv: Sequence[str]) -> list[str]:
  """The `--config.*` arguments as given (a value in the next argument is joined with '=')."""
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith('--config.'):
      if '=' not in arg and i + 1 < len(argv) and not argv[i + 1].startswith('--'):
        arg = f'{arg}={argv[i + 1]}'
        i += 1
      out.append(arg)
    i += 1
  return out


def config_spec(argv: Sequence[str]) -> str:
  """The --config value as given (`--config=F` or `--config F`)."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  raise SweepError('--config is required, e.g. --config=configs/modelnet_fewshot.py')


def run_config(config, run: Run):
  """The config a run trains with (the sweep's, with the run's axis values set)."""
  cfg = config.copy_and_resolve_references()
  cfg.unlock()
  for axis_name, value in run.values:
    field = next(a.field for a in AXES if a.name == axis_name)
    *path, last = field.split('.')
    target = cfg
    for p in path:
      target = target[p]
    target[last] = value
  cfg.lock()
  return cfg


def check_existing(config, runs: Sequence[Run], root: str) -> None:
  """Refuses, before anything runs, a run folder that holds a run of another config."""
  from dapt_jax import train  # pylint: disable=g-import-not-at-top  (pulls in JAX)
  strip = lambda d: {k: v for k, v in d.items() if k not in train.RESUMABLE_FIELDS}
  for run in runs:
    path = os.path.join(run.workdir(root), train.CONFIG_FILE)
    if not os.path.isfile(path) or config.overwrite:
      continue
    with open(path) as f:
      previous = json.load(f)
    current = train._config_dict(run_config(config, run))  # pylint: disable=protected-access
    if strip(previous) != strip(current):
      diff = sorted(k for k in set(strip(previous)) | set(strip(current))
                    if strip(previous).get(k) != strip(current).get(k))
      raise SweepError(f'{run.workdir(root)} holds a run of a different config (differs in: '
                       f'{", ".join(diff)}); use another --workdir, or --config.overwrite=True')


# ---------------------------------------------------------------------------------------------
# Results


# The metric a run's row reports per task (its final and best epoch; the keys stay
# `final_accuracy` / `best_accuracy`, and summary.json's `metric` names it).
HEADLINE_METRICS = {'classification': 'accuracy', 'segmentation': 'instance_miou'}
METRIC_LABELS = {'accuracy': 'Accuracy', 'instance_miou': 'Instance mIoU'}


def headline_metric(config) -> str:
  task = config.get('task', 'classification')
  if task not in HEADLINE_METRICS:
    raise SweepError(f'config.task={task!r}: the sweep tabulates '
                     f'{", ".join(HEADLINE_METRICS)} runs')
  return HEADLINE_METRICS[task]


def _evals(workdir: str, metric: str = 'accuracy') -> dict[int, dict]:
  """Evaluation records by epoch (the last one written for an epoch, after a resume), with
  `metric` under 'accuracy'."""
  path = os.path.join(workdir, METRICS_FILE)
  out = {}
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          record = json.loads(line)
          if record.get('split') == 'eval' and metric in record:
            out[int(record['epoch'])] = dict(record, accuracy=record[metric])
  return out


def _resources(workdir: str) -> dict:
  """Step time and peak memory per sample, from the run's own metrics.jsonl and config.json:
  the median of its logged samples/s (robust to the first interval, which holds compilation),
  and its peak memory (the accelerator allocator's peak where there is one, else the process's
  peak resident set, which on CPU includes the compiler)."""
  path, config_path = os.path.join(workdir, METRICS_FILE), os.path.join(workdir, 'config.json')
  if not (os.path.isfile(path) and os.path.isfile(config_path)):
    return {}
  with open(config_path) as f:
    batch = json.load(f).get('batch_size')
  rates, device, rss = [], [], []
  with open(path) as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        if r.get('split') == 'train':
          rates += [r['samples_per_second']] if r.get('samples_per_second') else []
          device += [r['peak_device_bytes']] if r.get('peak_device_bytes') else []
          rss += [r['peak_rss_bytes']] if r.get('peak_rss_bytes') else []
  out = {}
  if rates and batch:
    rates.sort()
    half = len(rates) // 2
    median = rates[half] if len(rates) % 2 else 0.5 * (rates[half - 1] + rates[half])
    out['step_time_s'] = batch / median
  peak, source = ((max(device), 'device allocator') if device
                  else (max(rss), 'host RSS') if rss else (None, None))
  if peak and batch:
    out.update(peak_bytes=peak, peak_bytes_per_sample=peak / batch, peak_source=source)
  return out


def run_result(run: Run, root: str, last_epoch: int, metric: str = 'accuracy') -> dict:
  """A run's row: final- and best-epoch `metric` once it has evaluated its last epoch."""
  evals = _evals(run.workdir(root), metric)
  row = {'run': run.name, **dict(run.values), 'workdir': run.workdir(root),
         'epochs_evaluated': len(evals), **_resources(run.workdir(root))}
  if last_epoch not in evals:
    row['status'] = 'unfinished'
    return row
  final = evals[last_epoch]
  best_epoch = max(sorted(evals), key=lambda e: evals[e]['accuracy'])  # first epoch at the max
  row.update(status='finished', final_accuracy=final['accuracy'],
             final_mean_class_accuracy=final.get('mean_class_accuracy'),
             best_accuracy=evals[best_epoch]['accuracy'], best_epoch=best_epoch,
             best_mean_class_accuracy=evals[best_epoch].get('mean_class_accuracy'))
  return row


def mean_std(values: Sequence[float]) -> dict:
  """mean, population std (ddof 0) and sample std (ddof 1, None for one value)."""
  n = len(values)
  if not n:
    return {'n': 0, 'mean': None, 'std': None, 'std_sample': None}
  mean = sum(values) / n
  ss = sum((v - mean) ** 2 for v in values)
  return {'n': n, 'mean': mean, 'std': math.sqrt(ss / n),
          'std_sample': math.sqrt(ss / (n - 1)) if n > 1 else None}


PUBLISHED = {  # (data.name, way, shot) → what the paper tables report, for comparison
    ('modelnet_fewshot', 5, 10): 'Point-MAE full fine-tuning 96.3 ± 2.5',
    ('modelnet_fewshot', 5, 20): 'Point-MAE full fine-tuning 97.8 ± 1.8',
    ('modelnet_fewshot', 10, 10): 'Point-MAE full fine-tuning 92.6 ± 4.1',
    ('modelnet_fewshot', 10, 20): 'Point-MAE full fine-tuning 95.0 ± 3.0',
    ('scan_object_nn/objbg', None, None): 'DAPT 90.88',
    ('scan_object_nn/objonly', None, None): 'DAPT 90.19',
    ('scan_object_nn/hardest', None, None): 'DAPT 85.08',
    ('modelnet40', None, None): 'DAPT 93.5',
}


# Published accuracy (%) per method, Point-MAE backbone: the PointGST paper's table (SPEC §9; the
# DAPT row equals the DAPT README). Methods without a verified figure have none (SPEC §9, §11).
PUBLISHED_METHODS = {
    'scan_object_nn/objbg': {'full': 90.02, 'idpt': 91.22, 'dapt': 90.88, 'pointgst': 91.74},
    'scan_object_nn/objonly': {'full': 88.29, 'idpt': 90.02, 'dapt': 90.19, 'pointgst': 90.19},
    'scan_object_nn/hardest': {'full': 85.18, 'idpt': 84.94, 'dapt': 85.08, 'pointgst': 85.29},
    'modelnet40': {'full': 93.2, 'idpt': 93.3, 'dapt': 93.5, 'pointgst': 93.5},
}


def parameter_counts(config, methods: Sequence[str]) -> dict[str, dict[str, int]]:
  """{method: {'trainable', 'total'}} of the config's model with each method (shapes only)."""
  from dapt_jax.models import classifier as model_lib  # pylint: disable=g-import-not-at-top  (pulls in JAX)
  from dapt_jax import partition  # pylint: disable=g-import-not-at-top
  from dapt_jax import summary as summary_lib  # pylint: disable=g-import-not-at-top
  out = {}
  for method in methods:
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.model.peft = method
    try:
      params = summary_lib.parameter_shapes(cfg)['params']
      counts = partition.count(params, partition.label_params(params, partition.rules_for(cfg)))
    except (model_lib.ModelConfigError, partition.PartitionError) as e:
      raise SweepError(f'--methods {method}: {errors.one_line(e)}') from None
    out[method] = dict(counts['total'])
  return out


def _method_summary(rows: Sequence[dict], data_name: str, counts: dict) -> dict:
  out = {}
  for method in dict.fromkeys(r['method'] for r in rows if 'method' in r):
    mine = [r for r in rows if r.get('method') == method]
    done = [r for r in mine if r['status'] == 'finished']
    timed = [r for r in done if r.get('step_time_s')]
    peaked = [r for r in done if r.get('peak_bytes_per_sample')]
    out[method] = {
        'runs': len(mine), 'finished': len(done),
        'trainable_parameters': (counts.get(method) or {}).get('trainable'),
        'total_parameters': (counts.get(method) or {}).get('total'),
        'final_accuracy': mean_std([r['final_accuracy'] for r in done]),
        'best_accuracy': mean_std([r['best_accuracy'] for r in done]),
        'step_time_s': mean_std([r['step_time_s'] for r in timed]),
        'peak_bytes_per_sample': mean_std([r['peak_bytes_per_sample'] for r in peaked]),
        'peak_source': peaked[0]['peak_source'] if peaked else None,
        'published': PUBLISHED_METHODS.get(data_name, {}).get(method),
    }
  return out


METHODS_PROTOCOL = (
    "per method: mean ± population std over its finished runs; step time = global batch / the "
    "median of the run's logged samples/s; peak memory per sample = the run's peak (the device "
    "allocator's, else the host process's resident set, compiler included) / global batch; "
    "published = the PointGST paper's table (SPEC §9)")


def summarize(rows: Sequence[dict], config, command: str,
              counts: Optional[dict] = None) -> dict:
  done = [r for r in rows if r['status'] == 'finished']
  dc = config.data
  key = (dc.name, dc.way, dc.shot) if dc.name == 'modelnet_fewshot' else (dc.name, None, None)
  methods = _method_summary(rows, dc.name, counts or {})
  return {
      **({'methods': methods, 'methods_protocol': METHODS_PROTOCOL} if methods else {}),
      'metric': headline_metric(config),
      'command': command,
      'config': {'data': dc.name, 'num_epochs': config.num_epochs,
                 **({'way': dc.way, 'shot': dc.shot} if dc.name == 'modelnet_fewshot' else {})},
      'protocols': {
          'best': 'each run\'s best test accuracy over its evaluated epochs (selection on the '
                  'test split; what the papers report)',
          'final': 'test accuracy after the last epoch (no selection on test; the honest figure)',
          'std': 'population standard deviation over runs (ddof 0, as the few-shot papers); '
                 'std_sample is ddof 1'},
      'runs': list(rows),
      'finished': len(done), 'total': len(rows),
      'final_accuracy': mean_std([r['final_accuracy'] for r in done]),
      'best_accuracy': mean_std([r['best_accuracy'] for r in done]),
      'published': PUBLISHED.get(key),
  }


def _pct(x: Optional[float]) -> str:
  return '—' if x is None else f'{100 * x:.2f}'


def _pm(stats: dict) -> str:
  if not stats['n']:
    return '—'
  return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def _method_lines(summary: dict) -> list[str]:
  ms = summary['methods']
  mib = lambda st: '—' if not st['n'] else f"{st['mean'] / 2**20:.1f}"
  msec = lambda st: '—' if not st['n'] else f"{1000 * st['mean']:.0f}"
  sources = {m['peak_source'] for m in ms.values() if m['peak_source']}
  label = METRIC_LABELS[summary.get('metric', 'accuracy')]
  lines = ['', '## Methods', '',
           f"{label} in %, mean ± std over each method's finished runs (population std); step "
           'time and peak memory from the runs themselves'
           + (f" (peak: {', '.join(sorted(sources))})" if sources else '') + '.', '',
           '| method | trainable | final epoch | best epoch | published | step (ms) | '
           'peak / sample (MiB) | runs |', '|---|---:|---:|---:|---:|---:|---:|---:|']
  for name, m in ms.items():
    trainable = '—' if m['trainable_parameters'] is None else f"{m['trainable_parameters']:,}"
    published = '—' if m['published'] is None else f"{m['published']:.2f}"
    lines.append(f"| {name} | {trainable} | {_pm(m['final_accuracy'])} | "
                 f"{_pm(m['best_accuracy'])} | {published} | {msec(m['step_time_s'])} | "
                 f"{mib(m['peak_bytes_per_sample'])} | {m['finished']}/{m['runs']} |")
  return lines


def format_markdown(summary: dict) -> str:
  label = METRIC_LABELS[summary.get('metric', 'accuracy')]
  axes = [a.name for a in AXES if any(a.name in r for r in summary['runs'])]
  lines = [f"# Sweep: {summary['config']['data']}"
           + (f" {summary['config']['way']}-way {summary['config']['shot']}-shot"
              if 'way' in summary['config'] else ''),
           '', f"`{summary['command']}`", '',
           f"{summary['finished']} of {summary['total']} runs finished. {label} in %, "
           'mean ± std over the finished runs (std: population, ddof 0).', '',
           f'| protocol | {label.lower()} |', '|---|---|',
           f"| best epoch (selected on test; what papers report) | {_pm(summary['best_accuracy'])} |",
           f"| final epoch (no selection; honest) | {_pm(summary['final_accuracy'])} |"]
  if summary.get('published') and not summary.get('methods'):
    lines += ['', f"Published, for comparison: {summary['published']}."]
  if summary.get('methods'):
    lines += _method_lines(summary)
  header = '| run | ' + ' | '.join(axes) + ' | final | best | best epoch | status |'
  lines += ['', header, '|' + '---|' * (len(axes) + 5)]
  for r in summary['runs']:
    lines.append(f"| {r['run']} | " + ' | '.join(str(r.get(a, '')) for a in axes)
                 + f" | {_pct(r.get('final_accuracy'))} | {_pct(r.get('best_accuracy'))} | "
                 f"{r.get('best_epoch', '—')} | {r['status']} |")
  return '\n'.join(lines) + '\n'


def write_summary(root: str, summary: dict) -> None:
  """summary.json and summary.md, each written whole (temporary file, then rename)."""
  for name, text in ((SUMMARY_JSON, json.dumps(summary, indent=2) + '\n'),
                     (SUMMARY_MD, format_markdown(summary))):
    tmp = os.path.join(root, f'.{name}.tmp')
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, os.path.join(root, name))


# ---------------------------------------------------------------------------------------------
# Running


class Preempted(Exception):
  """SIGTERM reached the sweep: the running run saved; re-running the command resumes."""


class _Forward:
  """Passes SIGTERM on to the running child (which saves and exits) and remembers it."""

  def __init__(self):
    self.child: Optional[subprocess.Popen] = None
    self.requested = False

  def __call__(self, signum, frame):
    del frame
    self.requested = True
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signum)


def _last_line(path: str) -> str:
  try:
    with open(path, errors='replace') as f:
      lines = [ln.strip() for ln in f if ln.strip()]
  except OSError:
    return ''
  return lines[-1] if lines else ''


def _free(workdir: str) -> None:
  """WorkdirBusy (one line) when another run (a main.py started by hand) holds `workdir`: the
  child would be refused, and its refusal would land in the running run's train.log."""
  from dapt_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  with workdir_lib.lock(workdir):
    pass


def run_one(run: Run, root: str, spec: str, overrides: Sequence[str], forward: _Forward) -> int:
  """Trains one run with main.py in a child process; its output goes to <run>/train.log."""
  workdir = run.workdir(root)
  _free(workdir)
  os.makedirs(workdir, exist_ok=True)
  cmd = [sys.executable, MAIN, f'--config={spec}', f'--workdir={workdir}', *overrides,
         *run.overrides]
  with open(os.path.join(workdir, RUN_LOG), 'a') as log:
    log.write(f'\n$ {" ".join(cmd)}\n')
    log.flush()
    forward.child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
      return forward.child.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches the child too; let it finish what it is doing
      forward.child.wait()
      raise
    finally:
      forward.child = None


def sweep(config, spec: str, root: str, runs: Sequence[Run], overrides: Sequence[str],
          command: str, counts: Optional[dict] = None,
          forward: Optional[_Forward] = None) -> dict:
  """Runs what is not finished, in order, rewriting the summary after each. Returns it.

  Raises:
    Preempted: SIGTERM arrived (passed on to the running run, which saved); the summary is
      written first.
  """
  last_epoch = int(config.num_epochs)
  forward = forward or _Forward()
  previous = signal.signal(signal.SIGTERM, forward)

  def table():
    metric = headline_metric(config)
    return summarize([run_result(r, root, last_epoch, metric) for r in runs], config, command,
                     counts)

  try:
    for k, run in enumerate(runs, 1):
      if forward.requested:
        write_summary(root, table())
        raise Preempted(f'stopped by SIGTERM before {run.name}')
      if run_result(run, root, last_epoch, headline_metric(config))['status'] == 'finished':
        print(f'[{k}/{len(runs)}] {run.name}: finished before, skipped', flush=True)
        continue
      print(f'[{k}/{len(runs)}] {run.name}: training (log: '
            f'{os.path.join(run.workdir(root), RUN_LOG)})', flush=True)
      t0 = time.time()
      code = run_one(run, root, spec, overrides, forward)
      log_path = os.path.join(run.workdir(root), RUN_LOG)
      if forward.requested or code == errors.EXIT_PREEMPTED:
        write_summary(root, table())
        raise Preempted(f'stopped by SIGTERM during {run.name} (it saved)')
      if code:
        detail = _last_line(log_path)
        if code == errors.EXIT_USER_ERROR and detail.startswith('error: '):
          raise SweepError(f'{run.name}: {detail[len("error: "):]}')
        raise RuntimeError(f'{run.name} failed (exit status {code}); see {log_path}: {detail}')
      row = run_result(run, root, last_epoch, headline_metric(config))
      if row['status'] == 'finished':
        print(f"[{k}/{len(runs)}] {run.name}: final {_pct(row['final_accuracy'])} %, best "
              f"{_pct(row['best_accuracy'])} % (epoch {row['best_epoch']}), "
              f'{(time.time() - t0) / 60:.1f} min', flush=True)
      else:
        print(f'[{k}/{len(runs)}] {run.name}: stopped before its last epoch '
              f'({_last_line(log_path)})', flush=True)
      write_summary(root, table())
  finally:
    signal.signal(signal.SIGTERM, previous)
  summary = table()
  write_summary(root, summary)
  return summary


# ---------------------------------------------------------------------------------------------
# Checking every run before the first one starts

CHECK_PREFIX = 'SWEEP_CHECKED '  # the check child's last stdout line: JSON of what it learned
CHECK_CHILD_ENV = 'DAPT_JAX_SWEEP_CHECK_CHILD'  # set for that child: print the JSON line


def check_runs(config, runs: Sequence[Run], root: str, methods: Optional[str]) -> dict:
  """Checks every run as main.py checks one before it trains; returns {'counts': ...}.

  Each run's config (the sweep's, overrides applied, with the run's axis values) goes through
  what main.py runs before training: the folder dataset's class count
  (`classes.fit_to_data`), then `validate.check_run` (fields, workdir, data files and their
  contents, model shapes, init_from). Writes nothing (the folder dataset is prepared, as main.py
  prepares it, into the TFDS folder).

  Raises:
    SweepError: the first run that main.py would refuse, named, with main.py's one line.
  """
  from dapt_jax import validate  # pylint: disable=g-import-not-at-top
  from dapt_jax.data import classes  # pylint: disable=g-import-not-at-top
  check_existing(config, runs, root)
  for run in runs:
    try:
      cfg = classes.fit_to_data(run_config(config, run))
      validate.check_run(cfg, run.workdir(root), 'train')
    except errors.UserError as e:
      raise SweepError(f'{run.name}: {errors.one_line(e)}') from None
  counts = parameter_counts(config, parse_methods(methods)) if methods else None
  return {'runs': len(runs), 'counts': counts}


def _check_in_child(argv: Sequence[str], forward: _Forward) -> dict:
  """`check_runs` in a child process (this one then never initialises an accelerator that the
  runs need); its refusal becomes this process's SweepError, its other output is dropped."""
  cmd = [sys.executable, '-m', 'dapt_jax.sweep', *argv, '--check_only']
  forward.child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, CHECK_CHILD_ENV: '1'})
  try:
    out, err = forward.child.communicate()
    code = forward.child.returncode
  finally:
    forward.child = None
  if forward.requested:
    raise Preempted('stopped by SIGTERM while checking the runs (nothing had started)')
  result = [ln for ln in out.splitlines() if ln.startswith(CHECK_PREFIX)]
  if code == 0 and result:
    return json.loads(result[-1][len(CHECK_PREFIX):])
  refusal = [ln for ln in err.splitlines() if ln.startswith('error: ')]
  if code == errors.EXIT_USER_ERROR and refusal:
    raise SweepError(refusal[-1][len('error: '):])
  tail = (err.strip().splitlines() or ['(no output)'])[-1]
  raise RuntimeError(f'checking the runs failed (exit status {code}): {tail}')


def main(argv):
  del argv
  forward = _Forward()
  signal.signal(signal.SIGTERM, forward)
  raw = sys.argv[1:]
  if FLAGS.config is None:
    errors.fail('--config is required, e.g. --config=configs/modelnet_fewshot.py')
  try:
    if not FLAGS.workdir:
      raise SweepError('--workdir is required')
    if not os.path.isfile(MAIN):
      raise SweepError(f'{MAIN}: not found (run the sweep from a dapt-jax checkout)')
    spec = config_spec(raw)
    overrides = config_overrides(raw)
    runs = plan_runs(FLAGS.config, {'methods': FLAGS.methods, 'folds': FLAGS.folds,
                                    'seeds': FLAGS.seeds}, overrides)
    root = os.path.abspath(os.path.expanduser(FLAGS.workdir))
    if os.path.lexists(root) and not os.path.isdir(root):
      raise SweepError(f'--workdir={FLAGS.workdir}: exists and is not a folder')
    if FLAGS.check_only:
      checked = check_runs(FLAGS.config, runs, root, FLAGS.methods)
      print(f'{len(runs)} run(s) checked, none refused: {", ".join(r.name for r in runs)}')
      if os.environ.get(CHECK_CHILD_ENV):
        print(CHECK_PREFIX + json.dumps(checked), flush=True)
      return
    from dapt_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    workdir_lib.check_writable(root)
    # The lock first (a second sweep here is refused at once), then every run checked, then the
    # runs. The lock removes the folder again if it made it and nothing was written.
    with workdir_lib.lock(root):
      checked = _check_in_child([a for a in raw if a != '--check_only'], forward)
      command = 'python -m dapt_jax.sweep ' + ' '.join(raw)
      summary = sweep(FLAGS.config, spec, root, runs, overrides, command, checked['counts'],
                      forward)
  except errors.UserError as e:
    errors.report(e)
    sys.exit(errors.EXIT_USER_ERROR)
  except Preempted as e:
    print(f'{e}; re-run the same command to resume', flush=True)
    sys.exit(errors.EXIT_PREEMPTED)
  except KeyboardInterrupt:
    print('error: interrupted; re-run the same command to resume', file=sys.stderr)
    sys.exit(130)
  best, final = summary['best_accuracy'], summary['final_accuracy']
  print(f"{summary['finished']} of {summary['total']} runs finished; best epoch "
        f'{_pm(best)} %, final epoch {_pm(final)} % (mean ± population std); '
        f'{os.path.join(root, SUMMARY_MD)}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)  # flag and override mistakes: one `error:` line
