"""Training matches the release step by step (float64 on both sides), and the schedule it uses.

A release-layout checkpoint (`{'base_model': state_dict}` of a tiny DAPT model, every weight and
BatchNorm statistic random) is converted with `python -m convert`. From it:

- the project trains through its real training path, `train.train_and_evaluate` (what main.py
  calls), with 64-bit JAX (`model.dtype='float64'`, x64 switched on for the run and restored):
  `data.shuffle=False`, `data.augment=False`, every dropout rate 0, `optim.warmup_epochs=0`,
  `max_steps=10`, evaluating after every epoch; its checkpoints are read back;
- the release's loop, restated independently in PyTorch (`tests/torch_train_reference.py`),
  trains the same checkpoint in float64 on the same clouds in the same order.

After 3 and after 10 steps (10 steps cross three epoch ends, so the per-epoch schedule and the
wrap-around of the unshuffled order are in play) every trainable parameter and every BatchNorm
running statistic agrees, and every frozen parameter is bit-identical to the checkpoint's. The
clipping norm is 5 rather than the recipe's 10 so that it acts on some steps and not on others
(this model's gradient norms are 2.6-8.1; the test checks both cases occur).

Tolerances, derived (float64 unit roundoff u = 1.1e-16):
- Gradients. The two sides sum in different orders; a gradient element summed over at most a
  few hundred terms of magnitude ≤ 1 (the gradient norm is < 10) is off by δg ≤ 1e-13 (that
  bound also covers the ~1e-14 parameter differences fed back through the next forward pass).
- Parameters. Adam's step is lr·m̂/(√v̂ + ε); m̂ and √v̂ are averages of the gradients seen, so
  each moves by ≤ δg, and the step by ≤ lr·δg·(1 + |m̂/√v̂|)/(√v̂ + ε) ≤ lr·5δg/(min_s≤t |g_s| + ε)
  (|m̂/√v̂| ≤ (1 − β1)/√(1 − β2) ≈ 3.2; √v̂ is at least the smallest |g_s| seen). Summed over the
  steps taken, with the reference's own gradients, that is each element's tolerance: ~3e-12
  for an element with |g| ~ 1e-3, up to ~3e-7 for one whose gradient is ~0 on some step (dead
  ReLU units, where both sides compute an exact 0). Measured differences are ~1e-14.
- BatchNorm running statistics are momentum averages of batch statistics of activations: no Adam
  in between, so RTOL_STATS = 1e-10 of the tensor's largest value (measured ~1e-15), plus, for
  the head's two BatchNorms, the drift of the bias feeding them (see below), which the running
  mean carries: ≤ 2·K·lr·1e-6.

Parameters whose true gradient is exactly zero are not compared by value. The first head Linear's
bias and the second's are each followed by a training-mode BatchNorm, which removes any constant
shift; the shift after the final LayerNorm (`norm_tfts/beta`) reaches the head only as such a
constant (through the cls token, the prompt mean and the patch max alike); and the key third of
each attention's scale-shift bias (`qkv_tfts/beta[C:2C]`) adds the same number to every logit of a
query row, which softmax ignores. Their computed gradient is rounding noise, and Adam divides by
its own root mean square, so on both sides they take steps of arbitrary sign of size up to
lr·|g|/(|g| + ε) — lr-sized in float32, where the noise reaches ε; tiny in float64, but
unrelated between the two sides. Instead: the reference's gradient for them is zero to rounding
(≤ 1e-13 of the gradient norm) at every step, and on both sides they stay within K·lr·1e-6 of
their start (a real gradient moves a parameter by ~lr per step).

The release checkpoint, exported back with `python -m convert --to-torch WORKDIR`, is the LAST
checkpoint (step 10, not the best evaluation), loads strictly into the reference and equals the
JAX state rounded to float32.
"""
import json
import os

import numpy as np
import pytest

from convert import keymap
from convert import model_config
from dapt_jax import data as data_lib
from dapt_jax import partition
from dapt_jax import reporting
from dapt_jax import train

torch = pytest.importorskip('torch')
from convert import __main__ as convert_main  # noqa: E402
from tests import torch_reference  # noqa: E402
from tests import torch_train_reference  # noqa: E402
from tests.conftest import x64_enabled  # noqa: E402

