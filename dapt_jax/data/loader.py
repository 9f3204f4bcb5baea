"""Host-side loaders: deterministic shuffling, per-host sharding, batching, resumable position.

A global batch is a contiguous slice of the epoch's order; host `p` of `n` reads the p-th of its `n`
equal parts, so the union over hosts is the global batch and no host reads another's samples.

Training: the order of epoch `e` is a permutation drawn from `(seed, e)` alone, so any epoch (and any
batch in it) can be reproduced without replaying the ones before; the remainder that does not fill
a global batch is dropped. With `shuffle=False` the samples come in source order as one continuous
stream that wraps around: global batch `j` of epoch `e` holds source indices
`((e * steps_per_epoch + j) * global_batch + arange(global_batch)) mod num_examples`, so nothing is
dropped for good, only deferred to the next epoch. Evaluation: source order, the last global batch padded and masked, so
every sample is counted exactly once over all hosts.

Reading runs one batch ahead in a background thread (array_record reads release the GIL).

Debugging the sharding: with `DAPT_JAX_LOG_INDICES=DIR` set, every loader appends the source indices
of each batch it yields to `DIR/indices_<process>.jsonl` (one JSON object per line: loader kind,
process, epoch, batch, indices; -1 marks evaluation padding). The multi-process test reads them.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
from typing import Any, Iterator, Optional, Sequence

import numpy as np

LOG_INDICES_ENV = 'DAPT_JAX_LOG_INDICES'


def _index_log(process_index: int) -> Optional[str]:
  folder = os.environ.get(LOG_INDICES_ENV)
  if not folder:
    return None
  os.makedirs(folder, exist_ok=True)
  return os.path.join(folder, f'indices_{process_index}.jsonl')


def _log_indices(path: Optional[str], **record) -> None:
  if path is not None:
    with open(path, 'a') as f:
      f.write(json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v)
                          for k, v in record.items()}) + '\n')


def _read(source: Any, indices: np.ndarray) -> dict[str, np.ndarray]:
  if hasattr(source, 'get_batch'):
    return source.get_batch(indices)
  items = [source[int(i)] for i in indices]
  return {'points': np.stack([np.asarray(x['points'], np.float32) for x in items]),
          'label': np.asarray([x['label'] for x in items], np.int32)}


def _check_sharding(global_batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, {process_count})')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'global batch size {global_batch_size} is not a positive multiple of the '
                     f'{process_count} processes')
  return global_batch_size // process_count


def _prefetched(source: Any, index_batches: Sequence[np.ndarray]) -> Iterator[dict]:
  """Reads index batches in order, one ahead, on a worker thread."""
  if not len(index_batches):
    return
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = pool.submit(_read, source, index_batches[0])
    for k in range(len(index_batches)):
      batch = pending.result()
      if k + 1 < len(index_batches):
        pending = pool.submit(_read, source, index_batches[k + 1])
      yield batch


class TrainLoader:
  """Shuffled (or source-order), drop-remainder training batches with a checkpointable position.

  Usage:
    loader = TrainLoader(source, global_batch_size=32, seed=0,
                         process_index=jax.process_index(), process_count=jax.process_count())
    loader.set_state(restored_state)            # optional, when resuming
    for epoch in range(loader.get_state()['epoch'], num_epochs):
      for batch in loader.epoch(epoch):         # {'points': [b, P, 3], 'label': [b]}, b = local
        ...
        save(loader.get_state())                # position after the batch just yielded
  """

  def __init__(self, source: Any, global_batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1, shuffle: bool = True):
    self.source = source
    self.shuffle = bool(shuffle)
    self.global_batch_size = int(global_batch_size)
    self.local_batch_size = _check_sharding(self.global_batch_size, process_index, process_count)
    self.seed = int(seed)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.num_examples = len(source)
    self.steps_per_epoch = self.num_examples // self.global_batch_size
    if self.steps_per_epoch < 1:
      raise ValueError(f'{self.num_examples} examples do not fill one global batch of '
                       f'{self.global_batch_size}')
    self._epoch, self._batch = 0, 0  # position of the next batch to be yielded
    self._index_log = _index_log(self.process_index)

  def order(self, epoch: int) -> np.ndarray:
    """The global sample order of `epoch`; its first `steps_per_epoch` global batches are used.

    Shuffled: a permutation of all samples, a function of (seed, epoch) only. Unshuffled: the
    `steps_per_epoch * global_batch_size` indices of this epoch's window of the wrapping
    source-order stream.
    """
    if not self.shuffle:
      used = self.steps_per_epoch * self.global_batch_size
      return (int(epoch) * used + np.arange(used, dtype=np.int64)) % self.num_examples
    rng = np.random.default_rng([self.seed, int(epoch)])
    return rng.permutation(self.num_examples)

  def local_indices(self, epoch: int, step: int) -> np.ndarray:
    """This host's source indices for global batch `step` of `epoch`."""
    start = step * self.global_batch_size + self.process_index * self.local_batch_size
    return self.order(epoch)[start:start + self.local_batch_size]

  def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
    """Yields the local batches of `epoch`, starting at the restored batch if it is that epoch."""
    epoch = int(epoch)
    first = self._batch if epoch == self._epoch else 0
    order = self.order(epoch)
    g, b, p = self.global_batch_size, self.local_batch_size, self.process_index
    index_batches = [order[s * g + p * b:s * g + (p + 1) * b]
                     for s in range(first, self.steps_per_epoch)]
    for step, batch in enumerate(_prefetched(self.source, index_batches), start=first):
      _log_indices(self._index_log, loader='train', process=self.process_index, epoch=epoch,
                   batch=step, indices=index_batches[step - first])
      # Advance before yielding: a checkpoint taken while holding this batch resumes after it.
      if step + 1 == self.steps_per_epoch:
        self._epoch, self._batch = epoch + 1, 0
      else:
        self._epoch, self._batch = epoch, step + 1
      yield batch

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    """Endless: epoch after epoch from the current position."""
    while True:
      yield from self.epoch(self._epoch)

  def get_state(self) -> dict[str, int]:
    """The position of the next batch plus what it depends on (JSON-able ints)."""
    return {'epoch': self._epoch, 'batch': self._batch, 'seed': self.seed,
            'num_examples': self.num_examples, 'global_batch_size': self.global_batch_size,
            'shuffle': int(self.shuffle)}

  def set_state(self, state: dict[str, int]) -> None:
    """Restores a position from `get_state()`; refuses one made for other data or batching."""
    for key in ('seed', 'num_examples', 'global_batch_size', 'shuffle'):
      if key in state and int(state[key]) != getattr(self, key):
        raise ValueError(f'loader state has {key}={state[key]}, this loader has '
                         f'{getattr(self, key)}; the resumed data order would differ')
    epoch, batch = int(state['epoch']), int(state['batch'])
    if epoch < 0 or not 0 <= batch < self.steps_per_epoch:
      raise ValueError(f'loader state epoch={epoch}, batch={batch} is outside '
                       f'[0, {self.steps_per_epoch}) batches per epoch')
    self._epoch, self._batch = epoch, batch


