"""Partition rules: first match wins, unmatched parameters are errors, split/merge round-trip."""
import jax
import pytest

from dapt_jax.models import classifier as model_lib
from dapt_jax import partition
from tests.test_model import TINY


@pytest.fixture(scope='module')
def params():
  net = model_lib.build_model(TINY)
  return model_lib.init_variables(net, jax.random.PRNGKey(0), 64)['params']


def test_default_rules_reproduce_release_trainable_set(params):
  labels = partition.flatten(partition.label_params(params, partition.DAPT_RULES))
  trainable = {p for p, l in labels.items() if l == partition.TRAINABLE}
  # The release trains names containing cls, tfts or Adapter; in our naming that is:
  expected = {p for p in labels if p.startswith(('cls_token', 'cls_pos', 'head/'))
              or '_tfts/' in p or p.startswith('patch_tfts') or p.startswith('norm_tfts')
              or '/adapter/' in p}
  assert trainable == expected
  assert any(p.startswith('encoder/') for p in labels)
  assert not any(p.startswith(('encoder/', 'pos_embed/')) for p in trainable)
  assert 'blocks_0/attn/qkv/kernel' not in trainable and 'norm/scale' not in trainable


def test_first_match_wins(params):
  rules = ((r'adapter/up_proj', partition.FROZEN), (r'/adapter/', partition.TRAINABLE),
           (r'.*', partition.FROZEN))
  labels = partition.flatten(partition.label_params(params, rules))
  assert labels['blocks_0/adapter/up_proj/kernel'] == partition.FROZEN
  assert labels['blocks_0/adapter/down_proj/kernel'] == partition.TRAINABLE


def test_unmatched_parameter_is_an_error_naming_it(params):
  with pytest.raises(partition.PartitionError, match="'cls_pos' matches no partition rule"):
    partition.label_params(params, ((r'^(?!cls_pos)', partition.FROZEN),))
  with pytest.raises(partition.PartitionError, match='label must be one of'):
    partition.label_params(params, ((r'.*', 'sometimes'),))
  with pytest.raises(partition.PartitionError, match='bad regex'):
    partition.label_params(params, ((r'(', partition.FROZEN),))


def test_split_merge_round_trip_and_counts(params):
  labels = partition.label_params(params, partition.DAPT_RULES)
  trainable, frozen = partition.split(params, labels)
  merged = partition.merge(trainable, frozen)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
    assert a is b
  counts = partition.count(params, labels)
  n_trainable = sum(x.size for x in jax.tree.leaves(trainable))
  n_total = sum(x.size for x in jax.tree.leaves(params))
  assert counts['total'] == {'trainable': n_trainable, 'total': n_total}
  assert counts['encoder']['trainable'] == 0
  assert counts['head']['trainable'] == counts['head']['total'] > 0
  table = partition.format_counts(counts)
  assert f'{n_trainable:,}' in table and 'blocks (x3)' in table
  with pytest.raises(partition.PartitionError, match='more than one part'):
    partition.merge(trainable, trainable)


def test_presets_full_and_linear(params):
  full = partition.count(params, partition.label_params(params, partition.FULL_FINETUNE_RULES))
  assert full['total']['trainable'] == full['total']['total']
  linear = partition.count(params, partition.label_params(params, partition.LINEAR_PROBE_RULES))
  assert linear['total']['trainable'] == linear['head']['total']