STEPS = (3, 10)
GRAD_ERROR = 1e-13  # δg above
RTOL_STATS = 1e-10
BATCH = 8
NUM_TRAIN = 28  # 3 batches an epoch; the unshuffled stream wraps (28 is not a multiple of 8)

CONFIG_FILE = '''\
from configs import synthetic


def get_config(arg=None):
  c = synthetic.get_config()
  c.unlock()
  c.model.update(trans_dim=32, encoder_dims=32, depth=2, num_heads=2, num_group=8, group_size=8,
                 rank=4, num_classes=4, drop_path_rate=0.0, drop_adapter_rate=0.0,
                 head_dropout_rate=0.0, head_tokens=('cls', 'prompt', 'patch'))
  c.data.update(num_points=64, point_all=80, synthetic_points=128, synthetic_num_train=%d,
                synthetic_num_test=8, synthetic_num_classes=4, shuffle=False, augment=False,
                tfds_data_dir=%r)
  c.optim.update(warmup_epochs=0, clip_grad_norm=5.0)
  c.update(batch_size=%d, num_epochs=4, log_every_steps=1, progress_bar=False)
  c.eval.update(every_epochs=1, batch_size=8)
  c.checkpoint.update(every_epochs=1, keep=10)
  c.lock()
  return c
'''


def zero_gradient_part(torch_key: str, width: int):
  """The slice of a release tensor whose true gradient is zero (None: no such part)."""
  if torch_key in ('cls_head_finetune.0.bias', 'cls_head_finetune.4.bias', 'tfts_beta_2'):
    return slice(None)
  if torch_key.endswith('attn.tfts_beta_1'):  # [q | k | v] biases: the key third
    return slice(width, 2 * width)
  return None


def release_model(m, seed=0):
  """A reference model in float32 with every weight and BatchNorm statistic random."""
  torch.manual_seed(seed)
  ref = torch_reference.TorchDAPT(
      trans_dim=m.trans_dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
      num_group=m.num_group, group_size=m.group_size, rank=m.rank, num_classes=m.num_classes,
      head_tokens=m.head_tokens)
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if 'up_proj' in name or name.endswith('.bias'):  # zero at init: make them matter
        p.normal_(0.0, 0.05)
    for name, b in ref.named_buffers():
      if name.endswith('running_mean'):
        b.normal_(0.0, 0.1)
      elif name.endswith('running_var'):
        b.uniform_(0.5, 1.5)
  return ref


def reference_for_training(state_dict, m):
  ref = torch_reference.TorchDAPT(
      trans_dim=m.trans_dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
      num_group=m.num_group, group_size=m.group_size, rank=m.rank, num_classes=m.num_classes,
      head_tokens=m.head_tokens)
  ref.load_state_dict(state_dict, strict=True)
  ref.double()
  torch_reference.set_release_trainable(ref)
  for module in ref.modules():  # the head's Dropout(0.5) too: rates 0 on both sides
    if isinstance(module, torch.nn.Dropout):
      module.p = 0.0
  return ref


