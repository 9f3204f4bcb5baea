"""The optimizer, built from the trainable partition, and the release's learning-rate schedule
(SPEC §4)."""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from dapt_jax import partition


def epoch_learning_rate(epoch: int, base_lr: float, epochs: int, warmup_epochs: int,
                        warmup_lr_init: float, min_lr: float) -> float:
  """The rate the release trains epoch `epoch` at (timm cosine, stepped once per epoch).

  The scheduler is stepped after each epoch with that epoch's index t, so epoch 0 trains at
  f(0) = warmup_lr_init and epoch e >= 1 trains at f(e - 1), where f is linear warm-up from
  `warmup_lr_init` over `warmup_epochs`, then cosine from `base_lr` to `min_lr` over `epochs`.
  """
  t = max(epoch - 1, 0)
  if t < warmup_epochs:
    return warmup_lr_init + t * (base_lr - warmup_lr_init) / warmup_epochs
  if t >= epochs:
    return min_lr
  return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t / epochs))


def make_schedule(opt_cfg: Any, num_epochs: int, steps_per_epoch: int) -> optax.Schedule:
  """A per-step schedule that is constant within an epoch, following `epoch_learning_rate`."""
  table = jnp.asarray([  # float32 (float64 under 64-bit JAX, for the checks against the reference)
      epoch_learning_rate(e, opt_cfg.lr, num_epochs, opt_cfg.warmup_epochs,
                          opt_cfg.warmup_lr_init, opt_cfg.min_lr)
      for e in range(num_epochs + 2)])

  def schedule(step):
    epoch = jnp.minimum(step // steps_per_epoch, table.shape[0] - 1)
    return table[epoch]

  return schedule


def _path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """Global-norm clipping as the release's `torch.nn.utils.clip_grad_norm_` does it: gradients
  times min(1, max_norm / (norm + 1e-6)) (optax's own clipping has no 1e-6)."""

  def update_fn(updates, state, params=None):
    del params
    coef = jnp.minimum(max_norm / (optax.tree.norm(updates) + 1e-6), 1.0)
    return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def decay_mask(params: Any) -> Any:
  """True where weight decay applies: 2+ dimensions and no `token` in the name (SPEC §4).

  Works on trees holding optax's MaskedNode placeholders (inside `optax.partition`).
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim >= 2 and 'token' not in _path_str(path), params)


def make_optimizer(opt_cfg: Any, labels: Mapping[str, Any], schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  """AdamW (PyTorch's, decoupled decay) with global-norm clipping on the trainable leaves;
  frozen leaves get `set_to_zero` and hold no optimizer state.

  Args:
    opt_cfg: config section with `weight_decay`, `b1`, `b2`, `eps`, `clip_grad_norm`.
    labels: nested dict of partition labels ('trainable' / 'frozen'), structure of the params.
    schedule: learning rate per optimizer step.
  """
  trainable = []
  if opt_cfg.clip_grad_norm:
    # Clipping sees only the trainable leaves, as the release clips the parameters that have
    # gradients.
    trainable.append(clip_by_global_norm(opt_cfg.clip_grad_norm))
  trainable.append(optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                               weight_decay=opt_cfg.weight_decay, mask=decay_mask))
  return optax.partition(
      {partition.TRAINABLE: optax.chain(*trainable), partition.FROZEN: optax.set_to_zero()},
      labels)


def take_like(tree: Mapping[str, Any], like: Mapping[str, Any]) -> dict:
  """The leaves of `tree` at the paths present in `like` (same nesting as `like`)."""
  flat = partition.flatten(tree)
  return partition.unflatten({p: flat[p] for p in partition.flatten(like)})


def apply_trainable_gradients(tx: optax.GradientTransformation, opt_state: Any,
                              trainable: Mapping[str, Any], frozen: Mapping[str, Any],
                              trainable_grads: Mapping[str, Any]) -> tuple[dict, Any]:
  """One optimizer update when gradients exist only for the trainable leaves.

  The optimizer is defined over the whole parameter tree (so the partition is visible in it),
  but frozen leaves only ever see zero placeholders that `set_to_zero` discards; under jit
  they are never materialised and no update is computed for them.

  Returns:
    (new trainable params, new optimizer state).
  """
  params = partition.merge(trainable, frozen)
  grads = partition.merge(trainable_grads, jax.tree.map(jnp.zeros_like, frozen))
  updates, opt_state = tx.update(grads, opt_state, params)
  new_trainable = optax.apply_updates(trainable, take_like(updates, trainable))
  return new_trainable, opt_state


def count_state_elements(opt_state: Any) -> int:
  """Number of array elements held by an optimizer state (to show frozen leaves hold none)."""
  return sum(int(math.prod(jnp.shape(x))) for x in jax.tree.leaves(opt_state)
             if jnp.ndim(x) > 0)


