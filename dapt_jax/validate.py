"""One validation pass over a run, before its workdir is touched and before its model is built.

    from dapt_jax import validate
    validate.check_run(config, workdir, mode='train')   # raises ConfigError (a UserError)

The checks run in order, cheapest first, and stop at the first problem with a one-line message
that names the field (`config.optim.lr=-1.0: must be > 0`) or file and says what to change:

  config    every field's type and range, section by section (top level, model, partition
            rules, optim, eval, checkpoint, data), and the fields that must agree (batch sizes
            divisible by the devices of all processes; num_group, group_size <= num_points <=
            point_all; heads divide the width)
  workdir   not a file, and writable (or creatable) -- probed, since permission bits lie to root
  data      the dataset's own presence check (`dapt_jax.data.check_presence`: files there and
            readable, headers only), then the fields that depend on it (classes, stored points,
            split names)
  model     the model's parameter shapes, traced without computing anything: every parameter
            matches a partition rule, and init_from (a converted checkpoint or a training
            workdir, read from its metadata) fits them

Nothing here writes anything. A new config section or task adds its own check:

    @validate.register('my_section')
    def _check_mine(config, ctx: validate.Context) -> None: ...
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Callable, Optional

from dapt_jax import errors

MODES = ('train', 'eval', 'predict', 'summary', 'tsne')  # summary: parameter table, no data
PARALLEL_MODES = ('pmap', 'shard_map')


class ConfigError(errors.UserError, ValueError):
  """A config field (or a path it names) that cannot work; the message names it."""


@dataclasses.dataclass
class Context:
  """What the checks may look at besides the config."""
  mode: str  # 'train', 'eval' or 'predict'
  workdir: Optional[str]
  num_devices: int  # global: every device of every process
  num_processes: int
  data: Any = None  # dapt_jax.data.checks.DataFacts, once the data check has run
  variable_shapes: Any = None  # {'params': {path: shape}, 'batch_stats': ...} once traced


Check = Callable[[Any, Context], None]
_CHECKS: list[tuple[str, Check]] = []


def register(name: str) -> Callable[[Check], Check]:
  """Adds `fn(config, ctx)` to the pass (after the built-in checks); it raises ConfigError."""
  def decorate(fn: Check) -> Check:
    _CHECKS.append((name, fn))
    return fn
  return decorate


def check_run(config: Any, workdir: Optional[str], mode: str = 'train',
              num_devices: Optional[int] = None, num_processes: Optional[int] = None) -> Context:
  """Runs every check; returns the context (with what the data check learned).

  Raises:
    errors.UserError: ConfigError, DataError, ... with a one-line message.
  """
  if mode not in MODES:
    raise ConfigError(f'mode {mode!r}: must be one of {", ".join(MODES)}')
  if num_devices is None or num_processes is None:
    import jax  # pylint: disable=g-import-not-at-top
    num_devices = jax.device_count() if num_devices is None else num_devices
    num_processes = jax.process_count() if num_processes is None else num_processes
  ctx = Context(mode=mode, workdir=workdir, num_devices=num_devices, num_processes=num_processes)
  for _, check in _CHECKS:
    check(config, ctx)
  return ctx


# ---------------------------------------------------------------------------------------------
# Field helpers: each returns the value or raises ConfigError naming `config.<path>`.

_MISSING = object()


def _get(config: Any, path: str, default: Any = _MISSING) -> Any:
  node = config
  for part in path.split('.'):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      if default is not _MISSING:
        return default
      raise ConfigError(f'config has no field {path!r} (is the config file complete?)') from None
  return node


def _show(path: str, value: Any) -> str:
  return f'config.{path}={value!r}'


def _int(config, path, minimum: Optional[int] = None, optional: bool = False,
         default: Any = _MISSING) -> Optional[int]:
  value = _get(config, path, default)
  if value is None and optional:
    return None
  if isinstance(value, bool) or not isinstance(value, int):
    raise ConfigError(f'{_show(path, value)}: must be an integer')
  if minimum is not None and value < minimum:
    raise ConfigError(f'{_show(path, value)}: must be >= {minimum}')
  return value


def _float(config, path, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
           high_open: bool = False, default: Any = _MISSING, why: str = '') -> float:
  value = _get(config, path, default)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ConfigError(f'{_show(path, value)}: must be a finite number')
  below = value <= low if low_open else value < low
  above = value >= high if high_open else value > high
  if below or above:
    if high == math.inf:
      rule = f'> {low:g}' if low_open else f'>= {low:g}'
    else:
      rule = f'in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
    raise ConfigError(f'{_show(path, value)}: must be {rule}{why}')
  return float(value)


def _bool(config, path, default: Any = _MISSING) -> bool:
  value = _get(config, path, default)
  if not isinstance(value, bool):
    raise ConfigError(f'{_show(path, value)}: must be True or False')
  return value


def _str(config, path, optional: bool = False, allow_empty: bool = False,
         default: Any = _MISSING) -> Optional[str]:
  value = _get(config, path, default)
  if value is None and optional:
    return None
  if not isinstance(value, str) or (not allow_empty and not value):
    raise ConfigError(f'{_show(path, value)}: must be a non-empty string')
  return value


def _choice(config, path, choices, default: Any = _MISSING) -> Any:
  value = _get(config, path, default)
  if value not in choices:
    raise ConfigError(f'{_show(path, value)}: must be one of {", ".join(map(str, choices))}')
  return value


def _divisible(config, path: str, ctx: Context) -> int:
  value = _int(config, path, minimum=1)
  n = ctx.num_devices
  if value % n:
    per = (f' ({ctx.num_processes} processes x {n // ctx.num_processes} devices)'
           if ctx.num_processes > 1 else '')
    below, above = value - value % n, value - value % n + n
    options = f'{below} or {above}' if below else f'{above}'
    raise ConfigError(f'{_show(path, value)}: must be a multiple of the {n} devices it is split '
                      f'over{per}; e.g. {options}')
  return value


# ---------------------------------------------------------------------------------------------
# Config sections.


@register('top level')
def _top_level(config, ctx: Context) -> None:
  _int(config, 'seed')
  _int(config, 'num_epochs', minimum=0)
  _divisible(config, 'batch_size', ctx)
  _choice(config, 'parallel', PARALLEL_MODES)
  _int(config, 'log_every_steps', minimum=1)
  _int(config, 'max_steps', minimum=1, optional=True, default=None)
  _bool(config, 'overwrite', default=False)
  _bool(config, 'progress_bar', default=True)
  _str(config, 'init_from', optional=True, default=None)
  _str(config, 'compile_cache_dir', optional=True, allow_empty=True, default=None)


@register('model')
def _model(config, ctx: Context) -> None:
  """The model section, checked by its own family (models/<family>.check_config)."""
  del ctx
  from dapt_jax import models  # pylint: disable=g-import-not-at-top
  model = config.model
  if (config.get('task', 'classification') == 'classification' and str(config.data.name) == 'folder'
      and model.get('num_classes') == 0):  # folder data, classes not counted yet: check the rest
    model = model.copy_and_resolve_references()
    with model.unlocked():
      model.num_classes = 1
  try:
    models.family_of(config).check_config(model)
  except errors.UserError as e:
    raise ConfigError(f'config.{errors.one_line(e)}') from None
  except (AttributeError, KeyError) as e:
    raise ConfigError(f'config.model: {errors.one_line(e)} (is the config file complete?)') from None


@register('task')
def _task(config, ctx: Context) -> None:
  """What the task checks against its data before anything is prepared (segmentation: the
  dataset's categories and part ids)."""
  del ctx
  from dapt_jax import tasks  # pylint: disable=g-import-not-at-top
  try:
    tasks.get_task(config).check_config()
  except errors.UserError as e:
    raise ConfigError(errors.one_line(e)) from None


@register('partition rules')
def _partition_rules(config, ctx: Context) -> None:
  del ctx
  from dapt_jax import partition  # pylint: disable=g-import-not-at-top
  rules = _get(config, 'partition_rules')
  if rules is None:  # the rules of config.model.peft
    try:
      rules = partition.rules_for(config)
    except partition.PartitionError as e:
      raise ConfigError(f'config.{errors.one_line(e)}') from None
  if isinstance(rules, str) or not isinstance(rules, (tuple, list)) or not rules:
    raise ConfigError(f'{_show("partition_rules", rules)}: must be a non-empty sequence of '
                      '(regex, label) pairs')
  for i, rule in enumerate(rules):
    if (isinstance(rule, str) or not isinstance(rule, (tuple, list)) or len(rule) != 2
        or not all(isinstance(x, str) for x in rule)):
      raise ConfigError(f'config.partition_rules[{i}]={rule!r}: must be a (regex, label) pair '
                        f'of strings, label one of {", ".join(partition.LABELS)}')
  try:
    partition.compile_rules(rules)
  except partition.PartitionError as e:
    raise ConfigError(f'config.partition_rules: {errors.one_line(e)}') from None


@register('optim')
def _optim(config, ctx: Context) -> None:
  del ctx
  _float(config, 'optim.lr', 0.0, low_open=True, why=' (the peak learning rate)')
  _float(config, 'optim.weight_decay', 0.0)
  _float(config, 'optim.b1', 0.0, 1.0, high_open=True)
  _float(config, 'optim.b2', 0.0, 1.0, high_open=True)
  _float(config, 'optim.eps', 0.0, low_open=True)
  _float(config, 'optim.clip_grad_norm', 0.0, why=' (0 turns clipping off)')
  _int(config, 'optim.warmup_epochs', minimum=0)
  _float(config, 'optim.warmup_lr_init', 0.0)
  _float(config, 'optim.min_lr', 0.0)


@register('eval')
def _eval(config, ctx: Context) -> None:
  _int(config, 'eval.every_epochs', minimum=1)
  _divisible(config, 'eval.batch_size', ctx)
  _int(config, 'eval.votes', minimum=1)
  _str(config, 'eval.split')


@register('checkpoint')
def _checkpoint(config, ctx: Context) -> None:
  del ctx
  _int(config, 'checkpoint.every_epochs', minimum=1)
  _int(config, 'checkpoint.keep', minimum=1)


@register('data fields')
def _data_fields(config, ctx: Context) -> None:
  del ctx
  _str(config, 'data.name')
  num_points = _int(config, 'data.num_points', minimum=1)
  if config.get('task', 'classification') == 'pretrain':  # a random subset, no FPS pool
    point_all = _int(config, 'data.point_all', minimum=0)
  else:
    point_all = _int(config, 'data.point_all', minimum=1)
  if point_all and point_all < num_points:
    raise ConfigError(f'config.data.point_all={point_all}: must be >= config.data.num_points='
                      f'{num_points} (training draws num_points from an FPS pool of point_all)')
  for field in ('num_group', 'group_size'):
    value = _get(config, f'model.{field}')
    if value > num_points:
      raise ConfigError(f'config.model.{field}={value}: must be <= config.data.num_points='
                        f'{num_points} (the tokenizer picks it from the cloud)')
  _bool(config, 'data.skip_full_fps', default=False)
  _bool(config, 'data.shuffle', default=True)
  _bool(config, 'data.augment', default=True)
  _str(config, 'data.data_dir', allow_empty=True)
  tfds_dir = _str(config, 'data.tfds_data_dir', optional=True, default=None)
  if tfds_dir and os.path.exists(os.path.expanduser(tfds_dir)) and not os.path.isdir(
      os.path.expanduser(tfds_dir)):
    raise ConfigError(f'config.data.tfds_data_dir={tfds_dir!r}: is a file, not a directory')
  _str(config, 'data.train_split')
  _str(config, 'data.eval_split')


# ---------------------------------------------------------------------------------------------
# The workdir, the data, the model's shapes and init_from.


@register('workdir')
def _workdir(config, ctx: Context) -> None:
  from dapt_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if ctx.mode in ('eval', 'tsne') and not _get(config, 'init_from', None):
    root = os.path.join(ctx.workdir or '', 'checkpoints')
    if not (ctx.workdir and os.path.isdir(os.path.join(root, 'last'))
            and os.path.isdir(os.path.join(root, 'frozen'))):
      raise ConfigError(f'nothing to evaluate: --workdir={ctx.workdir} holds no trained run and '
                        'no --config.init_from was given')
  if ctx.mode in ('predict', 'summary') or ctx.workdir is None:
    return
  workdir_lib.check_writable(ctx.workdir)


def _base_split(split: str) -> str:
  return re.split(r'[\[+]', split, maxsplit=1)[0].strip()


@register('data')
def _data(config, ctx: Context) -> None:
  if ctx.mode in ('predict', 'summary'):  # they read no dataset
    return
  from dapt_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  facts = data_lib.check_presence(config.data)
  data_lib.check_contents(config.data)  # the files' contents, before anything is prepared or built
  ctx.data = facts
  name = config.data.name
  if (facts.num_classes is not None and 'num_classes' in config.model
      and facts.num_classes != config.model.num_classes):
    raise ConfigError(f'config.model.num_classes={config.model.num_classes}: dataset {name} '
                      f'has {facts.num_classes} classes')
  if facts.points_per_cloud is not None and config.data.num_points > facts.points_per_cloud:
    raise ConfigError(f'config.data.num_points={config.data.num_points}: exceeds the '
                      f'{facts.points_per_cloud} points stored per cloud of {name}')
  fields = (('data.train_split', 'data.eval_split') if ctx.mode == 'train' else ('eval.split',))
  for field in fields:
    split = _get(config, field)
    if _base_split(split) not in facts.splits:
      raise ConfigError(f'{_show(field, split)}: {name} has splits {", ".join(facts.splits)}')


def variable_shapes(config: Any) -> dict[str, dict[str, tuple[int, ...]]]:
  """{'params': {path: shape}, 'batch_stats': {...}} of the config's model, traced abstractly."""
  import jax  # pylint: disable=g-import-not-at-top
  from dapt_jax import partition  # pylint: disable=g-import-not-at-top
  from dapt_jax import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.get_task(config)
  net = task.build_model()
  abstract = jax.eval_shape(lambda key: task.init_variables(net, key), jax.random.PRNGKey(0))
  return {c: {k: tuple(v.shape) for k, v in partition.flatten(abstract.get(c, {})).items()}
          for c in ('params', 'batch_stats')}


@register('model shapes')
def _model_shapes(config, ctx: Context) -> None:
  from dapt_jax import partition  # pylint: disable=g-import-not-at-top
  classes_unknown = config.model.get('num_classes') == 0  # folder data, classes not counted yet
  if classes_unknown:  # the backbone's shapes do not depend on the class count: check them now
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.model.num_classes = 2
  shapes = variable_shapes(config)
  if not classes_unknown:
    ctx.variable_shapes = shapes
  rules = partition.rules_for(config)
  try:
    labels = partition.flatten(partition.label_params(partition.unflatten(shapes['params']), rules))
  except partition.PartitionError as e:
    raise ConfigError(f'config.partition_rules: {errors.one_line(e)}') from None
  init_from = config.init_from
  if not init_from:
    return
  path = os.path.expanduser(init_from)
  if not os.path.isdir(path):
    what = 'is a file, not a directory' if os.path.exists(path) else 'no such directory'
    raise ConfigError(f'config.init_from={init_from!r}: {what} (make a converted checkpoint '
                      'with python -m convert, or give a training --workdir)')
  from dapt_jax import checkpoints  # pylint: disable=g-import-not-at-top  (orbax: slow import)
  from dapt_jax.models import mae  # pylint: disable=g-import-not-at-top
  found = checkpoints.read_variable_shapes(path)
  for collection in ('params', 'batch_stats'):
    model, saved = shapes.get(collection, {}), found.get(collection, {})
    # A pre-trained backbone's decoder side is set aside on loading (pretrained.merge_pretrained).
    saved = {n: s for n, s in saved.items() if n in model or not mae.is_pretrain_only(n)}
    extra = sorted(set(saved) - set(model))
    if extra:
      more = f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''
      raise ConfigError(f'config.init_from={init_from!r}: holds {collection}/{extra[0]}, which '
                        f'this model does not have{more}; was it converted for another config?')
    for name in sorted(saved):
      if classes_unknown and name.startswith('head/'):
        continue  # its width follows the class folders, counted later
      if tuple(saved[name]) != tuple(model[name]):
        raise ConfigError(f'config.init_from={init_from!r}: {collection}/{name} has shape '
                          f'{tuple(saved[name])} but this config\'s model needs '
                          f'{tuple(model[name])}')
  _check_coverage(config, labels, found.get('params', {}))


def _check_coverage(config, labels: dict[str, str], saved: dict) -> None:
  """Every frozen parameter must come from init_from: one left at its random initial value can
  never be fixed by training (e.g. a 2-block backbone into a 4-block model). Parameters the
  method freezes at their initial values by design (IDPT's prompt position) are exempt."""
  import re  # pylint: disable=g-import-not-at-top
  from dapt_jax import partition  # pylint: disable=g-import-not-at-top
  from dapt_jax.models import peft  # pylint: disable=g-import-not-at-top
  init_from = config.init_from
  by_design = [re.compile(r) for r in peft.get(config.model.get('peft', 'dapt'))().frozen_at_init()]
  fresh = [p for p, label in labels.items() if label == partition.FROZEN and p not in saved
           and not any(r.search(p) for r in by_design)]
  if fresh:
    shown = ', '.join(fresh[:3]) + (f' and {len(fresh) - 3} more' if len(fresh) > 3 else '')
    raise ConfigError(
        f'config.init_from={init_from!r}: does not hold {len(fresh)} frozen parameter'
        f'{"s" if len(fresh) > 1 else ""} of this model ({shown}); they would stay at their '
        'random initial values and never train (was it made for a shallower or other model?)')
