"""Reads PyTorch `.pth` checkpoints without running any code stored in them, and without torch.

A `.pth` file is a pickle. Unpickling calls whatever functions the file names, so a hostile file
can run arbitrary code the moment `pickle.load` (or `torch.load(weights_only=False)`) opens it.
This reader interprets the pickle itself: only the handful of globals a tensor checkpoint needs
are resolved, each to a local stand-in written here (never to the real torch or numpy function),
and everything else is refused before it is called. Tensors come back as read-only-by-copy
`numpy.ndarray`s; containers as dicts, lists and tuples.

Both of torch's on-disk formats are understood:
  * the zip format (torch >= 1.6): `<archive>/data.pkl` plus one record per storage,
    `<archive>/data/<key>`, and an optional `<archive>/byteorder`;
  * the legacy format (torch < 1.6, or `_use_new_zipfile_serialization=False`): three small
    pickles (magic number, protocol version, system info), the main pickle, a pickled list of
    storage keys, then for each key an int64 element count and the raw little-endian data.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
import zipfile
from typing import Any, Callable

import numpy as np

from convert.errors import ConvertError
from convert.errors import UnsafeCheckpointError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _bfloat16() -> np.dtype:
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (ships with jax)
  return np.dtype(ml_dtypes.bfloat16)


# torch storage class name → numpy dtype (a callable so bfloat16 is imported only when met).
_STORAGE_DTYPES: dict[str, Callable[[], np.dtype]] = {
    'FloatStorage': lambda: np.dtype('<f4'),
    'DoubleStorage': lambda: np.dtype('<f8'),
    'HalfStorage': lambda: np.dtype('<f2'),
    'BFloat16Storage': _bfloat16,
    'LongStorage': lambda: np.dtype('<i8'),
    'IntStorage': lambda: np.dtype('<i4'),
    'ShortStorage': lambda: np.dtype('<i2'),
    'CharStorage': lambda: np.dtype('i1'),
    'ByteStorage': lambda: np.dtype('u1'),
    'BoolStorage': lambda: np.dtype('?'),
    'ComplexFloatStorage': lambda: np.dtype('<c8'),
    'ComplexDoubleStorage': lambda: np.dtype('<c16'),
    'UntypedStorage': lambda: np.dtype('u1'),
}

# torch dtype attribute names that may appear as plain values (e.g. in an optimizer's state).
_TORCH_DTYPE_NAMES = frozenset(
    'float32 float float64 double float16 half bfloat16 int64 long int32 int int16 short int8 '
    'uint8 bool complex64 complex128'.split())

# numpy dtypes a pickled numpy scalar or array may carry (no object or structured dtypes).
_NUMPY_KINDS = frozenset('biufc?')


class _StorageType:
  """Stands in for a `torch.<X>Storage` class named by the pickle."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]()


class _Storage:
  """One storage: a flat array of `numel` elements, filled from the file."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype = dtype
    self.numel = numel
    self.data: np.ndarray | None = None


class _LazyTensor:
  """A tensor waiting for its storage's bytes (the legacy format stores them after the pickle)."""

  def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def materialise(self) -> np.ndarray:
    data = self.storage.data
    if data is None:
      raise ConvertError('a tensor refers to a storage whose data is missing from the file')
    if len(self.stride) != len(self.size):
      raise ConvertError(f'a tensor has size {self.size} but stride {self.stride}')
    if any(s == 0 for s in self.size):
      return np.zeros(self.size, data.dtype)
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if self.offset < 0 or last >= data.size:
      raise ConvertError(f'a tensor of size {self.size} reaches past the end of its storage '
                         f'({data.size} elements); the file is corrupt')
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], shape=self.size,
        strides=tuple(s * data.itemsize for s in self.stride), writeable=False)
    return np.array(view, copy=True)