def read_checkpoint(workdir, step):
  """(trainable, batch_stats, frozen) of checkpoints/last/<step>, flattened, float64."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  root = os.path.join(workdir, 'checkpoints')
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(os.path.join(root, 'last', str(step), 'state'))
    frozen = ckptr.restore(os.path.join(root, 'frozen'))['frozen']
  flat = lambda t: {k: np.asarray(v) for k, v in partition.flatten(dict(t)).items()}
  return flat(state['trainable']), flat(state['batch_stats']), flat(frozen), int(state['step'])


def as_release(entries, trainable, batch_stats, frozen):
  """{release key: float64 array in PyTorch layout}."""
  out = {}
  for e in entries:
    tree = batch_stats if e.collection == 'batch_stats' else (
        trainable if e.path in trainable else frozen)
    out[e.torch_key] = e.to_torch(tree[e.path])
  return out


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('trajectory')
  cfg_file = tmp / 'tiny.py'
  cfg_file.write_text(CONFIG_FILE % (NUM_TRAIN, str(tmp / 'tfds'), BATCH))
  config = model_config.load_config(str(cfg_file))
  m = config.model

  # The clouds, as the loader reads them.
  source, _ = data_lib.get_source(config.data, 'train')
  clouds = source.get_batch(np.arange(len(source)))

  # A release checkpoint, converted as a user would.
  ref32 = release_model(m)
  pth = str(tmp / 'release.pth')
  torch.save({'base_model': ref32.state_dict(), 'epoch': 300, 'metrics': {'acc': 0.0}}, pth)
  converted = str(tmp / 'converted')
  assert convert_main.main([pth, converted, '--config', str(cfg_file)]) == 0

  # The release's loop, float64.
  start = torch.load(pth, weights_only=True)['base_model']
  ref = reference_for_training(start, m)
  o = config.optim
  torch_run = torch_train_reference.train(
      ref, torch.from_numpy(clouds['points']).double(), torch.from_numpy(clouds['label']).long(),
      batch_size=BATCH, num_points=config.data.num_points, num_steps=max(STEPS),
      snapshot_steps=STEPS, lr=o.lr, epochs=config.num_epochs, warmup_epochs=o.warmup_epochs,
      warmup_lr_init=o.warmup_lr_init, min_lr=o.min_lr, weight_decay=o.weight_decay,
      clip_grad_norm=o.clip_grad_norm)

  # The project's training path, float64.
  workdir = str(tmp / 'run')
  exported = str(tmp / 'exported.pth')
  with x64_enabled():
    cfg = model_config.load_config(str(cfg_file))
    cfg.unlock()
    cfg.model.dtype = 'float64'
    cfg.init_from = converted
    cfg.max_steps = max(STEPS)
    cfg.lock()
    summary = train.train_and_evaluate(cfg, workdir)
    states = {k: read_checkpoint(workdir, k) for k in STEPS}
    assert convert_main.main(['--to-torch', workdir, exported]) == 0
  entries = keymap.entries_for_variables(
      {'params': partition.unflatten({**states[3][0], **states[3][2]}),
       'batch_stats': partition.unflatten(states[3][1])})
  jax_states = {k: as_release(entries, *states[k][:3]) for k in STEPS}
  return dict(config=config, start=start, torch_run=torch_run, summary=summary,
              states=states, jax_states=jax_states, workdir=workdir, exported=exported,
              entries=entries, trainable_keys={e.torch_key for e in entries
                                               if e.path in states[3][0]})


def test_runs_took_the_steps_asked(runs):
  assert runs['summary']['stopped'] == 'max_steps' and runs['summary']['steps'] == max(STEPS)
  for k in STEPS:
    assert runs['states'][k][3] == k
  for k, v in runs['jax_states'][max(STEPS)].items():
    assert v.dtype == np.float64, k  # parameters and statistics, trained in float64
  # An evaluation ran after epochs 1 and 2 (steps 6 and 9), so 'best' is not the last state.
  evals = [r for r in reporting.read_metrics(runs['workdir']) if r['split'] == 'eval']
  assert [r['epoch'] for r in evals] == [1, 2]


def test_losses_rates_and_gradient_norms_agree_every_step(runs):
  rows = [r for r in reporting.read_metrics(runs['workdir']) if r['split'] == 'train']
  ref = runs['torch_run']
  assert [r['step'] for r in rows] == list(range(1, max(STEPS) + 1))
  np.testing.assert_allclose([r['loss'] for r in rows], ref['losses'], rtol=1e-12, atol=0)
  np.testing.assert_allclose([r['grad_norm'] for r in rows], ref['grad_norms'], rtol=1e-10,
                             atol=0)
  # The rate of every step: epochs 0..3 at f(0), f(0), f(1), f(2) of the release's schedule.
  np.testing.assert_allclose([r['lr'] for r in rows], ref['lrs'], rtol=1e-15, atol=0)
  assert len(set(ref['lrs'])) == 3


def adam_tolerance(grads, lrs, eps):
  """Per element: Σ_t lr_t·5δg/(min_{s≤t} |g_s| + ε) over the steps taken (see the docstring)."""
  tol, smallest = 0.0, None
  for g, lr in zip(grads, lrs):
    g = np.abs(g.numpy())
    smallest = g if smallest is None else np.minimum(smallest, g)
    tol = tol + lr * 5 * GRAD_ERROR / (smallest + eps)
  return tol


@pytest.mark.parametrize('step', STEPS)
def test_trainable_parameters_and_batchnorm_statistics_agree(runs, step):
  got, want = runs['jax_states'][step], runs['torch_run']['snapshots'][step]
  ref = runs['torch_run']
  config = runs['config']
  width = config.model.trans_dim
  assert set(got) == {k for k in want if not k.endswith('num_batches_tracked')}
  assert set(ref['grads']) == runs['trainable_keys']
  compared = 0
  for key in sorted(runs['trainable_keys']):
    g, w = got[key], want[key].numpy()
    assert g.shape == w.shape, key
    keep = np.ones(g.shape, bool)
    part = zero_gradient_part(key, width)
    if part is not None:
      keep[part] = False
    tol = adam_tolerance(ref['grads'][key][:step], ref['lrs'][:step], config.optim.eps)
    bad = keep & (np.abs(g - w) > tol)
    assert not bad.any(), (f'{key}: {int(bad.sum())} elements differ beyond their tolerance, '
                           f'max |diff| {np.abs(g - w)[bad].max():.3g}')
    if not keep.any():  # wholly a zero-gradient parameter (see the test below)
      continue
    compared += int(keep.sum())
    # The comparison means something: the tensor moved, by far more than its tolerance.
    moved = np.abs(w - runs['start'][key].double().numpy())[keep]
    assert moved.max() > 1e3 * np.median(tol[keep]), key
  assert compared > 0.9 * sum(got[k].size for k in runs['trainable_keys'])
  drift = 2 * step * config.optim.lr * 1e-6
  for key in got:
    if key.endswith(('running_mean', 'running_var')):
      w = want[key].numpy()
      atol = RTOL_STATS * np.abs(w).max()
      if key.startswith('cls_head_finetune') and key.endswith('running_mean'):
        atol += drift
      np.testing.assert_allclose(got[key], w, rtol=0, atol=atol, err_msg=key)
      assert not np.array_equal(w, runs['start'][key].double().numpy()), key


def test_clipping_acted_on_some_steps_and_not_others(runs):
  norms = runs['torch_run']['grad_norms']
  clip = runs['config'].optim.clip_grad_norm
  assert any(n > clip for n in norms) and any(n < clip for n in norms), norms


@pytest.mark.parametrize('step', STEPS)
def test_frozen_parameters_are_bit_identical(runs, step):
  got, want = runs['jax_states'][step], runs['torch_run']['snapshots'][step]
  frozen = [k for k in got if k not in runs['trainable_keys']
            and not k.endswith(('running_mean', 'running_var'))]
  assert len(frozen) > 20
  for key in frozen:
    start = runs['start'][key].double().numpy()
    assert np.array_equal(got[key], start), key
    assert np.array_equal(want[key].numpy(), start), key


def test_zero_gradient_parameters_are_checked_by_their_gradient(runs):
  ref = runs['torch_run']
  width = runs['config'].model.trans_dim
  lr = runs['config'].optim.lr
  scale = max(ref['grad_norms'])
  names = [n for n in ref['grads'] if zero_gradient_part(n, width) is not None]
  assert len(names) == 3 + runs['config'].model.depth
  for name in names:
    part = zero_gradient_part(name, width)
    for g in ref['grads'][name]:
      assert float(g[part].abs().max()) <= 1e-13 * scale, name
  for step in STEPS:
    for name in names:
      part = zero_gradient_part(name, width)
      start = runs['start'][name].double().numpy()[part]
      for side in (runs['jax_states'][step][name], ref['snapshots'][step][name].numpy()):
        assert np.max(np.abs(side[part] - start)) <= step * lr * 1e-6, name


def test_export_is_the_last_checkpoint_and_loads_strictly(runs):
  sd = torch.load(runs['exported'], weights_only=True)['base_model']
  m = runs['config'].model
  ref = torch_reference.TorchDAPT(
      trans_dim=m.trans_dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
      num_group=m.num_group, group_size=m.group_size, rank=m.rank, num_classes=m.num_classes,
      head_tokens=m.head_tokens)
  ref.load_state_dict(sd, strict=True)
  last = runs['jax_states'][max(STEPS)]
  for key, value in last.items():
    assert sd[key].dtype == torch.float32, key
    np.testing.assert_array_equal(sd[key].numpy(), value.astype(np.float32), err_msg=key)
  # Not the best checkpoint (an earlier step): the trainable values differ from every other save.
  for step in (3,):
    other = runs['jax_states'][step]
    assert any(not np.array_equal(other[k].astype(np.float32), sd[k].numpy())
               for k in runs['trainable_keys'])
  with open(os.path.join(runs['workdir'], 'config.json')) as f:
    assert json.load(f)['model']['dtype'] == 'float64'
