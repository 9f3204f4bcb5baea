"""Per-device train and eval steps, and their data-parallel wrappers (`jax.pmap` or
`jax.shard_map` over a one-axis device mesh).

The same per-device functions run under both wrappers: they see one device's share of the
global batch and reach the others through collectives over the axis `AXIS`. Results do not
depend on the number of devices: BatchNorm statistics, gradients and metrics are averaged over
the whole global batch, and each sample's augmentation is keyed by its global index.

Importable without the data stack (no TFDS / grain), so benchmarks run where only JAX is.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dapt_jax import optim
from dapt_jax import partition

AXIS = 'batch'


def sample_keys(key: jax.Array, local_batch: int) -> jax.Array:
  """One key per sample, from its index in the global batch (device-count independent)."""
  offset = jax.lax.axis_index(AXIS) * local_batch
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(local_batch))


@flax.struct.dataclass
class TrainState:
  """Everything training changes, plus the frozen parameters it reads.

  step: optimizer steps taken (scalar int32). trainable / frozen: the two parts of `params`.
  batch_stats: BatchNorm running averages. opt_state: optimizer state (trainable leaves only).
  rng: the root key; step keys are `fold_in(rng, step)`.
  """
  step: jax.Array
  trainable: Any
  frozen: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array

  @property
  def params(self):
    return partition.merge(self.trainable, self.frozen)


def create_state(variables: dict, labels: Any, tx: optax.GradientTransformation,
                 rng: jax.Array) -> TrainState:
  trainable, frozen = partition.split(variables['params'], labels)
  return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen,
                    batch_stats=variables['batch_stats'],
                    opt_state=tx.init(variables['params']), rng=rng)


def train_step(state: TrainState, batch: dict, *, task: Any, net: Any,
               tx: optax.GradientTransformation) -> tuple[TrainState, dict]:
  """One optimizer step on one device's share of the global batch.

  batch: the task's fields, [b, ...] each (b = global batch / devices). The task computes the
  loss (and its augmentation) from the step key; gradients and metrics are averaged over the
  global batch. Returns the new state and metrics ('loss', the task's, 'grad_norm').
  """
  step_key = jax.random.fold_in(state.rng, state.step)

  def loss_fn(trainable):
    variables = {'params': partition.merge(trainable, state.frozen),
                 'batch_stats': state.batch_stats}
    return task.train_loss(net, variables, batch, step_key)

  (loss, (task_metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.trainable)
  grads = jax.lax.pmean(grads, AXIS)
  trainable, opt_state = optim.apply_trainable_gradients(
      tx, state.opt_state, state.trainable, state.frozen, grads)
  metrics = {'loss': jax.lax.pmean(loss, AXIS)}
  metrics.update({k: jax.lax.pmean(v, AXIS) for k, v in task_metrics.items()})
  metrics['grad_norm'] = optax.tree.norm(grads)
  new_state = state.replace(step=state.step + 1, trainable=trainable, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, task: Any, net: Any) -> dict:
  """The task's per-sample outputs {name: [b, ...]} for one device's share of a batch."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  return task.eval_outputs(net, variables, batch)


def _local_copy(x: Any) -> np.ndarray:
  """A replicated array's value from this host's first shard (works on multi-host arrays,
  which np.asarray refuses because they are not fully addressable)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


class DataParallel:
  """Runs the per-device steps over every device of every host.

  mode 'pmap': state replicated with a leading device axis; host batches reshaped to
  [local devices, per-device batch, ...]. mode 'shard_map': one global jit over a device mesh,
  state replicated, batches sharded along the mesh axis.
  """

  def __init__(self, mode: str, global_batch_size: int, devices: Optional[list] = None):
    if mode not in ('pmap', 'shard_map'):
      raise ValueError(f"config.parallel={mode!r}: must be 'pmap' or 'shard_map'")
    self.mode = mode
    self._explicit_devices = devices is not None
    self.devices = list(devices) if devices is not None else jax.devices()
    n = len(self.devices)
    if global_batch_size % n:
      raise ValueError(f'batch size {global_batch_size} does not divide evenly over {n} '
                       f'devices; choose a multiple of {n}')
    self.num_devices = n
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    self._replicated = NamedSharding(self.mesh, P())
    self._sharded = NamedSharding(self.mesh, P(AXIS))

  # -- placing data ---------------------------------------------------------------------------

  def put_state(self, state: TrainState) -> TrainState:
    if self.mode == 'pmap':
      # A leading device axis; pmap places slice i on device i.
      k = self._pmap_device_count()
      return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x)[None], (k,) + np.shape(x)),
                          state)
    return jax.device_put(state, self._replicated)

  def get_state(self, state: TrainState) -> TrainState:
    """The state as host-side arrays without the device axis."""
    if self.mode == 'pmap':
      return jax.tree.map(lambda x: np.asarray(x[0]), state)
    return jax.tree.map(_local_copy, state)

  def put_batch(self, batch: dict) -> dict:
    """Host-local numpy batch [host batch, ...] → device layout."""
    if self.mode == 'pmap':
      k = self._pmap_device_count()
      return jax.tree.map(lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self._sharded, x), batch)

  def unreplicate_metrics(self, metrics: dict) -> dict:
    if self.mode == 'pmap':
      return jax.tree.map(lambda x: x[0], metrics)
    return jax.tree.map(_local_copy, metrics)

  def gather(self, x: Any) -> np.ndarray:
    """Per-device outputs (sharded along the batch), or this host's numpy part of a batch, →
    the host array of the whole global batch, in global batch order, on every host."""
    if self.mode == 'pmap' and not isinstance(x, np.ndarray):
      x = np.asarray(jax.device_get(x))  # this host's devices only: [local devices, b, ...]
      x = x.reshape((-1,) + x.shape[2:])
    if jax.process_count() > 1:  # host p holds the p-th contiguous part of the global batch
      x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)

  # -- wrapping steps -------------------------------------------------------------------------

  def _pmap_device_count(self) -> int:
    return len(self.devices) if self._explicit_devices else jax.local_device_count()

  def _pmap_devices(self) -> dict:
    # By default pmap spans every local device and its collectives reach all hosts; an
    # explicit device list (a subset, for tests) is passed through.
    return {'devices': self.devices} if self._explicit_devices else {}

  def wrap_train(self, fn: Callable) -> Callable:
    """fn(state, batch) -> (state, metrics), per device."""
    if self.mode == 'pmap':
      return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,), **self._pmap_devices())
    mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()),
                           check_vma=False)
    return jax.jit(mapped, donate_argnums=(0,))

  def wrap_eval(self, fn: Callable) -> Callable:
    """fn(state, batch) -> per-sample outputs, per device."""
    if self.mode == 'pmap':
      return jax.pmap(fn, axis_name=AXIS, **self._pmap_devices())
    return jax.jit(jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                                 out_specs=P(AXIS), check_vma=False))


def make_task_steps(parallel: DataParallel, task: Any, net: Any,
                    tx: optax.GradientTransformation):
  """The wrapped (train_step, eval_step) of a task (`dapt_jax.tasks`)."""
  train = parallel.wrap_train(functools.partial(train_step, task=task, net=net, tx=tx))
  evaluate = parallel.wrap_eval(functools.partial(eval_step, task=task, net=net))
  return train, evaluate