def _is_one_of(obj: Any, allowed: tuple) -> bool:
  """Identity membership (`in` would call a hostile object's __eq__)."""
  return any(obj is a for a in allowed)


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> _LazyTensor:
  """Local stand-in for torch._utils._rebuild_tensor(_v2)."""
  if not isinstance(storage, _Storage):
    raise ConvertError('a tensor is built from something that is not a storage')
  if not (_is_int(storage_offset) and isinstance(size, tuple) and isinstance(stride, tuple)
          and all(_is_int(v) and v >= 0 for v in size + stride)):
    raise ConvertError('a tensor has a malformed size, stride or offset')
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused) -> _LazyTensor:
  """Local stand-in for torch._utils._rebuild_parameter(_with_state): a Parameter is its data."""
  if not isinstance(data, _LazyTensor):
    raise ConvertError('a parameter wraps something that is not a tensor')
  return data


class _TensorType:
  """Stands in for torch.Tensor / torch.nn.Parameter when named as a type."""


_REBUILDERS = (_rebuild_tensor, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state) -> Any:
  """Local stand-in for torch._tensor._rebuild_from_type_v2 (plain tensors only)."""
  if (not _is_one_of(func, _REBUILDERS) or not isinstance(new_type, _TensorType)
      or not isinstance(args, tuple)):
    raise UnsafeCheckpointError('the pickle rebuilds a tensor through a function or type that a '
                                'plain tensor checkpoint does not use')
  return func(*args)


def _torch_device(*args) -> str:
  return ':'.join(str(a) for a in args)


