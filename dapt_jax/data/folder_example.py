"""Writers of every file format `dapt_jax.data.clouds` reads, and a small example folder dataset.

    python -m dapt_jax.data.folder --make-example my_clouds

writes my_clouds/{train,test}/{box,cone,cylinder}/ with one shape per file, the formats mixed
(.npy .txt .xyz .ply .pcd .h5 clouds; .off .obj .stl meshes), each shape randomly scaled and turned.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from dapt_jax.data import clouds
from dapt_jax.data.errors import DataError

# ----------------------------------------------------------------------------------------------
# Writers. points: [P, 3]; vertices: [V, 3]; triangles: [T, 3] vertex indices (0-based).


def write_npy(path: str, points: np.ndarray) -> None:
  np.save(path, np.asarray(points, np.float32))


def write_txt(path: str, points: np.ndarray, delimiter: str = ' ', header: Optional[str] = None
              ) -> None:
  np.savetxt(path, points, fmt='%.6f', delimiter=delimiter,
             header=header or '', comments='')


def write_ply(path: str, points: np.ndarray, binary: bool = True) -> None:
  points = np.asarray(points, np.float32)
  head = (f'ply\nformat {"binary_little_endian" if binary else "ascii"} 1.0\n'
          f'element vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\n'
          'end_header\n')
  with open(path, 'wb') as f:
    f.write(head.encode('ascii'))
    if binary:
      f.write(points.astype('<f4').tobytes())
    else:
      f.write(''.join(f'{x:.6f} {y:.6f} {z:.6f}\n' for x, y, z in points).encode('ascii'))


def lzf_literals(data: bytes) -> bytes:
  """A valid LZF stream of literal runs only (no compression): enough to write test files."""
  out = bytearray()
  for i in range(0, len(data), 32):
    chunk = data[i:i + 32]
    out.append(len(chunk) - 1)
    out += chunk
  return bytes(out)


def write_pcd(path: str, points: np.ndarray, data: str = 'ascii') -> None:
  """PCL's format with fields x y z float32; data: 'ascii', 'binary' or 'binary_compressed'."""
  points = np.asarray(points, np.float32)
  n = len(points)
  head = ('# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\n'
          f'TYPE F F F\nCOUNT 1 1 1\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n'
          f'DATA {data}\n')
  with open(path, 'wb') as f:
    f.write(head.encode('ascii'))
    if data == 'ascii':
      f.write(''.join(f'{x:.6f} {y:.6f} {z:.6f}\n' for x, y, z in points).encode('ascii'))
    elif data == 'binary':
      f.write(points.astype('<f4').tobytes())
    elif data == 'binary_compressed':
      raw = np.ascontiguousarray(points.T).astype('<f4').tobytes()  # one field after another
      packed = lzf_literals(raw)
      f.write(np.asarray([len(packed), len(raw)], '<u4').tobytes() + packed)
    else:
      raise ValueError(f'unknown PCD data kind {data!r}')


def write_h5(path: str, points: np.ndarray) -> None:
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(path, 'w') as f:
    f['data'] = np.asarray(points, np.float32)


def write_off(path: str, vertices: np.ndarray, triangles: np.ndarray) -> None:
  with open(path, 'w') as f:
    f.write(f'OFF\n{len(vertices)} {len(triangles)} 0\n')
    f.write(''.join(f'{x:.6f} {y:.6f} {z:.6f}\n' for x, y, z in vertices))
    f.write(''.join(f'3 {a} {b} {c}\n' for a, b, c in triangles))


def write_obj(path: str, vertices: np.ndarray, triangles: np.ndarray) -> None:
  with open(path, 'w') as f:
    f.write('# example mesh\no shape\n')
    f.write(''.join(f'v {x:.6f} {y:.6f} {z:.6f}\n' for x, y, z in vertices))
    f.write(''.join(f'f {a + 1} {b + 1} {c + 1}\n' for a, b, c in triangles))


def write_stl(path: str, vertices: np.ndarray, triangles: np.ndarray, binary: bool = True) -> None:
  tris = np.asarray(vertices, np.float32)[np.asarray(triangles)]  # [T, 3, 3]
  normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
  normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
  if binary:
    rec = np.zeros(len(tris), np.dtype([('n', '<f4', 3), ('v', '<f4', (3, 3)), ('a', '<u2')]))
    rec['n'], rec['v'] = normals, tris
    with open(path, 'wb') as f:
      f.write(b'binary STL written by dapt_jax'.ljust(80, b' '))
      f.write(np.uint32(len(tris)).tobytes() + rec.tobytes())
    return
  with open(path, 'w') as f:
    f.write('solid shape\n')
    for nrm, t in zip(normals, tris):
      f.write(f' facet normal {nrm[0]:.6f} {nrm[1]:.6f} {nrm[2]:.6f}\n  outer loop\n')
      f.write(''.join(f'   vertex {x:.6f} {y:.6f} {z:.6f}\n' for x, y, z in t))
      f.write('  endloop\n endfacet\n')
    f.write('endsolid shape\n')


