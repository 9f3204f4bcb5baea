"""The same workload in PyTorch eager, with the tests' independent reference implementation
(`tests/torch_reference.py`): the release's trainable set, AdamW (lr 5e-4, weight decay 0.05 on
2+-D non-token weights), gradient clipping at 10, cross-entropy, `model.train()`.

A training step does what the release's loop does on the GPU: FPS of the cloud to `point_all`
(capped at the cloud's size), a random subset of N, per-cloud scale and translation, then the
model's forward (FPS to G centres + kNN inside), backward, clipping and the optimizer step.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any, Callable

from dapt_jax.bench import clouds
from dapt_jax.bench import memory
from dapt_jax.bench import spec as spec_lib

# tests/ lives at the repository root, beside dapt_jax/.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# TorchDAPT constructor arguments for the config's model fields.
_MODEL_FIELDS = ('trans_dim', 'depth', 'num_heads', 'mlp_ratio', 'num_group', 'group_size',
                 'rank', 'num_classes', 'drop_path_rate', 'drop_adapter_rate', 'head_tokens')


def available() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _reference():
  if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
  from tests import torch_reference  # pylint: disable=g-import-not-at-top
  return torch_reference


def _set_trainable(model, mode: str, ref) -> None:
  if mode == 'dapt':
    ref.set_release_trainable(model)
  elif mode == 'full':
    for p in model.parameters():
      p.requires_grad_(True)
  else:  # linear: the head only
    for name, p in model.named_parameters():
      p.requires_grad_(name.startswith('cls_head_finetune.'))


def _param_groups(model, weight_decay: float) -> list[dict]:
  """The release's `add_weight_decay`: no decay for 1-D weights, biases and tokens."""
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    if not p.requires_grad:
      continue
    (no_decay if p.ndim <= 1 or name.endswith('.bias') or 'token' in name else decay).append(p)
  return [{'params': no_decay, 'weight_decay': 0.0},
          {'params': decay, 'weight_decay': weight_decay}]


def measure(spec: dict) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from dapt_jax.bench import jax_side  # pylint: disable=g-import-not-at-top

  ref = _reference()
  baseline = memory.peak_rss_bytes()
  cuda = torch.cuda.is_available()
  dev = torch.device('cuda' if cuda else 'cpu')
  if not cuda:
    torch.set_num_threads(os.cpu_count() or 1)
  rec: dict[str, Any] = {
      'framework': 'torch', 'version': torch.__version__, 'platform': 'gpu' if cuda else 'cpu',
      'device': (f'gpu: {torch.cuda.get_device_name(0)} x1' if cuda
                 else f'cpu: {torch.get_num_threads()} threads'),
      'baseline_rss_bytes': baseline}

  cfg = jax_side.build_config(spec)  # the same fields as the JAX side (ml_collections only)
  kwargs = {f: cfg.model[f] for f in _MODEL_FIELDS}
  kwargs['head_tokens'] = tuple(kwargs['head_tokens'])
  torch.manual_seed(spec['seed'])
  model = ref.TorchDAPT(**kwargs).to(dev)
  _set_trainable(model, spec['mode'], ref)
  model.train()
  rec.update(trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
             total_params=sum(p.numel() for p in model.parameters()),
             num_group=cfg.model.num_group, group_size=cfg.model.group_size)
  trainable = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                          betas=(cfg.optim.b1, cfg.optim.b2), eps=cfg.optim.eps)
  n, b = spec['num_points'], spec['batch']
  pool_size = spec_lib.point_all(n)
  host = clouds.ellipsoid_batch(b, n, cfg.model.num_classes, spec['seed'])
  pts = torch.from_numpy(host['points']).to(dev)
  label = torch.from_numpy(host['label']).long().to(dev)
  rows = torch.arange(b, device=dev).view(-1, 1)
  amp = spec['dtype'] == 'bfloat16'

  def sync():
    if cuda:
      torch.cuda.synchronize()

  def train_view(x):
    m = min(pool_size, x.shape[1])
    x = x[rows, ref.torch_fps(x, m)]
    order = torch.rand(b, m, device=dev).argsort(dim=1)[:, :n]
    x = x[rows, order]
    scale = torch.empty(b, 1, 3, device=dev).uniform_(2 / 3, 3 / 2)
    shift = torch.empty(b, 1, 3, device=dev).uniform_(-0.2, 0.2)
    return x * scale + shift

  def step():
    x = train_view(pts)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
      logits = model(x)
    loss = F.cross_entropy(logits.float(), label)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.clip_grad_norm)
    opt.step()
    return loss

  def timed(fn: Callable[[], Any], warmup: int, steps: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
      fn()
    sync()
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      fn()
      sync()
      times.append(time.perf_counter() - t)
    return statistics.median(times), times

  # The resident state before the first step: parameters, buffers and the input batch (AdamW's
  # moments are created by the first step, so they are in the rise measured below).
  rec['state_bytes'] = int(sum(t.numel() * t.element_size()
                               for t in [*model.parameters(), *model.buffers(), pts, label]))
  memory.release_free_heap()
  rss_before = memory.current_rss_bytes()
  rec['peak_reset_before_steps'] = memory.reset_peak_rss()
  try:
    if spec['train']:
      if cuda:
        torch.cuda.reset_peak_memory_stats()
      last = {}
      step_s, times = timed(lambda: last.update(loss=step()), spec['warmup'], spec['steps'])
      rec.update(step_s=step_s, step_times_s=times, samples_per_s=b / step_s, compile_s=0.0,
                 loss_finite=bool(torch.isfinite(last['loss']).item()))
    if cuda:
      rec.update(peak_bytes=int(torch.cuda.max_memory_allocated()),
                 peak_source='torch.cuda.max_memory_allocated')
    else:
      peak = memory.peak_rss_since_reset_bytes()
      rec.update(peak_bytes=peak, peak_source='process peak RSS',
                 rss_net_of_imports_bytes=peak - baseline)
      if rec['peak_reset_before_steps'] and rss_before is not None:
        # As on the JAX side: resident state + how far the process grew during the steps.
        rec.update(rss_rise_bytes=peak - rss_before,
                   peak_net_bytes=peak - rss_before + rec['state_bytes'])
      else:
        rec['peak_net_bytes'] = peak - baseline

    if spec['eval']:
      model.eval()

      @torch.no_grad()
      def evaluate():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
          return model(pts[rows, ref.torch_fps(pts, n)])

      rec['eval_step_s'], _ = timed(evaluate, 1, max(3, spec['steps'] // 2))
      rec['eval_samples_per_s'] = b / rec['eval_step_s']
      model.train()

    if spec['grouping']:
      g, k = cfg.model.num_group, cfg.model.group_size
      reps = max(3, spec['steps'] // 2)
      rec['group_s'], _ = timed(lambda: ref.torch_group(pts, g, k), 1, reps)
      rec['train_view_s'], _ = timed(lambda: train_view(pts), 1, reps)
      if 'step_s' in rec:
        rec['group_share'] = rec['group_s'] / rec['step_s']
        rec['train_view_share'] = rec['train_view_s'] / rec['step_s']
  except torch.cuda.OutOfMemoryError as e:  # only raised on GPU
    rec.update(status='oom', error=str(e).splitlines()[0])
  return rec
