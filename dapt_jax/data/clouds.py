"""Reading a user's point-cloud or mesh file, and the per-cloud preparation shared by the folder
dataset and `--mode=predict`.

    points = clouds.read_cloud('part.stl', mesh_points=8192, seed=0)   # float32 [P, 3]

Point clouds: `.npy` ([P, 3+] array), `.txt` / `.xyz` / `.pts` / `.csv` (x y z [...] per line,
space, comma or semicolon separated; `#` and `//` comment lines and one header line naming the
columns are allowed), `.ply` (ascii or binary; the vertices), `.pcd` (ascii, binary and
binary_compressed), `.h5` / `.hdf5` (dataset `data` or `points` holding one cloud).
Meshes: `.off`, `.obj`, `.stl` (ascii or binary): `mesh_points` points sampled uniformly on the
surface (each triangle drawn with probability proportional to its area; seeded). An `.obj` with
vertices but no faces is read as a point cloud.

Every reader is strict: a file whose declared sizes (a PLY or PCD point count, an OFF header, a
binary STL triangle count) disagree with its content, a malformed row, a face index outside the
vertices, or a NaN/inf coordinate raises `DataError` with one line naming the file and the
problem. Only NumPy is needed (h5py for `.h5`, imported when one is read).
"""
from __future__ import annotations

import os
import warnings
import zlib
from typing import Optional

import numpy as np

from dapt_jax.data.errors import DataError

CLOUD_EXTENSIONS = ('.npy', '.txt', '.xyz', '.pts', '.csv', '.ply', '.pcd', '.h5', '.hdf5')
MESH_EXTENSIONS = ('.off', '.obj', '.stl')
EXTENSIONS = CLOUD_EXTENSIONS + MESH_EXTENSIONS

NORMALIZE_MODES = ('unit_sphere', 'center', 'none')
UP_AXES = ('y', 'z')


def _one_line(e: BaseException) -> str:
  return ' '.join(str(e).split()) or type(e).__name__