class EvalLoader:
  """Every sample exactly once over all hosts; the last global batch padded, with a mask.

  Yields {'points': [b, P, 3], 'label': [b] int32, 'mask': [b] bool, 'index': [b] int32}, b local;
  `index` is the sample's position in the source (-1 on padding). Padding repeats sample 0 so
  every row is a valid cloud, but its mask is False.
  """

  def __init__(self, source: Any, global_batch_size: int, process_index: int = 0,
               process_count: int = 1):
    self.source = source
    self.global_batch_size = int(global_batch_size)
    self.local_batch_size = _check_sharding(self.global_batch_size, process_index, process_count)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.num_examples = len(source)
    self.num_batches = -(-self.num_examples // self.global_batch_size)
    self._index_log = _index_log(self.process_index)

  def _slots(self, step: int) -> np.ndarray:
    start = step * self.global_batch_size + self.process_index * self.local_batch_size
    return np.arange(start, start + self.local_batch_size)

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    slots = [self._slots(s) for s in range(self.num_batches)]
    reads = [np.where(s < self.num_examples, s, 0) for s in slots]
    for s, batch in zip(slots, _prefetched(self.source, reads)):
      valid = s < self.num_examples
      batch['mask'] = valid
      batch['index'] = np.where(valid, s, -1).astype(np.int32)
      _log_indices(self._index_log, loader='eval', process=self.process_index,
                   batch=int(s[0]) // self.global_batch_size, indices=batch['index'])
      yield batch
