"""Which parameters train: ordered `(regex, label)` rules over parameter paths.

A path is the `/`-joined key of a leaf in the `params` collection (docs/architecture.md), e.g.
`blocks_3/adapter/down_proj/kernel`. Rules are tried in order with `re.search`; the first match
labels the leaf; a leaf that no rule matches is an error that names it.
"""
from __future__ import annotations

import collections
import math
import re
from typing import Any, Iterable, Mapping, Sequence, Tuple

from flax import traverse_util

from dapt_jax import errors
from dapt_jax import models
from dapt_jax.models import peft

TRAINABLE = 'trainable'
FROZEN = 'frozen'
LABELS = (TRAINABLE, FROZEN)

Rules = Sequence[Tuple[str, str]]

# Everything trains (full fine-tuning; pre-training).
FULL_FINETUNE_RULES: Rules = ((r'.*', TRAINABLE),)
# The benchmarks' linear probe: only the head trains (the `linear` method also trains the class
# token and its position, as the releases do).
LINEAR_PROBE_RULES: Rules = ((r'^head/', TRAINABLE), (r'.*', FROZEN))


def method_rules(method: str, family: str = 'classifier') -> Rules:
  """The rules of PEFT method `method` (default options) on `family`'s model."""
  return models.get_family(family).trainable_rules(peft.get(method)())


# Each PEFT method's trainable set on the classifier (config.model.peft; SPEC §9); the rules
# themselves live with each method (dapt_jax/models/peft/).
METHOD_RULES: dict[str, Rules] = {m: method_rules(m) for m in peft.METHODS}
DAPT_RULES: Rules = METHOD_RULES['dapt']
PRESETS = {'dapt': DAPT_RULES, 'full': FULL_FINETUNE_RULES, 'linear': LINEAR_PROBE_RULES}


def rules_for(config: Any) -> Rules:
  """A run's rules: `config.partition_rules` when set, else those of `config.model.peft` on the
  model family of `config.task`."""
  rules = config.get('partition_rules') if hasattr(config, 'get') else None
  if rules is not None:
    return rules
  model = config.get('model') if hasattr(config, 'get') else None
  method = (model.get('peft', 'dapt') if model is not None and hasattr(model, 'get') else 'dapt')
  if method not in peft.METHODS:
    raise PartitionError(f'model.peft={method!r}: no partition rules; choose one of '
                         f'{", ".join(peft.METHODS)}')
  family = models.family_of(config)
  if not hasattr(family, 'trainable_rules'):
    raise PartitionError(f'config.task={config.get("task")!r} trains every parameter unless '
                         'config.partition_rules says otherwise; set partition_rules')
  return family.trainable_rules(peft.get(method)())


class PartitionError(errors.UserError, ValueError):
  """A parameter matched no rule, or a rule is malformed; the message names it."""


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Nested dict → {'a/b/c': leaf}."""
  return traverse_util.flatten_dict(dict(tree), sep='/')


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} → nested dict."""
  return traverse_util.unflatten_dict(dict(flat), sep='/')


def compile_rules(rules: Iterable[Sequence[str]]) -> list[tuple[re.Pattern, str]]:
  compiled = []
  for i, rule in enumerate(rules):
    if len(rule) != 2:
      raise PartitionError(f'partition rule #{i} {rule!r}: expected (regex, label)')
    pattern, label = rule
    if label not in LABELS:
      raise PartitionError(f'partition rule #{i} {rule!r}: label must be one of {LABELS}')
    try:
      compiled.append((re.compile(pattern), label))
    except re.error as e:
      raise PartitionError(f'partition rule #{i} {pattern!r}: bad regex ({e})') from None
  return compiled


def label_params(params: Mapping[str, Any], rules: Rules) -> dict[str, Any]:
  """A nested dict of labels with the structure of `params` (first matching rule wins)."""
  compiled = compile_rules(rules)
  labels = {}
  for path in flatten(params):
    for pattern, label in compiled:
      if pattern.search(path):
        labels[path] = label
        break
    else:
      raise PartitionError(f'parameter {path!r} matches no partition rule; add a rule for it')
  return unflatten(labels)


def split(params: Mapping[str, Any], labels: Mapping[str, Any]) -> tuple[dict, dict]:
  """Splits `params` into (trainable, frozen) nested dicts holding only their own leaves."""
  flat_labels = flatten(labels)
  trainable, frozen = {}, {}
  for path, leaf in flatten(params).items():
    (trainable if flat_labels[path] == TRAINABLE else frozen)[path] = leaf
  return unflatten(trainable), unflatten(frozen)