def _codecs_encode(text, encoding='utf-8') -> bytes:
  """How protocol-2 pickles spell a bytes literal; only text → bytes, nothing else."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1', 'utf-8', 'utf8'):
    raise UnsafeCheckpointError('the pickle calls _codecs.encode with unexpected arguments')
  return text.encode(encoding)


def _numpy_dtype(spec, align=False, copy=False) -> np.dtype:
  if not isinstance(spec, str):
    raise UnsafeCheckpointError('the pickle builds a numpy dtype from a non-string')
  dtype = np.dtype(spec)
  if dtype.kind not in _NUMPY_KINDS or dtype.fields is not None:
    raise UnsafeCheckpointError(f'the pickle holds numpy values of dtype {spec!r} (only numeric '
                                'dtypes are read)')
  return dtype


def _numpy_scalar(dtype, data=None) -> Any:
  if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
    raise UnsafeCheckpointError('the pickle builds a numpy scalar from unexpected arguments')
  if len(data) != dtype.itemsize:
    raise ConvertError('a numpy scalar has the wrong number of bytes')
  return np.frombuffer(data, dtype)[0]


class _NumpyArrayType:
  """Stands in for numpy.ndarray when named as a type (only as _reconstruct's argument)."""


def _numpy_reconstruct(subtype, shape, dtype_code) -> np.ndarray:
  if not isinstance(subtype, _NumpyArrayType):
    raise UnsafeCheckpointError('the pickle reconstructs a numpy array of an unexpected type')
  return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


# (module, name) → local stand-in. Everything not listed here is refused.
_TORCH_MODULES = ('torch', 'torch.storage')
_NUMPY_MULTIARRAY = ('numpy.core.multiarray', 'numpy._core.multiarray')


def _allowed_global(module: str, name: str) -> Any:
  if module == 'collections' and name == 'OrderedDict':
    return collections.OrderedDict
  if module == 'builtins' and name in ('set', 'frozenset', 'complex', 'slice'):
    return {'set': set, 'frozenset': frozenset, 'complex': complex, 'slice': slice}[name]
  if module == 'torch._utils' and name in ('_rebuild_tensor', '_rebuild_tensor_v2'):
    return _rebuild_tensor
  if module == 'torch._utils' and name in ('_rebuild_parameter', '_rebuild_parameter_with_state'):
    return _rebuild_parameter
  if module == 'torch._tensor' and name == '_rebuild_from_type_v2':
    return _rebuild_from_type_v2
  if (module, name) in (('torch', 'Tensor'), ('torch._tensor', 'Tensor'),
                        ('torch.nn.parameter', 'Parameter')):
    return _TensorType()
  if module in _TORCH_MODULES and name in _STORAGE_DTYPES:
    return _StorageType(name)
  if module == 'torch' and name in _TORCH_DTYPE_NAMES:
    return f'torch.{name}'
  if module == 'torch' and name == 'device':
    return _torch_device
  if module == 'torch' and name == 'Size':
    return tuple
  if module == '_codecs' and name == 'encode':
    return _codecs_encode
  if module == 'numpy' and name == 'dtype':
    return _numpy_dtype
  if module == 'numpy' and name == 'ndarray':
    return _NumpyArrayType()
  if module in _NUMPY_MULTIARRAY and name == 'scalar':
    return _numpy_scalar
  if module in _NUMPY_MULTIARRAY and name == '_reconstruct':
    return _numpy_reconstruct
  return None


def _refuse(what: str) -> UnsafeCheckpointError:
  return UnsafeCheckpointError(
      f'refusing to load: its pickle calls {what}, which a tensor checkpoint never needs (the file '
      'may try to run code); nothing from it was executed')


class _RestrictedUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Pure-Python unpickler with every code-reaching opcode checked.

  `find_class` resolves only `_allowed_global` names; BUILD (`__setstate__`) is accepted only on
  the few types created here; the instance-creating opcodes accept only the allowed classes.
  """

  def __init__(self, file, persistent_load: Callable[[Any], Any] | None):
    super().__init__(file, encoding='latin1')
    self._persistent = persistent_load

  def find_class(self, module, name):
    if self.proto < 3:  # protocol-2 pickles spell builtins the Python 2 way (`__builtin__.set`)
      if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
      module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    obj = _allowed_global(module, name)
    if obj is None:
      raise _refuse(f'{module}.{name}')
    return obj

  def persistent_load(self, pid):
    if self._persistent is None:
      raise ConvertError('the pickle refers to external data where none is expected')
    return self._persistent(pid)

  def _replace(self, old: Any, new: Any) -> None:
    """Swaps a placeholder for the finished object on the stack and in the memo."""
    self.stack[-1] = new
    for k, v in self.memo.items():
      if v is old:
        self.memo[k] = new

  def load_build(self):
    stack = self.stack
    state = stack.pop()
    inst = stack[-1]
    if isinstance(inst, collections.OrderedDict):
      return  # a state dict's `_metadata` (module versions): not needed
    if isinstance(inst, np.dtype):  # state: (version, byte order, ...); only the order matters
      if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ('<', '>', '|', '=')):
        raise _refuse('numpy dtype state of an unexpected form')
      if state[1] == '>':
        self._replace(inst, inst.newbyteorder('>'))
      return
    if isinstance(inst, np.ndarray) and inst.dtype == np.uint8 and inst.shape == (0,):
      self._replace(inst, _numpy_array_from_state(state))
      return
    raise _refuse(f'__setstate__ on a {type(inst).__name__}')

  def load_newobj(self):
    args = self.stack.pop()
    cls = self.stack[-1]
    if not _is_one_of(cls, (collections.OrderedDict, set, frozenset)) or args:
      raise _refuse(f'{getattr(cls, "__name__", type(cls).__name__)}.__new__')
    self.stack[-1] = cls()

  def load_newobj_ex(self):
    raise _refuse('an object constructor with keyword arguments (NEWOBJ_EX)')

  def load_inst(self):
    raise _refuse('an old-style instance constructor (INST)')

  def load_obj(self):
    raise _refuse('an old-style instance constructor (OBJ)')

  def load_reduce(self):
    args = self.stack.pop()
    func = self.stack[-1]
    allowed = (collections.OrderedDict, set, frozenset, complex, slice, tuple, _rebuild_tensor,
               _rebuild_parameter, _rebuild_from_type_v2, _torch_device, _codecs_encode,
               _numpy_dtype, _numpy_scalar, _numpy_reconstruct)
    if not _is_one_of(func, allowed) or not isinstance(args, tuple):
      raise _refuse(f'{getattr(func, "__name__", type(func).__name__)}(...)')
    self.stack[-1] = func(*args)

  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access
  dispatch[pickle.BUILD[0]] = load_build
  dispatch[pickle.NEWOBJ[0]] = load_newobj
  dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
  dispatch[pickle.INST[0]] = load_inst
  dispatch[pickle.OBJ[0]] = load_obj
  dispatch[pickle.REDUCE[0]] = load_reduce


def _numpy_array_from_state(state: Any) -> np.ndarray:
  """numpy's ndarray.__setstate__, for numeric arrays only, done here from the raw bytes."""
  if not (isinstance(state, tuple) and len(state) == 5):
    raise _refuse('numpy array state of an unexpected form')
  _, shape, dtype, fortran, raw = state
  if not isinstance(dtype, np.dtype) or not isinstance(raw, bytes) or not isinstance(shape, tuple):
    raise _refuse('numpy array state of an unexpected form')
  count = int(np.prod(shape)) if shape else 1
  if count * dtype.itemsize != len(raw):
    raise ConvertError('a numpy array has the wrong number of bytes; the file is corrupt')
  return np.frombuffer(raw, dtype).reshape(shape, order='F' if fortran else 'C').copy()


def _materialise(obj: Any, seen: dict[int, Any]) -> Any:
  """Replaces every _LazyTensor in a container tree by its numpy array (shared ones once)."""
  key = id(obj)
  if key in seen:
    return seen[key]
  if isinstance(obj, _LazyTensor):
    out = obj.materialise()
  elif isinstance(obj, dict):
    out = {k: _materialise(v, seen) for k, v in obj.items()}
  elif isinstance(obj, list):
    out = [_materialise(v, seen) for v in obj]
  elif isinstance(obj, tuple):
    out = tuple(_materialise(v, seen) for v in obj)
  elif isinstance(obj, (set, frozenset)):
    out = obj
  else:
    out = obj
  seen[key] = out
  return out


def _storage_from_pid(pid: Any, storages: dict[str, _Storage]) -> tuple[_Storage, str]:
  """Parses a persistent id ('storage', type, key, location, numel[, view_metadata])."""
  if not isinstance(pid, tuple) or len(pid) not in (5, 6):
    raise ConvertError(f'unexpected persistent id in the pickle: {str(pid)[:80]}')
  typename = pid[0].decode('ascii') if isinstance(pid[0], bytes) else pid[0]
  if typename != 'storage':
    raise ConvertError(f'the file stores a {typename!r} object, not tensors (a whole pickled '
                       'model?); save its state_dict() instead')
  storage_type, key, numel = pid[1], str(pid[2]), pid[4]
  if not isinstance(storage_type, _StorageType) or not _is_int(numel) or numel < 0:
    raise ConvertError('malformed storage reference in the pickle')
  if key not in storages:
    storages[key] = _Storage(storage_type.dtype, numel)
  storage = storages[key]
  if storage.dtype != storage_type.dtype:
    raise ConvertError(f'storage {key} is used with two different dtypes')
  return storage, key


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith('data.pkl') and n.count('/') == 1]
    if len(pkl) != 1:
      raise ConvertError('a zip archive, but not a PyTorch checkpoint (no <archive>/data.pkl)')
    prefix = pkl[0][:-len('data.pkl')]
    big_endian = False
    if prefix + 'byteorder' in names:
      order = zf.read(prefix + 'byteorder')
      if order not in (b'little', b'big'):
        raise ConvertError(f'unknown byte order {order[:16]!r}')
      big_endian = order == b'big'
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
      storage, key = _storage_from_pid(pid, storages)
      if storage.data is None:
        record = f'{prefix}data/{key}'
        if record not in names:
          raise ConvertError(f'storage record {record} is missing; the file is truncated')
        raw = zf.read(record)
        dtype = storage.dtype.newbyteorder('>') if big_endian else storage.dtype
        if len(raw) < storage.numel * dtype.itemsize:
          raise ConvertError(f'storage record {record} is shorter than its tensors need; the '
                             'file is truncated')
        storage.data = np.frombuffer(raw, dtype, count=storage.numel).astype(
            storage.dtype.newbyteorder('='), copy=False)
      return storage

    obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), persistent_load).load()
    return _materialise(obj, {})


