"""The release's fine-tuning loop, restated independently in PyTorch for the trajectory tests.

Written from SPEC §4 and the release's training script as described there, not from dapt_jax:
the model is ``tests/torch_reference.TorchDAPT`` (run in float64 by the tests), and everything the
release does around it is spelled out here:

- trainable set: parameter names containing ``cls``, ``tfts`` or ``Adapter``; the rest frozen;
- ``torch.optim.AdamW`` over two parameter groups: weight decay on trainable parameters with 2+
  dimensions whose name neither ends in ``.bias`` nor contains ``token``; none on the others;
- ``torch.nn.utils.clip_grad_norm_`` over all parameters (frozen ones have no gradient);
- the model in training mode, so every BatchNorm (the frozen encoder's included) normalises with
  batch statistics and updates its running averages, as PyTorch does;
- timm's per-epoch cosine schedule (``ReleaseCosineLR``), stepped at the END of each epoch with
  that epoch's index, so epoch 0 trains at the initial rate and epoch e at f(e - 1);
- cross-entropy averaged over the batch.

What the tests switch off on both sides, so that the two runs see the same numbers: random
batch order (``source_order_batches`` gives the project's ``shuffle=False`` order), the random
training view (``eval_view``: FPS of the stored cloud to N points, as ``augment=False``), and
every dropout (rates 0).

torch is imported where it is used, so ``ReleaseCosineLR`` works without it.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence


class ReleaseCosineLR:
  """timm's ``CosineLRScheduler`` as the release builds it: ``t_initial=epochs``, ``lr_min``,
  ``warmup_lr_init``, ``warmup_t=warmup_epochs``, ``cycle_limit=1``, ``t_in_epochs=True``, no
  warm-up prefix, no noise.

  On construction the groups' rate becomes ``warmup_lr_init`` when there is a warm-up (else it
  stays the optimizer's base rate); ``step(epoch)`` sets the rate f(epoch):
    t <  warmup_t:   warmup_lr_init + t * (base - warmup_lr_init) / warmup_t
    t <  t_initial:  lr_min + (base - lr_min) * (1 + cos(pi * t / t_initial)) / 2
    otherwise:       lr_min (the single cycle is over)
  Works on anything with ``param_groups`` (a list of dicts with 'lr').
  """

  def __init__(self, optimizer: Any, base_lr: float, epochs: int, warmup_epochs: int,
               warmup_lr_init: float, min_lr: float):
    self.optimizer = optimizer
    self.base_lr, self.epochs = float(base_lr), int(epochs)
    self.warmup_epochs = int(warmup_epochs)
    self.warmup_lr_init, self.min_lr = float(warmup_lr_init), float(min_lr)
    for group in optimizer.param_groups:
      group['lr'] = self.warmup_lr_init if self.warmup_epochs else self.base_lr

  def rate(self, t: int) -> float:
    if t < self.warmup_epochs:
      return self.warmup_lr_init + t * (self.base_lr - self.warmup_lr_init) / self.warmup_epochs
    cycle, t_curr = divmod(t, self.epochs)
    if cycle >= 1:
      return self.min_lr
    return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (
        1 + math.cos(math.pi * t_curr / self.epochs))

  def step(self, epoch: int) -> None:
    for group in self.optimizer.param_groups:
      group['lr'] = self.rate(epoch)


class _Groups:
  """A stand-in optimizer (only ``param_groups``) for reading the schedule without torch."""

  def __init__(self):
    self.param_groups = [{'lr': None}]


def release_epoch_rates(base_lr: float, epochs: int, warmup_epochs: int, warmup_lr_init: float,
                        min_lr: float) -> list[float]:
  """The rate each epoch 0..epochs trains at, by running the release's loop over the epochs:
  train the epoch at the current rate, then ``scheduler.step(epoch)``."""
  opt = _Groups()
  sched = ReleaseCosineLR(opt, base_lr, epochs, warmup_epochs, warmup_lr_init, min_lr)
  rates = []
  for epoch in range(epochs + 1):
    rates.append(opt.param_groups[0]['lr'])
    sched.step(epoch)
  return rates


def source_order_batches(num_examples: int, batch_size: int) -> Iterator[tuple[int, int, list]]:
  """(epoch, batch, indices) of the project's ``shuffle=False`` order: file order as one stream
  that wraps around, ``num_examples // batch_size`` batches an epoch; batch j of epoch e holds
  ``((e * steps_per_epoch + j) * batch_size + arange(batch_size)) mod num_examples``."""
  steps_per_epoch = num_examples // batch_size
  step = 0
  while True:
    epoch, j = divmod(step, steps_per_epoch)
    yield epoch, j, [(step * batch_size + i) % num_examples for i in range(batch_size)]
    step += 1


def eval_view(points, num_points: int):
  """points [B, P, 3] → [B, num_points, 3]: FPS from index 0 (the release's evaluation view)."""
  import torch  # pylint: disable=g-import-not-at-top
  from tests import torch_reference  # pylint: disable=g-import-not-at-top
  idx = torch_reference.torch_fps(points, num_points)
  return points[torch.arange(points.shape[0])[:, None], idx]


def release_param_groups(model, weight_decay: float) -> list[dict]:
  """The release's two AdamW groups over the parameters that train."""
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    if not p.requires_grad:
      continue
    if p.ndim == 1 or name.endswith('.bias') or 'token' in name:
      no_decay.append(p)
    else:
      decay.append(p)
  return [{'params': no_decay, 'weight_decay': 0.0},
          {'params': decay, 'weight_decay': weight_decay}]


def train(model, points, labels, *, batch_size: int, num_points: int, num_steps: int,
          snapshot_steps: Sequence[int], lr: float, epochs: int, warmup_epochs: int,
          warmup_lr_init: float, min_lr: float, weight_decay: float = 0.05,
          clip_grad_norm: float = 10.0) -> dict:
  """Runs the release's loop for ``num_steps`` optimizer steps.

  Args:
    model: a ``TorchDAPT`` (any dtype; the tests pass ``.double()``), with the release's
      trainable set already applied (``set_release_trainable``) and dropout rates 0.
    points: [S, P, 3] tensor of stored clouds (the model's dtype); labels: [S] long.
    snapshot_steps: after which steps to copy the whole state dict.

  Returns:
    {'snapshots': {step: state dict copy}, 'losses': [...], 'lrs': [...],
     'grad_norms': [...] (before clipping),
     'grads': {name: [per step, the gradient AdamW was given (after clipping)]}} for every
     parameter that trains.
  """
  import torch  # pylint: disable=g-import-not-at-top
  optimizer = torch.optim.AdamW(release_param_groups(model, weight_decay), lr=lr,
                                betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
  scheduler = ReleaseCosineLR(optimizer, lr, epochs, warmup_epochs, warmup_lr_init, min_lr)
  loss_fn = torch.nn.CrossEntropyLoss()
  trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
  out = {'snapshots': {}, 'losses': [], 'lrs': [], 'grad_norms': [],
         'grads': {n: [] for n in trained}}
  model.zero_grad()
  model.train()
  step, current_epoch = 0, 0
  for epoch, _, idx in source_order_batches(points.shape[0], batch_size):
    if epoch != current_epoch:  # the release steps the scheduler once, after each epoch
      scheduler.step(current_epoch)
      current_epoch = epoch
      model.train()
    if step == num_steps:
      break
    view = eval_view(points[idx], num_points)
    loss = loss_fn(model(view), labels[idx])
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm, norm_type=2)
    for n, p in trained.items():
      out['grads'][n].append(p.grad.detach().clone())
    out['lrs'].append(optimizer.param_groups[0]['lr'])
    optimizer.step()
    model.zero_grad()
    step += 1
    out['losses'].append(float(loss.detach()))
    out['grad_norms'].append(float(norm))
    if step in snapshot_steps:
      out['snapshots'][step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
  return out