def _read_bytes(path: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise DataError(f'{path}: unreadable file ({_one_line(e)})') from None


def _parse_floats(path: str, tokens: list, what: str) -> np.ndarray:
  """Whitespace-separated number tokens → float64 array, or a DataError naming `what`."""
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # NumPy only warns when it stops early on a bad token
    try:
      values = np.array(tokens, dtype=np.float64) if tokens else np.zeros(0)
    except (ValueError, DeprecationWarning):
      bad = next((t for t in tokens if not _is_number(t)), '?')
      raise DataError(f'{path}: {what} holds {bad!r}, which is not a number') from None
  return values


def _is_number(token: str) -> bool:
  try:
    float(token)
    return True
  except ValueError:
    return False


# ----------------------------------------------------------------------------------------------
# Text clouds.


def _read_text(path: str) -> np.ndarray:
  raw = _read_bytes(path)
  try:
    text = raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: not a text file (byte {e.start} is not UTF-8)') from None
  rows = []  # (line number, tokens)
  for number, line in enumerate(text.splitlines(), 1):
    line = line.strip()
    if not line or line.startswith(('#', '//')):
      continue
    rows.append((number, line.replace(',', ' ').replace(';', ' ').split()))
  if not rows:
    raise DataError(f'{path}: empty file, expected rows of x y z')
  cols = (0, 1, 2)
  if not all(_is_number(t) for t in rows[0][1]):  # a header line naming the columns
    names = [t.lower() for t in rows[0][1]]
    if any(_is_number(t) for t in rows[0][1]):  # a malformed data row, not a header
      bad = next(t for t in rows[0][1] if not _is_number(t))
      raise DataError(f'{path}: line {rows[0][0]} holds {bad!r}, which is not a number')
    if {'x', 'y', 'z'} <= set(names):
      cols = tuple(names.index(a) for a in 'xyz')
    rows = rows[1:]
    if not rows:
      raise DataError(f'{path}: holds a header line but no points')
  width = len(rows[0][1])
  if width < 3 or width <= max(cols):
    raise DataError(f'{path}: line {rows[0][0]} has {width} value(s), expected at least 3 (x y z)')
  for number, tokens in rows:
    if len(tokens) != width:
      raise DataError(f'{path}: line {number} has {len(tokens)} value(s), expected {width} like '
                      'the first row')
  values = _parse_floats(path, [t for _, tokens in rows for t in tokens], 'a row')
  return values.reshape(len(rows), width)[:, cols]


# ----------------------------------------------------------------------------------------------
# PLY (vertices).

_PLY_TYPES = {'float': 'f4', 'float32': 'f4', 'double': 'f8', 'float64': 'f8', 'uchar': 'u1',
              'uint8': 'u1', 'char': 'i1', 'int8': 'i1', 'short': 'i2', 'int16': 'i2',
              'ushort': 'u2', 'uint16': 'u2', 'int': 'i4', 'int32': 'i4', 'uint': 'u4',
              'uint32': 'u4'}


def _read_ply(path: str) -> np.ndarray:
  raw = _read_bytes(path)
  if not raw.startswith(b'ply'):
    raise DataError(f'{path}: not a PLY file (no "ply" magic line)')
  end = raw.find(b'end_header')
  if end < 0:
    raise DataError(f'{path}: PLY header has no end_header')
  body_start = raw.find(b'\n', end) + 1 or len(raw)
  header = raw[:end].decode('ascii', 'replace').splitlines()
  fmt, elements = None, []  # elements: [name, count, [(prop, type or None for lists)]]
  for line in header[1:]:
    words = line.split()
    if not words or words[0] in ('comment', 'obj_info'):
      continue
    try:
      if words[0] == 'format':
        fmt = words[1]
      elif words[0] == 'element':
        elements.append([words[1], int(words[2]), []])
      elif words[0] == 'property':
        if not elements:
          raise ValueError('property before any element')
        if words[1] == 'list':
          elements[-1][2].append((words[4], None))
        else:
          elements[-1][2].append((words[2], words[1]))
    except (IndexError, ValueError):
      raise DataError(f'{path}: malformed PLY header line {line.strip()!r}') from None
  names = [e[0] for e in elements]
  if 'vertex' not in names:
    raise DataError(f'{path}: PLY file has no vertex element')
  vi = names.index('vertex')
  _, count, props = elements[vi]
  prop_names = [n for n, _ in props]
  if not {'x', 'y', 'z'} <= set(prop_names):
    raise DataError(f'{path}: PLY vertices have no x, y, z properties (have {", ".join(prop_names)})')
  if count < 0:
    raise DataError(f'{path}: PLY header declares {count} vertices')
  cols = [prop_names.index(a) for a in 'xyz']
  if fmt == 'ascii':
    lines = [ln for ln in raw[body_start:].decode('ascii', 'replace').splitlines() if ln.strip()]
    declared = sum(e[1] for e in elements)
    if len(lines) != declared:
      what = ', '.join(f'{e[1]} {e[0]}' for e in elements)
      raise DataError(f'{path}: PLY header declares {declared} data rows ({what}) but the file '
                      f'holds {len(lines)}')
    start = sum(e[1] for e in elements[:vi])
    vertex_lines = lines[start:start + count]
    if any(t is None for _, t in props):
      raise DataError(f'{path}: list properties on PLY vertices are not supported')
    for i, ln in enumerate(vertex_lines):
      if len(ln.split()) != len(props):
        raise DataError(f'{path}: vertex {i} has {len(ln.split())} values, the header declares '
                        f'{len(props)}')
    values = _parse_floats(path, ' '.join(vertex_lines).split(), 'a vertex row')
    return values.reshape(count, len(props))[:, cols]
  if fmt not in ('binary_little_endian', 'binary_big_endian'):
    raise DataError(f'{path}: unsupported PLY format {fmt!r} (ascii, binary_little_endian or '
                    'binary_big_endian)')
  order = '<' if fmt == 'binary_little_endian' else '>'

  def dtype_of(element):
    if any(t is None for _, t in element[2]):
      where = 'the vertices' if element[0] == 'vertex' else f'element {element[0]!r} before them'
      raise DataError(f'{path}: binary PLY with list properties on {where} is not supported')
    try:
      return np.dtype([(n, order + _PLY_TYPES[t]) for n, t in element[2]])
    except KeyError as e:
      raise DataError(f'{path}: unsupported PLY property type {e.args[0]!r}') from None
    except ValueError as e:  # duplicate property names
      raise DataError(f'{path}: malformed PLY element {element[0]!r} ({_one_line(e)})') from None

  offset = body_start + sum(dtype_of(e).itemsize * e[1] for e in elements[:vi])
  dtype = dtype_of(elements[vi])
  need = dtype.itemsize * count
  have = len(raw) - offset
  if have < need or (vi == len(elements) - 1 and have != need):
    raise DataError(f'{path}: PLY header declares {count} vertices ({need} bytes) but the file '
                    f'holds {have} bytes of vertex data')
  data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
  return np.stack([data[n].astype(np.float64) for n in 'xyz'], axis=-1)


# ----------------------------------------------------------------------------------------------
# PCD (Point Cloud Library).

_PCD_KINDS = {'F': 'f', 'I': 'i', 'U': 'u'}


def lzf_decompress(data: bytes, size: int) -> bytes:
  """LZF (liblzf) decompression: what PCD's binary_compressed holds. Raises ValueError."""
  out = bytearray()
  i, n = 0, len(data)
  while i < n:
    ctrl = data[i]
    i += 1
    if ctrl < 32:  # a literal run of ctrl + 1 bytes
      run = ctrl + 1
      if i + run > n:
        raise ValueError('literal run past the end of the data')
      out += data[i:i + run]
      i += run
    else:  # a back reference: length (3 bits, extended by a byte at 7), offset (13 bits)
      length = ctrl >> 5
      if length == 7:
        if i >= n:
          raise ValueError('back reference past the end of the data')
        length += data[i]
        i += 1
      if i >= n:
        raise ValueError('back reference past the end of the data')
      ref = len(out) - ((ctrl & 0x1f) << 8) - data[i] - 1
      i += 1
      if ref < 0:
        raise ValueError('back reference before the start of the output')
      for _ in range(length + 2):  # may overlap what it writes, so byte by byte
        out.append(out[ref])
        ref += 1
    if len(out) > size:
      raise ValueError(f'decompresses to more than the declared {size} bytes')
  if len(out) != size:
    raise ValueError(f'decompresses to {len(out)} bytes, the header declares {size}')
  return bytes(out)


def _read_pcd(path: str) -> np.ndarray:
  raw = _read_bytes(path)
  fields: dict = {}
  pos, data_kind = 0, None
  while pos < len(raw):
    nl = raw.find(b'\n', pos)
    nl = len(raw) if nl < 0 else nl
    line = raw[pos:nl].decode('ascii', 'replace').strip()
    pos = nl + 1
    if not line or line.startswith('#'):
      continue
    words = line.split()
    key = words[0].upper()
    if key == 'DATA':
      data_kind = words[1].lower() if len(words) > 1 else ''
      break
    fields[key] = words[1:]
  if data_kind is None:
    if not fields:
      raise DataError(f'{path}: not a PCD file (no header)')
    raise DataError(f'{path}: PCD header has no DATA line')
  try:
    names = fields['FIELDS']
    sizes = [int(s) for s in fields['SIZE']]
    kinds = [_PCD_KINDS[t.upper()] for t in fields['TYPE']]
    counts = [int(c) for c in fields.get('COUNT', ['1'] * len(names))]
    width, height = int(fields['WIDTH'][0]), int(fields.get('HEIGHT', ['1'])[0])
    points = int(fields.get('POINTS', [width * height])[0])
  except KeyError as e:
    raise DataError(f'{path}: PCD header lacks or has an unknown {e.args[0]!r}') from None
  except (ValueError, IndexError):
    raise DataError(f'{path}: malformed PCD header') from None
  if not len(names) == len(sizes) == len(kinds) == len(counts):
    raise DataError(f'{path}: PCD header has {len(names)} FIELDS but {len(sizes)} SIZE, '
                    f'{len(kinds)} TYPE and {len(counts)} COUNT entries')
  if not {'x', 'y', 'z'} <= set(names):
    raise DataError(f'{path}: PCD file has no x, y, z fields (has {", ".join(names)})')
  if points != width * height or points < 0:
    raise DataError(f'{path}: PCD header declares POINTS {points} but WIDTH x HEIGHT = '
                    f'{width} x {height}')
  xyz = [names.index(a) for a in 'xyz']
  try:  # fields by position: PCL names every padding field '_'
    dtype = np.dtype([(f'f{i}', f'<{k}{s}', (c,))
                      for i, (k, s, c) in enumerate(zip(kinds, sizes, counts))])
  except (TypeError, ValueError):
    raise DataError(f'{path}: PCD field types {fields["TYPE"]} with sizes {sizes} and counts '
                    f'{counts} are not supported') from None
  starts = np.cumsum([0] + counts)  # column of each field's first value in an ascii row
  xyz_cols = [int(starts[i]) for i in xyz]
  body = raw[pos:]
  if data_kind == 'ascii':
    lines = [ln for ln in body.decode('ascii', 'replace').splitlines() if ln.strip()]
    if len(lines) != points:
      raise DataError(f'{path}: PCD header declares {points} points but the file holds '
                      f'{len(lines)} rows')
    for i, ln in enumerate(lines):
      if len(ln.split()) != starts[-1]:
        raise DataError(f'{path}: point {i} has {len(ln.split())} values, the header declares '
                        f'{starts[-1]}')
    values = _parse_floats(path, ' '.join(lines).split(), 'a point row')
    return values.reshape(points, int(starts[-1]))[:, xyz_cols]
  if data_kind == 'binary':
    need = dtype.itemsize * points
    if len(body) != need:
      raise DataError(f'{path}: PCD header declares {points} points ({need} bytes) but the file '
                      f'holds {len(body)} bytes of data')
    data = np.frombuffer(body, dtype=dtype, count=points)
    return np.stack([data[f'f{i}'][:, 0].astype(np.float64) for i in xyz], axis=-1)
  if data_kind == 'binary_compressed':
    if len(body) < 8:
      raise DataError(f'{path}: PCD binary_compressed data is truncated (no size words)')
    packed, size = (int(v) for v in np.frombuffer(body[:8], '<u4'))
    if len(body) - 8 < packed:
      raise DataError(f'{path}: PCD binary_compressed data declares {packed} compressed bytes but '
                      f'the file holds {len(body) - 8}')
    if size != dtype.itemsize * points:
      raise DataError(f'{path}: PCD binary_compressed data declares {size} bytes, {points} points '
                      f'need {dtype.itemsize * points}')
    try:
      flat = lzf_decompress(body[8:8 + packed], size)
    except ValueError as e:
      raise DataError(f'{path}: corrupt PCD binary_compressed data ({_one_line(e)})') from None
    # Compressed PCD stores each field for all points in turn (structure of arrays).
    columns, offset = [], 0
    for k, s, c in zip(kinds, sizes, counts):
      columns.append(np.frombuffer(flat, f'<{k}{s}', count=c * points, offset=offset)
                     .reshape(points, c))
      offset += s * c * points
    return np.stack([columns[i][:, 0].astype(np.float64) for i in xyz], axis=-1)
  raise DataError(f'{path}: unsupported PCD DATA {data_kind!r} (ascii, binary or binary_compressed)')


# ----------------------------------------------------------------------------------------------
# HDF5 and NumPy.


def _read_h5(path: str) -> np.ndarray:
  import h5py  # pylint: disable=g-import-not-at-top

  try:
    with h5py.File(path, 'r') as f:
      key = next((k for k in ('data', 'points') if k in f), None)
      if key is None:
        raise DataError(f'{path}: no dataset named "data" or "points" (has: '
                        f'{", ".join(sorted(f.keys())) or "nothing"})')
      arr = np.asarray(f[key])
  except DataError:
    raise
  except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
    raise DataError(f'{path}: unreadable or truncated HDF5 file ({_one_line(e)})') from None
  if arr.ndim == 3:
    if arr.shape[0] != 1:
      raise DataError(f'{path}: holds {arr.shape[0]} clouds (shape {arr.shape}); one cloud per '
                      'file is read')
    arr = arr[0]
  return arr


def _read_npy(path: str) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise DataError(f'{path}: not a readable .npy array ({_one_line(e)})') from None


# ----------------------------------------------------------------------------------------------
# Meshes → (vertices [V, 3] float64, triangles [T, 3] int64).


def _fan(polygons: list, path: str, where: str) -> list:
  tris = []
  for poly in polygons:
    if len(poly) < 3:
      raise DataError(f'{path}: {where} has a face with {len(poly)} vertices, expected 3 or more')
    tris.extend((poly[0], poly[k], poly[k + 1]) for k in range(1, len(poly) - 1))
  return tris


def _read_off(path: str) -> tuple[np.ndarray, np.ndarray]:
  raw = _read_bytes(path)
  try:
    text = raw.decode('ascii')
  except UnicodeDecodeError:
    raise DataError(f'{path}: not an ASCII OFF file (binary OFF is not supported)') from None
  lines = []
  for number, line in enumerate(text.splitlines(), 1):
    line = line.split('#', 1)[0].strip()
    if line:
      lines.append((number, line))
  if not lines or 'OFF' not in lines[0][1].split()[0].upper():
    raise DataError(f'{path}: not an OFF file (no OFF header line)')
  head = lines[0][1]
  rest = head[head.upper().index('OFF') + 3:].split()  # counts may follow on the same line
  if rest and rest[0].upper() == 'BINARY':
    raise DataError(f'{path}: binary OFF is not supported')
  lines = lines[1:]
  if not rest:
    if not lines:
      raise DataError(f'{path}: OFF file has no vertex/face counts')
    rest = lines[0][1].split()
    lines = lines[1:]
  try:
    nv, nf = int(rest[0]), int(rest[1])
  except (IndexError, ValueError):
    raise DataError(f'{path}: OFF counts line {" ".join(rest)!r} is not "vertices faces edges"') from None
  if nv < 0 or nf < 0:
    raise DataError(f'{path}: OFF header declares {nv} vertices and {nf} faces')
  if len(lines) != nv + nf:
    raise DataError(f'{path}: OFF header declares {nv} vertices and {nf} faces ({nv + nf} rows) '
                    f'but the file holds {len(lines)} rows')
  vtok = [ln.split() for _, ln in lines[:nv]]
  short = next((i for i, t in enumerate(vtok) if len(t) < 3), None)
  if short is not None:
    raise DataError(f'{path}: OFF vertex {short} (line {lines[short][0]}) has fewer than 3 values')
  vertices = _parse_floats(path, [v for t in vtok for v in t[:3]], 'a vertex row').reshape(nv, 3)
  polygons = []
  for number, line in lines[nv:]:
    words = line.split()
    try:
      k = int(words[0])
      poly = [int(w) for w in words[1:1 + k]]
    except ValueError:
      raise DataError(f'{path}: OFF face on line {number} is not integers') from None
    if len(poly) != k:
      raise DataError(f'{path}: OFF face on line {number} declares {k} vertices but lists '
                      f'{len(poly)}')
    bad = [i for i in poly if not 0 <= i < nv]
    if bad:
      raise DataError(f'{path}: OFF face on line {number} uses vertex {bad[0]}, outside the '
                      f'{nv} vertices')
    polygons.append(poly)
  return vertices, np.asarray(_fan(polygons, path, 'OFF file'), np.int64).reshape(-1, 3)


def _read_obj(path: str) -> tuple[np.ndarray, np.ndarray]:
  raw = _read_bytes(path)
  text = raw.decode('utf-8', 'replace')
  vtok, polygons = [], []
  for number, line in enumerate(text.splitlines(), 1):
    words = line.split('#', 1)[0].split()
    if not words:
      continue
    if words[0] == 'v':
      if len(words) < 4:
        raise DataError(f'{path}: OBJ vertex on line {number} has fewer than 3 coordinates')
      vtok.append((number, words[1:4]))
    elif words[0] == 'f':
      poly = []
      for w in words[1:]:
        try:
          i = int(w.split('/', 1)[0])
        except ValueError:
          raise DataError(f'{path}: OBJ face on line {number} has a bad vertex reference '
                          f'{w!r}') from None
        j = i - 1 if i > 0 else len(vtok) + i  # 1-based; negative counts back from here
        if i == 0 or not 0 <= j < len(vtok):
          raise DataError(f'{path}: OBJ face on line {number} uses vertex {i}, but '
                          f'{len(vtok)} are defined before it')
        poly.append(j)
      polygons.append((number, poly))
  if not vtok:
    raise DataError(f'{path}: OBJ file has no vertices ("v x y z" lines)')
  for number, poly in polygons:
    if len(poly) < 3:
      raise DataError(f'{path}: OBJ face on line {number} has {len(poly)} vertices, expected 3 '
                      'or more')
  vertices = _parse_floats(path, [v for _, t in vtok for v in t], 'a vertex line')
  tris = _fan([p for _, p in polygons], path, 'OBJ file')
  return vertices.reshape(-1, 3), np.asarray(tris, np.int64).reshape(-1, 3)


_STL_RECORD = np.dtype([('normal', '<f4', 3), ('v', '<f4', (3, 3)), ('attr', '<u2')])


def _read_stl(path: str) -> tuple[np.ndarray, np.ndarray]:
  raw = _read_bytes(path)
  head = raw[:1024].lstrip()
  if head[:5].lower() == b'solid' and (b'facet' in head or b'endsolid' in head or len(raw) < 84):
    return _read_ascii_stl(path, raw)
  if len(raw) < 84:
    raise DataError(f'{path}: not an STL file ({len(raw)} bytes: too short for a binary STL, and '
                    'no "solid" line)')
  n = int(np.frombuffer(raw, '<u4', count=1, offset=80)[0])
  if len(raw) != 84 + 50 * n:
    raise DataError(f'{path}: binary STL declares {n} triangles ({84 + 50 * n} bytes) but the '
                    f'file has {len(raw)} bytes')
  tris = np.frombuffer(raw, _STL_RECORD, count=n, offset=84)['v'].astype(np.float64)
  return tris.reshape(-1, 3), np.arange(3 * n, dtype=np.int64).reshape(n, 3)


def _read_ascii_stl(path: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
  words = raw.decode('ascii', 'replace').split()
  if 'endsolid' not in words:
    raise DataError(f'{path}: ASCII STL has no "endsolid" (truncated?)')
  coords, facets, loops = [], 0, 0
  for i, w in enumerate(words):
    if w == 'vertex':
      coords.extend(words[i + 1:i + 4])
    elif w == 'facet':
      facets += 1
    elif w == 'endloop':
      loops += 1
  if len(coords) != 9 * facets or loops != facets:
    raise DataError(f'{path}: ASCII STL has {facets} facets but {len(coords) // 3} vertices and '
                    f'{loops} loops, expected 3 vertices and one loop per facet')
  vertices = _parse_floats(path, coords, 'a vertex line').reshape(-1, 3)
  return vertices, np.arange(vertices.shape[0], dtype=np.int64).reshape(-1, 3)


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, count: int,
                   rng: np.random.Generator) -> np.ndarray:
  """`count` points uniformly distributed over a triangle mesh's surface.

  vertices: [V, 3]; triangles: [T, 3] vertex indices. A triangle is chosen with probability
  proportional to its area, then a point uniformly inside it (barycentric coordinates
  (1 - √u, √u (1 - v), √u v) for u, v ~ U(0, 1)). Returns float64 [count, 3].
  Raises ValueError when the mesh has no area.
  """
  a, b, c = (vertices[triangles[:, k]] for k in range(3))
  areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=-1)
  total = areas.sum()
  if not total > 0 or not np.isfinite(total):
    raise ValueError('the mesh has no surface area')
  cdf = np.cumsum(areas) / total
  pick = np.minimum(np.searchsorted(cdf, rng.random(count), side='right'), len(areas) - 1)
  u, v = rng.random(count), rng.random(count)
  su = np.sqrt(u)[:, None]
  return (1 - su) * a[pick] + su * (1 - v[:, None]) * b[pick] + su * v[:, None] * c[pick]