def merge(*trees: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `split`: the union of disjoint nested dicts."""
  flat = {}
  for tree in trees:
    for path, leaf in flatten(tree).items():
      if path in flat:
        raise PartitionError(f'parameter {path!r} appears in more than one part')
      flat[path] = leaf
  return unflatten(flat)


def count(params: Mapping[str, Any], labels: Mapping[str, Any]) -> dict[str, dict[str, int]]:
  """Trainable and total parameter counts per top-level module, plus a 'total' row.

  Returns {'encoder': {'trainable': n, 'total': m}, ..., 'total': {...}} in parameter order.
  """
  flat_labels = flatten(labels)
  rows: dict[str, dict[str, int]] = collections.OrderedDict()
  for path, leaf in flatten(params).items():
    top = path.split('/')[0]
    size = int(math.prod(leaf.shape))
    row = rows.setdefault(top, {TRAINABLE: 0, 'total': 0})
    row['total'] += size
    if flat_labels[path] == TRAINABLE:
      row[TRAINABLE] += size
  rows['total'] = {TRAINABLE: sum(r[TRAINABLE] for r in rows.values()),
                   'total': sum(r['total'] for r in rows.values())}
  return rows


def format_counts(counts: Mapping[str, Mapping[str, int]]) -> str:
  """A small table for the log: module, trainable, total."""
  lines = [f"{'module':<14}{'trainable':>12}{'total':>13}"]
  for name, row in counts.items():
    if name == 'total' or name.startswith('blocks_'):
      continue
    lines.append(f"{name:<14}{row[TRAINABLE]:>12,}{row['total']:>13,}")
  blocks = [r for n, r in counts.items() if n.startswith('blocks_')]
  if blocks:
    lines.append(f"{f'blocks (x{len(blocks)})':<14}{sum(r[TRAINABLE] for r in blocks):>12,}"
                 f"{sum(r['total'] for r in blocks):>13,}")
  t = counts['total']
  pct = 100.0 * t[TRAINABLE] / max(t['total'], 1)
  lines.append(f"{'total':<14}{t[TRAINABLE]:>12,}{t['total']:>13,}  ({pct:.2f} % trainable)")
  return '\n'.join(lines)


# Leaf names of layers; a parameter with another name (cls_token, a prompt) is its own row.
_LAYER_LEAVES = frozenset({'kernel', 'bias', 'scale', 'gamma', 'beta', 'lora_a', 'lora_b'})
_NUMBERED = re.compile(r'(?<=_)\d+(?=/|$)')   # blocks_3/..., prompt_pos_3 → *


def rule_rows(params: Mapping[str, Any], rules: Rules) -> list[dict[str, Any]]:
  """Per module and matching rule: trainable and total counts, for a parameter table.

  A row's module is a layer (a leaf's parent path) or a bare parameter (its own path), with
  numbered copies folded into one row (`blocks_3/attn/qkv` → `blocks_*/attn/qkv`, `copies` 12).
  Rows are in parameter order; each holds 'module', 'copies', 'rule' (its index), 'pattern',
  'label', 'trainable' and 'total'.
  """
  compiled = compile_rules(rules)
  rows: dict[tuple[str, int], dict[str, Any]] = collections.OrderedDict()
  for path, leaf in flatten(params).items():
    index = next((i for i, (pattern, _) in enumerate(compiled) if pattern.search(path)), None)
    if index is None:
      raise PartitionError(f'parameter {path!r} matches no partition rule; add a rule for it')
    parent, _, name = path.rpartition('/')
    module = parent if parent and name in _LAYER_LEAVES else path
    row = rows.setdefault((_NUMBERED.sub('*', module), index), {
        'module': _NUMBERED.sub('*', module), 'copies': set(), 'rule': index,
        'pattern': compiled[index][0].pattern, 'label': compiled[index][1], TRAINABLE: 0,
        'total': 0})
    row['copies'].add(module)
    size = int(math.prod(leaf.shape))
    row['total'] += size
    if compiled[index][1] == TRAINABLE:
      row[TRAINABLE] += size
  out = list(rows.values())
  for row in out:
    row['copies'] = len(row['copies'])
  return out


def format_rule_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The table `rule_rows` describes, with a total line."""
  name = lambda r: r['module'] + (f" (x{r['copies']})" if r['copies'] > 1 else '')
  rule = lambda r: f"#{r['rule']} {r['pattern']!r} → {r['label']}"
  w_mod = max([len('module')] + [len(name(r)) for r in rows])
  w_rule = max([len('rule')] + [len(rule(r)) for r in rows])
  lines = [f"{'module':<{w_mod}}  {'rule':<{w_rule}}  {'trainable':>12}  {'total':>12}"]
  for r in rows:
    lines.append(f"{name(r):<{w_mod}}  {rule(r):<{w_rule}}  {r[TRAINABLE]:>12,}  {r['total']:>12,}")
  trainable = sum(r[TRAINABLE] for r in rows)
  total = sum(r['total'] for r in rows)
  pct = 100.0 * trainable / max(total, 1)
  lines.append(f"{'total':<{w_mod}}  {'':<{w_rule}}  {trainable:>12,}  {total:>12,}  "
               f'({pct:.2f} % trainable)')
  return '\n'.join(lines)