def _read_legacy(raw: bytes) -> Any:
  f = io.BytesIO(raw)
  magic = _RestrictedUnpickler(f, None).load()
  if magic != _LEGACY_MAGIC:
    raise ConvertError('not a PyTorch checkpoint (neither a torch zip archive nor a legacy torch '
                       'pickle)')
  if _RestrictedUnpickler(f, None).load() != _LEGACY_PROTOCOL:
    raise ConvertError('unsupported legacy checkpoint protocol version')
  _RestrictedUnpickler(f, None).load()  # system info: sizes and endianness (always little here)
  storages: dict[str, _Storage] = {}
  views: list[tuple[_Storage, str, int, int]] = []

  def persistent_load(pid):
    storage, _ = _storage_from_pid(pid, storages)
    view = pid[5] if len(pid) == 6 else None
    if view is None:
      return storage
    # A pre-1.0 storage view: (view key, element offset, element count) into the root storage.
    _, offset, count = view
    sub = _Storage(storage.dtype, count)
    views.append((sub, pid[2], offset, count))
    return sub

  obj = _RestrictedUnpickler(f, persistent_load).load()
  keys = _RestrictedUnpickler(f, None).load()
  if not isinstance(keys, list):
    raise ConvertError('malformed legacy checkpoint (storage key list)')
  for key in keys:
    storage = storages.get(str(key))
    if storage is None:
      raise ConvertError('malformed legacy checkpoint (unknown storage key)')
    head = f.read(8)
    if len(head) != 8:
      raise ConvertError('the file is truncated (storage data missing)')
    numel = int.from_bytes(head, 'little', signed=True)
    nbytes = numel * storage.dtype.itemsize
    data = f.read(nbytes)
    if numel != storage.numel or len(data) != nbytes:
      raise ConvertError('the file is truncated or corrupt (storage size mismatch)')
    storage.data = np.frombuffer(data, storage.dtype)
  for sub, root_key, offset, count in views:
    root = storages[str(root_key)].data
    if root is None or offset < 0 or offset + count > root.size:
      raise ConvertError('malformed legacy checkpoint (storage view out of range)')
    sub.data = root[offset:offset + count]
  return _materialise(obj, {})


def read_pth(path: str | os.PathLike) -> Any:
  """Reads a `.pth` file; tensors become numpy arrays. Never executes code from the file.

  Raises:
    UnsafeCheckpointError: the pickle names anything beyond tensors and plain containers.
    ConvertError: the file is missing, truncated, or not a PyTorch checkpoint.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConvertError(f'{path}: no such file')
  try:
    if zipfile.is_zipfile(path):
      return _read_zip(path)
    with open(path, 'rb') as f:
      raw = f.read()
    if raw[:4] == b'PK\x03\x04':
      raise ConvertError('a damaged or truncated zip archive (its central directory is missing)')
    if raw[:1] != b'\x80':  # every binary pickle (protocol >= 2) starts with PROTO
      raise ConvertError('not a PyTorch checkpoint (neither a torch zip archive nor a legacy '
                         'torch pickle)')
    return _read_legacy(raw)
  except ConvertError as e:
    raise type(e)(f'{path}: {e}') from None
  except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError,
          IndexError, AttributeError, RecursionError, MemoryError, OverflowError, OSError,
          UnicodeDecodeError) as e:
    detail = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
    raise ConvertError(f'{path}: unreadable or truncated checkpoint ({detail})') from None