# ----------------------------------------------------------------------------------------------
# Public entry points.


def read_cloud(path: str, mesh_points: int = 8192, seed: int = 0) -> np.ndarray:
  """One point cloud float32 [P, 3] from any supported file (see the module docstring).

  Meshes are sampled to `mesh_points` points with `np.random.default_rng(seed)`.
  Raises DataError (one line naming the file) for anything missing, malformed or non-finite.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise DataError(f'{path}: no such file')
  if not os.path.isfile(path):
    raise DataError(f'{path}: not a file')
  ext = os.path.splitext(path)[1].lower()
  if ext not in EXTENSIONS:
    raise DataError(f'{path}: unsupported extension {ext or "(none)"!r} (use '
                    f'{" ".join(EXTENSIONS)})')
  if ext in MESH_EXTENSIONS:
    vertices, triangles = {'.off': _read_off, '.obj': _read_obj, '.stl': _read_stl}[ext](path)
    _check_finite(path, vertices, 'vertex')
    if triangles.shape[0] == 0:
      if ext != '.obj':
        raise DataError(f'{path}: the mesh has no faces')
      arr = vertices  # an OBJ of bare vertices is a point cloud
    else:
      try:
        arr = sample_surface(vertices, triangles, int(mesh_points), np.random.default_rng(seed))
      except ValueError as e:
        raise DataError(f'{path}: cannot sample the surface ({_one_line(e)}: all '
                        f'{triangles.shape[0]} triangles are degenerate)') from None
  elif ext == '.npy':
    arr = _read_npy(path)
  elif ext == '.ply':
    arr = _read_ply(path)
  elif ext == '.pcd':
    arr = _read_pcd(path)
  elif ext in ('.h5', '.hdf5'):
    arr = _read_h5(path)
  else:
    arr = _read_text(path)
  arr = np.asarray(arr)
  if arr.dtype.kind not in 'fiu':
    raise DataError(f'{path}: holds {arr.dtype} values, expected numbers')
  if arr.ndim != 2 or arr.shape[1] < 3:
    raise DataError(f'{path}: expected an array of shape (points, 3+), got {arr.shape}')
  if arr.shape[0] == 0:
    raise DataError(f'{path}: the cloud has no points')
  _check_finite(path, arr[:, :3], 'point')
  return arr[:, :3].astype(np.float32)


def _check_finite(path: str, xyz: np.ndarray, what: str) -> None:
  finite = np.isfinite(xyz).all(axis=1)
  if not finite.all():
    bad = np.flatnonzero(~finite)
    raise DataError(f'{path}: {bad.size} of {finite.size} {what}s have NaN/inf coordinates, first '
                    f'{what} {int(bad[0])}; remove them first')


def rotate_up(points: np.ndarray, up_axis: str) -> np.ndarray:
  """points: [..., 3] in a z-up ('z') or y-up ('y') frame → the y-up frame the benchmarks use.

  z-up is turned by -90° about x: (x, y, z) → (x, z, -y), a proper rotation.
  """
  if up_axis == 'y':
    return points
  if up_axis == 'z':
    return np.stack([points[..., 0], points[..., 2], -points[..., 1]], axis=-1)
  raise DataError(f'data.folder_up_axis: {up_axis!r} is not one of {", ".join(UP_AXES)}')


def normalize(points: np.ndarray, mode: str) -> np.ndarray:
  """points: [P, 3] → 'unit_sphere': centred on the mean and scaled so the farthest point has
  norm 1 (the benchmarks' preparation); 'center': centred only (metric scale kept); 'none'."""
  if mode == 'none':
    return points
  if mode not in NORMALIZE_MODES:
    raise DataError(f'data.folder_normalize: {mode!r} is not one of {", ".join(NORMALIZE_MODES)}')
  points = points - points.mean(axis=0, keepdims=True)
  if mode == 'unit_sphere':
    points = points / max(float(np.sqrt((points ** 2).sum(-1)).max()), 1e-12)
  return points


def resample(points: np.ndarray, num_points: int, rng: np.random.Generator) -> np.ndarray:
  """A cloud of fewer than `num_points` points → exactly `num_points`: every point once, the rest
  drawn with replacement, so FPS still meets each distinct point before any copy."""
  if points.shape[0] >= num_points:
    return points
  extra = rng.choice(points.shape[0], num_points - points.shape[0], replace=True)
  return np.concatenate([points, points[extra]])


def stable_seed(text: str) -> int:
  """A seed from a string that is the same in every process (unlike `hash`)."""
  return zlib.crc32(text.encode('utf-8'))


def check_prepare_fields(num_points: int, mesh_points: int, normalize_mode: str,
                         up_axis: str, min_points: Optional[int] = None) -> None:
  """One-line DataErrors for the preparation fields of the folder dataset."""
  if num_points < 1:
    raise DataError(f'data.folder_points: {num_points} must be at least 1')
  if mesh_points < 1:
    raise DataError(f'data.folder_mesh_points: {mesh_points} must be at least 1')
  if min_points is not None and min_points < 1:
    raise DataError(f'data.folder_min_points: {min_points} must be at least 1')
  if normalize_mode not in NORMALIZE_MODES:
    raise DataError(f'data.folder_normalize: {normalize_mode!r} is not one of '
                    f'{", ".join(NORMALIZE_MODES)}')
  if up_axis not in UP_AXES:
    raise DataError(f'data.folder_up_axis: {up_axis!r} is not one of {", ".join(UP_AXES)}')