# ----------------------------------------------------------------------------------------------
# Shapes.


def box_mesh() -> tuple[np.ndarray, np.ndarray]:
  v = np.array([[x, y, z] for x in (-.5, .5) for y in (-.5, .5) for z in (-.5, .5)])
  quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
  return v, np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])


def cylinder_mesh(segments: int = 24) -> tuple[np.ndarray, np.ndarray]:
  ang = 2 * np.pi * np.arange(segments) / segments
  ring = np.stack([0.5 * np.cos(ang), np.zeros(segments), 0.5 * np.sin(ang)], -1)
  v = np.concatenate([ring - [0, .5, 0], ring + [0, .5, 0], [[0, -.5, 0], [0, .5, 0]]])
  tris = []
  for i in range(segments):
    j = (i + 1) % segments
    tris += [(i, j, segments + j), (i, segments + j, segments + i),
             (2 * segments, j, i), (2 * segments + 1, segments + i, segments + j)]
  return v, np.array(tris)


def cone_mesh(segments: int = 24) -> tuple[np.ndarray, np.ndarray]:
  ang = 2 * np.pi * np.arange(segments) / segments
  ring = np.stack([0.5 * np.cos(ang), np.full(segments, -.5), 0.5 * np.sin(ang)], -1)
  v = np.concatenate([ring, [[0, .5, 0], [0, -.5, 0]]])
  tris = [t for i in range(segments)
          for t in ((i, segments, (i + 1) % segments), (segments + 1, (i + 1) % segments, i))]
  return v, np.array(tris)


SHAPES = {'box': box_mesh, 'cone': cone_mesh, 'cylinder': cylinder_mesh}
FORMATS = ('.npy', '.off', '.txt', '.ply', '.obj', '.pcd', '.stl', '.xyz', '.h5')


def _pose(rng: np.random.Generator, vertices: np.ndarray) -> np.ndarray:
  a = rng.uniform(0, 2 * np.pi)
  rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
  return (vertices * rng.uniform(0.7, 1.3, 3)) @ rot.T + rng.uniform(-0.1, 0.1, 3)


def write_shape(path: str, vertices: np.ndarray, triangles: np.ndarray, rng: np.random.Generator,
                points: int = 400) -> None:
  """One shape in the format of `path`'s extension: meshes as they are, clouds sampled from
  the surface with a little noise."""
  ext = os.path.splitext(path)[1]
  if ext in ('.off', '.obj', '.stl'):
    {'.off': write_off, '.obj': write_obj, '.stl': write_stl}[ext](path, vertices, triangles)
    return
  cloud = clouds.sample_surface(vertices, triangles, points, rng)
  cloud = (cloud + rng.normal(0, 0.01, cloud.shape)).astype(np.float32)
  if ext == '.npy':
    write_npy(path, cloud)
  elif ext == '.txt':
    write_txt(path, cloud, delimiter=',', header='x,y,z')
  elif ext == '.xyz':
    write_txt(path, cloud)
  elif ext == '.ply':
    write_ply(path, cloud)
  elif ext == '.pcd':
    write_pcd(path, cloud, data='binary')
  elif ext == '.h5':
    write_h5(path, cloud)
  else:
    raise ValueError(f'no writer for {ext!r}')


def make_example(root: str, per_class_train: int = 16, per_class_test: int = 8,
                 seed: int = 0) -> list[str]:
  """Writes root/{train,test}/{box,cone,cylinder}/<class>_<i><ext>; returns the paths.

  Formats cycle through FORMATS, so each split holds clouds and meshes of every format.
  """
  if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
    raise DataError(f'{root}: exists and is not an empty folder; choose a new one')
  rng = np.random.default_rng(seed)
  written, k = [], 0
  for split, n in (('train', per_class_train), ('test', per_class_test)):
    for name, make in SHAPES.items():
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for i in range(n):
        path = os.path.join(root, split, name, f'{name}_{i:03d}{FORMATS[k % len(FORMATS)]}')
        k += 1
        vertices, triangles = make()
        write_shape(path, _pose(rng, vertices), triangles, rng,
                    points=int(rng.integers(300, 600)))
        written.append(path)
  return written
